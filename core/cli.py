"""Command line of the core: ``python -m core train|predict|evaluate|make-demo-data|...``.

The flags of the original ``train_raster.py`` / ``predict_raster.py`` keep working. People
get tqdm bars and plain lines; ``--events jsonl`` makes stdout carry one JSON object per
line (progress, log, metric, result, error) for a program that drives it (the QGIS tools).
Every option is validated (config dataclasses) before any data is read. Torch is imported
only by the job that needs it, so ``--help``, ``list-models`` and ``check-env`` work
without it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import traceback
from importlib import metadata
from typing import Any, Callable, Dict, List, Optional, Sequence, TextIO

from .config import AMP_MODES, LOSSES, CVConfig, EvaluateConfig, LabelOptions, PredictConfig, TrainConfig
from .errors import Cancelled, ConfigError, CoreError, ResourceError
from .events import Callbacks
from .models.catalog import DEFAULT_MODELS, list_models


class _ArgumentParser(argparse.ArgumentParser):
    """Bad arguments are bad input: one clear line and exit code 1 (not argparse's 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(1, f"{self.prog}: error: {message}\n")


# ----------------------------------------------------------------------------- parsers


def _add_events(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--events",
        choices=("human", "jsonl"),
        default="human",
        help="'human' (default): progress bars and plain lines; 'jsonl': one JSON event per line on stdout",
    )


def _add_label_options(p: argparse.ArgumentParser, labels_flags: Sequence[str]) -> None:
    p.add_argument(*labels_flags, dest="labels_path", required=True,
                   help="vector labels: any OGR file (shapefile, GeoPackage, GeoJSON) of points or polygons")
    p.add_argument("--layer", default=None, help="layer name inside a multi-layer source such as a GeoPackage")
    p.add_argument("--label_column", default=None,
                   help="column holding the labels (default 'label'; when absent and not named here, "
                        "every feature is a positive)")
    p.add_argument("--positive_values", nargs="+", default=None, metavar="VALUE",
                   help="values of the label column that mean positive, for string/class columns (e.g. water); "
                        "commas also separate values")
    p.add_argument("--point_buffer", default="0.5",
                   help="radius burned around points: pixels (0.5, 1.5px) or map units (250m, 2km); default 0.5 px")
    p.add_argument("--mask_path", default=None,
                   help="study-area polygons: pixels outside are ignored (training, statistics, metrics)")


def _pair_or_none(values: Optional[List[int]], flag: str) -> Optional[List[int]]:
    if values is None:
        return None
    if len(values) not in (1, 2):
        raise ConfigError(f"{flag} takes one or two integers (height width), got {len(values)}")
    return values * 2 if len(values) == 1 else values


def _add_train(sub: Any) -> argparse.ArgumentParser:
    d = TrainConfig.defaults()
    p = sub.add_parser("train", help="train segmentation models on a raster stack and vector labels",
                       description="Train one or more segmentation models (each in turn) on a raster stack with "
                                   "vector labels. Writes <output_path>/<model>/checkpoint.pt, figures/, "
                                   "output_data/metrics.pkl, metrics.json, config.json, validation_blocks.gpkg "
                                   "and train.log.")
    p.add_argument("--raster_path", required=True, help="the evidence raster stack (any GDAL raster)")
    _add_label_options(p, ("--shapefile_path", "--labels"))
    p.add_argument("--tile_size", type=int, nargs="+", default=None, metavar="N",
                   help="tile height and width (one value = square); default 256 x 256 or the raster size when "
                        "smaller; spherical models on a global raster take the whole globe")
    p.add_argument("--stride", type=int, nargs="+", default=None, metavar="N",
                   help="step between training tiles (height width); default = the tile size")
    p.add_argument("--models", nargs="+", default=list(d["models"]), metavar="NAME",
                   help="models to train in turn (see `list-models`); default: " + " ".join(d["models"]))
    p.add_argument("--num_epochs", type=int, default=d["num_epochs"],
                   help=f"epochs (0: train nothing, only validate; default {d['num_epochs']})")
    p.add_argument("--batch_size", type=int, default=d["batch_size"],
                   help=f"tiles per batch (default {d['batch_size']})")
    p.add_argument("--learning_rate", type=float, default=d["learning_rate"],
                   help=f"AdamW learning rate (default {d['learning_rate']:g})")
    p.add_argument("--weight_decay", type=float, default=d["weight_decay"],
                   help=f"AdamW (decoupled) weight decay (default {d['weight_decay']:g})")
    p.add_argument("--band_penalty", type=float, default=d["band_penalty"],
                   help="group-lasso penalty on the weights that read each band, so the model leans on few bands "
                        f"(models with a band layer: pixel_*, cnn_*; 0 = off; default {d['band_penalty']:g})")
    p.add_argument("--max_grad_norm", type=float, default=1.0, help="gradient clipping norm (default 1.0)")
    p.add_argument("--label_smoothing_factor", type=float, default=0.0, help="label smoothing in [0, 0.5)")
    p.add_argument("--amp_mode", choices=AMP_MODES, default="none",
                   help="mixed precision: none, bf16 (CPU and GPU) or fp16 (CUDA only)")
    p.add_argument("--enable_data_augmentation", action="store_true",
                   help="flips and 90-degree rotations (planar); longitude roll and flips (spherical)")
    p.add_argument("--enable_ddp", action="store_true",
                   help="distributed data parallel; start with torchrun --nproc_per_node=N (gloo on CPU, nccl on GPU)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the last checkpoint (model, optimiser, scheduler, epoch, RNG state)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a model already at the checkpoint path (without it, or --resume, an existing model "
                        "is never replaced)")
    p.add_argument("--output_path", default="checkpoints_raster", help="output folder (default checkpoints_raster)")
    p.add_argument("--checkpoint_path", default=None,
                   help="write the checkpoint to this file instead of <output_path>/<model>/checkpoint.pt "
                        "(one model only)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed repeats a CPU run exactly")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--val_fraction", type=float, default=0.2,
                   help="share of the area held out in spatial validation blocks (default 0.2)")
    p.add_argument("--loss", choices=LOSSES, default=d["loss"],
                   help=f"imbalance-aware loss (default {d['loss']}); pu: positive-unlabelled, for point labels")
    p.add_argument("--pu_prior", type=float, default=d["pu_prior"],
                   help="pu loss: share of the unlabelled area assumed to be positive (0 = the labelled share, "
                        f"i.e. presence-background weighting; default {d['pu_prior']:g})")
    p.add_argument("--patience", type=int, default=d["patience"],
                   help=f"stop after this many epochs without validation improvement (0: never; default "
                        f"{d['patience']})")
    p.add_argument("--num_workers", type=int, default=0, help="data loader worker processes (default 0)")
    p.add_argument("--ensemble", type=int, default=d["ensemble"], metavar="N",
                   help="train N members (seeds seed..seed+N-1) into one checkpoint; predict averages them and can "
                        f"map their spread (--uncertainty_path); default {d['ensemble']}")
    p.add_argument("--categorical_bands", nargs="+", default=[], metavar="BAND",
                   help="bands holding class codes (e.g. lithology), by name (the band description) or 1-based "
                        "number: one-hot encoded, not normalised; the 64 most frequent codes get a channel each, "
                        "rarer and unseen ones share 'other'")
    _add_events(p)
    return p


