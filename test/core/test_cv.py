"""Spatial cross-validation: balanced folds, baselines, out-of-fold maps, scores, CLI, cancel."""
from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest
import rasterio

from core import baselines as baselines_mod
from core import config as config_mod
from core.baselines import Baseline, TrainingSample, woe_class_weights
from core.config import BASELINES, CVConfig, LabelOptions, TrainConfig
from core.cv import CSV_COLUMNS, NODATA, cv, paired_verdict
from core.errors import Cancelled, ConfigError, DataError
from core.metrics import area_rank_fractions, bootstrap_mean_interval, rate_curve
from core.raster import open_raster, read_pixels, read_valid_mask, read_window
from core.sampling import make_folds, make_split


def _clustered(h: int = 400, w: int = 500, seed: int = 0) -> np.ndarray:
    """65 features: two tight clusters holding most of them, a few scattered."""
    rng = np.random.default_rng(seed)
    pts = np.concatenate([rng.normal([90, 110], 10, (35, 2)), rng.normal([300, 380], 10, (20, 2)),
                          rng.uniform([0, 0], [h, w], (10, 2))])
    return np.clip(pts, 0, [h - 1, w - 1]) + 0.5


def _labels(h: int, w: int, pts: np.ndarray) -> np.ndarray:
    lab = np.zeros((h, w), np.uint8)
    lab[pts[:, 0].astype(int), pts[:, 1].astype(int)] = 1
    return lab


# ----------------------------------------------------------------------------- folds


@pytest.mark.parametrize("k", [3, 5])
def test_folds_balance_clustered_deposits_and_respect_the_buffer(k: int) -> None:
    h, w = 400, 500
    pts = _clustered(h, w)
    usable = np.ones((h, w), bool)
    usable[:60, 400:] = False  # a nodata corner
    logs: List[str] = []
    folds = make_folds(_labels(h, w, pts), usable, k, positive_points=pts, seed=0, log=logs.append)
    fold_map = folds.fold_map((h, w))
    # every usable pixel in exactly one test fold
    tests = np.stack([folds.test_mask(f, usable) for f in range(k)])
    assert (tests.sum(axis=0) == usable).all()
    # deposits (features) balanced within 0.5x..1.5x of 1/k, area too
    rc = pts.astype(int)
    per_fold = np.bincount(fold_map[rc[:, 0], rc[:, 1]], minlength=k)
    assert per_fold.sum() == len(pts)
    assert ((per_fold >= 0.5 * len(pts) / k) & (per_fold <= 1.5 * len(pts) / k)).all(), per_fold
    shares = [f["test_area_fraction"] for f in folds.summary["folds"]]
    assert all(0.5 / k <= s <= 1.5 / k for s in shares), shares
    # no training pixel of fold f lies in or within the buffer of fold f's test blocks
    b = folds.buffer[0]
    assert b >= 1
    for f in range(k):
        train = folds.train_mask(f, usable)
        assert not (train & tests[f]).any()
        for r0, c0, r1, c1 in folds.test_blocks(f):
            near = train[max(r0 - b, 0):r1 + b, max(c0 - b, 0):c1 + b]
            assert not near.any()
        assert train.sum() > 0.3 * usable.sum()
    assert any("cross-validation:" in m and "per test fold" in m for m in logs)


def test_folds_same_seed_same_layout_and_too_many_folds_names_the_largest() -> None:
    h, w = 400, 500
    pts = _clustered(h, w)
    lab, usable = _labels(h, w, pts), np.ones((h, w), bool)
    a = make_folds(lab, usable, 4, positive_points=pts, seed=3)
    b = make_folds(lab, usable, 4, positive_points=pts, seed=3)
    assert a.blocks == b.blocks and a.fold == b.fold
    with pytest.raises(DataError, match=r"largest possible is --folds (\d+)") as err:
        make_folds(lab, usable, 200, positive_points=pts)
    largest = int(err.value.args[0].rsplit(" ", 1)[-1])
    assert 2 <= largest < 200
    make_folds(lab, usable, largest, positive_points=pts)  # the named k works
    with pytest.raises(ConfigError, match="at least 2"):
        make_folds(lab, usable, 1, positive_points=pts)
    with pytest.raises(DataError, match="no positive"):
        make_folds(np.zeros((h, w), np.uint8), usable, 3, positive_points=np.zeros((0, 2)))


