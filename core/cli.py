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
import signal
import sys
import traceback
import typing
from dataclasses import fields, is_dataclass
from typing import Any, Callable, Dict, Optional, Sequence, TextIO, Tuple, Type, TypeVar

from .config import (CVConfig, EvaluateConfig, PredictConfig, TrainConfig, declared_options, default_of, field_types,
                     option_of, plain_type)
from .errors import Cancelled, CoreError, ResourceError
from .events import Callbacks
from .models.catalog import list_models

C = TypeVar("C")


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


def _default_text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    return str(value)


def _argument(name: str, f: Any, kind: Any) -> Tuple[Tuple[str, ...], Dict[str, Any]]:
    """The flags and add_argument keywords of one config field, from its declaration (config.Option)."""
    opt = option_of(f)
    default = default_of(f)
    kind = plain_type(kind)
    help_text = opt.help
    if default not in (None, "", False, []):
        help_text += f" (default {_default_text(default)})"
    kw: Dict[str, Any] = {"dest": name, "help": help_text.replace("%", "%%")}
    origin = typing.get_origin(kind)
    if kind is bool:
        kw["action"] = "store_true"
    else:
        kw["default"] = default
        if opt.required:
            kw["required"] = True
        if opt.metavar:
            kw["metavar"] = opt.metavar
        if origin in (list, tuple):
            kw["nargs"] = opt.nargs or "+"
            kw["type"] = int if origin is tuple else str
        else:
            kw["type"] = kind
        if opt.choices:
            kw["choices"] = opt.choices
    return opt.flags or (f"--{name}",), kw


def add_config_arguments(p: argparse.ArgumentParser, cls: type, skip: Tuple[str, ...] = ()) -> None:
    """One flag per declared field of a config (nested ones too): flags, defaults, ranges and help as declared."""
    for path, f, kind in declared_options(cls, skip):
        flags, kw = _argument(path[-1], f, kind)
        p.add_argument(*flags, **kw)


def config_from_args(cls: Type[C], a: argparse.Namespace, skip: Tuple[str, ...] = ()) -> C:
    """The config a command's arguments describe (validated on construction); fields not offered keep defaults."""
    types = field_types(cls)
    values: Dict[str, Any] = {}
    for f in fields(cls):
        opt = option_of(f)
        if opt is None or f.name in skip:
            continue
        kind = types[f.name]
        values[f.name] = config_from_args(kind, a, opt.skip) if is_dataclass(kind) else getattr(a, f.name)
    return cls(**values)


#: The core commands that run a config: name -> (config, help, description).
CONFIG_COMMANDS: Dict[str, Tuple[type, str, str]] = {
    "train": (TrainConfig, "train segmentation models on a raster stack and vector labels",
              "Train one or more segmentation models (each in turn) on a raster stack with vector labels. Writes "
              "<output_path>/<model>/checkpoint.pt, figures/, output_data/metrics.pkl, metrics.json, config.json, "
              "validation_blocks.gpkg, report.html and train.log."),
    "cv": (CVConfig, "spatial cross-validation of models and built-in baselines on the same folds",
           "Cuts the raster into --folds spatial folds balanced in deposits and area; for each fold trains every "
           "candidate (registry models with Train's options, and the per-pixel baselines) outside the fold and its "
           "buffer and predicts the fold. Writes cv_results.csv (a row per fold x candidate), cv_summary.json, "
           "cv_folds.gpkg and oof_<candidate>.tif (out-of-fold maps) into --output_path."),
    "predict": (PredictConfig, "turn a trained model into a probability map GeoTIFF",
                "Predict the positive-class probability of every pixel with sliding windows; writes a float32 "
                "GeoTIFF on the raster's grid (nodata where the input is nodata or outside --mask_path)."),
    "evaluate": (EvaluateConfig, "score a probability map against known deposits / labels",
                 "ROC AUC, PR AUC, success-rate curve and its AUC, % of deposits in the top 1/5/10/20 % of area; "
                 "with --checkpoint also the held-out prediction rate. Writes metrics.json, CSV curves and PNG "
                 "plots into --output_dir."),
}


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
    for command, (cls, help_text, description) in CONFIG_COMMANDS.items():
        p = sub.add_parser(command, help=help_text, description=description.replace("%", "%%"))
        add_config_arguments(p, cls)
        _add_events(p)
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
    config = config_from_args(TrainConfig, a)
    from .training import train

    return train(config, progress=cb.progress, should_stop=cb.should_stop, log=cb.log, metric=cb.metric)


def _run_predict(a: argparse.Namespace, cb: Callbacks) -> Dict[str, Any]:
    config = config_from_args(PredictConfig, a)
    from .predict import predict

    return predict(config, progress=cb.progress, should_stop=cb.should_stop, log=cb.log)


def _run_evaluate(a: argparse.Namespace, cb: Callbacks) -> Dict[str, Any]:
    config = config_from_args(EvaluateConfig, a)
    from .evaluate import evaluate

    return evaluate(config, progress=cb.progress, should_stop=cb.should_stop, log=cb.log)


def _run_cv(a: argparse.Namespace, cb: Callbacks) -> Dict[str, Any]:
    config = config_from_args(CVConfig, a)
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