#: Train flags that make no sense per fold (cv trains from scratch, one process, its own folders).
_NOT_FOR_CV = ("help", "events", "models", "output_path", "checkpoint_path", "resume", "overwrite", "enable_ddp")


def _add_cv(sub: Any, train_parser: argparse.ArgumentParser) -> None:
    from .config import BASELINES

    p = sub.add_parser("cv", help="spatial cross-validation of models and built-in baselines on the same folds",
                       description="Cuts the raster into --folds spatial folds balanced in deposits and area; for "
                                   "each fold trains every candidate (registry models with Train's options, and "
                                   "the per-pixel baselines) outside the fold and its buffer and predicts the "
                                   "fold. Writes cv_results.csv (a row per fold x candidate), cv_summary.json, "
                                   "cv_folds.gpkg and oof_<candidate>.tif (out-of-fold maps) into --output_path.")
    for action in train_parser._actions:  # Train's inputs and options, so cv takes what train takes
        if action.dest not in _NOT_FOR_CV:
            p._add_action(action)
    p.set_defaults(resume=False, overwrite=False, enable_ddp=False, checkpoint_path=None)
    p.add_argument("--models", nargs="*", default=[DEFAULT_MODELS[0]], metavar="NAME",
                   help=f"registry models to cross-validate (default {DEFAULT_MODELS[0]}; 'none' for baselines only)")
    p.add_argument("--baselines", nargs="*", default=list(BASELINES), metavar="NAME",
                   help="built-in per-pixel baselines (default all: " + " ".join(BASELINES) + "; 'none' for none)")
    p.add_argument("--folds", type=int, default=5, help="number of spatial folds (default 5)")
    p.add_argument("--block_size", type=int, default=None, help="block side in pixels (default automatic)")
    p.add_argument("--buffer", type=int, default=None,
                   help="pixels between a fold's test blocks and its training data (default 1/8 of the block side)")
    p.add_argument("--background", type=int, default=20000,
                   help="background pixels sampled per fold for the baselines (default 20000)")
    p.add_argument("--bootstrap", type=int, default=1000,
                   help="bootstrap resamples of the deposits for the pooled 95 %% intervals (default 1000)")
    p.add_argument("--output_path", default="cv_output", help="output folder (default cv_output)")
    _add_events(p)


