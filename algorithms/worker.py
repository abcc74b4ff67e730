"""Runs the core's command line in a separate Python process and turns its JSON events
into Processing feedback.

Why a process: QGIS never imports torch, a crash in the worker cannot take QGIS down,
cancel can stop it, and the worker may use another Python (e.g. one with CUDA torch).
The contract is docs/ARCHITECTURE.md "Command line and JSON events".
"""
from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Tuple

from qgis.core import QgsProcessingException, QgsProcessingFeedback

#: The folder that holds core/ (the plugin folder): the worker's cwd so `-m core` resolves.
PLUGIN_DIR = Path(__file__).resolve().parent.parent

ENV_VAR = "STACK_SEGMENTER_PYTHON"
POLL_SECONDS = 0.2
TERMINATE_GRACE_SECONDS = 10.0
STDERR_TAIL_LINES = 40
ORPHAN_PIPE_SECONDS = 5.0

_TORCH_OK: Dict[str, bool] = {}


# ----------------------------------------------------------------------------- which Python


def default_python() -> Optional[str]:
    """The python3 of the environment QGIS runs in (never the QGIS binary itself)."""
    if sys.platform.startswith("win"):
        names = ("python.exe", "python3.exe")
        folders = [Path(sys.exec_prefix), Path(sys.prefix), Path(sys.executable).parent]
    elif sys.platform == "darwin":
        names = ("python3",)
        folders = [Path(sys.exec_prefix) / "bin", Path(sys.prefix) / "bin", Path(sys.executable).parent / "bin",
                   Path(sys.executable).parent]
    else:
        found = shutil.which("python3")
        if found:
            return found
        names = ("python3",)
        folders = [Path(sys.executable).parent, Path(sys.exec_prefix) / "bin"]
    for folder in folders:
        for name in names:
            candidate = folder / name
            if candidate.is_file():
                return str(candidate)
    return None


def choose_python(setting: Optional[str]) -> Tuple[str, str]:
    """(python, where the choice came from): the provider setting, STACK_SEGMENTER_PYTHON, the default.

    Raises QgsProcessingException when the chosen path does not exist.
    """
    for source, value in (("the setting 'Worker Python'", setting), (ENV_VAR, os.environ.get(ENV_VAR))):
        if value and str(value).strip():
            path = str(value).strip()
            if not (Path(path).is_file() or shutil.which(path)):
                raise QgsProcessingException(
                    f"The worker Python given by {source} does not exist: {path}. Fix: point it at a python "
                    f"executable that has torch (Processing > Options > Providers > Stack Segmenter > Worker "
                    f"Python), or clear it to use the Python QGIS runs in."
                )
            return shutil.which(path) or path, source
    found = default_python()
    if not found:
        raise QgsProcessingException(
            "No Python interpreter was found to run the training worker. Fix: set Processing > Options > "
            f"Providers > Stack Segmenter > Worker Python (or the variable {ENV_VAR}) to a python executable "
            "that has torch and torch-harmonics."
        )
    return found, "the Python of the environment QGIS runs in"


def resolve_python(setting: Optional[str]) -> str:
    """Which Python runs the worker (see choose_python)."""
    return choose_python(setting)[0]


def install_instructions(python: str) -> str:
    """The commands that install the worker's packages, per platform."""
    return (
        "How to fix it:\n"
        f"  Linux: python3 -m venv --system-site-packages ~/stack_segmenter_env && "
        f"~/stack_segmenter_env/bin/python -m pip install torch torch-harmonics, then set Worker Python to "
        f"~/stack_segmenter_env/bin/python (or run: \"{python}\" -m pip install torch torch-harmonics)\n"
        "  Windows: open the OSGeo4W Shell and run: python -m pip install torch torch-harmonics\n"
        "  macOS: /Applications/QGIS.app/Contents/MacOS/bin/python3 -m pip install torch torch-harmonics\n"
        "  or point Processing > Options > Providers > Stack Segmenter > Worker Python (or the variable "
        f"{ENV_VAR}) at a Python that already has torch."
    )


