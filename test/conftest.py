"""Test set-up shared by test/core and test/qgis.

The repository root is on sys.path (pytest.ini), so the core imports as ``core``. The
plugin imports as ``stack_segmenter`` through a symlink in a temporary plugins folder,
the same folder ``QGIS_PLUGINPATH`` names for qgis_process tests; nothing depends on the
name of the folder the repository was cloned into.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator, List

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
PLUGIN_NAME = "stack_segmenter"

_PLUGINS_DIR = Path(tempfile.mkdtemp(prefix="stack_segmenter_plugins_"))
(_PLUGINS_DIR / PLUGIN_NAME).symlink_to(REPO_ROOT, target_is_directory=True)
sys.path.insert(0, str(_PLUGINS_DIR))
os.environ["QGIS_PLUGINPATH"] = str(_PLUGINS_DIR)
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The temporary plugins folder goes with the session (the symlink only: the repository stays)."""
    shutil.rmtree(_PLUGINS_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (= the plugin folder)."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def plugins_dir() -> Path:
    """A plugins folder holding ``stack_segmenter`` -> the repository (for QGIS_PLUGINPATH)."""
    return _PLUGINS_DIR


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data; tests that need it skip with a clear reason when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real datasets not found at {SHARED_DATA} (CI has them beside the clone)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def worker_python() -> str:
    """The Python that runs the core (the venv's, as `make test` puts it first on PATH)."""
    return sys.executable


class SmallDisks:
    """Small real file systems (tmpfs): disks that really fill up, for the full-disk tests."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.mounted: List[Path] = []

    def mount(self, kib: int) -> Path:
        """A new tmpfs of ``kib`` KiB; skips (saying why) where mounting is not allowed."""
        path = self.root / f"disk{len(self.mounted)}"
        path.mkdir()
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k,mode=0755", "tmpfs", str(path)],
                             capture_output=True, text=True)
        if res.returncode != 0:
            path.rmdir()
            pytest.skip(f"cannot mount a {kib} KiB tmpfs to simulate a full disk ({res.stderr.strip()}); "
                        "mounting needs root, as CI has (test_files.py covers write failures without it)")
        self.mounted.append(path)
        return path

    @staticmethod
    def fill(folder: Path, leave: int = 0) -> Path:
        """Fills the file system of ``folder`` with one file until at most ``leave`` bytes stay free."""
        import shutil

        filler = folder / "filler.bin"
        with open(filler, "ab") as fh:
            while True:
                free = shutil.disk_usage(folder).free
                if free <= leave:
                    break
                try:
                    fh.write(b"\0" * min(65536, max(1, free - leave)))
                    fh.flush()
                except OSError:
                    break
        return filler

    def unmount_all(self) -> None:
        for path in self.mounted:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisks]:
    """``small_disk.mount(kib)`` -> a folder on a tmpfs of that size; ``small_disk.fill(folder)``."""
    disks = SmallDisks(tmp_path)
    yield disks
    disks.unmount_all()
