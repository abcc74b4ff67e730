"""The worker's Python, set up from inside QGIS: a virtual environment in the QGIS profile folder,
made from QGIS's own Python with its packages visible (--system-site-packages, so rasterio and
geopandas match QGIS's GDAL), plus the pinned torch and torch-harmonics from constraints.txt.

Also the one command that installs whatever a worker Python lacks, which Check environment
prints and this set-up runs (``install_commands``). QGIS side only (feedback, settings); it runs
pip and the core's ``check-env`` in other processes and never imports torch.

A half-made environment is never registered: the folder carries BUILDING_MARKER while it is
made and READY_MARKER only after the worker's own check passed; a cancelled or failed build is
removed, and the setting "Worker Python" is set only at the end.
"""
from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Deque, Dict, List, Optional, Sequence, Tuple

from qgis.core import QgsProcessingException, QgsProcessingFeedback

from . import worker
from .worker import READY_MARKER, ProcessRun, is_ready_env, venv_python

#: The project's pins, shipped in the plugin zip.
CONSTRAINTS = worker.PLUGIN_DIR / "constraints.txt"
#: PyTorch's own index of CPU builds (PyPI's Linux torch is a multi-GB CUDA build).
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
#: Windows only: PyPI's Windows torch is CPU-only, CUDA builds come from PyTorch's index.
TORCH_CUDA_INDEX = "https://download.pytorch.org/whl/cu128"
BUILDS = ("cpu", "cuda")
BUILDING_MARKER = "stack_segmenter_building"
#: torch-harmonics declares torch>=2.14 and would replace the pinned torch; without its
#: dependencies it runs correctly on the pinned one (scripts/setup.sh says the same). elapid
#: (MaxEnt) would pull rtree/descartes wheels it does not need; its real needs are the worker's own.
NO_DEPS = ("torch-harmonics", "elapid")
#: Where Check environment tells Linux users with a system Python to make a venv by hand.
MANUAL_ENV = Path.home() / "stack_segmenter_env"
HEARTBEAT_SECONDS = 20.0

_TORCH_OK: Dict[str, bool] = {}


# ----------------------------------------------------------------------------- the commands


def read_pins(path: Path = CONSTRAINTS) -> Dict[str, str]:
    """{distribution name: requirement} from constraints.txt, in file order."""
    pins: Dict[str, str] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", line)
        if match:
            pins[match.group(0).lower().replace("_", "-")] = line
    return pins


def torch_requirement(build: str, platform: str = sys.platform) -> str:
    """The pinned torch for a build: ``torch==V+cpu`` (Linux, Windows), ``torch==V`` (macOS, CUDA)."""
    version = read_pins()["torch"].split("==", 1)[1].split("+", 1)[0].strip()
    return f"torch=={version}+cpu" if build == "cpu" and platform != "darwin" else f"torch=={version}"


def index_options(build: str, platform: str = sys.platform) -> List[str]:
    """Where pip finds that build besides its own sources (the user's pip.conf still applies)."""
    if build == "cpu" and platform != "darwin":
        return ["--extra-index-url", TORCH_CPU_INDEX]
    if build == "cuda" and platform.startswith("win"):
        return ["--extra-index-url", TORCH_CUDA_INDEX]
    return []


def install_commands(python: str, missing: Sequence[str], build: str = "cpu",
                     platform: str = sys.platform) -> List[List[str]]:
    """The pip calls that install ``missing`` (distribution names) into ``python`` with the project's pins.

    The same list is what "Set up worker environment" runs and what Check environment prints.
    """
    pins = read_pins()
    plain = [name for name in missing if name not in NO_DEPS]
    commands: List[List[str]] = []
    if plain:
        wanted = [torch_requirement(build, platform) if name == "torch" else pins.get(name, name) for name in plain]
        # The other pins (numpy<2 for the GDAL bindings) still bind whatever pip pulls in.
        wanted += [req for name, req in pins.items() if name not in plain and name not in NO_DEPS and name != "torch"]
        options = index_options(build, platform) if "torch" in plain else []
        commands.append([python, "-m", "pip", "install", *options, *wanted])
    for name in (n for n in missing if n in NO_DEPS):
        commands.append([python, "-m", "pip", "install", "--no-deps", pins.get(name, name)])
    return commands


