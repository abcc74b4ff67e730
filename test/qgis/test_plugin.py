"""The plugin skeleton in real QGIS: import as `stack_segmenter`, classFactory, provider
registration (and removal), the settings, and `qgis_process.bin list` in a fresh profile."""
from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any, Dict

import pytest

from qgis_helpers import QGIS_PROCESS, qgis_process_env

ALGORITHM_IDS = {
    "stacksegmenter:trainsegmenter", "stacksegmenter:predictprobabilitymap",
    "stacksegmenter:evaluateprobabilitymap", "stacksegmenter:checkenvironment",
}


def test_plugin_imports_under_its_installed_name(plugins_dir: Path) -> None:
    import stack_segmenter

    assert Path(stack_segmenter.__file__).resolve().parent == (plugins_dir / "stack_segmenter").resolve()
    assert callable(stack_segmenter.classFactory)


def test_class_factory_registers_and_unloads_provider(qgis_processing: None) -> None:
    from qgis.core import QgsApplication

    import stack_segmenter

    registry = QgsApplication.processingRegistry()
    existing = registry.providerById("stacksegmenter")
    if existing is not None:  # the session's shared plugin (conftest) may be loaded already
        registry.removeProvider(existing)
    plugin = stack_segmenter.classFactory(None)  # qgis_process passes no iface
    plugin.initProcessing()
    plugin.initProcessing()  # the desktop calls it again from initGui: still one provider
    provider = registry.providerById("stacksegmenter")
    try:
        assert provider is not None
        assert provider.name() == "Stack Segmenter"
        assert provider.svgIconPath().endswith(".svg") and Path(provider.svgIconPath()).is_file()
        assert not provider.icon().isNull()
        ids = {a.id() for a in provider.algorithms()}
        assert ALGORITHM_IDS <= ids
        assert "stacksegmenter:trainpredictevaluate" in ids  # the shipped .model3
        assert registry.algorithmById("stacksegmenter:trainsegmenter") is not None
    finally:
        plugin.unload()
    assert registry.providerById("stacksegmenter") is None
    if existing is not None:
        registry.addProvider(type(existing)())


def test_init_gui_with_iface(qgis_processing: None, qgis_iface: Any) -> None:
    from qgis.core import QgsApplication

    import stack_segmenter

    registry = QgsApplication.processingRegistry()
    existing = registry.providerById("stacksegmenter")
    if existing is not None:
        registry.removeProvider(existing)
    plugin = stack_segmenter.classFactory(qgis_iface)
    plugin.initGui()
    try:
        assert registry.providerById("stacksegmenter") is not None
    finally:
        plugin.unload()
        if existing is not None:
            registry.addProvider(type(existing)())


def test_worker_python_setting_is_registered(plugin: Any) -> None:
    from processing.core.ProcessingConfig import ProcessingConfig, Setting

    from stack_segmenter.algorithms.base import WORKER_PYTHON_SETTING

    setting = ProcessingConfig.settings[WORKER_PYTHON_SETTING]
    assert setting.group == "Stack Segmenter"
    assert setting.valuetype == Setting.FILE
    assert "Worker Python" in setting.description


def test_qgis_process_lists_the_provider(plugins_dir: Path, tmp_path: Path) -> None:
    env = qgis_process_env(plugins_dir, tmp_path / "profile")
    enable = subprocess.run([QGIS_PROCESS, "plugins", "enable", "stack_segmenter"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert enable.returncode == 0, enable.stderr[-2000:]
    listing = subprocess.run([QGIS_PROCESS, "list"], env=env, capture_output=True, text=True, timeout=120)
    assert listing.returncode == 0, listing.stderr[-2000:]
    assert "Stack Segmenter" in listing.stdout
    for alg_id in ALGORITHM_IDS | {"stacksegmenter:trainpredictevaluate"}:
        assert alg_id in listing.stdout
