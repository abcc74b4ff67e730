"""Test set-up shared by test/core and test/qgis.

The repository root is on sys.path (pytest.ini), so the core imports as ``core``. The
plugin imports as ``stack_segmenter`` through a symlink in a temporary plugins folder,
the same folder ``QGIS_PLUGINPATH`` names for qgis_process tests; nothing depends on the
name of the folder the repository was cloned into.
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
PLUGIN_NAME = "stack_segmenter"

_PLUGINS_DIR = Path(tempfile.mkdtemp(prefix="stack_segmenter_plugins_"))
(_PLUGINS_DIR / PLUGIN_NAME).symlink_to(REPO_ROOT, target_is_directory=True)
sys.path.insert(0, str(_PLUGINS_DIR))
os.environ["QGIS_PLUGINPATH"] = str(_PLUGINS_DIR)
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


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
