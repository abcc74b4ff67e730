"""Processing algorithm "Evaluate probability map": the scores geologists use, plus an HTML summary."""
from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Dict, List, Optional

from qgis.core import (
    QgsProcessing,
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProcessingOutputHtml,
    QgsProcessingOutputNumber,
    QgsProcessingParameterBand,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterField,
    QgsProcessingParameterFile,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
)

from ..core.config import LabelOptions
from ..core.files import write_text_atomic
from .base import StackSegmenterAlgorithm

#: (output id, metrics key, label) of the numeric outputs.
SCORE_OUTPUTS = (
    ("HELDOUT_PREDICTION_RATE_AUC", "heldout_prediction_rate_auc",
     "Held-out skill: prediction-rate AUC of held-out deposits in the held-out area"),
    ("HELDOUT_TOP10", "heldout_top10", "Held-out skill: % of held-out deposits in the top 10 % of the held-out area"),
    ("HELDOUT_N_DEPOSITS", "heldout_n_deposits", "Held-out deposits scored"),
    ("ROC_AUC", "roc_auc", "ROC AUC (pixels)"),
    ("PR_AUC", "pr_auc", "PR AUC (pixels)"),
    ("SUCCESS_RATE_AUC", "success_rate_auc", "Success-rate AUC (all deposits)"),
    ("PREDICTION_RATE_AUC", "prediction_rate_auc", "Prediction-rate AUC (held-out deposits)"),
    ("TRAIN_SUCCESS_RATE_AUC", "train_success_rate_auc", "Success-rate AUC (training-area deposits)"),
    ("TOP1", "top1", "% of deposits in the top 1 % of area"),
    ("TOP5", "top5", "% of deposits in the top 5 % of area"),
    ("TOP10", "top10", "% of deposits in the top 10 % of area"),
    ("TOP20", "top20", "% of deposits in the top 20 % of area"),
    ("N_DEPOSITS", "n_deposits", "Deposits scored"),
)


