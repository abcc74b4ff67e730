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
#: Key of the provider setting "Worker Python" (Processing > Options > Providers).
WORKER_PYTHON_SETTING = "STACK_SEGMENTER_WORKER_PYTHON"
SOURCE_SETTING = "the setting 'Worker Python'"
SOURCE_ENV_VAR = f"the variable {ENV_VAR}"
#: Written into the set-up tool's environment folder when it is finished and checked.
READY_MARKER = "stack_segmenter_ready.json"
POLL_SECONDS = 0.2
TERMINATE_GRACE_SECONDS = 10.0
STDERR_TAIL_LINES = 40
ORPHAN_PIPE_SECONDS = 5.0

_HAS_MODULE: Dict[Tuple[str, str], bool] = {}


class WorkerCancelled(QgsProcessingException):
    """The user cancelled: the worker stopped at its next safe point (the tool says what was kept)."""


# ----------------------------------------------------------------------------- which Python


def is_windows() -> bool:
    return sys.platform.startswith("win")


def python_in(prefix: Path) -> Optional[Path]:
    """The python executable of the environment at ``prefix`` (a venv's or an installation's)."""
    if is_windows():
        candidates = [prefix / "python.exe", prefix / "Scripts" / "python.exe"]
    else:
        candidates = [prefix / "bin" / "python3", prefix / "bin" / "python"]
    return next((c for c in candidates if c.is_file()), None)


def _beside_qgis() -> List[Path]:
    """Windows/macOS: where the Python beside QGIS lives when sys.executable is the QGIS binary itself.

    Never used when sys.executable is a python: on Linux that can be whatever python3 came first on
    PATH when QGIS started (a pyenv shim), which is not the environment QGIS's Python runs in.
    """
    exe = Path(sys.executable)
    if not sys.executable or exe.name.lower().startswith("python") or not (is_windows() or sys.platform == "darwin"):
        return []
    return [exe.parent, exe.parent / "bin"] if is_windows() else [exe.parent / "bin", exe.parent]


def qgis_python() -> Optional[str]:
    """The python of the environment QGIS's own Python runs in (its sys.prefix), never just PATH's first.

    On Linux a venv whose bin/ was first on PATH when QGIS started is that environment (QGIS's
    embedded Python then runs in it), so `make test`, `make demo` and CI keep using .venv.
    """
    for prefix in (Path(sys.prefix), Path(sys.exec_prefix)):
        found = python_in(prefix)
        if found:
            return str(found)
    for folder in _beside_qgis():
        for name in ("python.exe", "python3.exe") if is_windows() else ("python3",):
            if (folder / name).is_file():
                return str(folder / name)
    return None


def qgis_base_python() -> Optional[str]:
    """QGIS's own interpreter outside any venv (sys.base_prefix): what the set-up tool builds from."""
    found = python_in(Path(getattr(sys, "base_prefix", sys.prefix)))
    return str(found) if found else qgis_python()


def venv_python(folder: Path) -> Path:
    """The interpreter of a virtual environment made in ``folder``."""
    return folder / "Scripts" / "python.exe" if is_windows() else folder / "bin" / "python"


def setup_env_dir() -> Path:
    """Where "Set up worker environment" makes the worker's environment: the QGIS profile folder."""
    from qgis.core import QgsApplication

    return Path(QgsApplication.qgisSettingsDirPath()) / "stack_segmenter" / "worker_env"


def is_ready_env(folder: Path) -> bool:
    """A finished environment of the set-up tool (written last, after its check passed)."""
    return (folder / READY_MARKER).is_file() and venv_python(folder).is_file()


def env_root(python: str) -> Optional[Path]:
    """The set-up tool's environment folder that holds this python, if it is one (ready)."""
    path = Path(os.path.abspath(python))
    folder = path.parent.parent
    return folder if venv_python(folder) == path and is_ready_env(folder) else None


