"""Processing algorithm "Train segmenter": raster stack + vector labels -> a trained model (.pt)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from qgis.core import (
    QgsProcessing,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputFolder,
    QgsProcessingOutputHtml,
    QgsProcessingOutputNumber,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterField,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterString,
    QgsProcessingUtils,
)

from ..core.config import LabelOptions, TrainConfig
from ..core.models.catalog import PRESET_MODELS, parse_model_name
from . import evidence, styling
from .base import StackSegmenterAlgorithm
from .runs import RunFolder, unset_destination
from .worker import WorkerCancelled

DEFAULTS = TrainConfig.defaults()
"""The core's defaults: the dialog, the command line and the API agree."""

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
    EPOCH_CHOICE = "EPOCH_CHOICE"
    WEIGHT_DECAY = "WEIGHT_DECAY"
    BAND_PENALTY = "BAND_PENALTY"
    PU_PRIOR = "PU_PRIOR"
    BAND_SCALING = "BAND_SCALING"
    FINAL_FIT = "FINAL_FIT"
    CATEGORICAL_BANDS = "CATEGORICAL_BANDS"
    RESUME = "RESUME"
    ENSEMBLE = "ENSEMBLE"
    OVERWRITE = "OVERWRITE"
    OUTPUT_MODEL = "OUTPUT_MODEL"
    OUTPUT_FOLDER = "OUTPUT_FOLDER"
    EPOCHS_RUN = "EPOCHS_RUN"
    RUN_FOLDER = "RUN_FOLDER"
    OUTPUT_HTML = "OUTPUT_HTML"

    FLAGS = {
        "--raster_path": INPUT, "--shapefile_path": LABELS, "--labels": LABELS, "--label_column": LABEL_FIELD,
        "--positive_values": POSITIVE_VALUES, "--mask_path": MASK, "--models": ARCHITECTURE,
        "--num_epochs": EPOCHS, "--batch_size": BATCH_SIZE, "--learning_rate": LEARNING_RATE,
        "--tile_size": TILE_SIZE, "--stride": STRIDE, "--val_fraction": VAL_FRACTION,
        "--point_buffer": POINT_BUFFER, "--seed": SEED, "--device": DEVICE, "--amp_mode": AMP_MODE,
        "--max_grad_norm": MAX_GRAD_NORM, "--label_smoothing_factor": LABEL_SMOOTHING, "--loss": LOSS,
        "--patience": PATIENCE, "--epoch_choice": EPOCH_CHOICE, "--categorical_bands": CATEGORICAL_BANDS,
        "--resume": RESUME,
        "--weight_decay": WEIGHT_DECAY, "--band_penalty": BAND_PENALTY, "--pu_prior": PU_PRIOR,
        "--overwrite": OVERWRITE, "--checkpoint_path": OUTPUT_MODEL, "--output_path": OUTPUT_FOLDER,
        "--ensemble": ENSEMBLE, "--band_scaling": BAND_SCALING, "--final_fit": FINAL_FIT,
    }
    #: Parameters declared by TrainConfig's fields (add_option): id -> field.
    OPTIONS = (
        (EPOCHS, "num_epochs"), (BATCH_SIZE, "batch_size"), (LEARNING_RATE, "learning_rate"), (TILE_SIZE, "tile_size"),
        (STRIDE, "stride"), (VAL_FRACTION, "val_fraction"), (SEED, "seed"), (DEVICE, "device"),
        (AMP_MODE, "amp_mode"), (MAX_GRAD_NORM, "max_grad_norm"), (LABEL_SMOOTHING, "label_smoothing"),
        (AUGMENT, "augment"), (LOSS, "loss"), (PU_PRIOR, "pu_prior"), (WEIGHT_DECAY, "weight_decay"),
        (BAND_PENALTY, "band_penalty"), (PATIENCE, "patience"), (EPOCH_CHOICE, "epoch_choice"),
        (BAND_SCALING, "band_scaling"), (FINAL_FIT, "final_fit"), (ENSEMBLE, "ensemble"), (RESUME, "resume"),
        (OVERWRITE, "overwrite"),
    )

    ICON = "train.svg"
    TAGS = ("train", "model", "neural network", "unet", "transformer", "pytorch", "labels", "deposits")

    SUMMARY = (
        "Trains a segmentation network (one architecture per run) on evidence rasters with point or polygon "
        "labels, e.g. known mineral deposits, landslides or water bodies. The evidence is one multi-band raster "
        "or several rasters on any grids (aligned to the first one's grid, bands named after their layers). "
        "Validation uses spatially separate blocks. Each run keeps its model (.pt, which 'Predict probability "
        "map' uses), figures, metrics and log in a new folder beside the saved project (else in "
        "~/StackSegmenter/runs) unless you choose one; QGIS then loads the validation blocks. The work runs in "
        "a separate Python process that needs torch (see 'Check environment')."
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
        self.add_evidence_parameters("The evidence rasters (geophysics, geochemistry, distances, lithology codes; "
                                     "every band is an input channel). Nodata pixels are ignored.")
        self.add(QgsProcessingParameterFeatureSource(
            self.LABELS, self.tr("Labels"),
            [QgsProcessing.SourceType.TypeVectorPoint, QgsProcessing.SourceType.TypeVectorPolygon]),
            "Points (buffered) or polygons (burned) marking the positives, optionally with negatives given by "
            "the label field. Reprojected to the raster's CRS. 'Selected features only' is honoured.")
        self.add(QgsProcessingParameterField(self.LABEL_FIELD, self.tr("Label field"),
                                             parentLayerParameterName=self.LABELS, optional=True),
                 self.help_of(LabelOptions, "label_column"))
        self.add(QgsProcessingParameterString(self.POSITIVE_VALUES, self.tr("Positive values"), optional=True),
                 self.help_of(LabelOptions, "positive_values"))
        self.add(QgsProcessingParameterFeatureSource(
            self.MASK, self.tr("Study area mask"), [QgsProcessing.SourceType.TypeVectorPolygon], optional=True),
            "Polygons of the study area: pixels outside are ignored for training, statistics and metrics.")

    def _add_training_options(self) -> None:
        self.add(QgsProcessingParameterEnum(self.ARCHITECTURE, self.tr("Architecture"), options=list(PRESET_MODELS),
                                            defaultValue=PRESET_MODELS.index(DEFAULTS["models"][0])),
                 self.help_of(TrainConfig, "models"))
        self.add_option(self.EPOCHS, "Epochs", TrainConfig, "num_epochs")
        self.add_option(self.BATCH_SIZE, "Batch size", TrainConfig, "batch_size")
        self.add_option(self.LEARNING_RATE, "Learning rate", TrainConfig, "learning_rate").setMetadata(
            {"widget_wrapper": {"decimals": 6}})
        self.add_option(self.TILE_SIZE, "Tile size (pixels, 0 = automatic)", TrainConfig, "tile_size")
        self.add_option(self.STRIDE, "Stride (pixels, 0 = tile size)", TrainConfig, "stride")
        self.add_option(self.VAL_FRACTION, "Validation fraction", TrainConfig, "val_fraction")
        self.add_option(self.POINT_BUFFER, "Point buffer", LabelOptions, "point_buffer")
        self.add_option(self.SEED, "Random seed", TrainConfig, "seed")
        self.add_option(self.DEVICE, "Device", TrainConfig, "device")

    def _add_advanced_options(self) -> None:
        for name, label, field_name in (
                (self.AMP_MODE, "Mixed precision", "amp_mode"),
                (self.MAX_GRAD_NORM, "Gradient clipping norm", "max_grad_norm"),
                (self.LABEL_SMOOTHING, "Label smoothing", "label_smoothing"),
                (self.AUGMENT, "Data augmentation", "augment"),
                (self.LOSS, "Loss", "loss")):
            self.add_option(name, label, TrainConfig, field_name, advanced=True)
        self.add_option(self.PU_PRIOR, "PU prior (share of the area, 0 = labelled share)", TrainConfig, "pu_prior",
                        advanced=True).setMetadata({"widget_wrapper": {"decimals": 4}})
        self.add_option(self.WEIGHT_DECAY, "Weight decay", TrainConfig, "weight_decay", advanced=True)
        self.add_option(self.BAND_PENALTY, "Band penalty (0 = off)", TrainConfig, "band_penalty", advanced=True)
        self.add_option(self.PATIENCE, "Early stopping patience (epochs, 0 = off)", TrainConfig, "patience",
                        advanced=True)
        self.add_option(self.EPOCH_CHOICE, "How long to train", TrainConfig, "epoch_choice", advanced=True)
        self.add(QgsProcessingParameterString(self.CATEGORICAL_BANDS, self.tr("Categorical bands"), optional=True),
                 self.help_of(TrainConfig, "categorical_bands", "Separated by commas; resampled by nearest neighbour "
                              "when layers are aligned."), advanced=True)
        self.add_option(self.BAND_SCALING, "Numeric band scaling", TrainConfig, "band_scaling", advanced=True)
        self.add_option(self.FINAL_FIT, "Final fit of the saved model", TrainConfig, "final_fit", advanced=True)
        self.add_option(self.ENSEMBLE, "Ensemble members", TrainConfig, "ensemble", advanced=True)
        self.add_option(self.RESUME, "Resume from the output model", TrainConfig, "resume", advanced=True,
                        extra_help="Give that model's path as 'Trained model'.")
        self.add_option(self.OVERWRITE, "Overwrite existing model", TrainConfig, "overwrite", advanced=True)

    def _add_outputs(self) -> None:
        self.add(QgsProcessingParameterFileDestination(
            self.OUTPUT_MODEL, self.tr("Trained model (empty = kept in the run folder)"),
            fileFilter=self.tr("PyTorch checkpoint (*.pt)"), optional=True, createByDefault=False),
            "The trained model (.pt): weights, band statistics and everything prediction needs. Empty: "
            "<run folder>/<run folder name>.pt.")
        self.add(QgsProcessingParameterFolderDestination(
            self.OUTPUT_FOLDER, self.tr("Training outputs folder (empty = a new folder per run)"), optional=True,
            createByDefault=False),
            "Figures, metrics, the training report, validation blocks, the evidence stack and the log. Empty: a "
            "new folder per run (model name and time) in 'stack_segmenter_runs' beside the saved project, "
            "else in ~/StackSegmenter/runs; never a temporary folder.")
        self.addOutput(QgsProcessingOutputFolder(self.RUN_FOLDER, self.tr("Run folder")))
        self.addOutput(QgsProcessingOutputHtml(self.OUTPUT_HTML, self.tr("Training report")))
        self.addOutput(QgsProcessingOutputNumber(self.EPOCHS_RUN, self.tr("Epochs run")))
        for output_id, _key, label in SCORE_OUTPUTS:
            self.addOutput(QgsProcessingOutputNumber(output_id, self.tr(label)))

    # ------------------------------------------------------------------ running

    def processAlgorithm(self, parameters: Dict[str, Any], context: QgsProcessingContext,  # noqa: N802
                         feedback: QgsProcessingFeedback) -> Dict[str, Any]:
        architecture = PRESET_MODELS[self.parameterAsEnum(parameters, self.ARCHITECTURE, context)]
        args = self._option_args(parameters, context)  # checks the options before anything is written
        self._check_destinations(parameters, context)  # before the worker starts and any folder exists
        python = self.worker_python()
        plan, categorical = self._evidence(parameters, context, feedback)
        args += self._label_args(parameters, context, feedback)
        run = self._run_folder(parameters, context, architecture)
        epochs: List[int] = []
        try:
            args += self._evidence_args(plan, categorical, run.folder / "evidence_stack.vrt", feedback)
            feedback.setProgress(0.5)  # inputs ready: the bar moves before the worker has started
            args += ["--models", architecture, "--checkpoint_path", str(run.model), "--output_path", str(run.folder)]
            result = self.run_core("train", args, feedback, python,
                                   on_metric=lambda m: epochs.append(int(m.get("epoch") or 0)))
        except QgsProcessingException as exc:
            raise self._ended_early(exc, parameters, run, epochs, feedback) from None
        return self._outputs(result, architecture, run, context)

    def _input_args(self, parameters: Dict[str, Any], context: QgsProcessingContext,
                    feedback: QgsProcessingFeedback, vrt: Optional[Path] = None) -> List[str]:
        """The evidence (stacked into ``vrt``, a temporary file by default), its categorical bands and the
        labels, as the core's flags: what Train passes, for tools built on Train (Cross-validate)."""
        plan, categorical = self._evidence(parameters, context, feedback)
        vrt = vrt or Path(QgsProcessingUtils.generateTempFilename("evidence_stack.vrt"))
        return (self._evidence_args(plan, categorical, vrt, feedback, by_name=False)
                + self._label_args(parameters, context, feedback))

    def _evidence(self, parameters: Dict[str, Any], context: QgsProcessingContext,
                  feedback: QgsProcessingFeedback) -> Tuple[evidence.StackPlan, List[int]]:
        """The evidence layers' stack, worked out, and the categorical bands (checked: nothing written yet)."""
        plan = self.evidence_plan(parameters, context, feedback)
        text = self.parameterAsString(parameters, self.CATEGORICAL_BANDS, context)
        return plan, evidence.resolve_bands(text, plan.names, self.tr("Categorical bands"))

    @staticmethod
    def _evidence_args(plan: evidence.StackPlan, categorical: List[int], vrt: Path,
                       feedback: QgsProcessingFeedback, by_name: bool = True) -> List[str]:
        """--raster_path (the stack, written now) and --categorical_bands: by name (config.json and the
        report then say which), by number where a name could read as a number or a flag, or when the
        core command takes numbers only (``by_name=False``)."""
        stack = plan.write(vrt, categorical, feedback)
        names = stack.band_names
        values = [names[b - 1] if by_name and not (names[b - 1].isdigit() or names[b - 1].startswith("-"))
                  else str(b) for b in categorical]
        return ["--raster_path", stack.path] + (["--categorical_bands", *values] if values else [])

    def _check_destinations(self, parameters: Dict[str, Any], context: QgsProcessingContext) -> None:
        """A model path or folder that cannot be written is refused here, naming the parameter."""
        if not unset_destination(parameters.get(self.OUTPUT_FOLDER)):
            self.check_output(self.parameterAsFileOutput(parameters, self.OUTPUT_FOLDER, context), self.OUTPUT_FOLDER,
                              folder=True)
        if not unset_destination(parameters.get(self.OUTPUT_MODEL)):
            self.check_output(self.parameterAsFileOutput(parameters, self.OUTPUT_MODEL, context), self.OUTPUT_MODEL)

    def _run_folder(self, parameters: Dict[str, Any], context: QgsProcessingContext, architecture: str) -> RunFolder:
        """The run's folder and model path: as given, else a new lasting folder (never a temporary one)."""
        folder = model = None
        if not unset_destination(parameters.get(self.OUTPUT_FOLDER)):
            folder = Path(self.parameterAsFileOutput(parameters, self.OUTPUT_FOLDER, context))
        if not unset_destination(parameters.get(self.OUTPUT_MODEL)):
            model = Path(self.parameterAsFileOutput(parameters, self.OUTPUT_MODEL, context))
            if model.suffix.lower() != ".pt":
                model = model.with_name(model.name + ".pt")
        if self.parameterAsBoolean(parameters, self.RESUME, context) and model is None:
            raise QgsProcessingException(self.tr(
                '"{}" continues the model at "{}": give that model\'s .pt file there').format(
                self.label(self.RESUME), self.label(self.OUTPUT_MODEL)))
        run = RunFolder.make(folder, model, context.project(), parse_model_name(architecture).arch)
        run.model.parent.mkdir(parents=True, exist_ok=True)
        return run

    def _ended_early(self, exc: QgsProcessingException, parameters: Dict[str, Any], run: RunFolder,
                     epochs: List[int], feedback: QgsProcessingFeedback) -> QgsProcessingException:
        """The error to show after a cancel or a failure: what was kept, and how to continue."""
        discarded = run.discard()
        if not isinstance(exc, WorkerCancelled):
            return exc
        if not run.model.is_file():
            where = self.tr("its folder {} was removed").format(run.folder) if discarded else str(run.folder)
            return QgsProcessingException(self.tr(
                "Cancelled. No model was kept: no epoch had finished ({}).").format(where))
        done = self.tr("after epoch {}").format(max(epochs)) if epochs else self.tr("unchanged")
        return QgsProcessingException(self.tr(
            'Cancelled. Kept: the model {} at {}, and the training outputs in {}. To continue, run "{}" again with '
            '"{}" = {} and, under Advanced parameters, "{}" ticked.').format(
            done, run.model, run.folder, self.displayName(), self.label(self.OUTPUT_MODEL), run.model,
            self.label(self.RESUME)))

    def _label_args(self, parameters: Dict[str, Any], context: QgsProcessingContext,
                    feedback: QgsProcessingFeedback) -> List[str]:
        labels = self.vector_file(parameters, self.LABELS, context, feedback)
        assert labels is not None  # required parameter
        args = ["--shapefile_path", labels[0]]
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
        return (self.option_args(parameters, context, TrainConfig, self.OPTIONS)
                + self.option_args(parameters, context, LabelOptions, ((self.POINT_BUFFER, "point_buffer"),)))

    def _outputs(self, result: Dict[str, Any], architecture: str, run: RunFolder,
                 context: QgsProcessingContext) -> Dict[str, Any]:
        models = result.get("models") or {}
        entry = models.get(architecture) or (next(iter(models.values())) if models else {})
        metrics = entry.get("metrics") or {}
        model = entry.get("checkpoint") or str(run.model)
        outputs: Dict[str, Any] = {
            self.OUTPUT_MODEL: model,
            self.OUTPUT_FOLDER: str(run.folder),
            self.RUN_FOLDER: str(run.folder),
            self.EPOCHS_RUN: entry.get("epochs_run"),
            self.OUTPUT_HTML: entry.get("report") if Path(entry.get("report") or "").is_file() else None,
        }
        for output_id, key, _label in SCORE_OUTPUTS:
            value = metrics.get(key)
            outputs[output_id] = float(value) if value is not None else None
        blocks = Path(entry.get("output_dir") or run.folder) / "validation_blocks.gpkg"
        if blocks.is_file():
            styling.load_validation_blocks(context, str(blocks), styling.model_label(model))
        return outputs