class EvaluateProbabilityMapAlgorithm(StackSegmenterAlgorithm):
    """Runs the core's evaluate in the worker and summarises it as HTML."""

    PROBABILITY_MAP = "PROBABILITY_MAP"
    LABELS = "LABELS"
    LABEL_FIELD = "LABEL_FIELD"
    POSITIVE_VALUES = "POSITIVE_VALUES"
    POINT_BUFFER = "POINT_BUFFER"
    MASK = "MASK"
    MODEL = "MODEL"
    TEST_AREA = "TEST_AREA"
    BAND = "BAND"
    OUTPUT_FOLDER = "OUTPUT_FOLDER"
    OUTPUT_HTML = "OUTPUT_HTML"

    FLAGS = {
        "--probability_map": PROBABILITY_MAP, "--labels": LABELS, "--shapefile_path": LABELS,
        "--label_column": LABEL_FIELD, "--positive_values": POSITIVE_VALUES, "--point_buffer": POINT_BUFFER,
        "--mask_path": MASK, "--checkpoint": MODEL, "--test_area": TEST_AREA, "--output_dir": OUTPUT_FOLDER,
        "--band": BAND,
    }

    ICON = "evaluate.svg"
    TAGS = ("evaluate", "score", "ROC", "AUC", "success rate", "prediction rate", "validation", "deposits")

    SUMMARY = (
        "Scores a probability map against known deposits or labels: ROC AUC and PR AUC over pixels, the "
        "success-rate curve (share of deposits captured against share of area, highest probability first) and "
        "its AUC, and the % of deposits in the top 1, 5, 10 and 20 % of the area. Given the trained model, "
        "deposits in the held-out validation blocks give the prediction rate, the honest measure of skill "
        "(unless the model's final fit trained on those blocks too, Train's default for per-pixel models: then "
        "its training log holds the held-out skill and Cross-validate measures it on new ground). "
        "Writes metrics.json, CSV curves, PNG plots and an HTML summary into the output folder."
    )

    def name(self) -> str:
        return "evaluateprobabilitymap"

    def displayName(self) -> str:  # noqa: N802 (Qt API)
        return self.tr("Evaluate probability map")

    def initAlgorithm(self, config: Optional[Dict[str, Any]] = None) -> None:  # noqa: N802 (Qt API)
        self.add(QgsProcessingParameterRasterLayer(self.PROBABILITY_MAP, self.tr("Probability map")),
                 "A probability raster, e.g. from 'Predict probability map' (band 1 is scored).")
        self.add(QgsProcessingParameterFeatureSource(
            self.LABELS, self.tr("Labels (known deposits)"),
            [QgsProcessing.SourceType.TypeVectorPoint, QgsProcessing.SourceType.TypeVectorPolygon]),
            "Points or polygons of the known positives (optionally negatives via the label field).")
        self.add(QgsProcessingParameterField(self.LABEL_FIELD, self.tr("Label field"),
                                             parentLayerParameterName=self.LABELS, optional=True),
                 "As in training: 1/0, true/false or classes with 'Positive values'; empty: 'label' when "
                 "present, else every feature is a positive.")
        self.add(QgsProcessingParameterString(self.POSITIVE_VALUES, self.tr("Positive values"), optional=True),
                 "For class fields: the values that mean positive, separated by commas.")
        self.add_option(self.POINT_BUFFER, "Point buffer", LabelOptions, "point_buffer", advanced=True)
        self.add(QgsProcessingParameterFeatureSource(
            self.MASK, self.tr("Study area mask"), [QgsProcessing.SourceType.TypeVectorPolygon], optional=True),
            "Polygons: only pixels inside are scored.")
        self.add(QgsProcessingParameterFile(self.MODEL, self.tr("Trained model (for the held-out split)"),
                                            extension="pt", optional=True),
                 "The model's .pt file: splits deposits into training-area ones (success rate) and held-out "
                 "validation-block ones (prediction rate); a model refit on its validation blocks (final fit) "
                 "has none held out, which the log says.")
        self.add(QgsProcessingParameterFeatureSource(
            self.TEST_AREA, self.tr("Test area (held out)"), [QgsProcessing.SourceType.TypeVectorPolygon],
            optional=True),
            "Polygons of ground the model never saw: deposits inside are scored against the map inside them "
            "(held-out skill, reported first); used instead of the trained model's validation blocks.")
        self.add(QgsProcessingParameterBand(self.BAND, self.tr("Band to score"), None, self.PROBABILITY_MAP,
                                            optional=True),
                 "For a raster with several bands: the band that holds the probability (a map from 'Predict "
                 "probability map' has one band and needs none).", advanced=True)
        self.add(QgsProcessingParameterFolderDestination(self.OUTPUT_FOLDER, self.tr("Output folder")),
                 "Where metrics.json, the CSV curves, the PNG plots and summary.html are written.")
        self.addOutput(QgsProcessingOutputHtml(self.OUTPUT_HTML, self.tr("Evaluation summary")))
        for output_id, _key, label in SCORE_OUTPUTS:
            self.addOutput(QgsProcessingOutputNumber(output_id, self.tr(label)))

    def processAlgorithm(self, parameters: Dict[str, Any], context: QgsProcessingContext,  # noqa: N802
                         feedback: QgsProcessingFeedback) -> Dict[str, Any]:
        folder = self.output_folder(parameters, self.OUTPUT_FOLDER, context)
        python = self.worker_python()
        args = self._args(parameters, context, feedback, folder)
        result = self.run_core("evaluate", args, feedback, python)
        metrics = result.get("metrics") or {}
        page = write_summary_html(Path(folder), metrics, result.get("files") or {},
                                  self.parameterAsRasterLayer(parameters, self.PROBABILITY_MAP, context).name())
        outputs: Dict[str, Any] = {self.OUTPUT_FOLDER: folder, self.OUTPUT_HTML: str(page)}
        for output_id, key, _label in SCORE_OUTPUTS:
            value = metrics.get(key)
            outputs[output_id] = float(value) if isinstance(value, (int, float)) else None
        return outputs

    def _args(self, parameters: Dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback,
              folder: str) -> List[str]:
        p = parameters
        labels = self.vector_file(p, self.LABELS, context, feedback)
        assert labels is not None  # required parameter
        args = ["--probability_map", self.raster_file(p, self.PROBABILITY_MAP, context, feedback),
                "--labels", labels[0], "--output_dir", folder]
        args += self.option_args(p, context, LabelOptions, ((self.POINT_BUFFER, "point_buffer"),))
        if labels[1]:
            args += ["--layer", labels[1]]
        fields = self.parameterAsFields(p, self.LABEL_FIELD, context)
        if fields and fields[0]:
            args += ["--label_column", fields[0]]
        positives = self.parameterAsString(p, self.POSITIVE_VALUES, context).strip()
        if positives:
            args.append("--positive_values=" + positives)
        mask = self.vector_file(p, self.MASK, context, feedback)
        if mask is not None:
            args += ["--mask_path", self.vector_uri(mask)]
        model = self.parameterAsFile(p, self.MODEL, context)
        if model:
            args += ["--checkpoint", model]
        test_area = self.vector_file(p, self.TEST_AREA, context, feedback)
        if test_area is not None:
            args += ["--test_area", self.vector_uri(test_area)]
        band = self.parameterAsInt(p, self.BAND, context)
        if band > 0:
            args += ["--band", str(band)]
        return args