def _cmd_quote(arg: str) -> str:
    """cmd.exe quoting: spaces and its metacharacters (``numpy<2`` would redirect) go inside quotes."""
    return f'"{arg}"' if not arg or any(ch in arg for ch in ' \t<>|&^()"') else arg


def render(commands: Sequence[Sequence[str]], platform: str = sys.platform) -> str:
    """One command line (``a && b``) for the platform's shell (the OSGeo4W Shell is cmd.exe on Windows)."""
    if platform.startswith("win"):
        return " && ".join(" ".join(_cmd_quote(a) for a in c) for c in commands)
    return " && ".join(shlex.join(list(c)) for c in commands)


def manual_fix(python: str, report: Dict[str, Any], build: str = "cpu") -> Tuple[str, str]:
    """(ONE command line that installs everything ``python`` lacks on its platform, where to run it and
    what then); ("", "") when nothing is missing."""
    missing: List[str] = list(report.get("missing") or [])
    if not missing:
        return "", ""
    platform = str(report.get("os") or sys.platform)
    if platform.startswith("linux") and report.get("externally_managed") and not report.get("venv"):
        # Debian/Ubuntu refuse pip in the system Python (PEP 668): a venv that sees its packages.
        env_python = venv_python(MANUAL_ENV)
        commands = [[python, "-m", "venv", "--system-site-packages", str(MANUAL_ENV)],
                    *install_commands(str(env_python), missing, build, platform)]
        where = ("in a terminal (a virtual environment beside QGIS's Python; then set Processing > Options > "
                 f"Providers > Stack Segmenter > Worker Python to {env_python})")
        if not report.get("ensurepip"):
            where += "; that Python cannot make virtual environments yet: first run sudo apt install python3-venv"
        return render(commands, platform), where
    where = ("in a terminal" if report.get("venv") or platform.startswith("linux")
             else "in the OSGeo4W Shell (Start menu > OSGeo4W Shell)" if platform.startswith("win")
             else "in Terminal")
    return render(install_commands(python, missing, build, platform), platform), where


def fix_text(python: str, report: Dict[str, Any], build: str = "cpu") -> str:
    """What to do when the worker Python lacks packages: the set-up tool first, then the one command."""
    command, where = manual_fix(python, report, build)
    if not command:
        return ""
    lines = [f"Missing in the worker Python {python}: {', '.join(report.get('missing') or [])}.",
             "Easiest fix: run Stack Segmenter > Utilities > Set up worker environment (it makes a Python "
             "environment for the worker in your QGIS profile, installs them there and sets Worker Python).",
             f"Or by hand, this one command {where}:", "  " + command]
    if report.get("nvidia_driver") and build == "cpu":
        lines.append("An NVIDIA driver is installed: pick the CUDA build in Set up worker environment to use the GPU.")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- checks


def check_report(python: str, feedback: Optional[QgsProcessingFeedback] = None) -> Dict[str, Any]:
    """The worker's own check (``python -m core check-env``), run by ``python``."""
    return worker.run_worker(python, "check-env", [], feedback or QgsProcessingFeedback())


def ensure_torch(python: str) -> None:
    """Fails before any work when the worker Python cannot import torch, with the fix (cached per path)."""
    if _TORCH_OK.get(python):
        return
    try:
        proc = subprocess.run([python, "-c", "import torch"], cwd=str(worker.PLUGIN_DIR), capture_output=True,
                              text=True, timeout=120, env=worker.worker_env(python),
                              creationflags=worker.hidden_window_flags())
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise QgsProcessingException(
            f"The worker Python {python} could not be started ({exc}). Fix: run Stack Segmenter > Utilities > "
            "Set up worker environment, or set Worker Python to a python executable that has torch.") from None
    if proc.returncode == 0:
        _TORCH_OK[python] = True
        return
    last = (proc.stderr.strip().splitlines() or ["(no message)"])[-1]
    try:
        fix = fix_text(python, check_report(python))
    except QgsProcessingException as exc:  # the check itself failed: still say what to do
        fix = f"(Its check failed too: {exc}) Fix: run Stack Segmenter > Utilities > Set up worker environment."
    raise QgsProcessingException(
        f"torch is not installed in the worker Python {python} ({last}). The Stack Segmenter tools need torch "
        f"and torch-harmonics there.\n{fix}")