def _add_predict(sub: Any) -> None:
    p = sub.add_parser("predict", help="turn a trained model into a probability map GeoTIFF",
                       description="Predict the positive-class probability of every pixel with sliding windows; "
                                   "writes a float32 GeoTIFF on the raster's grid (nodata where the input is "
                                   "nodata or outside --mask_path).")
    p.add_argument("--checkpoint", required=True, help="the .pt file written by training")
    p.add_argument("--raster_path", required=True, help="the raster stack to predict (same bands as in training)")
    p.add_argument("--output_path", required=True, help="the probability GeoTIFF to write")
    p.add_argument("--model_name", default=None, help="optional; read from the checkpoint (must agree if given)")
    p.add_argument("--in_channels", type=int, default=None, help="optional; read from the checkpoint")
    p.add_argument("--num_classes", type=int, default=None, help="optional; read from the checkpoint")
    p.add_argument("--spherical", action="store_true",
                   help="global EPSG:4326 raster: run the whole globe through a spherical model at once")
    p.add_argument("--tile_size", type=int, nargs="+", default=None, metavar="N",
                   help="window height and width; default: the tile the model was trained with")
    p.add_argument("--overlap", type=float, default=0.25,
                   help="fraction of a window shared with each neighbour, 0 to 0.5 (default 0.25); windows "
                        "overlap more when the model needs the context for seamless blending")
    p.add_argument("--batch_size", type=int, default=4, help="windows per batch (default 4)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--amp_mode", choices=AMP_MODES, default="none", help="none, bf16 or fp16 (CUDA only)")
    p.add_argument("--mask_path", default=None, help="study-area polygons; outside is written as nodata")
    p.add_argument("--uncertainty_path", default=None,
                   help="also write the per-pixel standard deviation across the members of an ensemble model "
                        "to this GeoTIFF (0 where they agree); needs a model trained with --ensemble 2 or more")
    _add_events(p)


def _add_evaluate(sub: Any) -> None:
    p = sub.add_parser("evaluate", help="score a probability map against known deposits / labels",
                       description="ROC AUC, PR AUC, success-rate curve and its AUC, % of deposits in the top "
                                   "1/5/10/20 % of area; with --checkpoint also the held-out prediction rate. "
                                   "Writes metrics.json, CSV curves and PNG plots into --output_dir.")
    p.add_argument("--probability_map", required=True, help="the probability GeoTIFF to score")
    _add_label_options(p, ("--labels", "--shapefile_path"))
    p.add_argument("--checkpoint", default=None,
                   help="the model's checkpoint: splits deposits into training and held-out validation blocks")
    p.add_argument("--test_area", default=None,
                   help="polygons of ground the model never saw: deposits inside are scored as held out (skill) "
                        "against the map inside them (instead of the checkpoint's validation blocks)")
    p.add_argument("--output_dir", required=True, help="folder for metrics.json, CSV and PNG (created)")
    p.add_argument("--band", type=int, default=None,
                   help="band to score when the raster has several (1-based); a single-band map needs none")
    _add_events(p)