def has_module(python: str, module: str) -> bool:
    """Whether ``python`` finds ``module`` (without importing it; positive answers cached)."""
    key = (python, module)
    if _HAS_MODULE.get(key):
        return True
    code = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)"
    try:
        proc = subprocess.run([python, "-c", code], capture_output=True, timeout=60, env=worker_env(python),
                              creationflags=hidden_window_flags())
    except (OSError, subprocess.TimeoutExpired):
        return False
    _HAS_MODULE[key] = proc.returncode == 0
    return _HAS_MODULE[key]


def choose_python(setting: Optional[str]) -> Tuple[str, str]:
    """(python, where the choice came from, in words for the log).

    Order: the setting "Worker Python"; STACK_SEGMENTER_PYTHON; the environment QGIS's own Python
    runs in; then the environment made by "Set up worker environment" (when QGIS's has no torch).
    A python3 that is merely first on PATH is never chosen. Raises QgsProcessingException when a
    given path does not exist or no Python is found.
    """
    for source, value in ((SOURCE_SETTING, setting), (SOURCE_ENV_VAR, os.environ.get(ENV_VAR))):
        if value and str(value).strip():
            path = str(value).strip()
            if not (Path(path).is_file() or shutil.which(path)):
                raise QgsProcessingException(
                    f"The worker Python given by {source} does not exist: {path}. Fix: run Stack Segmenter > "
                    "Utilities > Set up worker environment, or point it at a python executable that has torch "
                    "(Processing > Options > Providers > Stack Segmenter > Worker Python), or clear it to use "
                    "the Python QGIS runs in."
                )
            python = shutil.which(path) or path
            made = env_root(python)
            return python, f"{source} (an environment made by 'Set up worker environment')" if made else source
    own = qgis_python()
    made = setup_env_dir()
    if is_ready_env(made) and (own is None or not has_module(own, "torch")):
        return (str(venv_python(made)), f"the environment made by 'Set up worker environment' ({made}), because "
                f"the Python QGIS runs in ({own or 'not found'}) has no torch")
    if own is None:
        raise QgsProcessingException(
            "No Python interpreter was found to run the training worker. Fix: run Stack Segmenter > Utilities > "
            "Set up worker environment, or set Processing > Options > Providers > Stack Segmenter > Worker Python "
            f"(or the variable {ENV_VAR}) to a python executable that has torch and torch-harmonics."
        )
    return own, f"the environment QGIS's own Python runs in ({sys.prefix})"


def configured_worker_python() -> Optional[str]:
    """The provider setting "Worker Python" (None outside QGIS's processing framework)."""
    try:
        from processing.core.ProcessingConfig import ProcessingConfig
    except ImportError:
        return None
    value = ProcessingConfig.getSetting(WORKER_PYTHON_SETTING)
    return str(value) if value else None


def set_worker_python(python: str) -> None:
    """Sets (saves) the provider setting "Worker Python"; "" clears it."""
    from processing.core.ProcessingConfig import ProcessingConfig

    if WORKER_PYTHON_SETTING not in ProcessingConfig.settings:
        raise QgsProcessingException("The setting 'Worker Python' is not registered (is the Stack Segmenter "
                                     "provider loaded?).")
    ProcessingConfig.setSettingValue(WORKER_PYTHON_SETTING, python)


def resolve_python(setting: Optional[str]) -> str:
    """Which Python runs the worker (see choose_python)."""
    return choose_python(setting)[0]


def hidden_window_flags() -> int:
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


def _same_path(path: str) -> str:
    return os.path.normcase(os.path.abspath(path))


def worker_env(python: str) -> Dict[str, str]:
    """The worker's environment: QGIS's, minus QGIS's Python paths when another Python runs it.

    (OSGeo4W sets PYTHONHOME/PYTHONPATH for QGIS's own Python; a conda or venv Python given
    as "Worker Python" would otherwise load QGIS's standard library and fail.)
    """
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8")
    # abspath, not realpath: a venv's python is a symlink to the base interpreter yet another environment
    own = {_same_path(p) for p in (qgis_python(), qgis_base_python()) if p}
    if _same_path(python) not in own:
        env.pop("PYTHONHOME", None)
        env.pop("PYTHONPATH", None)
    return env


# ----------------------------------------------------------------------------- running