def _hidden_window_flags() -> int:
    """No console window flashing up on Windows."""
    return getattr(subprocess, "CREATE_NO_WINDOW", 0) if sys.platform.startswith("win") else 0


def _own_group_flag() -> int:
    """Windows: a process group of its own, so CTRL_BREAK reaches the worker and not QGIS."""
    return getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0) if sys.platform.startswith("win") else 0


def _ask_to_stop(proc: "subprocess.Popen[str]") -> None:
    """SIGTERM; on Windows CTRL_BREAK (SIGBREAK), which ends the worker at once unless the core
    handles it (then it stops as gracefully as on SIGTERM)."""
    if sys.platform.startswith("win"):
        proc.send_signal(getattr(signal, "CTRL_BREAK_EVENT"))
    else:
        proc.send_signal(signal.SIGTERM)


def ensure_torch(python: str) -> None:
    """Fails before any work when the worker Python cannot import torch (cached per path)."""
    if _TORCH_OK.get(python):
        return
    try:
        proc = subprocess.run([python, "-c", "import torch"], cwd=str(PLUGIN_DIR), capture_output=True,
                              text=True, timeout=120, env=worker_env(python), creationflags=_hidden_window_flags())
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise QgsProcessingException(f"The worker Python {python} could not be started ({exc}).\n"
                                     + install_instructions(python)) from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise QgsProcessingException(
            f"torch is not installed in the worker Python {python} ({last}). The Stack Segmenter tools need "
            "torch and torch-harmonics there.\n" + install_instructions(python)
        )
    _TORCH_OK[python] = True


def _same_path(path: str) -> str:
    return os.path.normcase(os.path.abspath(path))


def worker_env(python: str) -> Dict[str, str]:
    """The worker's environment: QGIS's, minus QGIS's Python paths when another Python runs it.

    (OSGeo4W sets PYTHONHOME/PYTHONPATH for QGIS's own Python; a conda or venv Python given
    as "Worker Python" would otherwise load QGIS's standard library and fail.)
    """
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8")
    own = default_python()
    # abspath, not realpath: a venv's python is a symlink to the base interpreter yet another environment
    if own is None or _same_path(python) != _same_path(own):
        env.pop("PYTHONHOME", None)
        env.pop("PYTHONPATH", None)
    return env


# ----------------------------------------------------------------------------- running