def _add_demo(sub: Any) -> None:
    p = sub.add_parser("make-demo-data", help="write the built-in synthetic demo dataset",
                       description="A seeded synthetic evidence stack, deposits sampled from a known probability "
                                   "surface (truth.tif), for demos and tests.")
    p.add_argument("--output_dir", default="demo_data", help="folder to write into (default demo_data)")
    p.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    p.add_argument("--width", type=int, default=None, help="columns (default: the generator's)")
    p.add_argument("--height", type=int, default=None, help="rows (default: the generator's)")
    p.add_argument("--bands", type=int, default=None, help="band count (default: the generator's, 99)")
    p.add_argument("--n_deposits", type=int, default=None, help="deposits to sample (default: the generator's)")
    _add_events(p)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line (subcommands)."""
    parser = _ArgumentParser(prog="python -m core", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_ArgumentParser)
    sub.required = True
    _add_cv(sub, _add_train(sub))
    _add_predict(sub)
    _add_evaluate(sub)
    _add_demo(sub)
    p = sub.add_parser("model-info", help="what a trained model needs: band names, categorical bands, tile size",
                       description="Prints what a checkpoint was trained on (band names, categorical bands, tile "
                                   "size, epochs, grid) without predicting anything.")
    p.add_argument("--checkpoint", required=True, help="the .pt file written by training")
    _add_events(p)
    p = sub.add_parser("list-models", help="list the model presets")
    _add_events(p)
    p = sub.add_parser("check-env", help="report Python, package versions and GPUs (works without torch)")
    _add_events(p)
    return parser


# ----------------------------------------------------------------------------- args -> configs


def _split_values(values: Optional[List[str]]) -> Optional[List[str]]:
    if values is None:
        return None
    out = [v.strip() for item in values for v in str(item).split(",") if v.strip()]
    return out or None


def _label_options(a: argparse.Namespace) -> LabelOptions:
    return LabelOptions(
        labels_path=a.labels_path,
        layer=a.layer,
        label_column=a.label_column,
        positive_values=_split_values(a.positive_values),
        point_buffer=a.point_buffer,
        mask_path=a.mask_path,
    )


def train_config_from_args(a: argparse.Namespace) -> TrainConfig:
    """Maps the original tool's flags onto TrainConfig (validated on construction)."""
    return TrainConfig(
        raster_path=a.raster_path,
        labels=_label_options(a),
        models=list(a.models),
        tile_size=_pair_or_none(a.tile_size, "--tile_size"),
        stride=_pair_or_none(a.stride, "--stride"),
        num_epochs=a.num_epochs,
        batch_size=a.batch_size,
        learning_rate=a.learning_rate,
        max_grad_norm=a.max_grad_norm,
        label_smoothing=a.label_smoothing_factor,
        amp_mode=a.amp_mode,
        augment=a.enable_data_augmentation,
        ddp=a.enable_ddp,
        resume=a.resume,
        overwrite=a.overwrite,
        output_path=a.output_path,
        checkpoint_path=a.checkpoint_path,
        seed=a.seed,
        device=a.device,
        val_fraction=a.val_fraction,
        loss=a.loss,
        patience=a.patience,
        num_workers=a.num_workers,
        categorical_bands=list(a.categorical_bands),
        ensemble=a.ensemble,
        weight_decay=a.weight_decay,
        band_penalty=a.band_penalty,
        pu_prior=a.pu_prior,
    )


def predict_config_from_args(a: argparse.Namespace) -> PredictConfig:
    """Maps the original predict flags (plus ours) onto PredictConfig."""
    return PredictConfig(
        checkpoint=a.checkpoint,
        raster_path=a.raster_path,
        output_path=a.output_path,
        model_name=a.model_name,
        in_channels=a.in_channels,
        num_classes=a.num_classes,
        spherical=a.spherical,
        tile_size=_pair_or_none(a.tile_size, "--tile_size"),
        overlap=a.overlap,
        batch_size=a.batch_size,
        device=a.device,
        amp_mode=a.amp_mode,
        mask_path=a.mask_path,
        uncertainty_path=a.uncertainty_path,
    )


def _names(values: Optional[List[str]]) -> List[str]:
    """'none' (or nothing) means no candidate of that kind; commas also separate names."""
    names = _split_values(values) or []
    return [] if [n.lower() for n in names] in ([], ["none"]) else names


def cv_config_from_args(a: argparse.Namespace) -> CVConfig:
    """Train's flags (one placeholder model: cv names its own) plus the cross-validation ones."""
    train = train_config_from_args(argparse.Namespace(**{**vars(a), "models": [DEFAULT_MODELS[0]]}))
    return CVConfig(train=train, models=_names(a.models), baselines=_names(a.baselines), folds=a.folds,
                    block_size=a.block_size, buffer=a.buffer, background=a.background, bootstrap=a.bootstrap,
                    output_path=a.output_path)


