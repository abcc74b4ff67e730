"""evaluate(): real GeoTIFF maps and real vector files, scores checked against hand-computed values."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from affine import Affine
from shapely.geometry import Point, box

from core.config import EvaluateConfig, LabelOptions
from core.errors import DataError
from core.evaluate import evaluate, in_boxes, normalise_box, pixel_centres

CRS = "EPSG:32633"
TRANSFORM = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 6000000.0)
# A 10 x 10 map whose value grows with the flat pixel index: pixel k holds k / 99.
RAMP = (np.arange(100, dtype=np.float32) / 99.0).reshape(10, 10)


def write_map(path: Path, values: np.ndarray, crs: str = CRS, transform: Affine = TRANSFORM) -> Path:
    with rasterio.open(path, "w", driver="GTiff", width=values.shape[1], height=values.shape[0], count=1,
                       dtype="float32", crs=crs, transform=transform, nodata=-9999.0) as dst:
        dst.write(values.astype(np.float32), 1)
    return path


def centre(flat: int, transform: Affine = TRANSFORM) -> Point:
    row, col = divmod(flat, 10)
    return Point(*(transform * (col + 0.5, row + 0.5)))


def write_points(path: Path, flats: Sequence[int], labels: Optional[List[int]] = None, crs: str = CRS) -> Path:
    gdf = gpd.GeoDataFrame({"label": labels or [1] * len(flats)}, geometry=[centre(k) for k in flats], crs=crs)
    gdf.to_file(path)
    return path


def run(tmp_path: Path, map_path: Path, labels_path: Path, **label_kw) -> dict:
    cfg = EvaluateConfig(probability_map=str(map_path), labels=LabelOptions(labels_path=str(labels_path), **label_kw),
                         output_dir=str(tmp_path / "eval"))
    return evaluate(cfg)


def test_scores_match_hand_computed_values(tmp_path: Path) -> None:
    m = write_map(tmp_path / "p.tif", RAMP)
    pts = write_points(tmp_path / "d.shp", [95, 80, 10])
    res = run(tmp_path, m, pts)["metrics"]
    # Deposits at 95, 80, 10 have 4, 19, 89 pixels above them (+ half their own pixel):
    # success-rate AUC = 1 - mean(4.5, 19.5, 89.5) / 100.
    assert res["success_rate_auc"] == pytest.approx(1 - (4.5 + 19.5 + 89.5) / 300)
    # Pixels: positives 95, 80, 10 beat 93, 79 and 10 of the 97 negatives.
    assert res["roc_auc"] == pytest.approx((93 + 79 + 10) / (3 * 97))
    # top 5 % of 100 px = values >= pixel 95 -> 1 deposit; top 20 % -> pixels >= 80 -> 2.
    assert res["top1"] == pytest.approx(0.0)
    assert res["top5"] == pytest.approx(100 / 3)
    assert res["top10"] == pytest.approx(100 / 3)
    assert res["top20"] == pytest.approx(200 / 3)
    assert res["n_deposits"] == 3 and res["n_pixels"] == 100 and res["n_positive_pixels"] == 3
    assert res["area_weighted"] is False


def test_files_are_written_and_readable(tmp_path: Path) -> None:
    m = write_map(tmp_path / "p.tif", RAMP)
    out = run(tmp_path, m, write_points(tmp_path / "d.shp", [95, 80, 10]))
    files = {k: Path(v) for k, v in out["files"].items()}
    assert set(files) >= {"metrics_json", "curves_csv", "success_rate_png", "roc_csv", "pr_csv", "roc_pr_png"}
    saved = json.loads(files["metrics_json"].read_text())
    assert saved["metrics"]["success_rate_auc"] == pytest.approx(out["metrics"]["success_rate_auc"])
    with open(files["curves_csv"]) as fh:
        rows = list(csv.DictReader(fh))
    assert rows[0].keys() == {"curve", "area_percent", "deposits_percent", "threshold"}
    assert float(rows[-1]["area_percent"]) == pytest.approx(100.0)
    assert float(rows[-1]["deposits_percent"]) == pytest.approx(100.0)
    for key in ("success_rate_png", "roc_pr_png"):
        assert files[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert files[key].stat().st_size > 10_000
    # Atomic writes leave no temporary file behind.
    assert sorted(p.name for p in files["metrics_json"].parent.iterdir()) == sorted(p.name for p in files.values())


def test_nodata_and_mask_are_excluded(tmp_path: Path) -> None:
    values = RAMP.copy()
    values.flat[:5] = -9999.0  # the five lowest pixels are nodata
    values.flat[10] = -9999.0  # and so is the pixel of one deposit
    m = write_map(tmp_path / "p.tif", values)
    pts = write_points(tmp_path / "d.shp", [95, 80, 10])
    res = run(tmp_path, m, pts)["metrics"]
    assert res["n_pixels"] == 94
    assert res["n_deposits"] == 2 and res["n_deposits_skipped"] == 1
    assert res["success_rate_auc"] == pytest.approx(1 - (4.5 + 19.5) / (2 * 94))
    # A mask over the bottom half (rows 5-9) leaves pixels 50..99 only.
    x0, y1 = TRANSFORM * (0, 5)
    x1, y0 = TRANSFORM * (10, 10)
    mask = gpd.GeoDataFrame(geometry=[box(x0, y0, x1, y1)], crs=CRS)
    mask.to_file(tmp_path / "mask.gpkg", driver="GPKG")
    res = run(tmp_path, write_map(tmp_path / "q.tif", RAMP), pts, mask_path=str(tmp_path / "mask.gpkg"))["metrics"]
    assert res["n_pixels"] == 50
    assert res["n_deposits"] == 2  # the deposit at pixel 10 lies outside the mask
    assert res["success_rate_auc"] == pytest.approx(1 - (4.5 + 19.5) / (2 * 50))


def test_polygon_deposit_scores_its_best_pixel(tmp_path: Path) -> None:
    # A polygon over pixels 88, 89, 98, 99 (values up to 1.0) is captured in the top pixel.
    x0, y1 = TRANSFORM * (8, 8)
    x1, y0 = TRANSFORM * (10, 10)
    gdf = gpd.GeoDataFrame({"label": [1]}, geometry=[box(x0, y0, x1, y1)], crs=CRS)
    gdf.to_file(tmp_path / "poly.geojson", driver="GeoJSON")
    res = run(tmp_path, write_map(tmp_path / "p.tif", RAMP), tmp_path / "poly.geojson")["metrics"]
    assert res["n_deposits"] == 1 and res["n_positive_pixels"] == 4
    assert res["top1"] == pytest.approx(100.0)
    assert res["success_rate_auc"] == pytest.approx(1 - 0.5 / 100)


def test_buffered_points_score_at_their_own_pixel(tmp_path: Path) -> None:
    # A wide buffer burns neighbours with higher values; the deposit still scores its pixel
    # (the max over the disk would flatter any map, even a random one).
    m = write_map(tmp_path / "p.tif", RAMP)
    res = run(tmp_path, m, write_points(tmp_path / "d.shp", [44]), point_buffer="2")["metrics"]
    assert res["n_positive_pixels"] > 1
    assert res["success_rate_auc"] == pytest.approx(1 - 55.5 / 100)


def test_geographic_maps_weight_pixels_by_area(tmp_path: Path) -> None:
    t = Affine(36.0, 0.0, -180.0, 0.0, -18.0, 90.0)  # 10 x 10 over the globe
    m = write_map(tmp_path / "g.tif", RAMP, crs="EPSG:4326", transform=t)
    gdf = gpd.GeoDataFrame({"label": [1, 1]}, geometry=[centre(95, t), centre(45, t)], crs="EPSG:4326")
    gdf.to_file(tmp_path / "g.shp")
    res = run(tmp_path, m, tmp_path / "g.shp")["metrics"]
    assert res["area_weighted"] is True
    # Row r is centred at latitude 81 - 18 r and weighs cos(latitude); each row has 10 pixels.
    w = np.cos(np.deg2rad(81.0 - 18.0 * np.arange(10)))
    total = 10 * w.sum()
    a95 = 4.5 * w[9] / total  # 4 pixels above it in its (polar) row, half its own
    a45 = (4.5 * w[4] + 10 * w[5:].sum()) / total
    assert res["success_rate_auc"] == pytest.approx(1 - (a95 + a45) / 2)
    assert res["success_rate_auc"] != pytest.approx(1 - (4.5 + 54.5) / 200, abs=1e-3)  # the unweighted value


def test_unwritable_output_dir_is_a_clear_error(tmp_path: Path) -> None:
    m = write_map(tmp_path / "p.tif", RAMP)
    pts = write_points(tmp_path / "d.shp", [95])
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cfg = EvaluateConfig(probability_map=str(m), labels=LabelOptions(labels_path=str(pts)),
                         output_dir=str(blocker / "sub"))
    with pytest.raises(DataError, match="output_dir"):
        evaluate(cfg)


def test_boxes_match_points_in_map_coordinates() -> None:
    assert normalise_box([10, 5, 0, 0]) == (0.0, 0.0, 10.0, 5.0)
    assert normalise_box({"left": 0, "bottom": 1, "right": 2, "top": 3}) == (0.0, 1.0, 2.0, 3.0)
    rc = np.array([[0, 0], [9, 9]])
    xy = pixel_centres(rc, tuple(TRANSFORM)[:6])
    assert np.allclose(xy[0], (500005.0, 5999995.0))
    inside = in_boxes(xy, [(500000.0, 5999990.0, 500010.0, 6000000.0)])
    assert inside.tolist() == [True, False]


def _checkpoint_with_blocks(path: Path, boxes: List[Tuple[float, float, float, float]]) -> Path:
    from core.checkpoint import save_checkpoint

    return save_checkpoint(path, {"model_name": "unet_sc2_layers2_e8", "state_dict": {},
                                  "model_kwargs": {"name": "unet_sc2_layers2_e8", "in_channels": 1, "num_classes": 2},
                                  "validation_blocks_map": [list(b) for b in boxes]})


def test_checkpoint_blocks_split_deposits_on_any_grid(tmp_path: Path) -> None:
    # The held-out block is the right half of the map (columns 5-9), in map coordinates.
    left, top = TRANSFORM * (5, 0)
    right, bottom = TRANSFORM * (10, 10)
    ckpt = _checkpoint_with_blocks(tmp_path / "c.pt", [(left, bottom, right, top)])
    pts = write_points(tmp_path / "d.shp", [95, 80, 10, 47])  # columns 5, 0, 0, 7
    cfg = EvaluateConfig(probability_map=str(write_map(tmp_path / "p.tif", RAMP)), checkpoint=str(ckpt),
                         labels=LabelOptions(labels_path=str(pts)), output_dir=str(tmp_path / "e"))
    m = evaluate(cfg)["metrics"]
    assert (m["val_n_deposits"], m["train_n_deposits"], m["n_validation_blocks"]) == (2, 2, 1)
    # Held out: 95 (4 above) and 47 (52 above) -> 1 - (4.5 + 52.5) / 200.
    assert m["prediction_rate_auc"] == pytest.approx(1 - (4.5 + 52.5) / 200)
    assert m["train_success_rate_auc"] == pytest.approx(1 - (19.5 + 89.5) / 200)
    # The same map at half the resolution (5 x 5 pixels of 20 m): the split is the same.
    coarse = TRANSFORM * Affine.scale(2)
    small = write_map(tmp_path / "coarse.tif", RAMP[::2, ::2], transform=coarse)
    cfg = EvaluateConfig(probability_map=str(small), labels=LabelOptions(labels_path=str(pts)), checkpoint=str(ckpt),
                         output_dir=str(tmp_path / "e2"))
    m2 = evaluate(cfg)["metrics"]
    assert (m2["val_n_deposits"], m2["train_n_deposits"]) == (2, 2)
    # The plot shows all three curves.
    assert Path(evaluate(cfg)["files"]["success_rate_png"]).stat().st_size > 10_000