class WorkerRun:
    """One worker process: reads its events, forwards them to feedback, handles cancel."""

    def __init__(self, python: str, command: str, args: Sequence[str], feedback: QgsProcessingFeedback,
                 on_metric: Optional[Callable[[Dict[str, Any]], None]] = None) -> None:
        self.cmd: List[str] = [python, "-m", "core", command, *[str(a) for a in args], "--events", "jsonl"]
        self.feedback = feedback
        self.on_metric = on_metric
        self.result: Optional[Dict[str, Any]] = None
        self.error: Optional[Dict[str, Any]] = None
        self.cancelled = False
        self.stderr_tail: Deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        self._lines: "queue.Queue[Optional[str]]" = queue.Queue()

    def run(self) -> Dict[str, Any]:
        """Runs to the end; returns the result event's value or raises QgsProcessingException."""
        self.feedback.pushDebugInfo("Worker: " + " ".join(self.cmd))
        proc = self._start()
        readers = [threading.Thread(target=self._read_stdout, args=(proc,), daemon=True),
                   threading.Thread(target=self._read_stderr, args=(proc,), daemon=True)]
        for t in readers:
            t.start()
        exited_at: Optional[float] = None
        while True:
            if self.feedback.isCanceled() and not self.cancelled:
                self._stop(proc)
            try:
                line = self._lines.get(timeout=POLL_SECONDS)
            except queue.Empty:
                # A grandchild (e.g. a data loader process) may hold stdout open after the worker ended.
                if proc.poll() is not None:
                    exited_at = exited_at or time.monotonic()
                    if time.monotonic() - exited_at > ORPHAN_PIPE_SECONDS:
                        break
                continue
            if line is None:
                break
            self._handle_line(line)
        code = proc.wait()
        for reader, stream in zip(readers, (proc.stdout, proc.stderr)):
            reader.join(timeout=1.0 if exited_at else 5.0)
            if not reader.is_alive() and stream is not None:  # closing a pipe a thread still reads would block
                stream.close()
        return self._finish(code)

    def _start(self) -> "subprocess.Popen[str]":
        env = worker_env(self.cmd[0])
        try:
            return subprocess.Popen(self.cmd, cwd=str(PLUGIN_DIR), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace", env=env,
                                    bufsize=1, creationflags=_hidden_window_flags() | _own_group_flag())
        except OSError as exc:
            raise QgsProcessingException(f"Could not start the worker Python {self.cmd[0]}: {exc}. "
                                         + install_instructions(self.cmd[0])) from None

    def _read_stdout(self, proc: "subprocess.Popen[str]") -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _read_stderr(self, proc: "subprocess.Popen[str]") -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            line = line.rstrip()
            if line and not line.startswith("\r"):
                self.stderr_tail.append(line)

    def _stop(self, proc: "subprocess.Popen[str]") -> None:
        """SIGTERM (Windows: CTRL_BREAK), a grace period for the checkpoint, then kill."""
        self.cancelled = True
        self.feedback.pushInfo("Cancel requested: stopping the worker after its last safe checkpoint...")
        if proc.poll() is not None:
            return
        _ask_to_stop(proc)
        deadline = time.monotonic() + TERMINATE_GRACE_SECONDS
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if proc.poll() is None:
            self.feedback.pushWarning("The worker did not stop in time; killing it.")
            proc.kill()

    def _handle_line(self, line: str) -> None:
        line = line.strip()
        if not line:
            return
        try:
            event = json.loads(line)
        except ValueError:
            self.feedback.pushConsoleInfo(line)
            return
        if not isinstance(event, dict):
            self.feedback.pushConsoleInfo(line)
            return
        kind = event.get("event")
        if kind == "progress":
            self.feedback.setProgress(100.0 * float(event.get("value", 0.0)))
        elif kind == "log":
            self.feedback.pushInfo(str(event.get("message", "")))
        elif kind == "metric":
            self._handle_metric(event.get("values") or {})
        elif kind == "result":
            self.result = event.get("value") or {}
        elif kind == "error":
            self.error = event

    def _handle_metric(self, values: Dict[str, Any]) -> None:
        # The core also logs a readable line per epoch; the raw numbers go to the debug log.
        text = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())
        self.feedback.pushDebugInfo(text)
        if self.on_metric is not None:
            self.on_metric(values)

    def _finish(self, code: int) -> Dict[str, Any]:
        if self.error is not None:
            kind = str(self.error.get("type") or "Error")
            message = str(self.error.get("message") or "")
            if kind == "Cancelled" or self.cancelled:
                raise QgsProcessingException(f"Cancelled: {message}" if message else "Cancelled.")
            raise QgsProcessingException(message or f"The worker failed ({kind}).")
        if self.cancelled:
            raise QgsProcessingException("Cancelled: the worker was stopped.")
        if code != 0 or self.result is None:
            tail = "\n".join(self.stderr_tail) or "(the worker wrote nothing on stderr)"
            raise QgsProcessingException(
                f"The worker process ended with exit code {code} without a result. Its last messages:\n{tail}"
            )
        return self.result


def run_worker(python: str, command: str, args: Sequence[str], feedback: QgsProcessingFeedback,
               on_metric: Optional[Callable[[Dict[str, Any]], None]] = None) -> Dict[str, Any]:
    """Runs ``python -m core COMMAND ARGS --events jsonl`` in the plugin folder; returns its result."""
    return WorkerRun(python, command, args, feedback, on_metric).run()
