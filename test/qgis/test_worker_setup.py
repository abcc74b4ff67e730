""""Set up worker environment" and the worker's discovery, in real QGIS and qgis_process.

The slow test builds a real environment (torch from the local wheel pip finds through its own
configuration, as on CI's machine) in a throwaway QGIS profile, then trains with it. The
others stop before torch is installed: cancel, a QGIS Python without ensurepip or pip, and
the one command Check environment prints.
"""
from __future__ import annotations

import configparser
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest

from qgis_helpers import QGIS_PROCESS, TILE, TinyData, qgis_process_env

SYSTEM_PYTHON = "/usr/bin/python3"
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"


def system_python_lacks_torch() -> bool:
    return subprocess.run([SYSTEM_PYTHON, "-c", "import torch"], capture_output=True).returncode != 0


needs_bare_system_python = pytest.mark.skipif(not Path(SYSTEM_PYTHON).is_file() or not system_python_lacks_torch(),
                                              reason=f"needs {SYSTEM_PYTHON} without torch (Debian's, as in CI)")


def fresh_profile(plugins_dir: Path, profile: Path, path: str) -> Dict[str, str]:
    """A throwaway QGIS profile with the plugin enabled, and the given PATH (no venv on it: a new user)."""
    env = qgis_process_env(plugins_dir, profile)
    env["PATH"] = path
    enable = subprocess.run([QGIS_PROCESS, "plugins", "enable", "stack_segmenter"], env=env, capture_output=True,
                            text=True, timeout=120)
    assert enable.returncode == 0, enable.stderr[-2000:]
    return env


def qgis_run(env: Dict[str, str], alg: str, params: Dict[str, Any], timeout: int = 900) -> Dict[str, Any]:
    """`qgis_process.bin run ALG --json -- KEY=VALUE ...` -> its JSON (results and log)."""
    cmd: List[str] = [QGIS_PROCESS, "run", alg, "--json", "--", *(f"{k}={v}" for k, v in params.items())]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{alg} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout)


def saved_setting(profile: Path) -> str:
    """The "Worker Python" value qgis_process saved in the profile's QGIS3.ini."""
    ini = configparser.ConfigParser(interpolation=None)
    ini.read(profile / "profiles" / "default" / "QGIS" / "QGIS3.ini", encoding="utf-8")
    return ini.get("Processing", "Configuration\\STACK_SEGMENTER_WORKER_PYTHON", fallback="")


def shim_dir(tmp_path: Path) -> Path:
    """A fake `python3` first on PATH (like a pyenv shim); it leaves a file behind if anything runs it."""
    shims = tmp_path / "shims"
    shims.mkdir()
    (shims / "python3").write_text(f'#!/bin/sh\ntouch "{tmp_path / "shim_ran"}"\nexec {SYSTEM_PYTHON} "$@"\n',
                                   encoding="utf-8")
    (shims / "python3").chmod(0o755)
    return shims


# ----------------------------------------------------------------------------- the commands


def test_install_commands_follow_the_shipped_pins(plugin: Any, repo_root: Path) -> None:
    from stack_segmenter.algorithms import worker_setup as ws

    pins = ws.read_pins()
    assert ws.CONSTRAINTS == repo_root / "constraints.txt"
    assert pins["torch"] == "torch==2.13.0+cpu" and pins["torch-harmonics"] == "torch-harmonics==0.9.3"
    py = "/env/bin/python"
    linux = ws.install_commands(py, ["torch", "torch-harmonics", "rasterio"], "cpu", "linux")
    assert linux == [
        [py, "-m", "pip", "install", "--extra-index-url", ws.TORCH_CPU_INDEX, "torch==2.13.0+cpu", "rasterio",
         "numpy<2"],
        [py, "-m", "pip", "install", "--no-deps", "torch-harmonics==0.9.3"]]
    # macOS wheels carry no +cpu tag and PyPI has them; Linux CUDA = PyPI's default build.
    assert ws.install_commands(py, ["torch"], "cpu", "darwin") == [[py, "-m", "pip", "install", "torch==2.13.0",
                                                                    "numpy<2"]]
    assert ws.install_commands(py, ["torch"], "cuda", "linux")[0][4:] == ["torch==2.13.0", "numpy<2"]
    assert ws.install_commands(py, ["torch"], "cuda", "win32")[0][4:6] == ["--extra-index-url", ws.TORCH_CUDA_INDEX]
    # torch there but torch-harmonics not: only the --no-deps call; nothing missing: nothing to run.
    assert ws.install_commands(py, ["torch-harmonics"]) == [linux[1]]
    assert ws.install_commands(py, []) == []
    assert ws.render(linux, "linux").count(" && ") == 1 and "'numpy<2'" in ws.render(linux, "linux")
    windows = ws.render(ws.install_commands(r"C:\OSGeo4W\apps\Python312\python.exe", ["torch"], "cpu", "win32"),
                        "win32")
    assert windows.startswith(r"C:\OSGeo4W\apps\Python312\python.exe -m pip install")
    assert '"numpy<2"' in windows  # cmd.exe would read an unquoted < as a redirection
    spaced = ws.render([[r"C:\Program Files\QGIS 3.34\apps\Python312\python.exe", "-m", "pip"]], "win32")
    assert spaced == r'"C:\Program Files\QGIS 3.34\apps\Python312\python.exe" -m pip'


