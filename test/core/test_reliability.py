"""Issue 11: a user's files are never lost or corrupted, and garbage is never handed back silently.

Every case runs the command line (``core.cli.main``: in this process, or as ``python -m core``
in a child where a process boundary matters) and checks the exit code, the message, and that
no file was lost or changed (SHA-256 of every file before and after). Full disks are real: a
small tmpfs (``small_disk``), filled while the child run is paused with SIGSTOP at a JSON
event, so the failure happens where it would for a user.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest

from core.config import LabelOptions, TrainConfig
from core.files import file_sha256
from core.training import train

TINY = "unet_sc2_layers2_e8"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ----------------------------------------------------------------------------- helpers


class Run:
    """The outcome of one command-line run."""

    def __init__(self, code: int, events: List[Dict[str, Any]], stderr: str) -> None:
        self.code = code
        self.events = events
        self.stderr = stderr

    @property
    def error(self) -> str:
        errors = [e["message"] for e in self.events if e.get("event") == "error"]
        return errors[-1] if errors else ""

    @property
    def logs(self) -> List[str]:
        return [e["message"] for e in self.events if e.get("event") == "log"]

    def assert_clean_failure(self) -> None:
        """Exit 1, one error event, no traceback and no 'this is a bug'."""
        assert self.code == 1, (self.code, self.stderr[-2000:])
        assert self.error, self.stderr[-2000:]
        assert "Traceback" not in self.stderr and "this is a bug" not in self.stderr + self.error


def cli(repo_root: Path, *args: str, on_event: Optional[Callable[[Dict[str, Any], int], bool]] = None,
        timeout: float = 300, umask: Optional[int] = None) -> Run:
    """Runs ``python -m core ARGS --events jsonl`` in a child process.

    ``on_event(event, pid)`` sees every event as it arrives; when it returns True the hook is
    dropped (it acts once).
    """
    cmd = [sys.executable, "-m", "core", *args, "--events", "jsonl"]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    preexec = (lambda: os.umask(umask)) if umask is not None else None
    with open(os.devnull, "rb") as stdin, subprocess.Popen(
            cmd, cwd=repo_root, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
            preexec_fn=preexec) as proc:
        events = []
        assert proc.stdout is not None and proc.stderr is not None
        for line in proc.stdout:
            event = json.loads(line)
            events.append(event)
            if on_event is not None and on_event(event, proc.pid):
                on_event = None
        stderr = proc.stderr.read()
        code = proc.wait(timeout=timeout)
    return Run(code, events, stderr)


def main(*args: str) -> Run:
    """The command line's ``main()`` in this process (same code path and exit code, no torch start-up).

    Its signal handlers are put back afterwards, so Ctrl-C still stops pytest.
    """
    from core.cli import main as cli_main

    out, err = io.StringIO(), io.StringIO()
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli_main([*args, "--events", "jsonl"])
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    return Run(code, [json.loads(line) for line in out.getvalue().splitlines()], err.getvalue())


def hashes(*folders: Path) -> Dict[str, str]:
    """SHA-256 of every file below the folders (relative names)."""
    out = {}
    for folder in folders:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                out[str(p)] = file_sha256(p)
    return out


def paused(pid: int, action: Callable[[], None]) -> None:
    """Runs ``action`` while the process is stopped (SIGSTOP / SIGCONT)."""
    os.kill(pid, signal.SIGSTOP)
    try:
        action()
    finally:
        os.kill(pid, signal.SIGCONT)


def train_args(stack: Any, points: Any, out: Path, *extra: str) -> Tuple[str, ...]:
    return ("train", "--raster_path", str(stack.path), "--shapefile_path", str(points.path), "--models", TINY,
            "--tile_size", "32", "--num_epochs", "1", "--batch_size", "8", "--device", "cpu", "--patience", "0",
            "--output_path", str(out), *extra)


@pytest.fixture(scope="module")
def model(tiny_stack: Any, tiny_points: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint trained for one epoch on the tiny stack (read-only)."""
    import torch

    out = tmp_path_factory.mktemp("model")
    torch.set_num_threads(1)
    cfg = TrainConfig(raster_path=str(tiny_stack.path), labels=LabelOptions(labels_path=str(tiny_points.path)),
                      models=[TINY], tile_size=(32, 32), num_epochs=1, batch_size=8, output_path=str(out),
                      device="cpu", patience=0, loss="weighted_ce", learning_rate=1e-4)
    return Path(train(cfg)["models"][TINY]["checkpoint"])