def evaluate_config_from_args(a: argparse.Namespace) -> EvaluateConfig:
    return EvaluateConfig(
        probability_map=a.probability_map, labels=_label_options(a), checkpoint=a.checkpoint, output_dir=a.output_dir,
        test_area=a.test_area,
        band=a.band,
    )


# ----------------------------------------------------------------------------- event sinks


def _is_secondary_rank() -> bool:
    """Under torchrun only rank 0 speaks (the others train silently)."""
    return int(os.environ.get("RANK", "0") or 0) != 0


class EventSink:
    """Turns core callbacks into output: JSON lines for programs, tqdm and lines for people."""

    def __init__(self, mode: str, out: Optional[TextIO] = None, err: Optional[TextIO] = None) -> None:
        self.mode = mode
        self.out = out if out is not None else sys.stdout  # looked up now: redirected streams are honoured
        self.err = err if err is not None else sys.stderr
        self.quiet = _is_secondary_rank()
        self._bar: Any = None
        self._epoch_label = ""

    def _emit(self, obj: Dict[str, Any]) -> None:
        if self.quiet:
            return
        self.out.write(json.dumps(obj, default=_json_default) + "\n")
        self.out.flush()

    def progress(self, value: float) -> None:
        value = float(min(max(value, 0.0), 1.0))
        if self.mode == "jsonl":
            self._emit({"event": "progress", "value": round(value, 6)})
            return
        if self.quiet:
            return
        bar = self._ensure_bar()
        if bar is not None:
            bar.n = round(value * 1000)
            bar.refresh()

    def log(self, message: str) -> None:
        if self.mode == "jsonl":
            self._emit({"event": "log", "message": str(message)})
        elif not self.quiet:
            self._write_line(str(message))

    def metric(self, values: Dict[str, Any]) -> None:
        if self.mode == "jsonl":
            self._emit({"event": "metric", "values": values})
            return
        if self.quiet:
            return
        # The core logs one readable line per epoch; here the bar only names the epoch that runs next.
        if "epoch" in values and self._bar is not None:
            # One bar segment per epoch: the description names the epoch that is running.
            self._epoch_label = f"{values.get('model', '')} epoch {int(values['epoch']) + 1}".strip()
            self._bar.set_description(self._epoch_label)

    def result(self, value: Dict[str, Any]) -> None:
        self.close()
        if self.mode == "jsonl":
            self._emit({"event": "result", "value": value})
        elif not self.quiet:
            self.out.write(json.dumps(value, indent=2, default=_json_default) + "\n")

    def error(self, kind: str, message: str) -> None:
        self.close()
        if self.mode == "jsonl":
            self._emit({"event": "error", "type": kind, "message": message})
        if not self.quiet:
            self.err.write(f"error: {message}\n")
            self.err.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _ensure_bar(self) -> Any:
        if self._bar is None:
            try:
                from tqdm import tqdm
            except ImportError:  # tqdm is optional for people; lines still appear
                return None
            self._bar = tqdm(total=1000, desc=self._epoch_label or "progress", file=self.err,
                             bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]")
        return self._bar

    def _write_line(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text, file=self.err)
        else:
            self.err.write(text + "\n")
            self.err.flush()

    def callbacks(self, should_stop: Callable[[], bool]) -> Callbacks:
        return Callbacks(progress=self.progress, should_stop=should_stop, log=self.log, metric=self.metric)


def _json_default(obj: Any) -> Any:
    """numpy scalars and paths in results become plain JSON."""
    for attr in ("item", "tolist"):
        if hasattr(obj, attr):
            return getattr(obj, attr)()
    return str(obj)


# ----------------------------------------------------------------------------- stopping


class StopFlag:
    """SIGINT / SIGTERM / SIGBREAK ask the job to stop at the next batch (after the checkpoint is safe).

    A second Ctrl-C interrupts at once.
    """

    def __init__(self) -> None:
        self.requested = False

    def __call__(self) -> bool:
        return self.requested

    def install(self) -> None:
        def handler(signum: int, _frame: Any) -> None:
            if self.requested and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.requested = True

        signal.signal(signal.SIGINT, handler)
        # SIGTERM: what the QGIS tools send on cancel (POSIX); SIGBREAK: CTRL_BREAK on Windows.
        for name in ("SIGTERM", "SIGBREAK"):
            if hasattr(signal, name):
                signal.signal(getattr(signal, name), handler)


