"""The Processing provider: the explicit list of tools, the icon, the "Worker Python" setting and
the shipped graphical-modeler model (processing_models/*.model3)."""
from __future__ import annotations

from pathlib import Path
from typing import List

from qgis.core import QgsProcessingModelAlgorithm, QgsProcessingProvider
from qgis.PyQt.QtCore import QCoreApplication
from qgis.PyQt.QtGui import QIcon

from .algorithms.base import COMMON_TAGS, WORKER_PYTHON_SETTING, help_url
from .algorithms.build_evidence_stack import BuildEvidenceStackAlgorithm
from .algorithms.check_environment import CheckEnvironmentAlgorithm
from .algorithms.cross_validate import CrossValidateAlgorithm
from .algorithms.evaluate_probability_map import EvaluateProbabilityMapAlgorithm
from .algorithms.predict_probability_map import PredictProbabilityMapAlgorithm
from .algorithms.setup_worker_environment import SetupWorkerEnvironmentAlgorithm
from .algorithms.train_segmenter import TrainSegmenterAlgorithm

PLUGIN_DIR = Path(__file__).resolve().parent
ICON_PATH = PLUGIN_DIR / "icons" / "stack_segmenter.svg"
MODELS_DIR = PLUGIN_DIR / "processing_models"

ALGORITHMS = (
    TrainSegmenterAlgorithm,
    PredictProbabilityMapAlgorithm,
    EvaluateProbabilityMapAlgorithm,
    BuildEvidenceStackAlgorithm,
    CrossValidateAlgorithm,
    CheckEnvironmentAlgorithm,
    SetupWorkerEnvironmentAlgorithm,
)


def _tr(text: str) -> str:
    return QCoreApplication.translate("StackSegmenter", text)


class ShippedModel(QgsProcessingModelAlgorithm):
    """A graphical-modeler model shipped in processing_models/.

    The model's own name is the readable one the Model Designer shows ("Train, predict and
    evaluate"); its id stays a stable slug of the file name (train_predict_evaluate.model3 ->
    ``stacksegmenter:trainpredictevaluate``), so scripts that call it keep working.
    """

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self.loaded = self.fromFile(str(path))

    def name(self) -> str:
        return self.path.stem.replace("_", "").lower()

    def displayName(self) -> str:  # noqa: N802 (Qt API)
        return super().name()

    def createInstance(self) -> "ShippedModel":  # noqa: N802 (Qt API)
        return ShippedModel(self.path)

    def helpUrl(self) -> str:  # noqa: N802 (Qt API)
        return help_url()

    def tags(self) -> List[str]:
        return [_tr(tag) for tag in COMMON_TAGS + ("workflow", "model")]


class StackSegmenterProvider(QgsProcessingProvider):
    """Provider ``stacksegmenter``: train, predict, evaluate, the environment tools, and the shipped model."""

    def id(self) -> str:
        return "stacksegmenter"

    def name(self) -> str:
        return "Stack Segmenter"

    def longName(self) -> str:  # noqa: N802 (Qt API)
        return _tr("Stack Segmenter: deep-learning segmentation of raster stacks")

    def icon(self) -> QIcon:
        return QIcon(str(ICON_PATH))

    def svgIconPath(self) -> str:  # noqa: N802 (Qt API)
        return str(ICON_PATH)

    def supportedOutputRasterLayerExtensions(self) -> List[str]:  # noqa: N802 (Qt API)
        """The worker writes GeoTIFF only."""
        return ["tif"]

    def load(self) -> bool:
        """Registers the "Worker Python" setting (Processing > Options > Providers), then the tools."""
        self._add_settings()
        self.refreshAlgorithms()
        return True

    def unload(self) -> None:
        try:
            from processing.core.ProcessingConfig import ProcessingConfig
        except ImportError:
            return
        if WORKER_PYTHON_SETTING in ProcessingConfig.settings:
            ProcessingConfig.removeSetting(WORKER_PYTHON_SETTING)

    def _add_settings(self) -> None:
        try:
            from processing.core.ProcessingConfig import ProcessingConfig, Setting
        except ImportError:  # outside QGIS's Processing framework: the variable and the default still work
            return
        ProcessingConfig.settingIcons[self.name()] = self.icon()
        ProcessingConfig.addSetting(Setting(
            self.name(), WORKER_PYTHON_SETTING,
            _tr("Worker Python (a python executable with torch; 'Set up worker environment' sets it; empty = the "
                "environment QGIS runs in, else the one that tool made)"),
            "", valuetype=Setting.FILE))
        ProcessingConfig.readSettings()

    def loadAlgorithms(self) -> None:  # noqa: N802 (Qt API)
        for algorithm in ALGORITHMS:
            self.addAlgorithm(algorithm())
        for path in sorted(MODELS_DIR.glob("*.model3")):
            model = ShippedModel(path)
            if model.loaded:
                self.addAlgorithm(model)
