"""Issue 11 in real QGIS: the tools never lose a user's file and report every refusal without a traceback.

Each case checks the exception's message and that no file changed (SHA-256 before and after).
"""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any, Dict

import pytest

from qgis_helpers import TinyData, train_params


def hashes(folder: Path) -> Dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def _run(alg: str, params: Dict[str, Any]) -> str:
    """Runs a tool that must fail; returns its message (checked to hold no traceback)."""
    import processing
    from qgis.core import QgsProcessingException

    with pytest.raises(QgsProcessingException) as info:
        processing.run(alg, params)
    message = str(info.value)
    assert "Traceback" not in message and "this is a bug" not in message, message
    return message


def test_output_paths_are_checked_before_the_worker_starts(plugin: Any, tiny_data: TinyData, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A parent that is a regular file: one clear message naming the parameter (was a raw FileExistsError)."""
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    # A worker Python that does not exist: reaching the worker would fail with another message.
    monkeypatch.setenv("STACK_SEGMENTER_PYTHON", str(tmp_path / "no" / "python"))
    message = _run("stacksegmenter:trainsegmenter",
                   train_params(tiny_data, tmp_path, OUTPUT_MODEL=str(blocker / "m.pt")))
    assert "(OUTPUT_MODEL)" in message and "is a file, not a folder" in message
    message = _run("stacksegmenter:trainsegmenter",
                   train_params(tiny_data, tmp_path, OUTPUT_FOLDER=str(blocker / "sub" / "training")))
    assert "(OUTPUT_FOLDER)" in message and "is a file, not a folder" in message
    model = tmp_path / "model.pt"
    model.write_bytes(b"not read: the output is refused first")
    message = _run("stacksegmenter:predictprobabilitymap", {
        "INPUT": str(tiny_data.raster), "MODEL": str(model), "OUTPUT": str(blocker / "p.tif")})
    assert "(OUTPUT)" in message and "is a file, not a folder" in message
    message = _run("stacksegmenter:evaluateprobabilitymap", {
        "PROBABILITY_MAP": str(tiny_data.raster), "LABELS": str(tiny_data.labels_shp), "OUTPUT_FOLDER": str(blocker)})
    assert "(OUTPUT_FOLDER)" in message and "is a file, not a folder" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "model.pt"]


def test_train_never_replaces_an_existing_model_by_accident(plugin: Any, trained: Dict[str, Any], tiny_data: TinyData,
                                                             tmp_path: Path) -> None:
    model = Path(shutil.copy(trained["OUTPUT_MODEL"], tmp_path / "model.pt"))
    before = hashes(tmp_path)
    message = _run("stacksegmenter:trainsegmenter", train_params(tiny_data, tmp_path, EPOCHS=0,
                                                                 OUTPUT_MODEL=str(model)))
    assert "already holds a trained model" in message
    assert '"Overwrite existing model" (OVERWRITE)' in message and "(RESUME)" in message
    assert hashes(tmp_path) == before and not (tmp_path / "training").exists()


def test_predict_refuses_to_write_over_the_model(plugin: Any, trained: Dict[str, Any], tiny_data: TinyData,
                                                 tmp_path: Path) -> None:
    model = Path(shutil.copy(trained["OUTPUT_MODEL"], tmp_path / "model.pt"))
    before = hashes(tmp_path)
    message = _run("stacksegmenter:predictprobabilitymap", {
        "INPUT": str(tiny_data.raster), "MODEL": str(model), "OUTPUT": str(model)})
    assert "is the model file" in message
    assert hashes(tmp_path) == before


def test_predict_on_a_full_disk_fails_and_keeps_the_earlier_map(plugin: Any, trained: Dict[str, Any],
                                                                tiny_data: TinyData, small_disk: Any) -> None:
    disk = small_disk.mount(64)
    earlier = disk / "probability.tif"
    earlier.write_bytes(b"an earlier map" * 50)
    before = hashes(disk)
    message = _run("stacksegmenter:predictprobabilitymap", {
        "INPUT": str(tiny_data.raster), "MODEL": trained["OUTPUT_MODEL"], "OUTPUT": str(earlier)})
    assert "No space left on device" in message and str(earlier) in message
    assert hashes(disk) == before
