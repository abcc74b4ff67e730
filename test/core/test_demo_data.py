"""The synthetic demo dataset: deterministic, realistic structure, deposits that follow the truth.

Everything runs for real: the generator writes GeoTIFFs and a shapefile, the tests read them
back with rasterio / geopandas (and with the core's own raster and label readers).
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any, Dict, Tuple

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS

from core.demo_data import CATEGORICAL_NAME, FAVOURABLE_LITHOLOGY, NODATA, SIGNAL_BANDS, make_demo_data
from core.errors import ConfigError, DataError

SMALL = dict(width=96, height=64, bands=8, n_deposits=40)
# Larger than SMALL so band-truth correlations rest on more independent patches.
STATS = dict(width=160, height=128, bands=16, n_deposits=80)


def _make(tmp_path: Path, name: str, **kwargs: Any) -> Dict[str, Any]:
    return make_demo_data(tmp_path / name, **{**SMALL, **kwargs})


def _read_stack(result: Dict[str, Any]) -> Tuple[np.ndarray, Dict[str, Any]]:
    with rasterio.open(result["raster"]) as src:
        meta = {"profile": src.profile, "crs": src.crs, "bounds": src.bounds, "nodata": src.nodatavals,
                "descriptions": src.descriptions, "dtypes": src.dtypes}
        return src.read(), meta


def _read_truth(result: Dict[str, Any]) -> np.ndarray:
    with rasterio.open(result["truth"]) as src:
        return src.read(1)


def _deposit_xy(result: Dict[str, Any]) -> np.ndarray:
    frame = gpd.read_file(result["deposits"])
    return np.column_stack([frame.geometry.x.to_numpy(), frame.geometry.y.to_numpy()])


def _deposit_pixels(result: Dict[str, Any]) -> Tuple[np.ndarray, np.ndarray]:
    xy = _deposit_xy(result)
    with rasterio.open(result["truth"]) as src:
        rows, cols = rasterio.transform.rowcol(src.transform, xy[:, 0], xy[:, 1])
    return np.asarray(rows), np.asarray(cols)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    return make_demo_data(tmp_path_factory.mktemp("demo") / "small", seed=7, **SMALL)


@pytest.fixture(scope="module", params=[0, 1, 2])
def stats_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    return make_demo_data(tmp_path_factory.mktemp("demo_stats") / "d", seed=request.param, **STATS)


# ----------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_arrays_and_deposits(tmp_path: Path) -> None:
    a, b = _make(tmp_path, "a", seed=3), _make(tmp_path, "b", seed=3)
    np.testing.assert_array_equal(_read_stack(a)[0], _read_stack(b)[0])
    np.testing.assert_array_equal(_read_truth(a), _read_truth(b))
    np.testing.assert_array_equal(_deposit_xy(a), _deposit_xy(b))
    assert a["signal_bands"] == b["signal_bands"] and a["band_names"] == b["band_names"]


def test_different_seed_differs(tmp_path: Path) -> None:
    a, b = _make(tmp_path, "a", seed=3), _make(tmp_path, "b", seed=4)
    assert not np.array_equal(_read_stack(a)[0], _read_stack(b)[0])
    assert not np.array_equal(_read_truth(a), _read_truth(b))
    assert not np.array_equal(_deposit_xy(a), _deposit_xy(b))


def test_truth_and_deposits_do_not_depend_on_band_count(tmp_path: Path) -> None:
    a, b = _make(tmp_path, "a", seed=5, bands=5), _make(tmp_path, "b", seed=5, bands=12)
    np.testing.assert_array_equal(_read_truth(a), _read_truth(b))
    np.testing.assert_array_equal(_deposit_xy(a), _deposit_xy(b))


# ----------------------------------------------------------------------------- raster format


def test_raster_is_projected_float32_tiled_deflate_with_band_names(small: Dict[str, Any]) -> None:
    data, meta = _read_stack(small)
    assert data.shape == (8, 64, 96) and data.dtype == np.float32
    assert set(meta["dtypes"]) == {"float32"}
    assert meta["crs"].is_projected and meta["crs"] == CRS.from_epsg(3577)
    profile = meta["profile"]
    assert profile["tiled"] and profile["blockxsize"] == 256 and profile["blockysize"] == 256
    assert profile["compress"] == "deflate" and profile["interleave"] == "pixel"
    assert list(meta["descriptions"]) == small["band_names"]
    assert len(set(small["band_names"])) == 8
    with rasterio.open(small["truth"]) as src:
        assert (src.width, src.height, src.crs, src.transform) == (96, 64, meta["crs"], profile["transform"])
        assert src.dtypes[0] == "float32" and src.nodata == NODATA


def test_nodata_region_is_declared_and_shared_by_all_bands_and_truth(small: Dict[str, Any]) -> None:
    data, meta = _read_stack(small)
    assert all(v == NODATA for v in meta["nodata"])
    off = data == NODATA
    assert np.array_equal(off.all(axis=0), off.any(axis=0)), "every band has the same nodata region"
    fraction = off[0].mean()
    assert 0.02 < fraction < 0.3, f"nodata region covers {fraction:.1%}"
    np.testing.assert_array_equal(_read_truth(small) == NODATA, off[0])
    assert np.isfinite(data).all(), "nodata is declared, never NaN"


def test_categorical_band_holds_few_integer_codes(small: Dict[str, Any]) -> None:
    band = small["categorical_band"]
    assert small["band_names"][band - 1] == CATEGORICAL_NAME
    assert band in small["signal_bands"]
    data, _ = _read_stack(small)
    codes = data[band - 1][data[band - 1] != NODATA]
    values = np.unique(codes)
    assert np.array_equal(values, np.round(values)) and 3 <= len(values) <= 8
    assert values.min() >= 1 and values.max() <= 8


def test_default_band_count_is_99_with_six_signal_bands(tmp_path: Path) -> None:
    result = make_demo_data(tmp_path / "d", width=64, height=48, n_deposits=10)
    with rasterio.open(result["raster"]) as src:
        assert src.count == 99 and len(set(src.descriptions)) == 99
    assert result["bands"] == 99 and len(result["signal_bands"]) == len(SIGNAL_BANDS)
    assert all(1 <= b <= 99 for b in result["signal_bands"])
    noise = [n for i, n in enumerate(result["band_names"], 1) if i not in result["signal_bands"]]
    assert len(noise) == 93 and all(n.startswith("noise_") for n in noise)


def test_core_raster_reader_sees_names_nodata_and_valid_area(small: Dict[str, Any]) -> None:
    from core.raster import open_raster, read_info, read_window

    info = read_info(small["raster"])
    assert info.band_names == small["band_names"] and info.nodata == [NODATA] * 8
    with open_raster(small["raster"]) as src:
        _, valid = read_window(src, 0, 0, 64, 96)
    np.testing.assert_array_equal(valid, _read_truth(small) != NODATA)


# ----------------------------------------------------------------------------- deposits


def test_deposits_are_label_1_points_inside_the_valid_raster(small: Dict[str, Any]) -> None:
    frame = gpd.read_file(small["deposits"])
    assert len(frame) == small["n_deposits"] == 40
    assert "label" in frame.columns and (frame["label"] == 1).all()
    assert set(frame.geometry.geom_type) == {"Point"}
    assert CRS.from_user_input(frame.crs.to_wkt()) == CRS.from_epsg(3577)
    _, meta = _read_stack(small)
    left, bottom, right, top = meta["bounds"]
    xy = _deposit_xy(small)
    assert ((xy[:, 0] > left) & (xy[:, 0] < right) & (xy[:, 1] > bottom) & (xy[:, 1] < top)).all()
    rows, cols = _deposit_pixels(small)
    truth = _read_truth(small)
    assert (truth[rows, cols] != NODATA).all(), "no deposit in the nodata region"
    assert len(set(zip(rows.tolist(), cols.tolist()))) == 40, "one deposit per pixel"


def test_core_label_reader_finds_every_deposit(small: Dict[str, Any]) -> None:
    from core.config import LabelOptions
    from core.labels import rasterize_labels
    from core.raster import read_info

    labels = rasterize_labels(LabelOptions(labels_path=small["deposits"], label_column="label"),
                              read_info(small["raster"]))
    assert len(labels.positive_points) == 40 and labels.labels.sum() >= 40


def test_deposits_follow_the_probability_surface(stats_run: Dict[str, Any]) -> None:
    truth = _read_truth(stats_run)
    valid = truth != NODATA
    rows, cols = _deposit_pixels(stats_run)
    map_mean, at_deposits = truth[valid].mean(), truth[rows, cols].mean()
    assert at_deposits > 2.0 * map_mean, (at_deposits, map_mean)
    # The truth is a per-pixel chance: it sums to the deposit count, so deposits are rare.
    assert truth[valid].sum() == pytest.approx(stats_run["n_deposits"], rel=1e-3)
    assert stats_run["truth_mean_at_deposits"] == pytest.approx(float(at_deposits), rel=1e-5)


def _abs_rank_corr(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(abs(np.corrcoef(ra, rb)[0, 1]))


def test_signal_bands_carry_the_truth_noise_bands_do_not(stats_run: Dict[str, Any]) -> None:
    data, _ = _read_stack(stats_run)
    truth = _read_truth(stats_run)
    valid = truth != NODATA
    numeric = [b for b in stats_run["signal_bands"] if b != stats_run["categorical_band"]]
    noise = [b for b in range(1, stats_run["bands"] + 1) if b not in stats_run["signal_bands"]]
    signal_corr = [_abs_rank_corr(data[b - 1][valid], truth[valid]) for b in numeric]
    noise_corr = [_abs_rank_corr(data[b - 1][valid], truth[valid]) for b in noise]
    assert np.mean(signal_corr) > 2.5 * np.mean(noise_corr), (signal_corr, noise_corr)
    assert max(signal_corr) > max(noise_corr)
    # The favourable lithology adds 1.5 to the hidden logit; other fields blur it a little.
    lith = data[stats_run["categorical_band"] - 1][valid]
    log_truth = np.log(truth[valid])
    favourable = lith == FAVOURABLE_LITHOLOGY
    assert log_truth[favourable].mean() - log_truth[~favourable].mean() > 0.75


# ----------------------------------------------------------------------------- files and errors


def test_readme_and_result_describe_the_dataset(small: Dict[str, Any]) -> None:
    text = Path(small["readme"]).read_text(encoding="utf-8")
    assert "truth.tif" in text and "EPSG:3577" in text and "seed 7" in text
    for name in small["band_names"]:
        assert name in text
    json.dumps(small)  # the CLI prints the result as JSON
    assert small["crs"] == "EPSG:3577" and small["nodata"] == NODATA


def test_rerun_overwrites_cleanly_without_leftovers(tmp_path: Path) -> None:
    out = tmp_path / "d"
    _make(tmp_path, "d", seed=1)
    (out / "deposits.qix").write_bytes(b"stale spatial index of the old deposits")
    result = _make(tmp_path, "d", seed=2)
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["README.txt", "stack.tif", "truth.tif", "deposits.shp", "deposits.shx",
                            "deposits.dbf", "deposits.prj", "deposits.cpg"])
    np.testing.assert_array_equal(_deposit_xy(result), _deposit_xy(_make(tmp_path, "fresh", seed=2)))


@pytest.mark.parametrize("kwargs, words", [
    ({"bands": 3}, "--bands"),
    ({"width": 10}, "--width"),
    ({"height": 0}, "--height"),
    ({"width": "wide"}, "--width 32"),
    ({"bands": 5000}, "--bands 1000"),
    ({"seed": -1}, "--seed"),
    ({"n_deposits": 0}, "fewer deposits"),
    ({"n_deposits": 10_000}, "larger grid"),
    ({"width": 20_000, "height": 20_000, "bands": 99}, "fewer --bands"),
])
def test_bad_parameters_raise_config_error_naming_the_fix(tmp_path: Path, kwargs: Dict[str, Any],
                                                          words: str) -> None:
    with pytest.raises(ConfigError, match=words.replace("-", r"\-")):
        _make(tmp_path, "bad", **kwargs)
    assert not (tmp_path / "bad").exists(), "nothing is written for bad parameters"


def test_output_dir_that_is_a_file_raises_data_error(tmp_path: Path) -> None:
    target = tmp_path / "taken"
    target.write_text("not a folder")
    with pytest.raises(DataError, match="--output_dir"):
        make_demo_data(target, **SMALL)


def test_command_line_writes_the_dataset(tmp_path: Path, repo_root: Path, worker_python: str) -> None:
    proc = subprocess.run([worker_python, "-m", "core", "make-demo-data", "--output_dir", str(tmp_path / "cli"),
                           "--width", "64", "--height", "48", "--bands", "6", "--seed", "9", "--events", "jsonl"],
                          cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    result = next(e["value"] for e in events if e["event"] == "result")
    with rasterio.open(result["raster"]) as src:
        assert (src.count, src.width, src.height) == (6, 64, 48)
    assert len(gpd.read_file(result["deposits"])) == result["n_deposits"]