# ----------------------------------------------------------------------------- running pip


class CommandRun(ProcessRun):
    """pip or venv in a child process: every line it writes goes to the log; cancel stops it."""

    ANNOUNCE = ""  # run_command says it in the log
    STOP_MESSAGE = "Cancel requested: stopping the installation..."

    def __init__(self, cmd: Sequence[str], feedback: QgsProcessingFeedback, progress: "Stage") -> None:
        super().__init__(cmd, feedback)
        self.output: Deque[str] = deque(maxlen=400)
        self.progress = progress
        self._next_beat = HEARTBEAT_SECONDS

    def _stderr_line(self, line: str) -> None:
        super()._stderr_line(line)
        self._lines.put(line)

    def _handle_line(self, line: str) -> None:
        line = line.rstrip()
        if not line:
            return
        self._next_beat = HEARTBEAT_SECONDS
        self.output.append(line)
        self.feedback.pushConsoleInfo(line)
        if line.startswith(("Collecting", "Processing", "Downloading")):
            self.progress.advance(0.05, limit=0.6)
        elif line.startswith("Installing collected packages"):
            self.progress.advance(0.7)

    def _idle(self, silent_seconds: float) -> None:
        if silent_seconds >= self._next_beat:
            self._next_beat += HEARTBEAT_SECONDS
            self.feedback.pushInfo(f"... still working ({int(silent_seconds)} s without output: pip prints nothing "
                                   "while it downloads or unpacks a large package such as torch)")

    def _finish(self, code: int) -> int:
        if self.cancelled:
            raise QgsProcessingException("Cancelled.")
        return code


class Stage:
    """Maps a step's own 0..1 progress into its share of the whole bar."""

    def __init__(self, feedback: QgsProcessingFeedback, start: float, end: float) -> None:
        self.feedback, self.start, self.end, self.value = feedback, start, end, 0.0
        feedback.setProgress(start)

    def advance(self, to_or_by: float, limit: float = 1.0) -> None:
        """Moves forward (``to_or_by`` >= the current value: to it; else by it), never back, never past limit."""
        target = to_or_by if to_or_by > self.value else self.value + to_or_by
        self.value = min(max(self.value, target), limit)
        self.feedback.setProgress(self.start + (self.end - self.start) * self.value)


def run_command(cmd: Sequence[str], feedback: QgsProcessingFeedback, stage: Stage) -> Tuple[int, List[str]]:
    """Runs a command, streaming its lines; returns (exit code, its last lines)."""
    feedback.pushInfo("Running: " + render([cmd]))
    run = CommandRun(cmd, feedback, stage)
    code = run.run()
    seen = set(run.output)  # stderr's last lines may arrive after stdout closed
    return code, list(run.output) + [line for line in run.stderr_tail if line not in seen]


def _failed(what: str, code: int, output: List[str]) -> QgsProcessingException:
    tail = "\n".join(output[-15:]) or "(no output)"
    return QgsProcessingException(f"{what} failed (exit code {code}). Its last lines:\n{tail}")


def run_pip(cmd: List[str], feedback: QgsProcessingFeedback, stage: Stage) -> None:
    """Runs one install command. With an extra index, pip's own sources go first (a local wheel, a
    company mirror or an offline wheelhouse named in pip.conf / PIP_FIND_LINKS need no internet);
    when they lack the pinned build, the same command runs with PyTorch's index."""
    if "--extra-index-url" in cmd:
        at = cmd.index("--extra-index-url")
        local = cmd[:at] + cmd[at + 2:]
        feedback.pushInfo("First from pip's own sources (pip.conf, PIP_FIND_LINKS, the default index):")
        code, output = run_command(local, feedback, stage)
        if code == 0:
            return
        if not any("No matching distribution" in line for line in output):
            raise _failed("pip", code, output)
        feedback.pushInfo(f"Not there; from PyTorch's index {cmd[at + 1]}:")
    code, output = run_command(cmd, feedback, stage)
    if code != 0:
        raise _failed("pip", code, output)


# ----------------------------------------------------------------------------- the set-up


