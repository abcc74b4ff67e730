"""Issue 9: Evaluate and the training log lead with held-out figures (skill), then fit."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from shapely.geometry import box

from core.config import EvaluateConfig, LabelOptions, TrainConfig
from core.evaluate import evaluate


def _score_map(stack, folder: Path) -> Path:
    """A 'probability map' = the planted signal band rescaled to 0..1 (nodata kept)."""
    with rasterio.open(stack.path) as src:
        band = src.read(1).astype(np.float32)
        profile = src.profile
    ok = np.isfinite(band) & (band != np.float32(stack.nodata))
    lo, hi = float(band[ok].min()), float(band[ok].max())
    out = np.where(ok, (np.where(ok, band, lo) - lo) / (hi - lo), np.float32(-9999)).astype(np.float32)
    profile.update(count=1, dtype="float32", nodata=-9999)
    path = folder / "score.tif"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(out, 1)
    return path


def test_evaluate_test_area_leads_with_held_out_skill(tiny_stack, tiny_points, tmp_path) -> None:
    score = _score_map(tiny_stack, tmp_path)
    a, _, c, _, e, f = tiny_stack.transform
    half = tiny_stack.width // 2  # the test area: the left half of the raster
    gpd.GeoDataFrame({"name": ["test"]}, geometry=[box(c, f + e * tiny_stack.height, c + a * half, f)],
                     crs=tiny_stack.crs).to_file(tmp_path / "test_area.gpkg", driver="GPKG", layer="test")
    logs: List[str] = []
    result = evaluate(EvaluateConfig(probability_map=str(score), labels=LabelOptions(labels_path=str(tiny_points.path)),
                                     test_area=str(tmp_path / "test_area.gpkg"), output_dir=str(tmp_path / "eval")),
                      log=logs.append)
    m = result["metrics"]
    inside = sum(1 for r, col in tiny_stack.positives if col < half)
    assert m["heldout_n_deposits"] == inside and m["train_n_deposits"] == len(tiny_stack.positives) - inside
    assert m["heldout_area"] == "test area" and m["heldout_prediction_rate_auc"] > 0.9
    assert m["heldout_prediction_rate_auc_lo"] <= m["heldout_prediction_rate_auc"] <= m["heldout_prediction_rate_auc_hi"]
    summary_lines = logs[-3:]
    assert summary_lines[0].startswith("held-out skill (") and "[95 %" in summary_lines[0]
    assert summary_lines[1].startswith("fit, not skill") and summary_lines[2].startswith("all ")
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())["metrics"]
    assert saved["heldout_prediction_rate_auc"] == pytest.approx(m["heldout_prediction_rate_auc"])


def test_evaluate_without_held_out_area_says_it_measures_fit(tiny_stack, tiny_points, tmp_path) -> None:
    logs: List[str] = []
    evaluate(EvaluateConfig(probability_map=str(_score_map(tiny_stack, tmp_path)),
                            labels=LabelOptions(labels_path=str(tiny_points.path)), output_dir=str(tmp_path / "e")),
             log=logs.append)
    assert "measure fit, not skill" in logs[-2] and logs[-1].startswith("all ")


def test_training_log_leads_with_held_out_deposits(tiny_stack, tiny_points, tmp_path, one_torch_thread) -> None:
    from core.training import train

    logs: List[str] = []
    result = train(TrainConfig(raster_path=str(tiny_stack.path), labels=LabelOptions(labels_path=str(tiny_points.path)),
                               models=["unet_sc2_layers2_e8"], tile_size=(32, 32), num_epochs=1,
                               output_path=str(tmp_path / "out")), log=logs.append)
    skill = result["models"]["unet_sc2_layers2_e8"]["skill"]
    heldout = next(i for i, m in enumerate(logs) if "held-out skill" in m)
    fit = next(i for i, m in enumerate(logs) if "fit, not skill" in m)
    pixels = next(i for i, m in enumerate(logs) if "pixel figures of the validation blocks" in m)
    assert heldout < fit < pixels
    assert "mean IoU" not in logs[pixels]  # point labels: IoU/accuracy are not headline figures ...
    final = json.loads((tmp_path / "out" / "unet_sc2_layers2_e8" / "metrics.json").read_text())["final"]
    assert "val_iou" in final and "val_accuracy" in final  # ... but they stay in metrics.json
    assert skill["val_n_deposits"] == final["val_n_deposits"] > 0
    assert 0.0 <= skill["val_prediction_rate_auc"] <= 1.0 and skill["train_n_deposits"] > 0
    split = json.loads((tmp_path / "out" / "unet_sc2_layers2_e8" / "metrics.json").read_text())
    assert split["final"]["val_prediction_rate_auc_lo"] <= skill["val_prediction_rate_auc"]
