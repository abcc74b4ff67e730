"""Shared fixtures of the QGIS tests: the tiny dataset, QGIS Processing with the plugin loaded,
and one trained tiny model shared by every test that needs one (training is the slow part).

The venv's bin goes first on PATH for the whole session (as `make test` does), so the
worker's default Python is the venv's.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Dict

import pytest

from qgis_helpers import TinyData, make_tiny_data, train_params

os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
os.environ.pop("STACK_SEGMENTER_PYTHON", None)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> TinyData:
    """The seeded tiny dataset (read-only: tests write elsewhere)."""
    return make_tiny_data(tmp_path_factory.mktemp("tiny_data"))


@pytest.fixture(scope="session")
def plugin(qgis_processing: None, plugins_dir: Path) -> Any:
    """The plugin loaded as QGIS does (classFactory without iface, then initProcessing)."""
    from qgis.core import QgsApplication

    import stack_segmenter

    instance = stack_segmenter.classFactory(None)
    instance.initProcessing()
    assert QgsApplication.processingRegistry().providerById("stacksegmenter") is not None
    yield instance
    instance.unload()


@pytest.fixture(scope="session")
def trained(plugin: Any, tiny_data: TinyData, tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    """One processing.run of Train segmenter, shared (its outputs are read-only for tests)."""
    import processing

    out = tmp_path_factory.mktemp("trained")
    return processing.run("stacksegmenter:trainsegmenter", train_params(tiny_data, out))


@pytest.fixture(scope="session")
def predicted(trained: Dict[str, Any], tiny_data: TinyData, tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    """One processing.run of Predict probability map with the shared model."""
    import processing

    out = tmp_path_factory.mktemp("predicted")
    return processing.run("stacksegmenter:predictprobabilitymap", {
        "INPUT": str(tiny_data.raster), "MODEL": trained["OUTPUT_MODEL"], "OUTPUT": str(out / "probability.tif")})


@pytest.fixture(scope="session")
def trained_ensemble(plugin: Any, tiny_data: TinyData, tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    """Train segmenter with 2 ensemble members (shared by the uncertainty tests; read-only)."""
    import processing

    out = tmp_path_factory.mktemp("trained_ensemble")
    return processing.run("stacksegmenter:trainsegmenter", train_params(tiny_data, out, ENSEMBLE=2))
