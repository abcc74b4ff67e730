"""Processing algorithm "Train segmenter": raster stack + vector labels -> a trained model (.pt)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

from qgis.core import (
    QgsProcessing,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputNumber,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterField,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
)

from ..core.config import AMP_MODES, DEFAULT_ENSEMBLE, DEFAULT_LOSS, LOSSES, MAX_ENSEMBLE
from ..core.models.catalog import PRESET_MODELS
from .base import StackSegmenterAlgorithm

Integer = QgsProcessingParameterNumber.Type.Integer
Double = QgsProcessingParameterNumber.Type.Double

#: Validation scores of the core's train result -> numeric outputs.
SCORE_OUTPUTS = (
    ("VAL_LOSS", "val_loss", "Validation loss"),
    ("VAL_IOU", "val_iou", "Validation IoU"),
    ("VAL_ACCURACY", "val_accuracy", "Validation accuracy"),
    ("VAL_ROC_AUC", "val_roc_auc", "Validation ROC AUC"),
    ("VAL_PR_AUC", "val_pr_auc", "Validation PR AUC"),
)


class TrainSegmenterAlgorithm(StackSegmenterAlgorithm):
    """Trains one architecture per run in the worker process."""

    INPUT = "INPUT"
    LABELS = "LABELS"
    LABEL_FIELD = "LABEL_FIELD"
    POSITIVE_VALUES = "POSITIVE_VALUES"
    MASK = "MASK"
    ARCHITECTURE = "ARCHITECTURE"
    EPOCHS = "EPOCHS"
    BATCH_SIZE = "BATCH_SIZE"
    LEARNING_RATE = "LEARNING_RATE"
    TILE_SIZE = "TILE_SIZE"
    STRIDE = "STRIDE"
    VAL_FRACTION = "VAL_FRACTION"
    POINT_BUFFER = "POINT_BUFFER"
    SEED = "SEED"
    DEVICE = "DEVICE"
    AMP_MODE = "AMP_MODE"
    MAX_GRAD_NORM = "MAX_GRAD_NORM"
    LABEL_SMOOTHING = "LABEL_SMOOTHING"
    AUGMENT = "AUGMENT"
    LOSS = "LOSS"
    PATIENCE = "PATIENCE"
    CATEGORICAL_BANDS = "CATEGORICAL_BANDS"
    RESUME = "RESUME"
    ENSEMBLE = "ENSEMBLE"
    OUTPUT_MODEL = "OUTPUT_MODEL"
    OUTPUT_FOLDER = "OUTPUT_FOLDER"
    EPOCHS_RUN = "EPOCHS_RUN"

    FLAGS = {
        "--raster_path": INPUT, "--shapefile_path": LABELS, "--labels": LABELS, "--label_column": LABEL_FIELD,
        "--positive_values": POSITIVE_VALUES, "--mask_path": MASK, "--models": ARCHITECTURE,
        "--num_epochs": EPOCHS, "--batch_size": BATCH_SIZE, "--learning_rate": LEARNING_RATE,
        "--tile_size": TILE_SIZE, "--stride": STRIDE, "--val_fraction": VAL_FRACTION,
        "--point_buffer": POINT_BUFFER, "--seed": SEED, "--device": DEVICE, "--amp_mode": AMP_MODE,
        "--max_grad_norm": MAX_GRAD_NORM, "--label_smoothing_factor": LABEL_SMOOTHING, "--loss": LOSS,
        "--patience": PATIENCE, "--categorical_bands": CATEGORICAL_BANDS, "--resume": RESUME,
        "--checkpoint_path": OUTPUT_MODEL, "--output_path": OUTPUT_FOLDER, "--ensemble": ENSEMBLE,
    }

    ICON = "train.svg"
    TAGS = ("train", "model", "neural network", "unet", "transformer", "pytorch", "labels", "deposits")

    SUMMARY = (
        "Trains a segmentation network (one architecture per run) on a multi-band raster stack with point or "
        "polygon labels, e.g. known mineral deposits, landslides or water bodies. Validation uses spatially "
        "separate blocks. Writes the trained model (.pt, which 'Predict probability map' uses) and a folder "
        "with figures, metrics and the log. The work runs in a separate Python process that needs torch "
        "(see 'Check environment')."
    )

    def name(self) -> str:
        return "trainsegmenter"

    def displayName(self) -> str:  # noqa: N802 (Qt API)
        return self.tr("Train segmenter")

    def initAlgorithm(self, config: Optional[Dict[str, Any]] = None) -> None:  # noqa: N802 (Qt API)
        self._add_inputs()
        self._add_training_options()
        self._add_advanced_options()
        self._add_outputs()

    def _add_inputs(self) -> None:
        self.add(QgsProcessingParameterRasterLayer(self.INPUT, self.tr("Input raster stack")),
                 "The multi-band evidence raster (any GDAL raster; every band is an input channel). "
                 "Nodata pixels are ignored.")
        self.add(QgsProcessingParameterFeatureSource(
            self.LABELS, self.tr("Labels"),
            [QgsProcessing.SourceType.TypeVectorPoint, QgsProcessing.SourceType.TypeVectorPolygon]),
            "Points (buffered) or polygons (burned) marking the positives, optionally with negatives given by "
            "the label field. Reprojected to the raster's CRS. 'Selected features only' is honoured.")
        self.add(QgsProcessingParameterField(self.LABEL_FIELD, self.tr("Label field"),
                                             parentLayerParameterName=self.LABELS, optional=True),
                 "Field holding the labels (1/0, true/false, or classes with 'Positive values'). Empty: the "
                 "field 'label' when present, else every feature is a positive.")
        self.add(QgsProcessingParameterString(self.POSITIVE_VALUES, self.tr("Positive values"), optional=True),
                 "For class fields: the values that mean positive, separated by commas (e.g. water).")
        self.add(QgsProcessingParameterFeatureSource(
            self.MASK, self.tr("Study area mask"), [QgsProcessing.SourceType.TypeVectorPolygon], optional=True),
            "Polygons of the study area: pixels outside are ignored for training, statistics and metrics.")

    def _add_training_options(self) -> None:
        self.add(QgsProcessingParameterEnum(self.ARCHITECTURE, self.tr("Architecture"), options=list(PRESET_MODELS),
                                            defaultValue=0),
                 "The network: unet_* (planar U-Net, fast, the default for projected rasters), transformer_* "
                 "(windowed attention, slower), s2unet_* / s2segformer_* (spherical, for global EPSG:4326 "
                 "rasters).")
        self.add(QgsProcessingParameterNumber(self.EPOCHS, self.tr("Epochs"), Integer, 100, minValue=0),
                 "Passes over the training tiles (0: train nothing, only validate). Early stopping may end "
                 "sooner (see Patience).")
        self.add(QgsProcessingParameterNumber(self.BATCH_SIZE, self.tr("Batch size"), Integer, 4, minValue=1),
                 "Tiles per optimisation step; lower it when memory runs out.")
        lr = QgsProcessingParameterNumber(self.LEARNING_RATE, self.tr("Learning rate"), Double, 1e-4,
                                          minValue=0.0)
        lr.setMetadata({"widget_wrapper": {"decimals": 6}})
        self.add(lr, "AdamW learning rate.")
        self.add(QgsProcessingParameterNumber(self.TILE_SIZE, self.tr("Tile size (pixels, 0 = automatic)"),
                                              Integer, 0, minValue=0),
                 "Side of the square training tiles. 0: 256, or the raster size when smaller (halved while "
                 "the raster is under three tiles, so a spatial validation split fits).")
        self.add(QgsProcessingParameterNumber(self.STRIDE, self.tr("Stride (pixels, 0 = tile size)"),
                                              Integer, 0, minValue=0),
                 "Step between training tiles; smaller than the tile size gives overlapping tiles.")
        self.add(QgsProcessingParameterNumber(self.VAL_FRACTION, self.tr("Validation fraction"), Double, 0.2,
                                              minValue=0.0, maxValue=0.9),
                 "Share of the area held out in spatially separate validation blocks.")
        self.add(QgsProcessingParameterString(self.POINT_BUFFER, self.tr("Point buffer"), defaultValue="0.5"),
                 "Radius burned around label points: pixels (0.5, 1.5px) or map units (250m, 2km).")
        self.add(QgsProcessingParameterNumber(self.SEED, self.tr("Random seed"), Integer, 0, minValue=0),
                 "The same seed repeats a CPU run exactly.")
        self.add(QgsProcessingParameterString(self.DEVICE, self.tr("Device"), defaultValue="auto"),
                 "auto (a GPU when usable, else the CPU), cpu, cuda or cuda:N.")

    def _add_advanced_options(self) -> None:
        self.add(QgsProcessingParameterEnum(self.AMP_MODE, self.tr("Mixed precision"), options=list(AMP_MODES),
                                            defaultValue=0),
                 "none, fp16 (CUDA only) or bf16 (CPU and GPU): faster, less memory, slightly less precise.",
                 advanced=True)
        self.add(QgsProcessingParameterNumber(self.MAX_GRAD_NORM, self.tr("Gradient clipping norm"), Double, 1.0,
                                              minValue=0.0), "Clips the gradient norm each step.", advanced=True)
        self.add(QgsProcessingParameterNumber(self.LABEL_SMOOTHING, self.tr("Label smoothing"), Double, 0.0,
                                              minValue=0.0, maxValue=0.49),
                 "Softens the 0/1 targets (0 = off).", advanced=True)
        self.add(QgsProcessingParameterBoolean(self.AUGMENT, self.tr("Data augmentation"), defaultValue=False),
                 "Random flips and 90-degree rotations (spherical models: longitude roll and flips).",
                 advanced=True)
        self.add(QgsProcessingParameterEnum(self.LOSS, self.tr("Loss"), options=list(LOSSES),
                                            defaultValue=LOSSES.index(DEFAULT_LOSS)),
                 "Imbalance-aware loss; the default suits rare positives.", advanced=True)
        self.add(QgsProcessingParameterNumber(self.PATIENCE, self.tr("Early stopping patience (epochs, 0 = off)"),
                                              Integer, 20, minValue=0),
                 "Stops after this many epochs without validation improvement.", advanced=True)
        self.add(QgsProcessingParameterString(self.CATEGORICAL_BANDS, self.tr("Categorical bands"), optional=True),
                 "1-based numbers of bands holding class codes (e.g. lithology), separated by commas: one-hot "
                 "encoded instead of normalised. The 64 most frequent codes get a channel each; rarer codes, and "
                 "codes unseen in training, share one 'other' channel.", advanced=True)
        self.add(QgsProcessingParameterNumber(self.ENSEMBLE, self.tr("Ensemble members"), Integer, DEFAULT_ENSEMBLE,
                                              minValue=1, maxValue=MAX_ENSEMBLE),
                 "Models trained with different seeds into the one model file; Predict averages them and can map "
                 "where they disagree (its Uncertainty output, which needs 2 or more). Training takes this many "
                 "times longer.", advanced=True)
        self.add(QgsProcessingParameterBoolean(self.RESUME, self.tr("Resume from the output model"),
                                               defaultValue=False),
                 "Continue training from the checkpoint already at the output model path.", advanced=True)

    def _add_outputs(self) -> None:
        self.add(QgsProcessingParameterFileDestination(self.OUTPUT_MODEL, self.tr("Trained model"),
                                                       fileFilter=self.tr("PyTorch checkpoint (*.pt)")),
                 "The trained model (.pt): weights, band statistics and everything prediction needs.")
        self.add(QgsProcessingParameterFolderDestination(self.OUTPUT_FOLDER, self.tr("Training outputs folder"),
                                                         defaultValue=QgsProcessing.TEMPORARY_OUTPUT,
                                                         optional=True),
                 "Figures, metrics (metrics.json, metrics.pkl), configuration, validation blocks and the log; "
                 "a temporary folder by default.")
        self.addOutput(QgsProcessingOutputNumber(self.EPOCHS_RUN, self.tr("Epochs run")))
        for output_id, _key, label in SCORE_OUTPUTS:
            self.addOutput(QgsProcessingOutputNumber(output_id, self.tr(label)))

    # ------------------------------------------------------------------ running

    def processAlgorithm(self, parameters: Dict[str, Any], context: QgsProcessingContext,  # noqa: N802
                         feedback: QgsProcessingFeedback) -> Dict[str, Any]:
        python = self.worker_python()
        architecture = PRESET_MODELS[self.parameterAsEnum(parameters, self.ARCHITECTURE, context)]
        model_path = self.parameterAsFileOutput(parameters, self.OUTPUT_MODEL, context)
        if not model_path.lower().endswith(".pt"):
            model_path += ".pt"
        args = self._option_args(parameters, context)  # checks the options before anything is written
        args += self._input_args(parameters, context, feedback)
        folder = self.output_folder(parameters, self.OUTPUT_FOLDER, context)
        Path(model_path).parent.mkdir(parents=True, exist_ok=True)
        args += ["--models", architecture, "--checkpoint_path", model_path, "--output_path", folder]
        try:
            result = self.run_core("train", args, feedback, python)
        except QgsProcessingException as exc:
            if feedback.isCanceled() and Path(model_path).is_file():
                raise QgsProcessingException(
                    self.tr("{} The last good checkpoint is kept at {} (tick 'Resume' to continue).")
                    .format(str(exc), model_path)) from None
            raise
        return self._outputs(result, architecture, model_path, folder)

    def _input_args(self, parameters: Dict[str, Any], context: QgsProcessingContext,
                    feedback: QgsProcessingFeedback) -> List[str]:
        labels = self.vector_file(parameters, self.LABELS, context, feedback)
        assert labels is not None  # required parameter
        args = ["--raster_path", self.raster_file(parameters, self.INPUT, context, feedback),
                "--shapefile_path", labels[0]]
        if labels[1]:
            args += ["--layer", labels[1]]
        fields = self.parameterAsFields(parameters, self.LABEL_FIELD, context)
        if fields and fields[0]:
            args += ["--label_column", fields[0]]
        positives = self.parameterAsString(parameters, self.POSITIVE_VALUES, context).strip()
        if positives:
            args.append("--positive_values=" + positives)
        mask = self.vector_file(parameters, self.MASK, context, feedback)
        if mask is not None:
            args += ["--mask_path", self.vector_uri(mask)]
        return args

    def _option_args(self, parameters: Dict[str, Any], context: QgsProcessingContext) -> List[str]:
        p = parameters
        args = [
            "--num_epochs", str(self.parameterAsInt(p, self.EPOCHS, context)),
            "--batch_size", str(self.parameterAsInt(p, self.BATCH_SIZE, context)),
            "--learning_rate", repr(self.parameterAsDouble(p, self.LEARNING_RATE, context)),
            "--val_fraction", repr(self.parameterAsDouble(p, self.VAL_FRACTION, context)),
            "--point_buffer=" + (self.parameterAsString(p, self.POINT_BUFFER, context).strip() or "0.5"),
            "--seed", str(self.parameterAsInt(p, self.SEED, context)),
            "--device", self.parameterAsString(p, self.DEVICE, context).strip() or "auto",
            "--amp_mode", AMP_MODES[self.parameterAsEnum(p, self.AMP_MODE, context)],
            "--max_grad_norm", repr(self.parameterAsDouble(p, self.MAX_GRAD_NORM, context)),
            "--label_smoothing_factor", repr(self.parameterAsDouble(p, self.LABEL_SMOOTHING, context)),
            "--loss", LOSSES[self.parameterAsEnum(p, self.LOSS, context)],
            "--patience", str(self.parameterAsInt(p, self.PATIENCE, context)),
            "--ensemble", str(self.parameterAsInt(p, self.ENSEMBLE, context)),
        ]
        for option, flag in ((self.TILE_SIZE, "--tile_size"), (self.STRIDE, "--stride")):
            value = self.parameterAsInt(p, option, context)
            if value > 0:
                args += [flag, str(value)]
        bands = self.split_values(self.parameterAsString(p, self.CATEGORICAL_BANDS, context))
        if bands:
            if not all(b.isdigit() and int(b) > 0 for b in bands):
                raise QgsProcessingException(self.tr(
                    "Categorical bands must be 1-based band numbers separated by commas (e.g. 3, 7); got {}")
                    .format(", ".join(bands)))
            args += ["--categorical_bands", *bands]
        if self.parameterAsBoolean(p, self.AUGMENT, context):
            args.append("--enable_data_augmentation")
        if self.parameterAsBoolean(p, self.RESUME, context):
            args.append("--resume")
        return args

    def _outputs(self, result: Dict[str, Any], architecture: str, model_path: str, folder: str) -> Dict[str, Any]:
        models = result.get("models") or {}
        entry = models.get(architecture) or (next(iter(models.values())) if models else {})
        metrics = entry.get("metrics") or {}
        outputs: Dict[str, Any] = {
            self.OUTPUT_MODEL: entry.get("checkpoint") or model_path,
            self.OUTPUT_FOLDER: folder,
            self.EPOCHS_RUN: entry.get("epochs_run"),
        }
        for output_id, key, _label in SCORE_OUTPUTS:
            value = metrics.get(key)
            outputs[output_id] = float(value) if value is not None else None
        return outputs
