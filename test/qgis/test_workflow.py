"""A geologist's day in QGIS: evidence layers on different grids in, bands found by name, a model
kept in a lasting folder, validation blocks loaded, one line per epoch, a clean cancel."""
from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest

from qgis_helpers import PIXEL, SIZE, EvidenceLayers, TinyData, default_model, make_evidence_layers, train_params


@pytest.fixture(scope="module")
def evidence(tiny_data: TinyData, tmp_path_factory: pytest.TempPathFactory) -> EvidenceLayers:
    """Four single-band rasters: 10 m (the reference), 20 m, 5 m with a wider extent, 40 m lithology codes."""
    return make_evidence_layers(tiny_data, tmp_path_factory.mktemp("evidence"))


@pytest.fixture(scope="module")
def multi_trained(plugin: Any, tiny_data: TinyData, evidence: EvidenceLayers,
                  tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    """Train on the four layers, lithology categorical (named with other capitals, as a user types it)."""
    import processing

    out = tmp_path_factory.mktemp("multi")
    feedback = Recording()
    result = processing.run("stacksegmenter:trainsegmenter", train_params(
        tiny_data, out, INPUT=[str(p) for p in evidence.paths], CATEGORICAL_BANDS="Lithology"), feedback=feedback)
    return {**result, "infos": feedback.infos}


def Recording(cancel_when: str = "") -> Any:  # noqa: N802 - builds a QgsProcessingFeedback subclass instance
    """A feedback that records infos and progress (and cancels when a line contains ``cancel_when``)."""
    from qgis.core import QgsProcessingFeedback

    class Feedback(QgsProcessingFeedback):
        def __init__(self) -> None:
            super().__init__()
            self.infos: List[str] = []
            self.events: List[Any] = []

        def pushInfo(self, info: str) -> None:  # noqa: N802 (Qt API)
            self.infos.append(info)
            self.events.append(("info", info))
            if cancel_when and cancel_when in info and not self.isCanceled():
                self.cancel()
            super().pushInfo(info)

        def pushDebugInfo(self, info: str) -> None:  # noqa: N802 (Qt API)
            self.pushInfo(info)

        def setProgress(self, progress: float) -> None:  # noqa: N802 (Qt API)
            self.events.append(("progress", progress))
            super().setProgress(progress)

    return Feedback()


def read_band(path: str, band: int = 1) -> np.ndarray:
    import rasterio

    with rasterio.open(path) as src:
        return src.read(band)


# ----------------------------------------------------------------------------- the stack


def test_build_evidence_stack_aligns_names_and_resamples(plugin: Any, evidence: EvidenceLayers,
                                                         tmp_path: Path) -> None:
    import processing
    import rasterio

    out = tmp_path / "stack.tif"
    result = processing.run("stacksegmenter:buildevidencestack", {
        "INPUT": [str(p) for p in evidence.paths], "CATEGORICAL_BANDS": "lithology", "OUTPUT": str(out)})
    assert result["BAND_NAMES"] == "signal, noise_fine, noise_coarse, lithology"
    with rasterio.open(out) as src:
        assert (src.width, src.height, src.count, src.res) == (SIZE, SIZE, 4, (PIXEL, PIXEL))  # the first layer's grid
        assert src.descriptions == ("signal", "noise_fine", "noise_coarse", "lithology")
        stack = src.read()
    with rasterio.open(evidence.signal) as src:
        signal = src.read(1, masked=True)
    # On the reference grid: the same values, its nodata now NaN.
    assert np.array_equal(np.isnan(stack[0]), signal.mask)
    assert np.array_equal(stack[0][~signal.mask], signal.compressed())
    # Categorical: nearest neighbour keeps the codes; continuous: bilinear makes new values.
    assert set(np.unique(stack[3])) == {1.0, 2.0, 3.0}
    fine = read_band(str(evidence.noise_fine))
    assert len(np.unique(stack[1][np.isfinite(stack[1])])) > 2 * len(np.unique(fine))


def test_build_evidence_stack_refuses_an_unknown_band_name(plugin: Any, evidence: EvidenceLayers,
                                                           tmp_path: Path) -> None:
    import processing
    from qgis.core import QgsProcessingException

    with pytest.raises(QgsProcessingException, match="'geology' is not a band.*signal, noise_fine, noise_coarse"):
        processing.run("stacksegmenter:buildevidencestack", {
            "INPUT": [str(p) for p in evidence.paths], "CATEGORICAL_BANDS": "geology", "OUTPUT": str(tmp_path / "s.tif")})
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- train and predict


def test_several_layers_with_different_pixel_sizes_train(multi_trained: Dict[str, Any]) -> None:
    import rasterio

    folder = Path(multi_trained["OUTPUT_FOLDER"])
    with rasterio.open(folder / "evidence_stack.vrt") as src:
        assert src.descriptions == ("signal", "noise_fine", "noise_coarse", "lithology")
        assert (src.width, src.height) == (SIZE, SIZE)
    assert Path(multi_trained["OUTPUT_MODEL"]).is_file()
    # The categorical band chosen by name reached the core as band 4, one-hot encoded.
    assert any(re.match(r"categorical band 4 \(lithology\): 3 code", line) for line in multi_trained["infos"])


def test_training_report_is_an_html_output_for_the_results_viewer(plugin: Any,
                                                                  multi_trained: Dict[str, Any]) -> None:
    """One HTML page per run (OUTPUT_HTML, listed by the Results Viewer): held-out skill, fit, pixels, the
    validation-block map with the deposits, the curves; every image it shows is there."""
    from qgis.core import QgsApplication

    alg = QgsApplication.processingRegistry().algorithmById("stacksegmenter:trainsegmenter")
    assert alg.outputDefinition("OUTPUT_HTML").type() == "outputHtml"
    report = Path(multi_trained["OUTPUT_HTML"])
    assert report.is_file() and report.parent.parent == Path(multi_trained["OUTPUT_FOLDER"])
    page = report.read_text(encoding="utf-8")
    assert page.index("Held-out skill") < page.index("Fit, not skill") < page.index("Validation blocks")
    images = re.findall(r'<img src="([^"]+)"', page)
    assert "figures/validation_blocks.png" in images and "figures/curves.png" in images
    assert all((report.parent / image).is_file() for image in images)
    assert "lithology" in page  # the settings name the categorical band


def test_predict_maps_layers_by_name_in_any_order(multi_trained: Dict[str, Any], evidence: EvidenceLayers,
                                                  tmp_path: Path) -> None:
    import processing
    from qgis.core import QgsProcessingException

    def predict(layers: List[Path], name: str) -> np.ndarray:
        out = processing.run("stacksegmenter:predictprobabilitymap", {
            "INPUT": [str(p) for p in layers], "MODEL": multi_trained["OUTPUT_MODEL"],
            "OUTPUT": str(tmp_path / name)})["OUTPUT"]
        return read_band(out)

    same_order = predict(evidence.paths, "same.tif")
    # The first layer gives the grid; the others may come in any order.
    other_order = predict([evidence.signal, evidence.lithology, evidence.noise_coarse, evidence.noise_fine],
                          "other.tif")
    assert same_order.shape == (SIZE, SIZE)
    assert np.array_equal(same_order, other_order)
    with pytest.raises(QgsProcessingException, match="lacks 1 band.*'noise_coarse'"):
        predict([evidence.signal, evidence.noise_fine, evidence.lithology], "missing.tif")


def test_predicted_layer_is_named_after_the_model(plugin: Any, qgis_iface: Any, multi_trained: Dict[str, Any],
                                                  evidence: EvidenceLayers, tmp_path: Path) -> None:
    import processing
    from qgis.core import QgsProject

    processing.runAndLoadResults("stacksegmenter:predictprobabilitymap", {
        "INPUT": [str(p) for p in evidence.paths], "MODEL": multi_trained["OUTPUT_MODEL"],
        "OUTPUT": str(tmp_path / "map.tif")})
    try:
        names = [layer.name() for layer in QgsProject.instance().mapLayers().values()]
    finally:
        QgsProject.instance().removeAllMapLayers()
    model = Path(multi_trained["OUTPUT_MODEL"])
    assert names == [f"Prospectivity ({model.parent.name}/model)"]


# ----------------------------------------------------------------------------- the kept model


def test_without_a_path_the_model_is_kept_in_a_new_lasting_folder(plugin: Any, qgis_iface: Any, tiny_data: TinyData,
                                                                   tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """No model path, no folder: ~/StackSegmenter/runs/<model>_<time>/ (or beside a saved project), one per run;
    QGIS loads the validation blocks."""
    import processing
    from qgis.core import QgsProject, QgsVectorLayer

    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    params = train_params(tiny_data, tmp_path, EPOCHS=0)
    del params["OUTPUT_MODEL"], params["OUTPUT_FOLDER"]
    first = processing.run("stacksegmenter:trainsegmenter", params)
    second = processing.run("stacksegmenter:trainsegmenter", params)
    runs = home / "StackSegmenter" / "runs"
    for result in (first, second):
        model, folder = Path(result["OUTPUT_MODEL"]), Path(result["OUTPUT_FOLDER"])
        assert model.is_file() and model.parent == folder and folder.parent == runs
        arch = default_model().split("_")[0]
        assert model.name == f"{folder.name}.pt" and re.fullmatch(arch + r"_\d{4}-\d\d-\d\d_\d{6}(_\d+)?", folder.name)
    assert first["OUTPUT_FOLDER"] != second["OUTPUT_FOLDER"]

    project_dir = tmp_path / "project"
    project_dir.mkdir()
    QgsProject.instance().setFileName(str(project_dir / "prospects.qgz"))
    try:
        third = processing.runAndLoadResults("stacksegmenter:trainsegmenter", params)
        layers = list(QgsProject.instance().mapLayers().values())
        assert Path(third["OUTPUT_MODEL"]).parent.parent == project_dir / "stack_segmenter_runs"
        blocks = [lyr for lyr in layers if isinstance(lyr, QgsVectorLayer)]
        assert [lyr.name() for lyr in blocks] == [f"Validation blocks ({Path(third['OUTPUT_MODEL']).stem})"]
        assert blocks[0].featureCount() >= 1 and blocks[0].renderer().symbol().color().alpha() == 0
    finally:
        QgsProject.instance().removeAllMapLayers()
        QgsProject.instance().setFileName("")


# ----------------------------------------------------------------------------- log and cancel


def test_one_line_per_epoch_and_progress_before_the_first_epoch(multi_trained: Dict[str, Any]) -> None:
    epoch_lines = [line for line in multi_trained["infos"]
                   if re.search(r"\bepoch 1\b", line) and " final fit epoch " not in line]
    assert len(epoch_lines) == 1, epoch_lines  # no second (debug) line for the same epoch
    refit = [line for line in multi_trained["infos"] if re.search(r" final fit epoch 1/\d+: train_loss", line)]
    assert len(refit) == 1, refit  # the final fit (the default per-pixel model's) has its own line per epoch
    assert re.search(r"val_loss .*; [\d.]+ s/epoch, last epoch$", epoch_lines[0]), epoch_lines[0]


def test_progress_moves_before_the_first_epoch(plugin: Any, tiny_data: TinyData, tmp_path: Path) -> None:
    import processing

    feedback = Recording()
    processing.run("stacksegmenter:trainsegmenter", train_params(tiny_data, tmp_path, EPOCHS=1), feedback=feedback)
    first_epoch = next(i for i, (kind, value) in enumerate(feedback.events)
                       if kind == "info" and re.search(r"\bepoch 1\b", value))
    before = [value for kind, value in feedback.events[:first_epoch] if kind == "progress" and value > 0]
    assert len(before) >= 3, "the bar must move while labels, valid pixels and band statistics are read"


def test_cancel_before_the_first_epoch_keeps_nothing_and_leaves_no_folder(
        plugin: Any, tiny_data: TinyData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import processing
    from qgis.core import QgsProcessingException

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    params = train_params(tiny_data, tmp_path, EPOCHS=5, BATCH_SIZE=1)
    del params["OUTPUT_MODEL"], params["OUTPUT_FOLDER"]
    feedback = Recording(cancel_when=f"raster {SIZE} x {SIZE} px")  # the worker's first line: data preparation
    with pytest.raises(QgsProcessingException) as info:
        processing.run("stacksegmenter:trainsegmenter", params, feedback=feedback)
    message = str(info.value)
    assert message.startswith("Cancelled. No model was kept") and "was removed" in message
    assert list(home.iterdir()) == [], "no empty (or half-made) run folder may stay behind"
    assert not any("Cancelled: cancelled" in line for line in feedback.infos + [message])


def test_resume_without_a_model_path_is_refused_before_anything_is_written(
        plugin: Any, tiny_data: TinyData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import processing
    from qgis.core import QgsProcessingException

    monkeypatch.setenv("HOME", str(tmp_path))
    params = train_params(tiny_data, tmp_path, RESUME=True)
    del params["OUTPUT_MODEL"], params["OUTPUT_FOLDER"]
    with pytest.raises(QgsProcessingException, match='"Resume from the output model" continues the model at '
                                                     '"Trained model"'):
        processing.run("stacksegmenter:trainsegmenter", params)
    assert not (tmp_path / "StackSegmenter").exists()


def test_cancelled_predict_says_no_map_was_written(plugin: Any, trained: Dict[str, Any], tiny_data: TinyData,
                                                   tmp_path: Path) -> None:
    import processing
    from qgis.core import QgsProcessingException

    out = tmp_path / "map.tif"
    out.write_bytes(b"an earlier map")
    feedback = Recording()
    feedback.cancel()  # the worker is stopped as soon as it starts
    with pytest.raises(QgsProcessingException) as info:
        processing.run("stacksegmenter:predictprobabilitymap", {
            "INPUT": str(tiny_data.raster), "MODEL": trained["OUTPUT_MODEL"], "OUTPUT": str(out)}, feedback=feedback)
    assert str(info.value) == f"Cancelled. No map was written (the earlier map at {out} is unchanged)."
    assert out.read_bytes() == b"an earlier map"


def test_tools_built_on_train_get_the_same_evidence_arguments(plugin: Any, tiny_data: TinyData,
                                                              evidence: EvidenceLayers) -> None:
    """Cross-validate reuses Train's inputs: `_input_args` stacks the layers and passes the categorical band."""
    import rasterio
    from qgis.core import QgsApplication, QgsProcessingContext, QgsProcessingFeedback

    alg = QgsApplication.processingRegistry().createAlgorithmById("stacksegmenter:trainsegmenter")
    args = alg._input_args({"INPUT": [str(p) for p in evidence.paths], "CATEGORICAL_BANDS": "lithology",
                            "LABELS": str(tiny_data.labels_shp), "LABEL_FIELD": "label"},
                           QgsProcessingContext(), QgsProcessingFeedback())
    raster = args[args.index("--raster_path") + 1]
    assert args[args.index("--categorical_bands") + 1] == "4"
    assert args[args.index("--shapefile_path") + 1] == str(tiny_data.labels_shp)
    with rasterio.open(raster) as src:
        assert src.descriptions == ("signal", "noise_fine", "noise_coarse", "lithology")
