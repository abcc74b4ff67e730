"""Processing algorithm "Cross-validate models": spatial folds, deep models and baselines, one honest table.

Thin on purpose: Train's inputs and options (the same parameters, read by Train's own
methods), plus the folds and the candidates; the core's ``cv`` runs in the worker; the best
candidate's out-of-fold map loads styled like a probability map.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

from qgis.core import (
    QgsProcessing,
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProcessingOutputHtml,
    QgsProcessingOutputNumber,
    QgsProcessingOutputRasterLayer,
    QgsProcessingOutputString,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFolderDestination,
)

from ..core.config import BASELINES, CVConfig
from ..core.models.catalog import PRESET_MODELS
from . import styling
from .train_segmenter import TrainSegmenterAlgorithm

#: Train's parameters that make no sense here (cv trains each fold from scratch into its own folder).
NOT_FOR_CV = ("ARCHITECTURE", "RESUME", "OVERWRITE", "OUTPUT_MODEL", "OUTPUT_FOLDER")


class CrossValidateAlgorithm(TrainSegmenterAlgorithm):
    """Runs ``python -m core cv`` in the worker; loads the best out-of-fold map."""

    MODELS = "MODELS"
    BASELINES = "BASELINES"
    FOLDS = "FOLDS"
    BLOCK_SIZE = "BLOCK_SIZE"
    BUFFER = "BUFFER"
    BACKGROUND = "BACKGROUND"
    OUTPUT_FOLDER = "OUTPUT_FOLDER"
    OUTPUT_HTML = "OUTPUT_HTML"
    BEST_MAP = "BEST_MAP"
    BEST_CANDIDATE = "BEST_CANDIDATE"
    BEST_AUC = "BEST_AUC"

    FLAGS = {
        **{k: v for k, v in TrainSegmenterAlgorithm.FLAGS.items() if v not in NOT_FOR_CV},
        "--models": MODELS, "--baselines": BASELINES, "--folds": FOLDS, "--block_size": BLOCK_SIZE,
        "--buffer": BUFFER, "--background": BACKGROUND, "--output_path": OUTPUT_FOLDER,
    }
    #: Parameters declared by CVConfig's fields (add_option): id -> field.
    CV_OPTIONS = ((FOLDS, "folds"), (BLOCK_SIZE, "block_size"), (BUFFER, "buffer"), (BACKGROUND, "background"))

    ICON = "crossvalidate.svg"
    TAGS = ("cross-validation", "validation", "skill", "baseline", "weights of evidence", "maxent",
            "random forest", "logistic regression", "gradient boosting", "compare models")

    SUMMARY = (
        "Measures how good each map is on ground its model never saw. The raster is cut into spatial folds of "
        "blocks (balanced in deposits and area, with a buffer); for each fold every candidate is trained on the "
        "other folds and predicts this one: the deep models (with Train's options) and the per-pixel baselines "
        "geologists use (weights of evidence, MaxEnt, logistic regression, random forest, gradient boosting, the "
        "best single band). Writes a ranking (prediction-rate AUC of held-out deposits with its 95 % interval, "
        "% of deposits in the top 1/5/10/20 % of area, success rate beside as fit) and, for each deep model, "
        "whether it beats, is level with or loses to the best baseline on the same held-out deposits (paired 95 % "
        "interval of the difference), cv_results.csv, an HTML "
        "summary, a plot and one out-of-fold map per candidate; the best candidate's map is loaded. Deep models "
        "need torch in the worker Python (see 'Check environment'); baselines alone do not."
    )

    def name(self) -> str:
        return "crossvalidate"

    def displayName(self) -> str:  # noqa: N802 (Qt API)
        return self.tr("Cross-validate models")

    def initAlgorithm(self, config: Optional[Dict[str, Any]] = None) -> None:  # noqa: N802 (Qt API)
        self._add_inputs()
        defaults = CVConfig.defaults()
        self.add(QgsProcessingParameterEnum(self.MODELS, self.tr("Deep models"), options=list(PRESET_MODELS),
                                            allowMultiple=True, optional=True,
                                            defaultValue=[PRESET_MODELS.index(m) for m in defaults["models"]]),
                 self.help_of(CVConfig, "models"))
        self.add(QgsProcessingParameterEnum(self.BASELINES, self.tr("Baselines"), options=list(BASELINES),
                                            allowMultiple=True, optional=True,
                                            defaultValue=[BASELINES.index(b) for b in defaults["baselines"]]),
                 self.help_of(CVConfig, "baselines"))
        self.add_option(self.FOLDS, "Folds", CVConfig, "folds")
        self._add_training_options()
        self._add_advanced_options()
        for name in NOT_FOR_CV:
            if self.parameterDefinition(name) is not None:
                self.removeParameter(name)
        self.add_option(self.BLOCK_SIZE, "Block size (pixels, 0 = automatic)", CVConfig, "block_size", advanced=True)
        self.add_option(self.BUFFER, "Buffer (pixels, -1 = automatic)", CVConfig, "buffer", advanced=True)
        self.add_option(self.BACKGROUND, "Background sample (pixels)", CVConfig, "background", advanced=True)
        self.add(QgsProcessingParameterFolderDestination(self.OUTPUT_FOLDER, self.tr("Cross-validation folder"),
                                                         defaultValue=QgsProcessing.TEMPORARY_OUTPUT),
                 "Where cv_summary.html, cv_results.csv, cv_summary.json, cv_comparison.png, cv_folds.gpkg and "
                 "the out-of-fold maps oof_<candidate>.tif are written.")
        self.addOutput(QgsProcessingOutputHtml(self.OUTPUT_HTML, self.tr("Cross-validation summary")))
        self.addOutput(QgsProcessingOutputRasterLayer(self.BEST_MAP, self.tr("Best out-of-fold map")))
        self.addOutput(QgsProcessingOutputString(self.BEST_CANDIDATE, self.tr("Best candidate")))
        self.addOutput(QgsProcessingOutputNumber(self.BEST_AUC, self.tr("Best pooled prediction-rate AUC")))

    def processAlgorithm(self, parameters: Dict[str, Any], context: QgsProcessingContext,  # noqa: N802
                         feedback: QgsProcessingFeedback) -> Dict[str, Any]:
        models = [PRESET_MODELS[i] for i in self.parameterAsEnums(parameters, self.MODELS, context)]
        baselines = [BASELINES[i] for i in self.parameterAsEnums(parameters, self.BASELINES, context)]
        python = self.worker_python(require_torch=bool(models))
        args = self._option_args(parameters, context)  # Train's options, checked before anything is written
        folder = self.output_folder(parameters, self.OUTPUT_FOLDER, context)
        args += self._input_args(parameters, context, feedback, Path(folder) / "evidence_stack.vrt")
        args += ["--models", *(models or ["none"]), "--baselines", *(baselines or ["none"])]
        args += self.option_args(parameters, context, CVConfig, self.CV_OPTIONS)
        args += ["--output_path", folder]
        result = self.run_core("cv", args, feedback, python)
        return self._cv_outputs(result, folder, context, feedback)

    def _cv_outputs(self, result: Dict[str, Any], folder: str, context: QgsProcessingContext,
                    feedback: QgsProcessingFeedback) -> Dict[str, Any]:
        best = result.get("best")
        ranking: List[Dict[str, Any]] = result.get("ranking") or []
        best_map = (result.get("oof_maps") or {}).get(best) if best else None
        for r in ranking:
            auc = r.get("prediction_rate_auc")
            feedback.pushInfo(self.tr("{}. {}: pooled prediction-rate AUC {}").format(
                r.get("rank"), r.get("candidate"), "n/a" if auc is None else f"{auc:.3f}"))
        if best_map:
            name = self.tr("Out-of-fold ({})").format(best)
            styling.write_style_sidecar(best_map)
            details = QgsProcessingContext.LayerDetails(name, context.project(), self.BEST_MAP)
            details.setPostProcessor(styling.make_styler(name))
            context.addLayerToLoadOnCompletion(best_map, details)
        auc = ranking[0].get("prediction_rate_auc") if ranking else None
        return {
            self.OUTPUT_FOLDER: folder,
            self.OUTPUT_HTML: result.get("summary_html") or str(Path(folder) / "cv_summary.html"),
            self.BEST_MAP: best_map,
            self.BEST_CANDIDATE: best,
            self.BEST_AUC: float(auc) if auc is not None else None,
        }