# ----------------------------------------------------------------------------- full disk


def test_predict_refuses_to_start_without_room_for_the_map(repo_root: Path, model: Path, tiny_stack: Any,
                                                            small_disk: Any) -> None:
    disk = small_disk.mount(64)
    earlier = disk / "map.tif"
    earlier.write_bytes(b"an earlier map" * 100)
    before = hashes(disk, model.parent)
    run = main("predict", "--checkpoint", str(model), "--raster_path", str(tiny_stack.path),
               "--output_path", str(earlier), "--device", "cpu")
    run.assert_clean_failure()
    assert not [e for e in run.events if e["event"] == "progress"], "work started"
    assert "No space left on device" in run.error and "needs up to" in run.error and str(earlier) in run.error
    assert hashes(disk, model.parent) == before


def test_full_disk_while_predicting_keeps_the_earlier_map(repo_root: Path, model: Path, make_tiny_stack_fn: Any,
                                                          tmp_path: Path, small_disk: Any) -> None:
    """The disk fills up during the run: exit 1, "No space left on device", the earlier map intact."""
    stack = make_tiny_stack_fn(tmp_path, height=480, width=640)
    disk = small_disk.mount(2048)
    earlier = disk / "map.tif"
    earlier.write_bytes(b"an earlier good map")
    before = hashes(disk)
    filled = []

    def fill_at_first_progress(event: Dict[str, Any], pid: int) -> bool:
        if event["event"] != "progress":
            return False
        paused(pid, lambda: filled.append(small_disk.fill(disk)))
        return True

    run = cli(repo_root, "predict", "--checkpoint", str(model), "--raster_path", str(stack.path),
              "--output_path", str(earlier), "--device", "cpu", on_event=fill_at_first_progress)
    assert filled, "the run never reported progress"
    run.assert_clean_failure()
    assert "No space left on device" in run.error and str(earlier) in run.error
    assert not any("probability map written" in line for line in run.logs)
    filled[0].unlink()
    assert hashes(disk) == before  # the earlier map is intact and no temporary file is left


def test_full_disk_while_training_is_a_clean_error_and_keeps_the_last_checkpoint(
        repo_root: Path, tiny_stack: Any, tiny_points: Any, small_disk: Any) -> None:
    disk = small_disk.mount(4096)
    out = disk / "run"
    saved: Dict[str, str] = {}

    def fill_after_epoch_1(event: Dict[str, Any], pid: int) -> bool:
        if event["event"] != "metric":
            return False

        def snapshot_and_fill() -> None:
            saved.update(hashes(out))
            saved["filler"] = str(small_disk.fill(disk, leave=48 * 1024))  # room for log lines, not a checkpoint

        paused(pid, snapshot_and_fill)
        return True

    run = cli(repo_root, *train_args(tiny_stack, tiny_points, out, "--num_epochs", "3"), on_event=fill_after_epoch_1)
    run.assert_clean_failure()
    ckpt = out / TINY / "checkpoint.pt"
    assert "No space left on device" in run.error and str(ckpt) in run.error, run.error
    filler = Path(saved.pop("filler"))
    assert file_sha256(ckpt) == saved[str(ckpt)]  # the epoch-1 checkpoint, untouched
    assert not [p for p in disk.rglob(".*") if "partial" in p.name]
    filler.unlink()
    from core.checkpoint import load_checkpoint

    assert load_checkpoint(ckpt)["epoch"] == 1


# ----------------------------------------------------------------------------- outputs never overwrite inputs


def _copy_stack(stack: Any, folder: Path) -> Tuple[Path, Path]:
    """A private copy of the tiny stack and its points (tests may try to destroy them)."""
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    raster = Path(shutil.copy(stack.path, folder / "stack.tif"))
    return raster, folder


