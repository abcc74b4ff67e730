"""Processing algorithm "Set up worker environment": the worker's Python, made from inside QGIS."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

from qgis.core import (
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProcessingOutputBoolean,
    QgsProcessingOutputFolder,
    QgsProcessingOutputString,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
)

from . import worker, worker_setup
from .base import StackSegmenterAlgorithm


class SetupWorkerEnvironmentAlgorithm(StackSegmenterAlgorithm):
    """Runs worker_setup.set_up, then points the setting "Worker Python" at the result."""

    TORCH_BUILD = "TORCH_BUILD"
    ENVIRONMENT_FOLDER = "ENVIRONMENT_FOLDER"
    PYTHON = "PYTHON"
    FOLDER = "FOLDER"
    TORCH_VERSION = "TORCH_VERSION"
    CHECKED_ONLY = "CHECKED_ONLY"

    BUILD_LABELS = ("CPU (works on every computer)", "CUDA (NVIDIA GPU; needs the NVIDIA driver)")
    ICON = "setup.svg"
    TAGS = ("setup", "install", "environment", "venv", "pip", "torch", "python", "GPU", "CUDA")

    SUMMARY = (
        "Makes the Python environment the Stack Segmenter tools run their models in, without a terminal: a "
        "virtual environment in your QGIS profile folder, made from QGIS's own Python so it sees the packages QGIS "
        "has (rasterio, geopandas, numpy matching QGIS's GDAL), plus the pinned torch and torch-harmonics from the "
        "plugin's constraints.txt (and anything else the worker lacks). pip's messages appear in the log; Cancel "
        "stops it and removes the half-made environment. When the worker's own check passes, the setting 'Worker "
        "Python' is pointed at it. Run again on a ready environment, it only checks it. The CPU build of torch "
        "downloads about 200 MB (about 1 GB installed); the CUDA build several GB."
    )

    def name(self) -> str:
        return "setupworker"

    def displayName(self) -> str:  # noqa: N802 (Qt API)
        return self.tr("Set up worker environment")

    def group(self) -> str:
        return self.tr("Utilities")

    def groupId(self) -> str:  # noqa: N802 (Qt API)
        return "utilities"

    def initAlgorithm(self, config: Optional[Dict[str, Any]] = None) -> None:  # noqa: N802 (Qt API)
        self.add(QgsProcessingParameterEnum(self.TORCH_BUILD, self.tr("torch build"),
                                            options=[self.tr(label) for label in self.BUILD_LABELS], defaultValue=0),
                 "CPU runs everywhere. CUDA uses an NVIDIA GPU: it needs the NVIDIA driver installed and downloads "
                 "several GB.")
        self.add(QgsProcessingParameterFile(self.ENVIRONMENT_FOLDER, self.tr("Environment folder"),
                                            behavior=QgsProcessingParameterFile.Behavior.Folder, optional=True),
                 "Where the environment goes (a new or empty folder, or one this tool made before). Empty: "
                 "stack_segmenter/worker_env in your QGIS profile folder.", advanced=True)
        self.addOutput(QgsProcessingOutputString(self.PYTHON, self.tr("Worker Python")))
        self.addOutput(QgsProcessingOutputFolder(self.FOLDER, self.tr("Environment folder")))
        self.addOutput(QgsProcessingOutputString(self.TORCH_VERSION, self.tr("torch version")))
        self.addOutput(QgsProcessingOutputBoolean(self.CHECKED_ONLY, self.tr("Was already set up (only checked)")))

    def processAlgorithm(self, parameters: Dict[str, Any], context: QgsProcessingContext,  # noqa: N802
                         feedback: QgsProcessingFeedback) -> Dict[str, Any]:
        build = worker_setup.BUILDS[self.parameterAsEnum(parameters, self.TORCH_BUILD, context)]
        chosen = self.parameterAsFile(parameters, self.ENVIRONMENT_FOLDER, context)
        folder = Path(chosen) if chosen else worker.setup_env_dir()
        result = worker_setup.set_up(folder, build, feedback)
        worker.set_worker_python(result.python)
        feedback.pushInfo(self.tr("The setting 'Worker Python' is now {}").format(result.python))
        return {
            self.PYTHON: result.python,
            self.FOLDER: str(result.folder),
            self.TORCH_VERSION: str(result.report.get("packages", {}).get("torch") or ""),
            self.CHECKED_ONLY: result.checked_only,
        }
