"""Processing algorithm "Predict probability map": trained model + raster stack -> styled GeoTIFF."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

from qgis.core import (
    QgsProcessing,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterFile,
    QgsProcessingParameterRasterDestination,
    QgsProcessingUtils,
)

from ..core.config import PredictConfig
from . import evidence, styling
from .base import StackSegmenterAlgorithm
from .worker import WorkerCancelled


class PredictProbabilityMapAlgorithm(StackSegmenterAlgorithm):
    """Sliding-window prediction in the worker; the result loads styled on [0, 1]."""

    INPUT = "INPUT"
    MODEL = "MODEL"
    MASK = "MASK"
    TILE_SIZE = "TILE_SIZE"
    OVERLAP = "OVERLAP"
    BATCH_SIZE = "BATCH_SIZE"
    DEVICE = "DEVICE"
    SPHERICAL = "SPHERICAL"
    OUTPUT = "OUTPUT"
    UNCERTAINTY = "UNCERTAINTY"

    FLAGS = {
        "--checkpoint": MODEL, "--raster_path": INPUT, "--output_path": OUTPUT, "--mask_path": MASK,
        "--tile_size": TILE_SIZE, "--overlap": OVERLAP, "--batch_size": BATCH_SIZE, "--device": DEVICE,
        "--spherical": SPHERICAL, "--uncertainty_path": UNCERTAINTY,
    }
    #: Parameters declared by PredictConfig's fields (add_option): id -> field.
    OPTIONS = ((TILE_SIZE, "tile_size"), (OVERLAP, "overlap"), (BATCH_SIZE, "batch_size"), (DEVICE, "device"),
               (SPHERICAL, "spherical"))

    ICON = "predict.svg"
    TAGS = ("predict", "probability", "map", "inference", "favourability", "susceptibility")

    SUMMARY = (
        "Turns a model trained by 'Train segmenter' into a probability map: a single-band float32 GeoTIFF of "
        "the positive-class probability (0 to 1) on the evidence's grid (the first layer's, or the chosen "
        "reference grid), predicted with overlapping windows and blended without seams. The evidence layers may "
        "come in any order: the model finds its bands by name (and names any that are missing). Nodata (and "
        "pixels outside the mask) stay nodata. An ensemble model (several members) predicts the mean of its "
        "members and can also write their spread as an uncertainty map. The map loads named after the model, "
        "in classes of area (top 1, 5, 10, 20 % of the map, as Evaluate reports them)."
    )

    def name(self) -> str:
        return "predictprobabilitymap"

    def displayName(self) -> str:  # noqa: N802 (Qt API)
        return self.tr("Predict probability map")

    def initAlgorithm(self, config: Optional[Dict[str, Any]] = None) -> None:  # noqa: N802 (Qt API)
        self.add_evidence_parameters("The evidence to predict: the bands the model was trained on, found by name "
                                     "(a single-band layer's name, a band's description) in any order.")
        self.add(QgsProcessingParameterFile(self.MODEL, self.tr("Trained model"), extension="pt"),
                 "The .pt file written by 'Train segmenter'.")
        self.add(QgsProcessingParameterFeatureSource(
            self.MASK, self.tr("Study area mask"), [QgsProcessing.SourceType.TypeVectorPolygon], optional=True),
            "Polygons: pixels outside are written as nodata.")
        self.add_option(self.TILE_SIZE, "Window size (pixels, 0 = as trained)", PredictConfig, "tile_size",
                        advanced=True)
        self.add_option(self.OVERLAP, "Window overlap", PredictConfig, "overlap", advanced=True)
        self.add_option(self.BATCH_SIZE, "Batch size", PredictConfig, "batch_size", advanced=True)
        self.add_option(self.DEVICE, "Device", PredictConfig, "device", advanced=True)
        self.add_option(self.SPHERICAL, "Whole globe (spherical model)", PredictConfig, "spherical", advanced=True)
        self.add(QgsProcessingParameterRasterDestination(self.OUTPUT, self.tr("Probability map")),
                 "The probability GeoTIFF (0 to 1, nodata where the input is nodata). A model trained by this "
                 "plugin is calibrated: the map's mean over the training area is the training base rate. It "
                 "loads in classes of area: the top 1, 5, 10 and 20 % of the map.")
        self.add(QgsProcessingParameterRasterDestination(self.UNCERTAINTY, self.tr("Uncertainty"), optional=True,
                                                         createByDefault=False),
                 "Optional, for a model trained as an ensemble ('Ensemble members' 2 or more, or a mixed "
                 "architecture such as pixel + cnn): the per-pixel "
                 "standard deviation across the members (0 where they agree, larger where they differ).")

    def processAlgorithm(self, parameters: Dict[str, Any], context: QgsProcessingContext,  # noqa: N802
                         feedback: QgsProcessingFeedback) -> Dict[str, Any]:
        output = self.check_output(self.parameterAsOutputLayer(parameters, self.OUTPUT, context), self.OUTPUT)
        spread = self.parameterAsOutputLayer(parameters, self.UNCERTAINTY, context) or None
        if spread:
            self.check_output(spread, self.UNCERTAINTY)
        python = self.worker_python()  # the core removes stale .aux.xml statistics once the new maps are whole
        model = self.parameterAsFile(parameters, self.MODEL, context)
        plan = self.evidence_plan(parameters, context, feedback)
        categorical = self._model_categorical(model, plan, feedback, python) if plan.aligning else []
        stack = plan.write(Path(QgsProcessingUtils.generateTempFilename("evidence_stack.vrt")), categorical, feedback)
        args = self._args(parameters, context, feedback, model, stack.path, output)
        if spread:
            args += ["--uncertainty_path", spread]
        try:
            result = self.run_core("predict", args, feedback, python)
        except WorkerCancelled:
            kept = self.tr(" (the earlier map at {} is unchanged)").format(output) if Path(output).is_file() else ""
            raise QgsProcessingException(self.tr("Cancelled. No map was written{}.").format(kept)) from None
        written = str(result.get("output_path") or output)
        self._finish(written, output, styling.layer_name(model, bool(result.get("calibrated", True))),
                     "probability", context, feedback)
        outputs: Dict[str, Any] = {self.OUTPUT: written, self.UNCERTAINTY: None}
        if spread:
            outputs[self.UNCERTAINTY] = str(result.get("uncertainty_path") or spread)
            self._finish(outputs[self.UNCERTAINTY], spread, styling.uncertainty_layer_name(model), "uncertainty",
                         context, feedback)
        return outputs

    def _finish(self, written: str, output: str, name: str, kind: str, context: QgsProcessingContext,
                feedback: QgsProcessingFeedback) -> None:
        """Writes the map's .qml style beside it and styles and names the layer QGIS loads."""
        if styling.write_style_sidecar(written, kind):
            feedback.pushInfo(self.tr("Style written beside the map: {}").format(Path(written).with_suffix(".qml")))
        if context.willLoadLayerOnCompletion(output):
            details = context.layerToLoadOnCompletionDetails(output)
            details.name = name
            details.setPostProcessor(styling.make_styler(name, kind))

    def _model_categorical(self, model: str, plan: evidence.StackPlan, feedback: QgsProcessingFeedback,
                           python: str) -> List[int]:
        """The stack bands the model treats as categorical (they are aligned by nearest neighbour)."""
        info = self.run_core("model-info", ["--checkpoint", model], feedback, python)
        wanted = {str(n).lower() for n in info.get("categorical_bands") or []}
        return [i for i, name in enumerate(plan.names, start=1) if name.lower() in wanted]

    def _args(self, parameters: Dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback,
              model: str, raster: str, output: str) -> List[str]:
        p = parameters
        args = ["--checkpoint", model, "--raster_path", raster, "--output_path", output]
        args += self.option_args(p, context, PredictConfig, self.OPTIONS)
        mask = self.vector_file(p, self.MASK, context, feedback)
        if mask is not None:
            args += ["--mask_path", self.vector_uri(mask)]
        return args