@pytest.mark.parametrize("victim", ["raster", "labels", "labels_dbf"])
def test_train_refuses_a_checkpoint_path_that_is_an_input(repo_root: Path, tiny_stack: Any, tiny_points: Any,
                                                          tmp_path: Path, victim: str) -> None:
    import shutil

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    raster = Path(shutil.copy(tiny_stack.path, inputs / "stack.tif"))
    for part in tiny_points.path.parent.glob(tiny_points.path.stem + ".*"):
        shutil.copy(part, inputs / part.name)
    labels = inputs / tiny_points.path.name
    target = {"raster": raster, "labels": labels, "labels_dbf": labels.with_suffix(".dbf")}[victim]
    before = hashes(inputs)
    run = main("train", "--raster_path", str(raster), "--shapefile_path", str(labels), "--models", TINY,
              "--tile_size", "32", "--num_epochs", "1", "--device", "cpu", "--checkpoint_path", str(target),
              "--output_path", str(tmp_path / "out"))
    run.assert_clean_failure()
    role = "input raster" if victim == "raster" else "labels"
    assert f"is the {role}" in run.error and "--checkpoint_path" in run.error, run.error
    assert hashes(inputs) == before and not (tmp_path / "out").exists()


def test_predict_refuses_an_output_that_is_the_model(repo_root: Path, model: Path, tiny_stack: Any,
                                                     tmp_path: Path) -> None:
    import shutil

    mine = Path(shutil.copy(model, tmp_path / "model.pt"))
    before = hashes(tmp_path)
    run = main("predict", "--checkpoint", str(mine), "--raster_path", str(tiny_stack.path),
              "--output_path", str(mine), "--device", "cpu")
    run.assert_clean_failure()
    assert "is the model file" in run.error and "--output_path" in run.error
    assert hashes(tmp_path) == before


# ----------------------------------------------------------------------------- a trained model is never replaced


@pytest.fixture
def trained_folder(model: Path, tmp_path: Path) -> Path:
    """A private copy of the trained model's output folder (checkpoint, train.log, config.json, ...)."""
    import shutil

    return Path(shutil.copytree(model.parent.parent, tmp_path / "run"))


@pytest.mark.parametrize("extra", [("--num_epochs", "0"), ()], ids=["zero-epochs", "rerun"])
def test_an_existing_model_needs_resume_or_overwrite(repo_root: Path, tiny_stack: Any, tiny_points: Any,
                                                     trained_folder: Path, extra: Tuple[str, ...]) -> None:
    before = hashes(trained_folder)
    run = main(*train_args(tiny_stack, tiny_points, trained_folder, *extra))
    run.assert_clean_failure()
    assert "already holds a trained model" in run.error and "1 epoch" in run.error
    assert "--resume" in run.error and "--overwrite" in run.error
    assert hashes(trained_folder) == before  # no config.json, train.log or validation_blocks.gpkg rewritten


def test_overwrite_replaces_the_model_on_purpose(tiny_stack: Any, tiny_points: Any, trained_folder: Path) -> None:
    from core.checkpoint import load_checkpoint
    from core.errors import ConfigError

    ckpt = trained_folder / TINY / "checkpoint.pt"
    cfg = dict(raster_path=str(tiny_stack.path), labels=LabelOptions(labels_path=str(tiny_points.path)),
               models=[TINY], tile_size=(32, 32), num_epochs=0, output_path=str(trained_folder), device="cpu",
               patience=0)
    with pytest.raises(ConfigError, match="choose one"):
        TrainConfig(**cfg, resume=True, overwrite=True)
    logs: List[str] = []
    train(TrainConfig(**cfg, overwrite=True), log=logs.append)
    assert load_checkpoint(ckpt)["epoch"] == 0
    assert any("--overwrite" in line and "will be replaced" in line for line in logs)


