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
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterField,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
    QgsProcessingUtils,
)

from ..core.config import AMP_MODES, LOSSES, MAX_ENSEMBLE, TrainConfig
from ..core.models.catalog import PRESET_MODELS, parse_model_name
from . import evidence, styling
from .base import StackSegmenterAlgorithm
from .runs import RunFolder, unset_destination
from .worker import WorkerCancelled

Integer = QgsProcessingParameterNumber.Type.Integer
Double = QgsProcessingParameterNumber.Type.Double
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
    WEIGHT_DECAY = "WEIGHT_DECAY"
    BAND_PENALTY = "BAND_PENALTY"
    PU_PRIOR = "PU_PRIOR"
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
        "--patience": PATIENCE, "--categorical_bands": CATEGORICAL_BANDS, "--resume": RESUME,
        "--weight_decay": WEIGHT_DECAY, "--band_penalty": BAND_PENALTY, "--pu_prior": PU_PRIOR,
        "--overwrite": OVERWRITE, "--checkpoint_path": OUTPUT_MODEL, "--output_path": OUTPUT_FOLDER,
        "--ensemble": ENSEMBLE,
    }

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
                 "Field holding the labels (1/0, true/false, or classes with 'Positive values'). Empty: the "
                 "field 'label' when present, else every feature is a positive.")
        self.add(QgsProcessingParameterString(self.POSITIVE_VALUES, self.tr("Positive values"), optional=True),
                 "For class fields: the values that mean positive, separated by commas (e.g. water).")
        self.add(QgsProcessingParameterFeatureSource(
            self.MASK, self.tr("Study area mask"), [QgsProcessing.SourceType.TypeVectorPolygon], optional=True),
            "Polygons of the study area: pixels outside are ignored for training, statistics and metrics.")

    def _add_training_options(self) -> None:
        self.add(QgsProcessingParameterEnum(self.ARCHITECTURE, self.tr("Architecture"), options=list(PRESET_MODELS),
                                            defaultValue=PRESET_MODELS.index(DEFAULTS["models"][0])),
                 "The network: pixel_* (per-pixel network with band selection, made for tens of point labels), "
                 "cnn_* (small CNN that sees a few pixels around), unet_* (planar U-Net: spatial patterns, needs "
                 "many labels), transformer_* (windowed attention, slower), s2unet_* / s2segformer_* (spherical, "
                 "for global EPSG:4326 rasters).")
        self.add(QgsProcessingParameterNumber(self.EPOCHS, self.tr("Epochs"), Integer, DEFAULTS["num_epochs"],
                                              minValue=0),
                 "Passes over the training tiles (0: train nothing, only validate). Early stopping may end "
                 "sooner (see Patience).")
        self.add(QgsProcessingParameterNumber(self.BATCH_SIZE, self.tr("Batch size"), Integer, DEFAULTS["batch_size"],
                                              minValue=1),
                 "Tiles per optimisation step; lower it when memory runs out.")
        lr = QgsProcessingParameterNumber(self.LEARNING_RATE, self.tr("Learning rate"), Double,
                                          DEFAULTS["learning_rate"], minValue=0.0)
        lr.setMetadata({"widget_wrapper": {"decimals": 6}})
        self.add(lr, "AdamW learning rate.")
        self.add(QgsProcessingParameterNumber(self.TILE_SIZE, self.tr("Tile size (pixels, 0 = automatic)"),
                                              Integer, 0, minValue=0),
                 "Side of the square training tiles. 0: 256, or the raster size when smaller (halved while "
                 "the raster is under three tiles, so a spatial validation split fits).")
        self.add(QgsProcessingParameterNumber(self.STRIDE, self.tr("Stride (pixels, 0 = tile size)"),
                                              Integer, 0, minValue=0),
                 "Step between training tiles; smaller than the tile size gives overlapping tiles.")
        self.add(QgsProcessingParameterNumber(self.VAL_FRACTION, self.tr("Validation fraction"), Double,
                                              DEFAULTS["val_fraction"],
                                              minValue=0.0, maxValue=0.9),
                 "Share of the area held out in spatially separate validation blocks.")
        self.add(QgsProcessingParameterString(self.POINT_BUFFER, self.tr("Point buffer"),
                                              defaultValue=DEFAULTS["labels"].point_buffer),
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
        self.add(QgsProcessingParameterBoolean(self.AUGMENT, self.tr("Data augmentation"),
                                               defaultValue=DEFAULTS["augment"]),
                 "Band noise and band dropout; for models that see neighbours also random flips and 90-degree "
                 "rotations (spherical models: longitude roll and flips).", advanced=True)
        self.add(QgsProcessingParameterEnum(self.LOSS, self.tr("Loss"), options=list(LOSSES),
                                            defaultValue=LOSSES.index(DEFAULTS["loss"])),
                 "Imbalance-aware loss; pu (positive-unlabelled) treats unlabelled ground as unknown, not as "
                 "barren, which suits known deposits as points.", advanced=True)
        prior = QgsProcessingParameterNumber(self.PU_PRIOR, self.tr("PU prior (share of the area, 0 = labelled share)"),
                                             Double, DEFAULTS["pu_prior"], minValue=0.0, maxValue=0.49)
        prior.setMetadata({"widget_wrapper": {"decimals": 4}})
        self.add(prior, "pu loss: the share of the unlabelled area assumed to hold positives; 0 weighs presences "
                        "against the background as MaxEnt does.", advanced=True)
        self.add(QgsProcessingParameterNumber(self.WEIGHT_DECAY, self.tr("Weight decay"), Double,
                                              DEFAULTS["weight_decay"], minValue=0.0),
                 "AdamW weight decay: shrinks every weight a little each step (regularisation).", advanced=True)
        self.add(QgsProcessingParameterNumber(self.BAND_PENALTY, self.tr("Band penalty (0 = off)"), Double,
                                              DEFAULTS["band_penalty"], minValue=0.0),
                 "Group-lasso penalty on the weights that read each band (pixel_* and cnn_* models): the model "
                 "learns to lean on few bands, as a sparse logistic regression does. The log lists the band "
                 "weights.", advanced=True)
        self.add(QgsProcessingParameterNumber(self.PATIENCE, self.tr("Early stopping patience (epochs, 0 = off)"),
                                              Integer, DEFAULTS["patience"], minValue=0),
                 "Stops after this many epochs without validation improvement.", advanced=True)
        self.add(QgsProcessingParameterString(self.CATEGORICAL_BANDS, self.tr("Categorical bands"), optional=True),
                 "Bands holding class codes (e.g. lithology): band names (a single-band layer's name, or a band "
                 "description) or 1-based numbers, separated by commas. One-hot encoded instead of normalised (the "
                 "64 most frequent codes get a channel each; rarer codes, and codes unseen in training, share one "
                 "'other' channel), and resampled by nearest neighbour when layers are aligned.", advanced=True)
        self.add(QgsProcessingParameterNumber(self.ENSEMBLE, self.tr("Ensemble members"), Integer,
                                              DEFAULTS["ensemble"],
                                              minValue=1, maxValue=MAX_ENSEMBLE),
                 "Models trained with different seeds into the one model file; Predict averages them and can map "
                 "where they disagree (its Uncertainty output, which needs 2 or more). Training takes this many "
                 "times longer.", advanced=True)
        self.add(QgsProcessingParameterBoolean(self.RESUME, self.tr("Resume from the output model"),
                                               defaultValue=False),
                 "Continue training from the model already at 'Trained model' (give its path).", advanced=True)
        self.add(QgsProcessingParameterBoolean(self.OVERWRITE, self.tr("Overwrite existing model"),
                                               defaultValue=False),
                 "Replace a model already at 'Trained model'. Off: an existing model is never replaced (the run "
                 "is refused unless 'Resume from the output model' is ticked).", advanced=True)

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
        p = parameters
        args = [
            "--num_epochs", str(self.parameterAsInt(p, self.EPOCHS, context)),
            "--batch_size", str(self.parameterAsInt(p, self.BATCH_SIZE, context)),
            "--learning_rate", repr(self.parameterAsDouble(p, self.LEARNING_RATE, context)),
            "--val_fraction", repr(self.parameterAsDouble(p, self.VAL_FRACTION, context)),
            "--point_buffer=" + (self.parameterAsString(p, self.POINT_BUFFER, context).strip()
                                  or DEFAULTS["labels"].point_buffer),
            "--seed", str(self.parameterAsInt(p, self.SEED, context)),
            "--device", self.parameterAsString(p, self.DEVICE, context).strip() or "auto",
            "--amp_mode", AMP_MODES[self.parameterAsEnum(p, self.AMP_MODE, context)],
            "--max_grad_norm", repr(self.parameterAsDouble(p, self.MAX_GRAD_NORM, context)),
            "--label_smoothing_factor", repr(self.parameterAsDouble(p, self.LABEL_SMOOTHING, context)),
            "--loss", LOSSES[self.parameterAsEnum(p, self.LOSS, context)],
            "--patience", str(self.parameterAsInt(p, self.PATIENCE, context)),
            "--ensemble", str(self.parameterAsInt(p, self.ENSEMBLE, context)),
            "--pu_prior", repr(self.parameterAsDouble(p, self.PU_PRIOR, context)),
            "--weight_decay", repr(self.parameterAsDouble(p, self.WEIGHT_DECAY, context)),
            "--band_penalty", repr(self.parameterAsDouble(p, self.BAND_PENALTY, context)),
        ]
        for option, flag in ((self.TILE_SIZE, "--tile_size"), (self.STRIDE, "--stride")):
            value = self.parameterAsInt(p, option, context)
            if value > 0:
                args += [flag, str(value)]
        if self.parameterAsBoolean(p, self.AUGMENT, context):
            args.append("--enable_data_augmentation")
        if self.parameterAsBoolean(p, self.RESUME, context):
            args.append("--resume")
        if self.parameterAsBoolean(p, self.OVERWRITE, context):
            args.append("--overwrite")
        return args

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
