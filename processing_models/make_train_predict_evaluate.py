"""Writes train_predict_evaluate.model3, the graphical-modeler chain shipped with the plugin.

The .model3 is what users open in the modeler; this script is how it is made, so a change
is a reviewable diff here rather than hand-edited XML. Run from the plugin folder with a
Python that has PyQGIS and Processing:

    QT_QPA_PLATFORM=offscreen python processing_models/make_train_predict_evaluate.py
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Dict

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
    QgsProcessingParameterEnum,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterField,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
)
from qgis.PyQt.QtCore import QPointF  # noqa: E402

sys.path.insert(0, str(HERE.parent))
from core.models.catalog import PRESET_MODELS as PRESETS  # noqa: E402 - torch-free


def _add_input(model: QgsProcessingModelAlgorithm, param, x: float) -> None:
    component = QgsProcessingModelParameter(param.name())
    component.setPosition(QPointF(x, 60))
    model.addModelParameter(param, component)


def _child(alg_id: str, child_id: str, description: str, y: float,
           sources: Dict[str, Source]) -> QgsProcessingModelChildAlgorithm:
    child = QgsProcessingModelChildAlgorithm(alg_id)
    child.setChildId(child_id)
    child.setDescription(description)
    child.setPosition(QPointF(400, y))
    for name, source in sources.items():
        child.addParameterSources(name, [source])
    return child


def _output(child: QgsProcessingModelChildAlgorithm, name: str, description: str, child_output: str, y: float) -> None:
    out = QgsProcessingModelOutput(name, description)
    out.setChildId(child.childId())
    out.setChildOutputName(child_output)
    out.setPosition(QPointF(650, y))
    outputs = dict(child.modelOutputs())
    outputs[name] = out
    child.setModelOutputs(outputs)


def build() -> QgsProcessingModelAlgorithm:
    """Train -> Predict -> Evaluate on one raster stack and one label layer."""
    model = QgsProcessingModelAlgorithm("Train, predict and evaluate", "Workflows")
    model.setName("trainpredictevaluate")
    model.setHelpContent({
        "ALG_DESC": "Trains a segmenter on a raster stack with point or polygon labels, predicts the probability "
                    "map of the same raster with it, and scores the map against the labels (the held-out "
                    "validation blocks give the prediction rate). The three Stack Segmenter tools in a row.",
    })
    point_or_polygon = [QgsProcessing.SourceType.TypeVectorPoint, QgsProcessing.SourceType.TypeVectorPolygon]
    _add_input(model, QgsProcessingParameterRasterLayer("INPUT", "Input raster stack"), 60)
    _add_input(model, QgsProcessingParameterFeatureSource("LABELS", "Labels", point_or_polygon), 220)
    _add_input(model, QgsProcessingParameterField("LABEL_FIELD", "Label field", parentLayerParameterName="LABELS",
                                                  optional=True), 380)
    _add_input(model, QgsProcessingParameterFeatureSource(
        "MASK", "Study area mask", [QgsProcessing.SourceType.TypeVectorPolygon], optional=True), 540)
    _add_input(model, QgsProcessingParameterEnum("ARCHITECTURE", "Architecture", options=list(PRESETS),
                                                 defaultValue=0), 700)
    _add_input(model, QgsProcessingParameterNumber("EPOCHS", "Epochs", QgsProcessingParameterNumber.Type.Integer,
                                                   100, minValue=0), 860)
    _add_input(model, QgsProcessingParameterNumber(
        "TILE_SIZE", "Tile size (pixels, 0 = automatic)", QgsProcessingParameterNumber.Type.Integer, 0,
        minValue=0), 1020)

    train = _child("stacksegmenter:trainsegmenter", "train", "Train segmenter", 200, {
        "INPUT": Source.fromModelParameter("INPUT"), "LABELS": Source.fromModelParameter("LABELS"),
        "LABEL_FIELD": Source.fromModelParameter("LABEL_FIELD"), "MASK": Source.fromModelParameter("MASK"),
        "ARCHITECTURE": Source.fromModelParameter("ARCHITECTURE"), "EPOCHS": Source.fromModelParameter("EPOCHS"),
        "TILE_SIZE": Source.fromModelParameter("TILE_SIZE"),
    })
    _output(train, "MODEL_FILE", "Trained model", "OUTPUT_MODEL", 200)
    predict = _child("stacksegmenter:predictprobabilitymap", "predict", "Predict probability map", 360, {
        "INPUT": Source.fromModelParameter("INPUT"), "MODEL": Source.fromChildOutput("train", "OUTPUT_MODEL"),
        "MASK": Source.fromModelParameter("MASK"),
    })
    _output(predict, "PROBABILITY_MAP", "Probability map", "OUTPUT", 360)
    evaluate = _child("stacksegmenter:evaluateprobabilitymap", "evaluate", "Evaluate probability map", 520, {
        "PROBABILITY_MAP": Source.fromChildOutput("predict", "OUTPUT"),
        "LABELS": Source.fromModelParameter("LABELS"), "LABEL_FIELD": Source.fromModelParameter("LABEL_FIELD"),
        "MASK": Source.fromModelParameter("MASK"), "MODEL": Source.fromChildOutput("train", "OUTPUT_MODEL"),
    })
    _output(evaluate, "EVALUATION_FOLDER", "Evaluation folder", "OUTPUT_FOLDER", 520)
    for child in (train, predict, evaluate):
        model.addChildAlgorithm(child)
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
