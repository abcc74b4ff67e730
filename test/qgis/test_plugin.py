"""The plugin skeleton in real QGIS: import as `stack_segmenter`, classFactory, provider
registration (and removal), the settings, and `qgis_process.bin list` in a fresh profile."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator
from xml.etree import ElementTree


from qgis_helpers import QGIS_PROCESS, qgis_process_env

ALGORITHM_IDS = {
    "stacksegmenter:trainsegmenter", "stacksegmenter:predictprobabilitymap",
    "stacksegmenter:evaluateprobabilitymap", "stacksegmenter:checkenvironment", "stacksegmenter:setupworker",
}


def test_plugin_imports_under_its_installed_name(plugins_dir: Path) -> None:
    import stack_segmenter

    assert Path(stack_segmenter.__file__).resolve().parent == (plugins_dir / "stack_segmenter").resolve()
    assert callable(stack_segmenter.classFactory)


@contextmanager
def without_session_plugin(session_plugin: Any) -> Iterator[None]:
    """Unloads the session's plugin so a test can load its own, and restores it afterwards."""
    session_plugin.unload()
    try:
        yield
    finally:
        session_plugin.initProcessing()


def test_class_factory_registers_and_unloads_provider(plugin: Any) -> None:
    from qgis.core import QgsApplication

    import stack_segmenter

    registry = QgsApplication.processingRegistry()
    with without_session_plugin(plugin):
        assert registry.providerById("stacksegmenter") is None
        instance = stack_segmenter.classFactory(None)  # qgis_process passes no iface
        instance.initProcessing()
        instance.initProcessing()  # the desktop calls it again from initGui: still one provider
        try:
            provider = registry.providerById("stacksegmenter")
            assert provider is not None and provider is instance.provider
            assert provider.name() == "Stack Segmenter"
            assert provider.svgIconPath().endswith(".svg") and Path(provider.svgIconPath()).is_file()
            assert not provider.icon().isNull()
            ids = {a.id() for a in provider.algorithms()}
            assert ALGORITHM_IDS <= ids
            assert "stacksegmenter:trainpredictevaluate" in ids  # the shipped .model3
            assert registry.algorithmById("stacksegmenter:trainsegmenter") is not None
        finally:
            instance.unload()
        assert registry.providerById("stacksegmenter") is None


def test_init_gui_with_iface(plugin: Any, qgis_iface: Any) -> None:
    from qgis.core import QgsApplication

    import stack_segmenter

    registry = QgsApplication.processingRegistry()
    with without_session_plugin(plugin):
        instance = stack_segmenter.classFactory(qgis_iface)
        instance.initGui()
        try:
            assert registry.providerById("stacksegmenter") is instance.provider is not None
        finally:
            instance.unload()
        assert registry.providerById("stacksegmenter") is None


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


def test_plugin_never_imports_torch(plugins_dir: Path) -> None:
    """QGIS must stay torch-free: loading the plugin and its tools imports no torch."""
    code = ("import sys\n"
            "import stack_segmenter.provider, stack_segmenter.plugin\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torch_harmonics')))\n")
    env = {**os.environ, "PYTHONPATH": str(plugins_dir), "QT_QPA_PLATFORM": "offscreen"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_algorithms_never_touch_the_project_or_iface(repo_root: Path) -> None:
    """processAlgorithm runs on a worker thread and under qgis_process: no QgsProject.instance(), no iface."""
    offenders = []
    for path in list((repo_root / "algorithms").glob("*.py")) + [repo_root / "provider.py"]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr == "instance" and getattr(node.value, "id", "") == "QgsProject":
                offenders.append(f"{path.name}:{node.lineno} QgsProject.instance")
            if isinstance(node, ast.Name) and node.id == "iface":
                offenders.append(f"{path.name}:{node.lineno} iface")
    assert offenders == []


def test_shipped_model_matches_its_generator(plugin: Any, repo_root: Path, tmp_path: Path) -> None:
    """The committed .model3 is exactly what processing_models/make_train_predict_evaluate.py writes."""
    import importlib.util

    script = repo_root / "processing_models" / "make_train_predict_evaluate.py"
    spec = importlib.util.spec_from_file_location("make_train_predict_evaluate", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fresh = tmp_path / "fresh.model3"
    assert module.build().toFile(str(fresh))
    shipped = repo_root / "processing_models" / "train_predict_evaluate.model3"
    # Qt writes XML attributes in a random order: compare canonical XML (C14N sorts them).
    canonical = [ElementTree.canonicalize(p.read_text(encoding="utf-8"), strip_text=True) for p in (fresh, shipped)]
    assert canonical[0] == canonical[1], (
        "the shipped model is out of date (a tool's parameters or defaults changed): run "
        "QT_QPA_PLATFORM=offscreen python processing_models/make_train_predict_evaluate.py")


def test_shipped_model_validates_in_the_designer(plugin: Any, repo_root: Path) -> None:
    """Opened from its file, as the Model Designer does: no "Parameter X is mandatory", a readable name,
    ordered and described inputs, named outputs; in the toolbox under its stable id."""
    from qgis.core import QgsApplication, QgsProcessingModelAlgorithm

    model = QgsProcessingModelAlgorithm()
    assert model.fromFile(str(repo_root / "processing_models" / "train_predict_evaluate.model3"))
    ok, issues = model.validate()
    assert ok and issues == [], issues
    assert model.name() == "Train, predict and evaluate"
    inputs = [p.parameterName() for p in model.orderedParameters()]
    assert inputs[:3] == ["INPUT", "LABELS", "LABEL_FIELD"]
    for name in inputs:
        assert len(model.parameterDefinition(name).help()) > 20, name
        assert model.helpContent().get(name), name
    outputs = {o.name() for child in model.childAlgorithms().values() for o in child.modelOutputs().values()}
    assert outputs == {"Trained model", "Probability map", "Evaluation folder"}

    shipped = QgsApplication.processingRegistry().algorithmById("stacksegmenter:trainpredictevaluate")
    assert shipped.displayName() == "Train, predict and evaluate"
    assert shipped.helpUrl().startswith("file://") and "prospectivity" in shipped.tags()
    assert type(shipped.create()) is type(shipped) and shipped.create().id() == shipped.id()
