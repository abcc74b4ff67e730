"""Writes train_predict_evaluate.model3, the graphical-modeler chain shipped with the plugin.

The .model3 is what users open in the Model Designer; this script is how it is made, so a
change is a reviewable diff here rather than hand-edited XML. The designer (3.22) calls a
child parameter without a value "mandatory" even when the tool has a default, so every
child parameter that no model input feeds gets the tool's current default as a fixed
value: when a tool's default changes, run this again (a test says so). Run from the plugin
folder with a Python that has PyQGIS and Processing:

    QT_QPA_PLATFORM=offscreen python processing_models/make_train_predict_evaluate.py
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Dict, List, Tuple

HERE = Path(__file__).resolve().parent
sys.path.insert(0, "/usr/share/qgis/python/plugins")

from qgis.core import (  # noqa: E402 - after the path set-up
    QgsApplication,
    QgsProcessing,
    QgsProcessingModelAlgorithm,
    QgsProcessingModelChildAlgorithm,
    QgsProcessingModelChildParameterSource as Source,
    QgsProcessingModelOutput,
    QgsProcessingModelParameter,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterField,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
)
from qgis.PyQt.QtCore import QPointF  # noqa: E402

sys.path.insert(0, str(HERE.parent))
from core.config import TrainConfig  # noqa: E402 - torch-free
from core.models.catalog import PRESET_MODELS as PRESETS  # noqa: E402 - torch-free

DEFAULTS = TrainConfig.defaults()

NAME = "Train, predict and evaluate"
GROUP = "Workflows"
DESCRIPTION = (
    "Trains a segmenter on the evidence raster(s) with known deposits or mapped targets, predicts the "
    "probability map of the same area with it, and scores the map against the labels: the deposits in the "
    "held-out validation blocks give the prediction rate (skill); the others measure fit. The three Stack "
    "Segmenter tools in a row; open each tool for every option."
)
#: The outputs as the designer shows them (and as `child:name` parameters under qgis_process).
TRAINED_MODEL = "Trained model"
PROBABILITY_MAP = "Probability map"
EVALUATION_FOLDER = "Evaluation folder"


def _inputs() -> List[Tuple[QgsProcessingParameterDefinition, str]]:
    """The model's inputs, in the order the dialog shows them, each with its help."""
    point_or_polygon = [QgsProcessing.SourceType.TypeVectorPoint, QgsProcessing.SourceType.TypeVectorPolygon]
    integer = QgsProcessingParameterNumber.Type.Integer
    return [
        (QgsProcessingParameterMultipleLayers("INPUT", "Evidence layers", QgsProcessing.SourceType.TypeRaster),
         "One multi-band raster or several rasters on any grids (aligned to the first one's grid, bands named "
         "after their layers); every band is an input channel, nodata pixels are ignored."),
        (QgsProcessingParameterFeatureSource("LABELS", "Labels (known deposits or targets)", point_or_polygon),
         "Points (buffered) or polygons (burned) of the positives, optionally negatives via the label field."),
        (QgsProcessingParameterField("LABEL_FIELD", "Label field", parentLayerParameterName="LABELS",
                                     optional=True),
         "Field holding 1/0 or true/false; empty: the field 'label' when present, else every feature is a "
         "positive."),
        (QgsProcessingParameterFeatureSource("MASK", "Study area mask", [QgsProcessing.SourceType.TypeVectorPolygon],
                                             optional=True),
         "Polygons of the study area: pixels outside are ignored for training and scoring, and nodata in the map."),
        (QgsProcessingParameterString("CATEGORICAL_BANDS", "Categorical bands", optional=True),
         "Bands holding class codes (e.g. lithology): band names (a single-band layer's name) or 1-based numbers, "
         "separated by commas."),
        (QgsProcessingParameterEnum("ARCHITECTURE", "Architecture", options=list(PRESETS),
                                    defaultValue=PRESETS.index(DEFAULTS["models"][0])),
         "The network; pixel_* (the default) and cnn_* suit tens of point labels, unet_* dense labels on "
         "projected rasters, s2* models whole-globe EPSG:4326 rasters."),
        (QgsProcessingParameterNumber("EPOCHS", "Epochs", integer, DEFAULTS["num_epochs"], minValue=0),
         "Passes over the training tiles; early stopping may end sooner."),
        (QgsProcessingParameterNumber("TILE_SIZE", "Tile size (pixels, 0 = automatic)", integer, 0, minValue=0),
         "Side of the square training tiles; 0 picks one that leaves room for spatial validation blocks."),
    ]


def _add_input(model: QgsProcessingModelAlgorithm, param: QgsProcessingParameterDefinition, help_text: str,
               y: float) -> None:
    param.setHelp(help_text)
    component = QgsProcessingModelParameter(param.name())
    component.setDescription(param.description())
    component.setPosition(QPointF(120, y))
    model.addModelParameter(param, component)


