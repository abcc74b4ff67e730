"""Processing algorithm "Check environment": which Python runs the worker, why, and what it lacks."""
from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Dict, List, Optional

from qgis.core import (
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProcessingOutputBoolean,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterFileDestination,
)

from . import worker, worker_setup
from .base import StackSegmenterAlgorithm, configured_worker_python


class CheckEnvironmentAlgorithm(StackSegmenterAlgorithm):
    """Runs the core's check-env (which works without torch) in the worker Python."""

    OUTPUT_HTML = "OUTPUT_HTML"
    PYTHON = "PYTHON"
    TORCH_VERSION = "TORCH_VERSION"
    TORCH_HARMONICS_VERSION = "TORCH_HARMONICS_VERSION"
    CUDA_AVAILABLE = "CUDA_AVAILABLE"
    PROBLEMS = "PROBLEMS"
    CHOSEN_BY = "CHOSEN_BY"
    TORCH_BUILD = "TORCH_BUILD"
    MISSING = "MISSING"
    INSTALL_COMMAND = "INSTALL_COMMAND"

    ICON = "check.svg"
    TAGS = ("environment", "install", "torch", "python", "GPU", "CUDA")

    SUMMARY = (
        "Tells which Python runs the Stack Segmenter worker and why (the setting 'Worker Python', else the variable "
        "STACK_SEGMENTER_PYTHON, else the environment QGIS's own Python runs in, else the one 'Set up worker "
        "environment' made), the versions of every package the worker needs there, whether torch is a CPU or CUDA "
        "build and whether a GPU is usable, and, when something is missing, the one command that installs it all "
        "on this platform (or run 'Set up worker environment')."
    )

    def name(self) -> str:
        return "checkenvironment"

    def displayName(self) -> str:  # noqa: N802 (Qt API)
        return self.tr("Check environment")

    def group(self) -> str:
        return self.tr("Utilities")

    def groupId(self) -> str:  # noqa: N802 (Qt API)
        return "utilities"

    def initAlgorithm(self, config: Optional[Dict[str, Any]] = None) -> None:  # noqa: N802 (Qt API)
        self.add(QgsProcessingParameterFileDestination(self.OUTPUT_HTML, self.tr("Report"),
                                                       fileFilter=self.tr("HTML files (*.html)"), optional=True,
                                                       createByDefault=True),
                 "An HTML report of the check (a temporary file by default).")
        self.addOutput(QgsProcessingOutputString(self.PYTHON, self.tr("Worker Python")))
        self.addOutput(QgsProcessingOutputString(self.TORCH_VERSION, self.tr("torch version")))
        self.addOutput(QgsProcessingOutputString(self.TORCH_HARMONICS_VERSION, self.tr("torch-harmonics version")))
        self.addOutput(QgsProcessingOutputBoolean(self.CUDA_AVAILABLE, self.tr("GPU usable")))
        self.addOutput(QgsProcessingOutputNumber(self.PROBLEMS, self.tr("Problems found")))
        self.addOutput(QgsProcessingOutputString(self.CHOSEN_BY, self.tr("Why this Python")))
        self.addOutput(QgsProcessingOutputString(self.TORCH_BUILD, self.tr("torch build (CPU, CUDA x)")))
        self.addOutput(QgsProcessingOutputString(self.MISSING, self.tr("Missing packages")))
        self.addOutput(QgsProcessingOutputString(self.INSTALL_COMMAND, self.tr("Command that installs them")))

    def processAlgorithm(self, parameters: Dict[str, Any], context: QgsProcessingContext,  # noqa: N802
                         feedback: QgsProcessingFeedback) -> Dict[str, Any]:
        python, source = worker.choose_python(configured_worker_python())
        feedback.pushInfo(self.tr("The worker Python was chosen by {}").format(source))
        report = self.run_core("check-env", [], feedback, python)
        report["chosen_by"] = source
        packages: Dict[str, Optional[str]] = report.get("packages") or {}
        problems: List[str] = list(report.get("problems") or [])
        command, _where = worker_setup.manual_fix(python, report)
        fix = worker_setup.fix_text(python, report)
        feedback.pushInfo(self.tr("torch build: {}; GPU usable: {}").format(
            report.get("torch_build") or "no torch", ", ".join(report.get("gpus") or []) or "no"))
        for line in problems:
            feedback.pushWarning(line)
        if fix:
            feedback.pushWarning(fix)
        elif not problems:
            feedback.pushInfo(self.tr("Everything the worker needs is installed."))
        page = self.parameterAsFileOutput(parameters, self.OUTPUT_HTML, context)
        if page:
            write_report_html(Path(page), python, report, problems, fix)
        return {
            self.OUTPUT_HTML: page or None,
            self.PYTHON: str(report.get("python") or python),
            self.TORCH_VERSION: packages.get("torch") or "",
            self.TORCH_HARMONICS_VERSION: packages.get("torch_harmonics") or "",
            self.CUDA_AVAILABLE: bool(report.get("cuda_available")),
            self.PROBLEMS: len(problems),
            self.CHOSEN_BY: source,
            self.TORCH_BUILD: str(report.get("torch_build") or ""),
            self.MISSING: ", ".join(report.get("missing") or []),
            self.INSTALL_COMMAND: command,
        }


def write_report_html(path: Path, python: str, report: Dict[str, Any], problems: List[str], fix: str) -> None:
    """A short HTML page for the results viewer."""
    packages = report.get("packages") or {}
    rows = "".join(f"<tr><td>{html.escape(name)}</td><td>{html.escape(version or 'MISSING')}</td></tr>"
                   for name, version in packages.items())
    gpus = ", ".join(report.get("gpus") or []) or "none usable"
    build = report.get("torch_build") or "no torch"
    body = (f"<h2>Stack Segmenter environment</h2><p>Worker Python: <code>{html.escape(python)}</code> "
            f"(Python {html.escape(str(report.get('python_version', '?')))}), chosen by "
            f"{html.escape(str(report.get('chosen_by', '?')))}</p>"
            f"<table border='1' cellpadding='4' cellspacing='0'><tr><th>package</th><th>version</th></tr>{rows}"
            f"</table><p>torch build: {html.escape(build)}; GPU: {html.escape(gpus)}</p>")
    if problems:
        body += "<h3>Problems</h3><ul>" + "".join(f"<li>{html.escape(p)}</li>" for p in problems) + "</ul>"
    if fix:
        body += f"<pre>{html.escape(fix)}</pre>"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'></head><body>{body}</body></html>\n",
                    encoding="utf-8")