def test_train_split_balances_clustered_features() -> None:
    h, w = 600, 600
    pts = _clustered(h, w, seed=2)
    logs: List[str] = []
    split = make_split(_labels(h, w, pts), np.ones((h, w), bool), (32, 32), positive_points=pts, seed=0,
                       log=logs.append)
    n_val = split.summary["val_positive_points"]
    assert 0.5 * 0.2 * len(pts) <= n_val <= 1.5 * 0.2 * len(pts)
    assert split.summary["train_positive_points"] >= 0.4 * len(pts)
    assert any(m.startswith("balance: validation holds") for m in logs)


def test_train_split_warns_when_balance_is_impossible() -> None:
    h, w = 200, 200
    pts = np.array([[20.5 + i % 3, 20.5 + i // 3] for i in range(9)])  # 9 features in one 3 x 3 patch
    logs: List[str] = []
    split = make_split(_labels(h, w, pts), np.ones((h, w), bool), (32, 32), positive_points=pts, log=logs.append)
    assert split.train_windows and split.val_windows  # it continues
    assert any(m.startswith("warning: validation holds") for m in logs)


# ----------------------------------------------------------------------------- building blocks


def test_read_pixels_matches_windows(tiny_stack) -> None:
    rng = np.random.default_rng(0)
    rows = rng.integers(0, tiny_stack.height, 300)
    cols = rng.integers(0, tiny_stack.width, 300)
    with open_raster(tiny_stack.path) as src:
        X, valid = read_pixels(src, rows, cols, size=32)
        data, ok = read_window(src, 0, 0, tiny_stack.height, tiny_stack.width)
    assert np.array_equal(X, data[:, rows, cols].T) and np.array_equal(valid, ok[rows, cols])


def test_rank_fractions_give_the_rate_curve_auc_and_a_repeatable_interval() -> None:
    rng = np.random.default_rng(1)
    area = np.round(rng.random(5000), 2)  # ties on purpose
    dep = np.round(rng.beta(3, 1, 40), 2)
    ranks = area_rank_fractions(area, dep)
    assert ranks.mean() == pytest.approx(rate_curve(area, dep).auc, abs=1e-9)
    lo, hi = bootstrap_mean_interval(ranks, 500, seed=4)
    assert lo < ranks.mean() < hi and (lo, hi) == bootstrap_mean_interval(ranks, 500, seed=4)
    assert bootstrap_mean_interval(ranks[:1]) == (None, None)


def test_woe_weights_keep_only_significant_classes() -> None:
    # 30 deposits, 10 000 background pixels: class 2 holds 20 deposits in 10 % of the area
    w = woe_class_weights(np.array([5, 5, 20]), np.array([4500, 4500, 1000]))
    assert w is not None and w[2] > 1.5 and w[0] == w[1] < 0  # the insignificant classes pooled
    assert woe_class_weights(np.array([10, 10, 10]), np.array([3333, 3333, 3334])) is None


# ----------------------------------------------------------------------------- cv runs


def _cv_config(stack, points, out: Path, **kw: Any) -> CVConfig:
    train = TrainConfig(raster_path=str(stack.path), labels=LabelOptions(labels_path=str(points.path)),
                        categorical_bands=[5], seed=kw.pop("seed", 0), num_epochs=kw.pop("num_epochs", 1),
                        tile_size=kw.pop("tile_size", None))
    kw.setdefault("models", [])
    kw.setdefault("background", 1000)
    kw.setdefault("bootstrap", 200)
    return CVConfig(train=train, output_path=str(out), **kw)


@pytest.fixture(scope="module")
def cv_stack(make_tiny_stack_fn, make_points_fn, tmp_path_factory):
    folder = tmp_path_factory.mktemp("cv")
    stack = make_tiny_stack_fn(folder, height=160, width=192, n_positive=40, seed=1)
    return stack, make_points_fn(stack, folder)


@pytest.fixture(scope="module")
def all_baselines(cv_stack, tmp_path_factory):
    stack, points = cv_stack
    out = tmp_path_factory.mktemp("cv_all")
    return cv(_cv_config(stack, points, out, folds=3)), out


def test_every_baseline_beats_random_on_a_planted_signal(all_baselines) -> None:
    result, out = all_baselines
    summary = json.loads(Path(result["summary_json"]).read_text())
    assert [r["candidate"] for r in summary["ranking"]] and set(summary["candidates"]) == set(BASELINES)
    for name, c in summary["candidates"].items():
        pooled = c["pooled"]
        assert pooled["prediction_rate_auc"] > 0.8, (name, pooled)
        lo, hi = pooled["prediction_rate_auc_ci"]
        assert lo <= pooled["prediction_rate_auc"] <= hi
        assert c["folds_done"] == 3 and c["fold_std"]["prediction_rate_auc"] is not None
        assert c["fold_mean"]["success_rate_auc"] > 0.8
    assert any("band 1 (signal)" in n for n in summary["candidates"]["best_band"]["notes"])
    # ranking leads with the best pooled AUC
    aucs = [r["prediction_rate_auc"] for r in summary["ranking"]]
    assert aucs == sorted(aucs, reverse=True) and result["best"] == summary["ranking"][0]["candidate"]


def test_default_model_has_skill_near_the_logistic_baseline(cv_stack, tmp_path, one_torch_thread) -> None:
    """Train's default model with Train's defaults (epochs included), 3 folds, on a planted signal.

    A wide margin, not a skill target (those are measured by bench/skill.py): held-out AUC
    well above chance and not far below the logistic regression's on the same folds.
    """
    from core.models.catalog import DEFAULT_MODELS

    stack, points = cv_stack
    train = TrainConfig(raster_path=str(stack.path), labels=LabelOptions(labels_path=str(points.path)),
                        categorical_bands=[5])
    result = cv(CVConfig(train=train, models=[DEFAULT_MODELS[0]], baselines=["logistic"], folds=3,
                         background=1000, bootstrap=100, output_path=str(tmp_path)))
    summary = json.loads(Path(result["summary_json"]).read_text())
    deep = summary["candidates"][DEFAULT_MODELS[0]]["pooled"]["prediction_rate_auc"]
    logistic = summary["candidates"]["logistic"]["pooled"]["prediction_rate_auc"]
    assert summary["candidates"][DEFAULT_MODELS[0]]["folds_done"] == 3
    assert deep > 0.7 and deep > logistic - 0.1, (deep, logistic)
    against = summary["candidates"][DEFAULT_MODELS[0]]["against_best_baseline"]
    assert against["baseline"] == "logistic" and against["difference"] == pytest.approx(deep - logistic, abs=1e-9)


def test_every_candidate_is_compared_with_the_best_baseline_on_the_same_deposits(all_baselines) -> None:
    """The paired difference is exactly the difference of pooled AUCs, inside its own interval."""
    result, out = all_baselines
    summary = json.loads(Path(result["summary_json"]).read_text())
    best = summary["ranking"][0]["candidate"]
    assert summary["best_baseline"] == best and "against_best_baseline" not in summary["candidates"][best]
    pooled = {n: c["pooled"]["prediction_rate_auc"] for n, c in summary["candidates"].items()}
    for row in summary["ranking"][1:]:
        a = summary["candidates"][row["candidate"]]["against_best_baseline"]
        assert row["against_best_baseline"] == a and a["baseline"] == best and a["n_deposits"] == 40
        assert a["difference"] == pytest.approx(pooled[row["candidate"]] - pooled[best], abs=1e-9)
        lo, hi = a["difference_ci"]
        assert lo <= a["difference"] <= hi and a["verdict"] == paired_verdict(a["difference"], (lo, hi))
    assert "against the best baseline [paired 95 %]" in (out / "cv_summary.html").read_text()


@pytest.mark.parametrize("difference, interval, verdict", [
    (0.012, (0.004, 0.020), "ahead"), (-0.03, (-0.05, -0.01), "behind"), (0.004, (-0.003, 0.011), "level"),
    (-0.0002, (-0.014, 0.013), "level"), (None, (None, None), "n/a")])
def test_paired_verdict_needs_the_interval_to_exclude_zero(difference, interval, verdict) -> None:
    assert paired_verdict(difference, interval) == verdict


def test_results_csv_and_oof_maps(all_baselines, cv_stack) -> None:
    result, out = all_baselines
    stack, _ = cv_stack
    with open(out / "cv_results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0].keys()) == CSV_COLUMNS
    assert len(rows) == 3 * len(BASELINES)
    assert {r["candidate"] for r in rows} == set(BASELINES) and {r["fold"] for r in rows} == {"1", "2", "3"}
    assert sum(int(r["n_test_deposits"]) for r in rows if r["candidate"] == "logistic") == 40
    usable = read_valid_mask(stack.path)
    for name in BASELINES:
        with rasterio.open(out / f"oof_{name}.tif") as src:
            assert src.dtypes[0] == "float32" and src.nodata == NODATA
            values = src.read(1)
        assert (values[usable] >= 0).all() and (values[usable] <= 1).all()
        assert (values[~usable] == NODATA).all()
    assert (out / "cv_folds.gpkg").is_file()


def test_same_seed_same_table(all_baselines, cv_stack, tmp_path) -> None:
    _, first = all_baselines
    stack, points = cv_stack
    again = cv(_cv_config(stack, points, tmp_path, folds=3))

    def table(path: Path) -> List[Dict[str, str]]:
        with open(path, newline="") as fh:
            return [{k: v for k, v in r.items() if not k.endswith("_seconds")} for r in csv.DictReader(fh)]

    assert table(first / "cv_results.csv") == table(Path(again["results_csv"]))
    other = cv(_cv_config(stack, points, tmp_path / "seed1", folds=3, seed=1, baselines=["logistic"]))
    assert table(Path(other["results_csv"])) != [r for r in table(first / "cv_results.csv")
                                                 if r["candidate"] == "logistic"]


class FoldTag(Baseline):
    """Test candidate: remembers where it was trained and predicts its own fit number."""

    name = "fold_tag"
    fitted: List[TrainingSample] = []

    def fit(self, sample: TrainingSample, seed: int, stop=lambda: None) -> "FoldTag":
        FoldTag.fitted.append(sample)
        self.tag = len(FoldTag.fitted) / 10.0
        return self

    def _predict(self, X: np.ndarray) -> np.ndarray:
        return np.full(len(X), self.tag, np.float32)


def test_out_of_fold_map_never_uses_a_model_that_saw_the_fold(cv_stack, tmp_path, monkeypatch) -> None:
    stack, points = cv_stack
    monkeypatch.setattr(config_mod, "BASELINES", BASELINES + ("fold_tag",))
    monkeypatch.setitem(baselines_mod.FACTORIES, "fold_tag", FoldTag)
    FoldTag.fitted = []
    result = cv(_cv_config(stack, points, tmp_path, folds=4, baselines=["fold_tag"]))
    assert len(FoldTag.fitted) == 4
    usable = read_valid_mask(stack.path)
    from core.labels import rasterize_labels
    from core.raster import read_info

    lab = rasterize_labels(LabelOptions(labels_path=str(points.path)), read_info(stack.path))
    folds = make_folds(lab.labels, usable, 4, positive_points=lab.positive_points, seed=0)
    with rasterio.open(result["oof_maps"]["fold_tag"]) as src:
        oof = src.read(1)
    for f in range(4):
        sample = FoldTag.fitted[f]
        test, train = folds.test_mask(f, usable), folds.train_mask(f, usable)
        assert np.allclose(oof[test], (f + 1) / 10.0)  # predicted by fold f's own model only
        # ... which never saw a pixel of fold f, nor of its buffer
        for rows, cols in ((sample.pos_rows, sample.pos_cols), (sample.bg_rows, sample.bg_cols)):
            assert len(rows) and train[rows, cols].all()


def test_cancel_keeps_the_folds_already_finished(cv_stack, tmp_path) -> None:
    stack, points = cv_stack
    rows_seen: List[Dict[str, Any]] = []
    config = _cv_config(stack, points, tmp_path, folds=3, baselines=["logistic", "best_band"])
    with pytest.raises(Cancelled):
        cv(config, metric=rows_seen.append, should_stop=lambda: len(rows_seen) >= 2)  # after fold 1
    with open(tmp_path / "cv_results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["fold"] for r in rows} == {"1"} and len(rows) == 2
    summary = json.loads((tmp_path / "cv_summary.json").read_text())
    assert summary["complete"] is False and summary["candidates"]["logistic"]["folds_done"] == 1


def test_a_model_that_cannot_train_is_left_out_and_said(cv_stack, tmp_path) -> None:
    stack, points = cv_stack
    logs: List[str] = []
    config = _cv_config(stack, points, tmp_path, folds=3, baselines=["best_band"], models=["unet_sc2_layers2_e8"],
                        tile_size=(999, 999))  # larger than the raster: training refuses
    result = cv(config, log=logs.append)
    summary = json.loads(Path(result["summary_json"]).read_text())
    assert "larger than the raster" in summary["failed"]["unet_sc2_layers2_e8"]
    assert [r["candidate"] for r in summary["ranking"]] == ["best_band"]
    assert any(m.startswith("error: unet_sc2_layers2_e8 failed on fold 1") for m in logs)
    assert "Left out" in Path(result["summary_html"]).read_text()
    with pytest.raises(DataError, match="larger than the raster"):  # nothing left to compare
        cv(_cv_config(stack, points, tmp_path / "only", folds=3, baselines=[], models=["unet_sc2_layers2_e8"],
                      tile_size=(999, 999)))


class Broken(Baseline):
    """Test candidate: cannot be fitted (as MaxEnt without elapid in the worker's Python)."""

    name = "broken"

    def fit(self, sample: TrainingSample, seed: int, stop=lambda: None) -> "Broken":
        raise DataError("the broken baseline needs a package this Python lacks")


def test_a_baseline_that_cannot_fit_is_left_out_and_said(cv_stack, tmp_path, monkeypatch) -> None:
    stack, points = cv_stack
    monkeypatch.setattr(config_mod, "BASELINES", BASELINES + ("broken",))
    monkeypatch.setitem(baselines_mod.FACTORIES, "broken", Broken)
    logs: List[str] = []
    result = cv(_cv_config(stack, points, tmp_path, folds=3, baselines=["broken", "best_band"]), log=logs.append)
    summary = json.loads(Path(result["summary_json"]).read_text())
    assert list(summary["failed"]) == ["broken"] and "lacks" in summary["failed"]["broken"]
    assert set(result["oof_maps"]) == {"best_band"} and summary["candidates"]["best_band"]["folds_done"] == 3
    assert sum(m.startswith("error: broken failed on fold 1") for m in logs) == 1  # said once, then skipped


def test_unknown_candidate_lists_the_valid_ones(cv_stack, tmp_path) -> None:
    stack, points = cv_stack
    with pytest.raises(ConfigError, match="unknown candidate 'svm'.*weights_of_evidence.*best_band"):
        _cv_config(stack, points, tmp_path, baselines=["svm"])
    with pytest.raises(ConfigError, match="no candidate"):
        _cv_config(stack, points, tmp_path, baselines=[])


def test_cv_cli_with_a_deep_model_and_baselines(cv_stack, repo_root: Path, tmp_path: Path) -> None:
    stack, points = cv_stack
    out = tmp_path / "cv"
    res = subprocess.run(
        [sys.executable, "-m", "core", "cv", "--raster_path", str(stack.path), "--shapefile_path", str(points.path),
         "--categorical_bands", "5", "--models", "unet_sc2_layers2_e8", "--baselines", "logistic", "best_band",
         "--folds", "3", "--num_epochs", "1", "--tile_size", "32", "--background", "1000", "--bootstrap", "100",
         "--output_path", str(out), "--events", "jsonl"],
        cwd=repo_root, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    events = [json.loads(line) for line in res.stdout.splitlines()]
    result = [e for e in events if e["event"] == "result"][0]["value"]
    assert set(result["oof_maps"]) == {"logistic", "best_band", "unet_sc2_layers2_e8"}
    assert any(e["event"] == "metric" and e["values"].get("fold") == 3 for e in events)
    said = [e["message"] for e in events if e["event"] == "log"]
    assert any(re.match(r"  unet_sc2_layers2_e8 (beats|is level with|LOSES to) the best baseline, (logistic|best_band): "
                        r"pooled prediction-rate AUC [+-]\d\.\d{4}, paired 95 % interval \[", m) for m in said), said[-12:]
    with open(out / "cv_results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    deep = [r for r in rows if r["candidate"] == "unet_sc2_layers2_e8"]
    assert len(deep) == 3 and all(r["kind"] == "model" and r["prediction_rate_auc"] for r in deep)
    usable = read_valid_mask(stack.path)
    with rasterio.open(out / "oof_unet_sc2_layers2_e8.tif") as src:
        oof = src.read(1)
    assert np.isfinite(oof[usable]).all() and (oof[usable] >= 0).all() and (oof[~usable] == NODATA).all()
    for f in (1, 2, 3):  # each fold trained its own checkpoint with its own split inside the training folds
        assert (out / "folds" / f"fold_{f}" / "unet_sc2_layers2_e8" / "checkpoint.pt").is_file()


def test_cv_cli_bad_input_is_one_clear_line(repo_root: Path, tmp_path: Path, cv_stack) -> None:
    stack, points = cv_stack
    res = subprocess.run([sys.executable, "-m", "core", "cv", "--raster_path", str(stack.path), "--shapefile_path",
                          str(points.path), "--baselines", "logistic", "--models", "none", "--folds", "500",
                          "--output_path", str(tmp_path)], cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "largest possible is --folds" in res.stderr


# ----------------------------------------------------------------------------- real data


def test_real_ecuador_cv_three_folds_with_the_automatic_tile(shared_data, tmp_path) -> None:
    """383 x 415 px: the automatic tile and buffer shrink instead of refusing (issue 9)."""
    d = shared_data / "ecuador_landslides"
    labels = LabelOptions(labels_path=str(d / "landslide_points.shp"), label_column="label",
                          mask_path=str(d / "ecuador_landslides.gpkg") + "|layername=study_mask")
    config = CVConfig(train=TrainConfig(raster_path=str(d / "ecuador_ta_stack.tif"), labels=labels, num_epochs=1,
                                        models=["unet_sc2_layers2_e8"]),
                      models=["unet_sc2_layers2_e8"], baselines=["random_forest", "best_band"], folds=3,
                      background=2000, bootstrap=100, output_path=str(tmp_path))
    logs: List[str] = []
    result = cv(config, log=logs.append)
    summary = json.loads(Path(result["summary_json"]).read_text())
    assert summary["complete"] and len(summary["folds"]["folds"]) == 3
    assert all(f["test_positive_features"] > 20 for f in summary["folds"]["folds"])
    assert any("automatic tile size" in m for m in logs)
    for name in ("random_forest", "best_band"):
        assert summary["candidates"][name]["pooled"]["prediction_rate_auc"] > 0.6, name
    assert summary["candidates"]["unet_sc2_layers2_e8"]["folds_done"] == 3


def test_real_cloncurry_categorical_band_baselines(shared_data, tmp_path) -> None:
    d = shared_data / "cloncurry_iocg"
    config = CVConfig(train=TrainConfig(raster_path=str(d / "cloncurry_stack.tif"),
                                        labels=LabelOptions(labels_path=str(d / "iocg_deposits.shp")),
                                        categorical_bands=[3]),
                      models=[], baselines=["weights_of_evidence", "best_band"], folds=3, background=3000,
                      bootstrap=100, output_path=str(tmp_path))
    summary = json.loads(Path(cv(config)["summary_json"]).read_text())
    for name in ("weights_of_evidence", "best_band"):
        assert summary["candidates"][name]["pooled"]["prediction_rate_auc"] > 0.6, name
        assert summary["candidates"][name]["pooled"]["n_deposits"] > 200


def test_train_still_runs_on_a_160_px_raster_with_64_px_tiles(make_tiny_stack_fn, make_points_fn, tmp_path,
                                                             one_torch_thread) -> None:
    from core.training import train

    stack = make_tiny_stack_fn(tmp_path, height=160, width=160, n_positive=20, seed=3)
    points = make_points_fn(stack, tmp_path)
    logs: List[str] = []
    result = train(TrainConfig(raster_path=str(stack.path), labels=LabelOptions(labels_path=str(points.path)),
                               models=["unet_sc2_layers2_e8"], tile_size=(64, 64), num_epochs=1,
                               output_path=str(tmp_path / "out")), log=logs.append)
    assert Path(result["models"]["unet_sc2_layers2_e8"]["checkpoint"]).is_file()
    assert any("validation split" in m for m in logs)
    assert any(m.startswith("balance:") or m.startswith("warning: validation holds") for m in logs)