def _child(alg_id: str, child_id: str, description: str, y: float,
           sources: Dict[str, Source]) -> QgsProcessingModelChildAlgorithm:
    """A child step; parameters no input feeds get the tool's default as a fixed value."""
    alg = QgsApplication.processingRegistry().algorithmById(alg_id)
    if alg is None:
        raise RuntimeError(f"{alg_id} is not registered: load the plugin first (register_plugin())")
    child = QgsProcessingModelChildAlgorithm(alg_id)
    child.setChildId(child_id)
    child.setDescription(description)
    child.setPosition(QPointF(420, y))
    for param in alg.parameterDefinitions():
        name = param.name()
        if name in sources:
            child.addParameterSources(name, [sources[name]])
        elif not param.isDestination() and param.defaultValue() is not None:
            child.addParameterSources(name, [Source.fromStaticValue(param.defaultValue())])
    return child


def _output(child: QgsProcessingModelChildAlgorithm, name: str, child_output: str, y: float) -> None:
    out = QgsProcessingModelOutput(name, name)
    out.setChildId(child.childId())
    out.setChildOutputName(child_output)
    out.setPosition(QPointF(720, y))
    outputs = dict(child.modelOutputs())
    outputs[name] = out
    child.setModelOutputs(outputs)


def build() -> QgsProcessingModelAlgorithm:
    """Train -> Predict -> Evaluate on one evidence stack and one label layer."""
    model = QgsProcessingModelAlgorithm(NAME, GROUP, GROUP.lower())
    inputs = _inputs()
    help_content = {"ALG_DESC": DESCRIPTION, "ALG_CREATOR": "Stack Segmenter developers"}
    for i, (param, help_text) in enumerate(inputs):
        _add_input(model, param, help_text, 60 + 110 * i)
        help_content[param.name()] = help_text
    model.setParameterOrder([param.name() for param, _help in inputs])

    given = {name: Source.fromModelParameter(name) for name in ("LABELS", "LABEL_FIELD", "MASK")}
    train = _child("stacksegmenter:trainsegmenter", "train", "Train segmenter", 200, {
        "INPUT": Source.fromModelParameter("INPUT"), **given,
        "ARCHITECTURE": Source.fromModelParameter("ARCHITECTURE"), "EPOCHS": Source.fromModelParameter("EPOCHS"),
        "TILE_SIZE": Source.fromModelParameter("TILE_SIZE"),
        "CATEGORICAL_BANDS": Source.fromModelParameter("CATEGORICAL_BANDS"),
    })
    _output(train, TRAINED_MODEL, "OUTPUT_MODEL", 200)
    predict = _child("stacksegmenter:predictprobabilitymap", "predict", "Predict probability map", 420, {
        "INPUT": Source.fromModelParameter("INPUT"), "MODEL": Source.fromChildOutput("train", "OUTPUT_MODEL"),
        "MASK": given["MASK"],
    })
    _output(predict, PROBABILITY_MAP, "OUTPUT", 420)
    evaluate = _child("stacksegmenter:evaluateprobabilitymap", "evaluate", "Evaluate probability map", 640, {
        "PROBABILITY_MAP": Source.fromChildOutput("predict", "OUTPUT"), **given,
        "MODEL": Source.fromChildOutput("train", "OUTPUT_MODEL"),
    })
    _output(evaluate, EVALUATION_FOLDER, "OUTPUT_FOLDER", 640)
    for child in (train, predict, evaluate):
        model.addChildAlgorithm(child)
    help_content.update({
        f"train:{TRAINED_MODEL}": "The trained model (.pt); empty: kept in the training run's folder.",
        f"predict:{PROBABILITY_MAP}": "The probability GeoTIFF (0 to 1), loaded styled.",
        f"evaluate:{EVALUATION_FOLDER}": "metrics.json, curves, plots and summary.html.",
    })
    model.setHelpContent(help_content)
    model.updateDestinationParameters()
    return model


def register_plugin() -> object:
    """Loads this plugin as `stack_segmenter`, so the model stores its tools' output definitions.

    Returns the plugin object: keep it referenced, the provider lives only as long as it does.
    """
    import tempfile

    plugins = Path(tempfile.mkdtemp(prefix="stack_segmenter_plugins_"))
    (plugins / "stack_segmenter").symlink_to(HERE.parent, target_is_directory=True)
    sys.path.insert(0, str(plugins))
    import stack_segmenter

    plugin = stack_segmenter.classFactory(None)
    plugin.initProcessing()
    return plugin


if __name__ == "__main__":
    app = QgsApplication([], False)
    app.initQgis()
    plugin = register_plugin()
    target = HERE / "train_predict_evaluate.model3"
    ok = build().toFile(str(target))
    print(f"{'wrote' if ok else 'FAILED to write'} {target}")
    app.exitQgis()