def _four_band_copy(stack: Any, path: Path) -> Path:
    import rasterio

    with rasterio.open(stack.path) as src:
        profile = src.profile | {"count": 4}
        data = src.read([1, 2, 3, 4])
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def test_a_refused_resume_writes_nothing(repo_root: Path, tiny_stack: Any, tiny_points: Any, trained_folder: Path,
                                         tmp_path: Path) -> None:
    four = _four_band_copy(tiny_stack, tmp_path / "four.tif")
    before = hashes(trained_folder)
    args = list(train_args(tiny_stack, tiny_points, trained_folder, "--resume", "--num_epochs", "2"))
    args[args.index("--raster_path") + 1] = str(four)
    run = main(*args)
    run.assert_clean_failure()
    assert "--resume" in run.error and "band count 4 (checkpoint 5)" in run.error, run.error
    assert hashes(trained_folder) == before

    run = main(*train_args(tiny_stack, tiny_points, trained_folder, "--resume", "--tile_size", "16",
                                     "--seed", "3", "--band_scaling", "zscore"))
    run.assert_clean_failure()
    assert "tile size 16 x 16 (checkpoint 32 x 32)" in run.error and "seed 3 (checkpoint 0)" in run.error
    assert "band_scaling 'zscore' (checkpoint 'rank')" in run.error, run.error
    assert hashes(trained_folder) == before


def test_resume_names_optimisation_changes_and_appends_to_the_log(tiny_stack: Any, tiny_points: Any,
                                                                  trained_folder: Path) -> None:
    log_file = trained_folder / TINY / "train.log"
    first_log = log_file.read_text()
    logs: List[str] = []
    cfg = TrainConfig(raster_path=str(tiny_stack.path), labels=LabelOptions(labels_path=str(tiny_points.path)),
                      models=[TINY], tile_size=(32, 32), num_epochs=2, batch_size=8, output_path=str(trained_folder),
                      device="cpu", patience=0, resume=True, loss="focal", learning_rate=1e-3)
    result = train(cfg, log=logs.append)["models"][TINY]
    assert result["epoch"] == 2 and result["epochs_run"] == 1
    warning = next(line for line in logs if "settings that differ" in line)
    assert "loss 'focal' (checkpoint 'weighted_ce')" in warning and "learning_rate 0.001" in warning
    text = log_file.read_text()
    assert text.startswith(first_log) and "--- resumed" in text  # the first run's log is kept


# ----------------------------------------------------------------------------- leftovers of a killed run


def _leftover_of_a_killed_run(repo_root: Path, target: Path) -> Path:
    """Starts a process that begins writing ``target`` the way the core does, then kill -9 it."""
    code = ("import sys, time; sys.path.insert(0, sys.argv[1]); from core.files import temp_path; "
            "p = temp_path(sys.argv[2]); p.write_bytes(b'half a file'); print(p, flush=True); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(repo_root), str(target)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None
    leftover = Path(proc.stdout.readline().strip())
    proc.kill()
    proc.wait()
    assert leftover.is_file()
    return leftover


def test_the_next_run_removes_leftovers_of_a_killed_one(repo_root: Path, model: Path, tiny_stack: Any,
                                                        tmp_path: Path) -> None:
    out = tmp_path / "map.tif"
    leftover = _leftover_of_a_killed_run(repo_root, out)
    legacy = tmp_path / ".map.x1y2z3w4.partial.tif"  # the name earlier versions used
    legacy.write_bytes(b"torn")
    unrelated = tmp_path / ".map.tif.notes"
    unrelated.write_text("mine")
    run = main("predict", "--checkpoint", str(model), "--raster_path", str(tiny_stack.path),
              "--output_path", str(out), "--device", "cpu")
    assert run.code == 0, run.stderr[-2000:]
    assert not leftover.exists() and not legacy.exists() and unrelated.read_text() == "mine"
    assert any("left by an interrupted run" in line for line in run.logs)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["map.tif", ".map.tif.notes"])


# ----------------------------------------------------------------------------- permissions