def _format(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}"
    return html.escape(str(value))


def _heldout_paragraph(metrics: Dict[str, Any]) -> str:
    """The lead: held-out skill with its interval, or a plain note that none was measured."""
    auc = metrics.get("heldout_prediction_rate_auc")
    if auc is None:
        return ("<p><b>Held-out skill not measured</b>: give the trained model (its validation blocks) or a test "
                "area; the figures below include deposits the model may have trained on (fit, not skill).</p>\n")
    lo, hi = metrics.get("heldout_prediction_rate_auc_lo"), metrics.get("heldout_prediction_rate_auc_hi")
    ci = f" (95 % interval {_format(lo)} to {_format(hi)})" if lo is not None else ""
    return (f"<p><b>Held-out skill</b>: {metrics.get('heldout_n_deposits')} deposit(s) in the "
            f"{html.escape(str(metrics.get('heldout_area')))}: prediction-rate AUC <b>{_format(auc)}</b>{ci}; the "
            f"top 10 % of that area holds {_format(metrics.get('heldout_top10'))} % of them.</p>\n")


def write_summary_html(folder: Path, metrics: Dict[str, Any], files: Dict[str, str], map_name: str) -> Path:
    """summary.html: the score table and the PNG plots (relative links, so the folder can move)."""
    rows = [f"<tr><td>{html.escape(label)}</td><td>{_format(metrics.get(key))}</td></tr>"
            for _id, key, label in SCORE_OUTPUTS if key in metrics]
    shown = {key for _id, key, _label in SCORE_OUTPUTS}
    rows += [f"<tr><td>{html.escape(k)}</td><td>{_format(v)}</td></tr>"
             for k, v in sorted(metrics.items()) if k not in shown and not isinstance(v, (dict, list))]
    images = [f'<p><img src="{html.escape(Path(p).name)}" alt="{html.escape(Path(p).stem)}" '
              f'style="max-width:100%"></p>' for key, p in sorted(files.items()) if str(p).lower().endswith(".png")]
    links = [f'<li><a href="{html.escape(Path(p).name)}">{html.escape(Path(p).name)}</a></li>'
             for key, p in sorted(files.items()) if not str(p).lower().endswith(".png")]
    page = folder / "summary.html"
    write_text_atomic(
        page,
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>Evaluation of "
        f"{html.escape(map_name)}</title></head><body>\n"
        f"<h2>Evaluation of {html.escape(map_name)}</h2>\n"
        + _heldout_paragraph(metrics) +
        "<p>ROC/PR AUC rank pixels; success-rate AUC and top-k rank deposits (0.5 = random). Only deposits "
        "the model never saw (validation blocks or a test area) measure skill; the others measure fit.</p>\n"
        "<table border='1' cellpadding='4' cellspacing='0'><tr><th>score</th><th>value</th></tr>\n"
        + "\n".join(rows) + "\n</table>\n" + "\n".join(images)
        + "\n<h3>Files</h3><ul>" + "".join(links) + "</ul>\n</body></html>\n",
    )
    return page