def test_fix_is_one_command_per_platform(plugin: Any) -> None:
    from stack_segmenter.algorithms import worker_setup as ws

    missing = ["torch", "torch-harmonics", "rasterio", "geopandas", "scipy", "scikit-learn", "matplotlib"]
    osgeo = r"C:\OSGeo4W\apps\Python312\python.exe"
    command, where = ws.manual_fix(osgeo, {"os": "win32", "missing": missing, "venv": False})
    assert "OSGeo4W Shell" in where and command == ws.render(ws.install_commands(osgeo, missing, "cpu", "win32"),
                                                             "win32")
    assert all(name in command for name in missing)
    mac = "/Applications/QGIS.app/Contents/MacOS/bin/python3"
    command, where = ws.manual_fix(mac, {"os": "darwin", "missing": ["torch", "torch-harmonics"], "venv": False})
    assert where == "in Terminal" and command.startswith(f"{mac} -m pip install torch==2.13.0 ")
    command, _ = ws.manual_fix("/usr/bin/python3", {"os": "linux", "missing": ["torch"], "venv": False,
                                                    "externally_managed": True, "ensurepip": False})
    assert command.startswith("/usr/bin/python3 -m venv --system-site-packages ") and "--user" not in command
    assert "sudo apt install python3-venv" in ws.fix_text("/usr/bin/python3", {
        "os": "linux", "missing": ["torch"], "venv": False, "externally_managed": True, "ensurepip": False})
    assert ws.manual_fix("/x/python", {"os": "linux", "missing": []}) == ("", "")