class ProcessRun:
    """A child process whose stdout lines are handled on the calling thread; cancel stops it.

    Subclasses say what a line means (_handle_line) and what the run returns (_finish).
    """

    #: Debug line before the command ("" = none); said when the user cancels; when it must be killed.
    ANNOUNCE = "Running: "
    STOP_MESSAGE = "Cancel requested: stopping the process..."
    KILL_MESSAGE = "The process did not stop in time; killing it."

    def __init__(self, cmd: Sequence[str], feedback: QgsProcessingFeedback) -> None:
        self.cmd: List[str] = [str(c) for c in cmd]
        self.feedback = feedback
        self.cancelled = False
        self.stderr_tail: Deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        self._lines: "queue.Queue[Optional[str]]" = queue.Queue()

    def run(self) -> Any:
        """Runs to the end; returns what _finish makes of it (or raises QgsProcessingException)."""
        if self.ANNOUNCE:
            self.feedback.pushDebugInfo(self.ANNOUNCE + " ".join(self.cmd))
        proc = self._start()
        readers = [threading.Thread(target=self._read_stdout, args=(proc,), daemon=True),
                   threading.Thread(target=self._read_stderr, args=(proc,), daemon=True)]
        for t in readers:
            t.start()
        exited_at: Optional[float] = None
        last_line = time.monotonic()
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
                elif not self.cancelled:
                    self._idle(time.monotonic() - last_line)
                continue
            if line is None:
                break
            last_line = time.monotonic()
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
                                    bufsize=1, creationflags=hidden_window_flags() | _own_group_flag())
        except OSError as exc:
            raise QgsProcessingException(
                f"Could not start {self.cmd[0]}: {exc}. Fix: run Stack Segmenter > Utilities > Set up worker "
                "environment, or set Processing > Options > Providers > Stack Segmenter > Worker Python to a "
                "python executable that has torch.") from None

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
                self._stderr_line(line)

    def _stderr_line(self, line: str) -> None:
        """Called on the reader thread: keep the last lines for the error message."""
        self.stderr_tail.append(line)

    def _idle(self, silent_seconds: float) -> None:
        """Called about every POLL_SECONDS while the process runs without writing a line."""

    def _stop(self, proc: "subprocess.Popen[str]") -> None:
        """SIGTERM (Windows: CTRL_BREAK), a grace period for the checkpoint, then kill."""
        self.cancelled = True
        self.feedback.pushInfo(self.STOP_MESSAGE)
        if proc.poll() is not None:
            return
        _ask_to_stop(proc)
        deadline = time.monotonic() + TERMINATE_GRACE_SECONDS
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if proc.poll() is None:
            self.feedback.pushWarning(self.KILL_MESSAGE)
            proc.kill()

    def _handle_line(self, line: str) -> None:
        raise NotImplementedError

    def _finish(self, code: int) -> Any:
        raise NotImplementedError


class WorkerRun(ProcessRun):
    """One worker process: reads its JSON events, forwards them to feedback, handles cancel."""

    ANNOUNCE = "Worker: "
    STOP_MESSAGE = "Cancel requested: stopping the worker at its next safe point..."
    KILL_MESSAGE = "The worker did not stop in time; killing it."

    def __init__(self, python: str, command: str, args: Sequence[str], feedback: QgsProcessingFeedback,
                 on_metric: Optional[Callable[[Dict[str, Any]], None]] = None) -> None:
        super().__init__([python, "-m", "core", command, *[str(a) for a in args], "--events", "jsonl"], feedback)
        self.on_metric = on_metric
        self.result: Optional[Dict[str, Any]] = None
        self.error: Optional[Dict[str, Any]] = None

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
        # The core logs one readable line per epoch; the numbers go only to the tool (no second line).
        if self.on_metric is not None:
            self.on_metric(values)

    def _finish(self, code: int) -> Dict[str, Any]:
        if self.error is not None:
            kind = str(self.error.get("type") or "Error")
            message = str(self.error.get("message") or "")
            if kind == "Cancelled" or self.cancelled:
                raise WorkerCancelled("Cancelled.")
            raise QgsProcessingException(message or f"The worker failed ({kind}).")
        if self.cancelled:
            raise WorkerCancelled("Cancelled.")
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