# ----------------------------------------------------------------------------- commands


def _run_train(a: argparse.Namespace, cb: Callbacks) -> Dict[str, Any]:
    config = train_config_from_args(a)
    from .training import train

    return train(config, progress=cb.progress, should_stop=cb.should_stop, log=cb.log, metric=cb.metric)


def _run_predict(a: argparse.Namespace, cb: Callbacks) -> Dict[str, Any]:
    config = predict_config_from_args(a)
    from .predict import predict

    return predict(config, progress=cb.progress, should_stop=cb.should_stop, log=cb.log)


def _run_evaluate(a: argparse.Namespace, cb: Callbacks) -> Dict[str, Any]:
    config = evaluate_config_from_args(a)
    from .evaluate import evaluate

    return evaluate(config, progress=cb.progress, should_stop=cb.should_stop, log=cb.log)


def _run_cv(a: argparse.Namespace, cb: Callbacks) -> Dict[str, Any]:
    config = cv_config_from_args(a)
    from .cv import cv

    return cv(config, progress=cb.progress, should_stop=cb.should_stop, log=cb.log, metric=cb.metric)


def _run_demo(a: argparse.Namespace, cb: Callbacks) -> Dict[str, Any]:
    from .demo_data import make_demo_data

    sizes = {k: getattr(a, k) for k in ("width", "height", "bands", "n_deposits") if getattr(a, k) is not None}
    return make_demo_data(a.output_dir, seed=a.seed, log=cb.log, **sizes)


def _run_model_info(a: argparse.Namespace, cb: Callbacks) -> Dict[str, Any]:
    from .checkpoint import describe_checkpoint

    info = describe_checkpoint(a.checkpoint)
    cb.log(f"{info['model_name']}, {info['epoch']} epoch(s), bands: {', '.join(info['band_names'])}"
           + (f"; categorical: {', '.join(info['categorical_bands'])}" if info["categorical_bands"] else ""))
    return info


def _run_list_models(_a: argparse.Namespace, cb: Callbacks) -> Dict[str, Any]:
    models = [{"name": n, "description": d} for n, d in list_models()]
    for m in models:
        cb.log(f"{m['name']}: {m['description']}")
    return {"models": models}


def _run_check_env(_a: argparse.Namespace, cb: Callbacks) -> Dict[str, Any]:
    from .environment import check_environment

    report = check_environment()
    cb.log(f"python {report['python_version']} at {report['python']}")
    for name, version in report["packages"].items():
        cb.log(f"{name}: {version or 'MISSING'}")
    if report["torch_build"]:
        cb.log(f"torch build: {report['torch_build']}")
    cb.log(f"GPU: {', '.join(report['gpus']) if report['gpus'] else 'none usable'}")
    for problem in report["problems"]:
        cb.log(f"problem: {problem}")
    return report


COMMANDS: Dict[str, Callable[[argparse.Namespace, Callbacks], Dict[str, Any]]] = {
    "train": _run_train,
    "predict": _run_predict,
    "evaluate": _run_evaluate,
    "cv": _run_cv,
    "make-demo-data": _run_demo,
    "model-info": _run_model_info,
    "list-models": _run_list_models,
    "check-env": _run_check_env,
}


def _is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or "out of memory" in str(exc).lower()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs one command; returns the exit code (0 done, 1 bad input or error, 130 cancelled)."""
    args = build_parser().parse_args(argv)
    sink = EventSink(args.events)
    stop = StopFlag()
    stop.install()
    try:
        result = COMMANDS[args.command](args, sink.callbacks(stop))
    except Cancelled as exc:
        sink.error("Cancelled", str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        sink.error("Cancelled", "interrupted")
        return Cancelled.exit_code
    except CoreError as exc:
        sink.error(type(exc).__name__, str(exc))
        return exc.exit_code
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one clear message
        if _is_out_of_memory(exc):
            err = ResourceError(f"out of memory ({exc}); try a smaller --tile_size or --batch_size")
            sink.error("ResourceError", str(err))
            return err.exit_code
        traceback.print_exc(file=sys.stderr)
        sink.error("InternalError", f"unexpected {type(exc).__name__}: {exc} (this is a bug; please report it)")
        return 1
    sink.result(result)
    return 0