@dataclass
class SetupResult:
    python: str
    folder: Path
    checked_only: bool
    report: Dict[str, Any]


def wanted_spec(build: str) -> Dict[str, Any]:
    """What a ready environment must match (else it is rebuilt): the build and the plugin's pins."""
    return {"build": build, "pins": read_pins()}


def _read_marker(folder: Path) -> Dict[str, Any]:
    try:
        data = json.loads((folder / READY_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _is_ours(folder: Path) -> bool:
    return (folder / READY_MARKER).is_file() or (folder / BUILDING_MARKER).is_file()


def _build_matches(report: Dict[str, Any], build: str) -> bool:
    torch_build = str(report.get("torch_build") or "")
    return torch_build == "CPU" if build == "cpu" else torch_build.startswith("CUDA")


def _check_only(folder: Path, build: str, feedback: QgsProcessingFeedback) -> Optional[SetupResult]:
    """A ready environment of the same build and pins: run its check; None when it must be rebuilt."""
    python = str(venv_python(folder))
    feedback.pushInfo(f"The worker environment in {folder} is already set up; checking it.")
    try:
        report = check_report(python, feedback)
    except QgsProcessingException as exc:
        feedback.pushWarning(f"Its check failed ({exc}); making it again.")
        return None
    if report.get("missing") or not _build_matches(report, build):
        feedback.pushWarning(f"It lacks {', '.join(report.get('missing') or []) or 'the right torch build'}; "
                             "making it again.")
        return None
    return SetupResult(python, folder, True, report)


def preflight(build: str, feedback: QgsProcessingFeedback) -> Dict[str, Any]:
    """QGIS's own Python: found, able to make a venv (ensurepip, or pip from its packages), GPU driver."""
    base = worker.qgis_base_python()
    if base is None:
        raise QgsProcessingException(
            f"QGIS's own Python was not found (looked in {getattr(sys, 'base_prefix', sys.prefix)}). Fix: set "
            "Processing > Options > Providers > Stack Segmenter > Worker Python to a Python that has torch.")
    feedback.pushInfo(f"QGIS's own Python, which the environment is made from and whose packages it sees: {base}")
    report = check_report(base, feedback)
    report["base_python"] = base
    if build == "cuda":
        if str(report.get("os")) == "darwin":
            raise QgsProcessingException("PyTorch publishes no CUDA builds for macOS. Pick the CPU build.")
        if not report.get("nvidia_driver"):
            raise QgsProcessingException(
                "The CUDA build needs an NVIDIA GPU with its driver, and no NVIDIA driver was found (nvidia-smi is "
                "not on PATH). Fix: install the NVIDIA driver first, or pick the CPU build.")
    if not report.get("ensurepip"):
        if not report.get("pip"):
            raise QgsProcessingException(
                f"QGIS's Python ({base}) cannot make a virtual environment: it has neither ensurepip nor pip. Fix "
                "(Debian/Ubuntu): sudo apt install python3-venv, then run this tool again.")
        feedback.pushInfo("QGIS's Python has no ensurepip (Debian's python3-venv is not installed); the environment "
                          f"uses the pip QGIS's Python has ({report.get('pip')}) instead.")
    return report


def _remove(folder: Path, feedback: QgsProcessingFeedback) -> None:
    """Deletes an environment folder this tool made (it carries one of our markers), unregistered first."""
    if not folder.exists():
        return
    if not _is_ours(folder):
        raise QgsProcessingException(f"Refusing to delete {folder}: it was not made by this tool.")
    configured = worker.configured_worker_python()
    if configured and worker.env_root(configured) == folder:
        worker.set_worker_python("")
        feedback.pushWarning(f"The setting 'Worker Python' pointed into {folder}, which is being replaced: cleared.")
    (folder / READY_MARKER).unlink(missing_ok=True)
    try:
        shutil.rmtree(folder)
    except OSError as exc:
        feedback.pushWarning(f"Could not remove {folder} ({exc}); it is not used (no ready marker). Delete it by hand.")


def create_venv(folder: Path, base: Dict[str, Any], feedback: QgsProcessingFeedback) -> str:
    """``python -m venv --system-site-packages`` from QGIS's own Python (``base`` = its preflight report;
    without ensurepip the venv gets no pip of its own and uses the one QGIS's Python has)."""
    create = [base["base_python"], "-m", "venv", "--system-site-packages"]
    create += [] if base.get("ensurepip") else ["--without-pip"]
    code, output = run_command([*create, str(folder)], feedback, Stage(feedback, 0, 10))
    if code != 0:
        raise _failed("Making the virtual environment", code, output)
    return str(venv_python(folder))


def _make(folder: Path, build: str, base: Dict[str, Any], feedback: QgsProcessingFeedback) -> Dict[str, Any]:
    """Builds the environment in ``folder`` (which holds only our building marker); returns its final check."""
    python = create_venv(folder, base, feedback)
    missing = list(check_report(python, feedback).get("missing") or [])
    feedback.pushInfo(f"To install: {', '.join(missing) or 'nothing'}")
    commands = install_commands(python, missing, build)
    for i, cmd in enumerate(commands):
        if feedback.isCanceled():
            raise QgsProcessingException("Cancelled.")
        share = 75.0 / len(commands)
        run_pip(cmd, feedback, Stage(feedback, 12 + i * share, 12 + (i + 1) * share))
    feedback.setProgress(90)
    feedback.pushInfo("Checking the new environment with the worker's own check:")
    report = check_report(python, feedback)
    if report.get("missing"):
        raise QgsProcessingException(f"After the installation {python} still lacks: {', '.join(report['missing'])}.")
    if not _build_matches(report, build):
        raise QgsProcessingException(
            f"pip installed a {report.get('torch_build')} build of torch, not the {build.upper()} build asked for.")
    if build == "cuda" and not report.get("cuda_available"):
        feedback.pushWarning("torch is a CUDA build but sees no usable GPU (an old driver?); it runs on the CPU.")
    return report


def set_up(folder: Path, build: str, feedback: QgsProcessingFeedback) -> SetupResult:
    """Makes (or only checks) the worker environment in ``folder``; the caller registers it."""
    if build not in BUILDS:
        raise QgsProcessingException(f"Unknown torch build {build!r}; use one of {', '.join(BUILDS)}.")
    folder = Path(folder)
    spec = wanted_spec(build)
    if is_ready_env(folder):
        marker = _read_marker(folder)
        if all(marker.get(k) == v for k, v in spec.items()):
            result = _check_only(folder, build, feedback)
            if result is not None:
                return result
        else:
            feedback.pushInfo(f"The environment in {folder} was made for {marker.get('build')} with other pins; "
                              f"making it again for {build}.")
    elif folder.exists() and any(folder.iterdir()) and not _is_ours(folder):
        raise QgsProcessingException(
            f"{folder} is not empty and was not made by this tool. Fix: pick a new or empty folder for the environment.")
    base = preflight(build, feedback)
    _remove(folder, feedback)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / BUILDING_MARKER).write_text("made by Stack Segmenter's 'Set up worker environment'\n",
                                              encoding="utf-8")
    except OSError as exc:
        raise QgsProcessingException(f"Cannot make the environment folder {folder}: {exc}. Fix: pick a folder you "
                                     "can write to (advanced parameter 'Environment folder').") from None
    started = time.monotonic()
    try:
        report = _make(folder, build, base, feedback)
        if feedback.isCanceled():
            raise QgsProcessingException("Cancelled.")
        marker = {**spec, "torch": report["packages"].get("torch"), "base_python": base["base_python"],
                  "created": time.strftime("%Y-%m-%d %H:%M:%S")}
        (folder / READY_MARKER).write_text(json.dumps(marker, indent=1), encoding="utf-8")
        (folder / BUILDING_MARKER).unlink(missing_ok=True)
    except BaseException as exc:
        _remove(folder, feedback)
        if feedback.isCanceled():
            raise QgsProcessingException(
                f"Cancelled: the half-made environment was removed ({folder}); the setting 'Worker Python' was "
                "not pointed at it.") from None
        if isinstance(exc, QgsProcessingException):
            raise QgsProcessingException(f"{exc}\nThe half-made environment was removed ({folder}).") from None
        raise
    feedback.pushInfo(f"The worker environment is ready ({time.monotonic() - started:.0f} s).")
    return SetupResult(str(venv_python(folder)), folder, False, report)
