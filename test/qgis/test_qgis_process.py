"""End to end through `qgis_process.bin`, as `make demo` and scripts use it: a fresh profile,
the plugin enabled, and only PATH pointing at the venv (no STACK_SEGMENTER_PYTHON)."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any, Dict, List

import pytest

from qgis_helpers import QGIS_PROCESS, SIZE, TILE, TinyData, default_model, make_evidence_layers, qgis_process_env


@pytest.fixture(scope="module")
def env(plugins_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Dict[str, str]:
    """A throwaway profile with the plugin enabled."""
    environment = qgis_process_env(plugins_dir, tmp_path_factory.mktemp("qgis_profile"))
    enable = subprocess.run([QGIS_PROCESS, "plugins", "enable", "stack_segmenter"], env=environment,
                            capture_output=True, text=True, timeout=120)
    assert enable.returncode == 0, enable.stderr[-2000:]
    return environment


def run_json(env: Dict[str, str], alg: str, params: Dict[str, Any]) -> Dict[str, Any]:
    """`qgis_process.bin run ALG --json -- KEY=VALUE ...` -> its JSON (fails with stderr's tail); a list
    value repeats its key (INPUT=a.tif INPUT=b.tif), as users give several layers."""
    pairs = [(k, item) for k, v in params.items() for item in (v if isinstance(v, list) else [v])]
    cmd: List[str] = [QGIS_PROCESS, "run", alg, "--json", "--", *(f"{k}={v}" for k, v in pairs)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{alg} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout)


@pytest.mark.slow
def test_evidence_layers_train_then_predict_under_qgis_process(env: Dict[str, str], tiny_data: TinyData,
                                                               tmp_path: Path) -> None:
    """Several evidence layers as repeated INPUT= arguments, a categorical one by name, no model path:
    the model is kept in a new folder under ~/StackSegmenter/runs (HOME points at a temporary folder here)."""
    import rasterio

    layers = [str(p) for p in make_evidence_layers(tiny_data, tmp_path / "evidence").paths]
    home = tmp_path / "home"
    home.mkdir()
    trained = run_json({**env, "HOME": str(home)}, "stacksegmenter:trainsegmenter", {
        "INPUT": layers, "CATEGORICAL_BANDS": "lithology", "LABELS": tiny_data.labels_shp, "EPOCHS": 1,
        "TILE_SIZE": TILE, "DEVICE": "cpu"})
    results = trained["results"]
    model, folder = Path(results["OUTPUT_MODEL"]), Path(results["OUTPUT_FOLDER"])
    assert model.is_file() and model.parent == folder and folder.parent == home / "StackSegmenter" / "runs"
    assert results["EPOCHS_RUN"] == 1
    assert isinstance(results["VAL_LOSS"], float)
    assert Path(results["OUTPUT_HTML"]).is_file()

    prob = tmp_path / "probability.tif"
    predicted = run_json(env, "stacksegmenter:predictprobabilitymap",
                         {"INPUT": [layers[0], *reversed(layers[1:])], "MODEL": model, "OUTPUT": prob})
    assert Path(predicted["results"]["OUTPUT"]) == prob
    with rasterio.open(prob) as src:
        assert (src.width, src.height, src.count) == (SIZE, SIZE, 1)
        data = src.read(1, masked=True)
    assert 0.0 <= float(data.min()) <= float(data.max()) <= 1.0
    assert data.mask[:8, :8].all(), "input nodata must stay nodata"
    assert prob.with_suffix(".qml").is_file()


def test_build_evidence_stack_takes_repeated_inputs(env: Dict[str, str], tiny_data: TinyData, tmp_path: Path) -> None:
    import rasterio

    layers = [str(p) for p in make_evidence_layers(tiny_data, tmp_path / "evidence").paths]
    out = run_json(env, "stacksegmenter:buildevidencestack",
                   {"INPUT": layers, "CATEGORICAL_BANDS": "lithology", "OUTPUT": tmp_path / "stack.tif"})
    assert out["results"]["BAND_NAMES"] == "signal, noise_fine, noise_coarse, lithology"
    with rasterio.open(tmp_path / "stack.tif") as src:
        assert src.count == 4 and (src.width, src.height) == (SIZE, SIZE)


def test_predict_with_uncertainty_under_qgis_process(env: Dict[str, str], trained_ensemble: Dict[str, Any],
                                                    tiny_data: TinyData, tmp_path: Path) -> None:
    import rasterio

    prob, spread = tmp_path / "probability.tif", tmp_path / "uncertainty.tif"
    out = run_json(env, "stacksegmenter:predictprobabilitymap", {
        "INPUT": tiny_data.raster, "MODEL": trained_ensemble["OUTPUT_MODEL"], "OUTPUT": prob, "UNCERTAINTY": spread})
    assert Path(out["results"]["UNCERTAINTY"]) == spread and Path(out["results"]["OUTPUT"]) == prob
    with rasterio.open(spread) as src:
        data = src.read(1, masked=True)
        assert src.tags()["members"] == "2"
    assert float(data.min()) >= 0.0 and float(data.max()) > 0.0 and data.mask[:8, :8].all()
    assert spread.with_suffix(".qml").is_file() and prob.with_suffix(".qml").is_file()
    assert "top 1 % of area" in prob.with_suffix(".qml").read_text().lower()


@pytest.mark.slow
def test_cross_validate_under_qgis_process(env: Dict[str, str], tiny_data: TinyData, tmp_path: Path) -> None:
    """The default deep model (1 epoch) and two baselines on 3 folds: the table, HTML and maps."""
    import csv

    out = run_json(env, "stacksegmenter:crossvalidate", {
        "INPUT": tiny_data.raster, "LABELS": tiny_data.labels_shp, "FOLDS": 3, "EPOCHS": 1, "TILE_SIZE": TILE,
        "BASELINES": "2,5", "BACKGROUND": 500, "DEVICE": "cpu", "OUTPUT_FOLDER": tmp_path / "cv"})
    results = out["results"]
    with open(tmp_path / "cv" / "cv_results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["candidate"] for r in rows} == {"logistic", "best_band", default_model()} and len(rows) == 9
    assert Path(results["OUTPUT_HTML"]).is_file() and Path(results["BEST_MAP"]).is_file()
    for name in ("logistic", "best_band", default_model()):
        assert (tmp_path / "cv" / f"oof_{name}.tif").is_file()


def test_error_under_qgis_process_is_the_core_message(env: Dict[str, str], tiny_data: TinyData,
                                                       tmp_path: Path) -> None:
    params = {"INPUT": tiny_data.raster, "MODEL": tmp_path / "missing.pt", "OUTPUT": tmp_path / "p.tif"}
    cmd = [QGIS_PROCESS, "run", "stacksegmenter:predictprobabilitymap", "--",
           *(f"{k}={v}" for k, v in params.items())]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "missing.pt" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_shipped_model_runs_under_qgis_process(env: Dict[str, str], repo_root: Path, tiny_data: TinyData,
                                               tmp_path: Path) -> None:
    model3 = repo_root / "processing_models" / "train_predict_evaluate.model3"
    out = run_json(env, str(model3), {
        "INPUT": tiny_data.raster, "LABELS": tiny_data.labels_gpkg, "LABEL_FIELD": "label", "EPOCHS": 1,
        "TILE_SIZE": TILE, "train:Trained model": tmp_path / "model.pt",
        "predict:Probability map": tmp_path / "probability.tif",
        "evaluate:Evaluation folder": tmp_path / "evaluation"})
    results = out["results"]
    assert Path(results["train:Trained model"]).is_file()
    assert Path(results["predict:Probability map"]).is_file()
    folder = Path(results["evaluate:Evaluation folder"])
    metrics = json.loads((folder / "metrics.json").read_text())["metrics"]
    assert metrics["n_deposits"] == len(tiny_data.positives)
    assert (folder / "summary.html").is_file() and (folder / "success_rate.png").is_file()
    # The model's checkpoint reached the evaluation: its final fit (the default model's) trained on the
    # validation blocks, so none is scored as held out.
    assert metrics["validation_blocks_trained_on"] is True and "prediction_rate_auc" not in metrics


def test_the_demo_enables_the_plugin_again_in_a_second_run(repo_root: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """`make demo` twice in one checkout: the second run's profile is fresh, so enabling the plugin succeeds."""
    import importlib.util

    monkeypatch.setenv("DEMO_OUT", str(tmp_path / "demo_output"))
    spec = importlib.util.spec_from_file_location("demo_script", repo_root / "scripts" / "demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    for attempt in (1, 2):
        proc = subprocess.run([QGIS_PROCESS, "plugins", "enable", "stack_segmenter"], env=demo.qgis_env(),
                              capture_output=True, text=True)
        assert proc.returncode == 0, f"run {attempt}: {proc.stdout}{proc.stderr}"
    assert (tmp_path / "demo_output" / "qgis_profile").is_dir()