def test_every_output_is_readable_by_the_group_and_others_under_umask_022(
        repo_root: Path, tiny_stack: Any, tiny_points: Any, tmp_path: Path) -> None:
    import stat

    out = tmp_path / "run"
    ckpt = out / TINY / "checkpoint.pt"
    old = os.umask(0o022)
    try:
        runs = [main(*train_args(tiny_stack, tiny_points, out)),
                main("predict", "--checkpoint", str(ckpt), "--raster_path", str(tiny_stack.path),
                     "--output_path", str(tmp_path / "maps" / "map.tif"), "--device", "cpu"),
                main("evaluate", "--probability_map", str(tmp_path / "maps" / "map.tif"), "--labels",
                     str(tiny_points.path), "--checkpoint", str(ckpt), "--output_dir", str(tmp_path / "eval"))]
    finally:
        os.umask(old)
    assert [r.code for r in runs] == [0, 0, 0], [r.stderr[-2000:] for r in runs]
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert {"checkpoint.pt", "metrics.json", "metrics.pkl", "curves.png", "map.tif", "roc_pr.png",
            "config.json", "train.log", "validation_blocks.gpkg"} <= {p.name for p in files}
    modes = {str(p.relative_to(tmp_path)): oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    assert set(modes.values()) == {"0o644"}, modes
    dirs = {str(p.relative_to(tmp_path)): oct(stat.S_IMODE(p.stat().st_mode))
            for p in tmp_path.rglob("*") if p.is_dir()}
    assert set(dirs.values()) == {"0o755"}, dirs


# ----------------------------------------------------------------------------- suspicious data is told


def _variant(stack: Any, path: Path, change: Callable[[Any], Any], names: bool = True, nodata: Any = "keep") -> Path:
    """A copy of the tiny stack with its data changed by ``change(array)`` (and optionally no band names / nodata)."""
    import rasterio

    with rasterio.open(stack.path) as src:
        profile, data = src.profile, src.read()
        descriptions = src.descriptions
    if nodata != "keep":
        profile = profile | {"nodata": nodata}
    data = change(data)
    profile["count"] = data.shape[0]
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if names:
            for i, d in enumerate(descriptions[:data.shape[0]], start=1):
                dst.set_band_description(i, d)
    return path


def _predict(model: Path, raster: Path, out: Path, *extra: str) -> Run:
    return main("predict", "--checkpoint", str(model), "--raster_path", str(raster), "--output_path",
               str(out), "--device", "cpu", *extra)


def test_bands_in_another_order_are_named_in_a_warning(repo_root: Path, model: Path, tiny_stack: Any,
                                                       tmp_path: Path) -> None:
    swapped = _variant(tiny_stack, tmp_path / "swapped.tif", lambda d: d[[0, 2, 1, 3, 4]], names=False)
    run = _predict(model, swapped, tmp_path / "map.tif")
    assert run.code == 0, run.stderr[-2000:]
    warnings = [line for line in run.logs if "looks unlike training" in line]
    assert any(line.startswith("warning: band 2 ") and "training band 3 ('gradient')" in line for line in warnings)
    assert any(line.startswith("warning: band 3 ") and "training band 2 ('noise')" in line for line in warnings)
    assert not any("band 1 " in line or "band 4 " in line for line in warnings), warnings
    same = _predict(model, tiny_stack.path, tmp_path / "same.tif")
    assert same.code == 0 and not any("looks unlike training" in line for line in same.logs)


def test_a_band_without_any_valid_pixel_is_named_at_predict_and_train(repo_root: Path, model: Path, tiny_stack: Any,
                                                                      tiny_points: Any, tmp_path: Path) -> None:
    import numpy as np

    def third_band_nan(d: Any) -> Any:
        d = d.astype("float32")
        d[2] = np.nan
        return d

    broken = _variant(tiny_stack, tmp_path / "nan_band.tif", third_band_nan)
    earlier = tmp_path / "out" / "map.tif"
    earlier.parent.mkdir()
    earlier.write_bytes(b"an earlier map")
    before = hashes(tmp_path / "out")
    run = _predict(model, broken, earlier)
    run.assert_clean_failure()
    assert "band 3 ('gradient')" in run.error and "no valid pixel" in run.error
    assert hashes(tmp_path / "out") == before
    args = list(train_args(tiny_stack, tiny_points, tmp_path / "train"))
    args[args.index("--raster_path") + 1] = str(broken)
    run = main(*args)
    run.assert_clean_failure()
    assert "band 3 ('gradient')" in run.error and "no valid pixel" in run.error
    assert not (tmp_path / "train").exists()


def test_an_all_nodata_raster_is_an_error_at_predict(repo_root: Path, model: Path, tiny_stack: Any,
                                                     tmp_path: Path) -> None:
    import numpy as np

    empty = _variant(tiny_stack, tmp_path / "empty.tif", lambda d: np.full_like(d, tiny_stack.nodata))
    run = _predict(model, empty, tmp_path / "map.tif")
    run.assert_clean_failure()
    assert "no valid pixel" in run.error and "band 1 ('signal')" in run.error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.tif"]


def test_an_undeclared_nodata_value_is_warned_with_the_fix(repo_root: Path, model: Path, tiny_stack: Any,
                                                           tiny_points: Any, tmp_path: Path) -> None:
    """-9999 in the data but no nodata declared: the values would enter the statistics silently."""
    undeclared = _variant(tiny_stack, tmp_path / "undeclared.tif", lambda d: d, nodata=None)
    run = _predict(model, undeclared, tmp_path / "map.tif")
    assert run.code == 0, run.stderr[-2000:]
    warned = [line for line in run.logs if "holds -9999" in line]
    assert warned and all("nodata value is not set" in line and "gdal_edit.py -a_nodata -9999" in line
                          for line in warned)
    args = list(train_args(tiny_stack, tiny_points, tmp_path / "train"))
    args[args.index("--raster_path") + 1] = str(undeclared)
    run = main(*args)
    assert run.code == 0, run.stderr[-2000:]
    assert any("holds -9999" in line and "gdal_edit.py" in line for line in run.logs)
    declared = _predict(model, tiny_stack.path, tmp_path / "ok.tif")
    assert not any("holds -9999" in line for line in declared.logs)


def test_a_multi_layer_file_without_a_layer_name_is_refused_listing_its_layers(
        repo_root: Path, tiny_stack: Any, tiny_points: Any, tmp_path: Path) -> None:
    import geopandas as gpd

    points = gpd.read_file(tiny_points.path)
    gpkg = tmp_path / "many.gpkg"
    points.to_file(gpkg, layer="deposits", driver="GPKG")
    points.iloc[:5].to_file(gpkg, layer="prospects", driver="GPKG")
    before = hashes(tmp_path)
    args = list(train_args(tiny_stack, tiny_points, tmp_path / "out"))
    args[args.index("--shapefile_path") + 1] = str(gpkg)
    run = main(*args)
    run.assert_clean_failure()
    assert "several layers (deposits, prospects)" in run.error and "--layer" in run.error
    assert hashes(tmp_path) == before and not (tmp_path / "out").exists()


def test_out_of_range_options_are_refused_with_the_range(repo_root: Path, model: Path, tiny_stack: Any,
                                                         tiny_points: Any, tmp_path: Path) -> None:
    run = main("train", "--raster_path", str(tiny_stack.path), "--shapefile_path", str(tiny_points.path),
              "--models", "unet_sc2_layers4_e32", "--tile_size", "1", "1", "--output_path", str(tmp_path / "out"))
    run.assert_clean_failure()
    assert "--tile_size 1 x 1 is smaller than unet_sc2_layers4_e32's minimum tile 8 x 8" in run.error
    run = _predict(model, tiny_stack.path, tmp_path / "map.tif", "--overlap", "0.9")
    run.assert_clean_failure()
    assert "--overlap must be in [0, 0.5]" in run.error and "got 0.9" in run.error
    run = _predict(model, tiny_stack.path, tmp_path / "map.tif", "--tile_size", "1")
    run.assert_clean_failure()
    assert "minimum tile 2 x 2" in run.error
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_evaluate_refuses_a_multi_band_raster_unless_a_band_is_named(repo_root: Path, tiny_stack: Any,
                                                                     tiny_points: Any, tmp_path: Path) -> None:
    args = ("evaluate", "--probability_map", str(tiny_stack.path), "--labels", str(tiny_points.path), "--output_dir")
    run = main(*args, str(tmp_path / "eval"))
    run.assert_clean_failure()
    assert "has 5 bands" in run.error and "--band N" in run.error and "1 'signal'" in run.error
    assert not (tmp_path / "eval").exists()
    run = main(*args, str(tmp_path / "eval"), "--band", "1")
    assert run.code == 0, run.stderr[-2000:]
    assert (tmp_path / "eval" / "metrics.json").is_file()
