"""Issue 11: a user's files are never lost or corrupted, and garbage is never handed back silently.

Every case runs the real command line (``python -m core``) and checks the exit code, the
message, and that no file was lost or changed (SHA-256 of every file before and after).
Full disks are real: a small tmpfs (``small_disk``), filled while the run is paused with
SIGSTOP at a JSON event, so the failure happens where it would for a user.
"""
from __future__ import annotations

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
    """Runs ``python -m core ARGS --events jsonl``.

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
                      device="cpu", patience=0)
    return Path(train(cfg)["models"][TINY]["checkpoint"])


# ----------------------------------------------------------------------------- full disk


def test_predict_refuses_to_start_without_room_for_the_map(repo_root: Path, model: Path, tiny_stack: Any,
                                                            small_disk: Any) -> None:
    disk = small_disk.mount(64)
    earlier = disk / "map.tif"
    earlier.write_bytes(b"an earlier map" * 100)
    before = hashes(disk, model.parent)
    run = cli(repo_root, "predict", "--checkpoint", str(model), "--raster_path", str(tiny_stack.path),
              "--output_path", str(earlier), "--device", "cpu",
              on_event=lambda e, _pid: e["event"] == "progress" and pytest.fail("work started"))
    run.assert_clean_failure()
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