def test_check_environment_command_for_a_venv_missing_torch_is_the_tools(plugin: Any, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A venv made from QGIS's Python without torch: Check environment prints exactly what the tool runs."""
    import processing

    from stack_segmenter.algorithms import worker, worker_setup

    base = worker.qgis_base_python()
    assert base is not None
    if subprocess.run([base, "-c", "import torch"], capture_output=True).returncode == 0:
        pytest.skip(f"{base} has torch; this test needs a venv without it")
    subprocess.run([base, "-m", "venv", "--system-site-packages", "--without-pip", str(tmp_path / "venv")],
                   check=True, timeout=120)
    python = str(worker.venv_python(tmp_path / "venv"))
    monkeypatch.setenv(worker.ENV_VAR, python)
    report = processing.run("stacksegmenter:checkenvironment", {"OUTPUT_HTML": str(tmp_path / "env.html")})
    assert report["PYTHON"] == python and report["CHOSEN_BY"] == "the variable STACK_SEGMENTER_PYTHON"
    assert report["MISSING"] == "torch, torch-harmonics, elapid"
    tool_runs = worker_setup.install_commands(python, ["torch", "torch-harmonics", "elapid"], "cpu")
    assert report["INSTALL_COMMAND"] == worker_setup.render(tool_runs)
    assert report["INSTALL_COMMAND"] == (
        f"{python} -m pip install --extra-index-url https://download.pytorch.org/whl/cpu torch==2.13.0+cpu "
        f"'numpy<2' && {python} -m pip install --no-deps torch-harmonics==0.9.3 && "
        f"{python} -m pip install --no-deps elapid==1.0.1")


# ----------------------------------------------------------------------------- QGIS's Python without ensurepip


def shadow(tmp_path: Path, *modules: str) -> Path:
    """A folder that, first on PYTHONPATH, makes these modules fail to import (as without Debian's python3-venv)."""
    folder = tmp_path / "shadow"
    for module in modules:
        (folder / module).mkdir(parents=True)
        (folder / module / "__init__.py").write_text(f"raise ImportError('No module named {module}')\n")
    return folder


def test_without_ensurepip_the_venv_uses_qgis_pythons_pip(plugin: Any, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from qgis.core import QgsProcessingFeedback

    from stack_segmenter.algorithms import worker_setup

    monkeypatch.setenv("PYTHONPATH", str(shadow(tmp_path, "ensurepip")))
    feedback = QgsProcessingFeedback()
    base = worker_setup.preflight("cpu", feedback)
    assert base["ensurepip"] is False and base["pip"]
    python = worker_setup.create_venv(tmp_path / "env", base, feedback)
    assert not list((tmp_path / "env").glob("lib/python*/site-packages/pip"))  # no pip of its own ...
    monkeypatch.delenv("PYTHONPATH")
    pip = subprocess.run([python, "-m", "pip", "--version"], capture_output=True, text=True, timeout=120)
    assert pip.returncode == 0 and "pip" in pip.stdout  # ... yet pip works in it: QGIS's Python's


def test_without_ensurepip_and_pip_the_tool_names_the_package(plugin: Any, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import processing
    from qgis.core import QgsProcessingException

    monkeypatch.setenv("PYTHONPATH", str(shadow(tmp_path, "ensurepip", "pip")))
    with pytest.raises(QgsProcessingException, match="sudo apt install python3-venv"):
        processing.run("stacksegmenter:setupworker", {"ENVIRONMENT_FOLDER": str(tmp_path / "env")})
    assert not (tmp_path / "env").exists()


def test_a_foreign_folder_is_never_used_or_deleted(plugin: Any, tmp_path: Path) -> None:
    import processing
    from qgis.core import QgsProcessingException

    folder = tmp_path / "my_files"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(QgsProcessingException, match="not empty and was not made by this tool"):
        processing.run("stacksegmenter:setupworker", {"ENVIRONMENT_FOLDER": str(folder)})
    assert (folder / "notes.txt").read_text() == "keep me" and len(list(folder.iterdir())) == 1


# ----------------------------------------------------------------------------- cancel


def test_cancel_leaves_no_half_made_environment(plugin: Any, tmp_path: Path) -> None:
    import processing
    from processing.core.ProcessingConfig import ProcessingConfig
    from qgis.core import QgsProcessingException, QgsProcessingFeedback

    from stack_segmenter.algorithms import worker

    class CancelAtPip(QgsProcessingFeedback):
        """Cancels as soon as pip starts installing (the venv itself exists by then)."""

        def __init__(self) -> None:
            super().__init__()
            self.infos: List[str] = []
            self.cancelled_at = 0.0

        def pushInfo(self, info: str) -> None:  # noqa: N802 (Qt API)
            self.infos.append(info)
            if " -m pip install " in info and not self.isCanceled():
                self.cancelled_at = time.monotonic()
                self.cancel()
            super().pushInfo(info)

    folder = tmp_path / "env"
    before = ProcessingConfig.getSetting(worker.WORKER_PYTHON_SETTING)
    feedback = CancelAtPip()
    with pytest.raises(QgsProcessingException) as info:
        processing.run("stacksegmenter:setupworker", {"ENVIRONMENT_FOLDER": str(folder)}, feedback=feedback)
    assert feedback.cancelled_at > 0, feedback.infos[-5:]
    assert time.monotonic() - feedback.cancelled_at < 15, "pip was not stopped promptly"
    assert "Cancelled" in str(info.value) and "removed" in str(info.value)
    assert any(line.startswith("Running: ") and " -m venv " in line for line in feedback.infos)
    assert not folder.exists() and not worker.is_ready_env(folder)
    assert ProcessingConfig.getSetting(worker.WORKER_PYTHON_SETTING) == before


# ----------------------------------------------------------------------------- qgis_process


@needs_bare_system_python
def test_qgis_process_ignores_a_python3_first_on_path(plugins_dir: Path, tmp_path: Path) -> None:
    """A fake python3 first on PATH: qgis_process's worker is QGIS's own Python, and Check environment says so."""
    shims = shim_dir(tmp_path)
    env = fresh_profile(plugins_dir, tmp_path / "profile", f"{shims}:{SYSTEM_PATH}")
    results = qgis_run(env, "stacksegmenter:checkenvironment", {})["results"]
    assert results["PYTHON"] == SYSTEM_PYTHON
    assert results["CHOSEN_BY"] == "the environment QGIS's own Python runs in (/usr)"
    assert results["MISSING"] == "torch, torch-harmonics, elapid"
    assert results["INSTALL_COMMAND"].startswith(f"{SYSTEM_PYTHON} -m venv --system-site-packages ")
    assert not (tmp_path / "shim_ran").exists(), "the python3 first on PATH was run"


@pytest.mark.slow
@needs_bare_system_python
def test_setup_tool_builds_the_environment_and_train_uses_it(plugins_dir: Path, tiny_data: TinyData,
                                                             tmp_path: Path) -> None:
    """A new user: QGIS without torch anywhere, no venv on PATH. Set up, check, train; again = only a check."""
    from stack_segmenter.algorithms import worker, worker_setup

    profile = tmp_path / "profile"
    env = fresh_profile(plugins_dir, profile, SYSTEM_PATH)
    started = time.monotonic()
    out = qgis_run(env, "stacksegmenter:setupworker", {})
    built_in = time.monotonic() - started
    folder = profile / "profiles" / "default" / "stack_segmenter" / "worker_env"
    python = str(worker.venv_python(folder))
    results = out["results"]
    assert results["PYTHON"] == python and Path(results["FOLDER"]) == folder
    assert results["TORCH_VERSION"] == "2.13.0+cpu" and results["CHECKED_ONLY"] is False
    assert worker.is_ready_env(folder) and not (folder / worker_setup.BUILDING_MARKER).exists()
    assert saved_setting(profile) == python
    log = "\n".join(out["log"]["info"])
    # It ran what Check environment would print for that venv (pip's own sources first: the local wheel).
    full = worker_setup.install_commands(python, ["torch", "torch-harmonics", "elapid"], "cpu")
    local = [c for c in full[0] if c not in ("--extra-index-url", worker_setup.TORCH_CPU_INDEX)]
    assert f"Running: {worker_setup.render([local])}" in log
    assert all(f"Running: {worker_setup.render([cmd])}" in log for cmd in full[1:])  # the --no-deps installs
    assert "Checking the new environment with the worker's own check" in log

    checked = qgis_run(env, "stacksegmenter:checkenvironment", {})["results"]
    assert checked["PYTHON"] == python and checked["PROBLEMS"] == 0 and checked["TORCH_BUILD"] == "CPU"
    assert checked["CHOSEN_BY"] == "the setting 'Worker Python' (an environment made by 'Set up worker environment')"

    trained = qgis_run(env, "stacksegmenter:trainsegmenter", {
        "INPUT": tiny_data.raster, "LABELS": tiny_data.labels_shp, "OUTPUT_MODEL": tmp_path / "model.pt",
        "EPOCHS": 1, "TILE_SIZE": TILE, "DEVICE": "cpu"})
    assert trained["results"]["EPOCHS_RUN"] == 1 and (tmp_path / "model.pt").is_file()
    assert f"Worker Python: {python}" in trained["log"]["info"]

    again = qgis_run(env, "stacksegmenter:setupworker", {})
    assert again["results"]["CHECKED_ONLY"] is True and again["results"]["PYTHON"] == python
    assert not any(" -m pip " in line or " -m venv " in line for line in again["log"]["info"])

    # Setting cleared, a python3 shim first on PATH: QGIS's own Python has no torch, so the tool's environment.
    ini = profile / "profiles" / "default" / "QGIS" / "QGIS3.ini"
    ini.write_text("\n".join(l for l in ini.read_text().splitlines() if "STACK_SEGMENTER_WORKER_PYTHON" not in l))
    env["PATH"] = f"{shim_dir(tmp_path)}:{SYSTEM_PATH}"
    found = qgis_run(env, "stacksegmenter:checkenvironment", {})["results"]
    assert found["PYTHON"] == python and found["PROBLEMS"] == 0
    assert found["CHOSEN_BY"].startswith(f"the environment made by 'Set up worker environment' ({folder})")
    assert not (tmp_path / "shim_ran").exists()
    print(f"\nset-up tool: built the environment in {built_in:.0f} s")
