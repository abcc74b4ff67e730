"""raster.py: metadata, windowed reads with nodata/NaN/mask handling, window grids."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from core.errors import DataError
from core.raster import (
    GDAL_CACHE_MB, box_to_map, coverage_mask, iter_windows, map_to_pixel, open_raster, read_info,
    read_valid_mask, read_window,
)


def _write(path: Path, data: np.ndarray, nodata=None, descriptions=None, mask=None) -> Path:
    with rasterio.open(path, "w", driver="GTiff", height=data.shape[1], width=data.shape[2], count=data.shape[0],
                       dtype=data.dtype, crs="EPSG:32633", transform=from_origin(0, 100, 1, 1), nodata=nodata) as dst:
        dst.write(data)
        for i, d in enumerate(descriptions or [], start=1):
            dst.set_band_description(i, d)
        if mask is not None:
            dst.write_mask(mask.astype("uint8") * 255)
    return path


def test_read_info_reports_grid_bands_and_nodata(tiny_stack):
    info = read_info(tiny_stack.path)
    assert (info.height, info.width, info.count) == (96, 128, 5)
    assert info.band_names == ["signal", "noise", "gradient", "flag", "lithology"]
    assert info.nodata == [-9999.0] * 5
    assert info.dtypes == ["float32"] * 5
    assert info.res == (10.0, 10.0)
    assert info.transform == pytest.approx(tiny_stack.transform)
    assert info.bounds == pytest.approx((500000.0, 7000000.0 - 960.0, 500000.0 + 1280.0, 7000000.0))
    assert rasterio.crs.CRS.from_wkt(info.crs_wkt).to_epsg() == 3067
    assert info.to_dict()["transform"] == list(info.transform)  # JSON-able


def test_band_names_fall_back_to_band_n(tmp_path):
    path = _write(tmp_path / "plain.tif", np.ones((2, 4, 4), dtype="int16"), descriptions=["", "dem"])
    assert read_info(path).band_names == ["band_1", "dem"]


def test_missing_and_unreadable_rasters_raise_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_info(tmp_path / "nope.tif")
    bad = tmp_path / "bad.tif"
    bad.write_text("not a raster")
    with pytest.raises(DataError, match="cannot read"):
        read_info(bad)
    with pytest.raises(DataError, match="cannot read"):
        with open_raster(bad):
            pass


def test_read_window_masks_nodata_nan_and_per_band_nodata(tiny_stack):
    with open_raster(tiny_stack.path) as src:
        data, valid = read_window(src, 0, 0, tiny_stack.height, tiny_stack.width)
        raw = src.read()
    assert data.dtype == np.float32 and data.shape == (5, 96, 128)
    np.testing.assert_array_equal(valid, ~tiny_stack.invalid)
    assert np.all(data[:, ~valid] == 0.0) and np.isfinite(data).all()
    np.testing.assert_array_equal(data[:, valid], raw[:, valid])
    assert not valid[94, 64]  # only band 2 holds nodata there: the pixel is invalid


def test_read_window_reads_chosen_bands_in_their_order(tiny_stack):
    """Prediction reads a model's bands by name: a subset, in any order; validity counts only those."""
    with open_raster(tiny_stack.path) as src:
        picked, valid = read_window(src, 0, 0, tiny_stack.height, tiny_stack.width, bands=[3, 1])
        raw = src.read([3, 1])
    assert picked.shape == (2, 96, 128)
    np.testing.assert_array_equal(picked[:, valid], raw[:, valid])
    assert valid[94, 64]  # only band 2 holds nodata there, and band 2 was not read


def test_read_window_pads_outside_the_raster(tiny_stack):
    with open_raster(tiny_stack.path) as src:
        data, valid = read_window(src, -5, 120, 20, 20)
        inner, inner_valid = read_window(src, 0, 120, 15, 8)
        outside, outside_valid = read_window(src, 500, 500, 8, 8)
    assert data.shape == (5, 20, 20)
    assert not valid[:5].any() and not valid[:, 8:].any()
    np.testing.assert_array_equal(data[:, 5:, :8], inner)
    np.testing.assert_array_equal(valid[5:, :8], inner_valid)
    assert not outside_valid.any() and not outside.any()


def test_float64_values_beyond_float32_read_as_zero(tmp_path):
    """Finite in float64 but infinite in float32: no inf reaches the model, inside the raster or padded."""
    arr = np.full((2, 4, 4), 2.5, dtype="float64")
    arr[1, 2, 1] = 1e300
    path = _write(tmp_path / "f64.tif", arr)
    with open_raster(path) as src:
        for data, valid in (read_window(src, 0, 0, 4, 4), read_window(src, -1, -1, 6, 6)):
            assert data.dtype == np.float32 and np.isfinite(data).all()
            assert data.max() == 2.5 and (data == 0).sum() == 1 + (data.size - 2 * 16)


def test_uint16_nodata_zero_and_internal_mask(tmp_path):
    arr = np.arange(1, 17, dtype="uint16").reshape(1, 4, 4)
    arr[0, 0, 0] = 0
    path = _write(tmp_path / "u16.tif", arr, nodata=0)
    with open_raster(path) as src:
        data, valid = read_window(src, 0, 0, 4, 4)
    assert valid.sum() == 15 and not valid[0, 0] and data[0, 3, 3] == 16.0
    mask = np.ones((4, 4), dtype=bool)
    mask[1, 1] = False
    masked = _write(tmp_path / "masked.tif", np.ones((1, 4, 4), dtype="float32"), mask=mask)
    with open_raster(masked) as src:
        _, valid = read_window(src, 0, 0, 4, 4)
    np.testing.assert_array_equal(valid, mask)


def test_real_buildings_uint16_nodata(shared_data):
    path = shared_data / "buildings_small" / "sample_geotiff.tif"
    info = read_info(path)
    assert info.dtypes == ["uint16"] and info.nodata == [0.0]
    with open_raster(path) as src:
        data, valid = read_window(src, 0, 0, 300, 300)
        raw = src.read(1, window=rasterio.windows.Window(0, 0, 300, 300))
    np.testing.assert_array_equal(valid, raw != 0)


def test_real_ecuador_nodata_mask_matches_full_read(shared_data):
    path = shared_data / "ecuador_landslides" / "ecuador_ta_stack.tif"
    mask = read_valid_mask(path)
    with rasterio.open(path) as src:
        full = src.read()
    expected = np.all((full != -9999) & np.isfinite(full), axis=0)
    np.testing.assert_array_equal(mask, expected)
    assert 0 < mask.mean() < 1  # the file has nodata, and it is masked


def test_open_raster_bounds_the_gdal_cache(tiny_stack):
    gdal = pytest.importorskip("osgeo.gdal")  # Debian's bindings share rasterio's libgdal
    with open_raster(tiny_stack.path) as src:
        read_window(src, 0, 0, 8, 8)
        assert gdal.GetCacheMax() == GDAL_CACHE_MB * 1024 * 1024


@pytest.mark.parametrize("shape,tile,stride", [((96, 128), (32, 32), None), ((100, 70), (32, 48), (20, 20)),
                                               ((10, 10), (4, 4), (4, 4))])
def test_iter_windows_cover_the_raster_and_align_to_the_edge(shape, tile, stride):
    h, w = shape
    origins = iter_windows(h, w, tile, stride)
    covered = coverage_mask(shape, [(r, c, r + tile[0], c + tile[1]) for r, c in origins])
    assert covered.all()
    assert max(r for r, _ in origins) == h - tile[0] and max(c for _, c in origins) == w - tile[1]
    assert all(r + tile[0] <= h and c + tile[1] <= w for r, c in origins)
    step = (stride or tile)[0]
    rows = sorted({r for r, _ in origins})
    assert rows[:2] == [0, min(step, h - tile[0])]


def test_iter_windows_tile_larger_than_raster_is_one_padded_window():
    assert iter_windows(10, 20, (32, 32)) == [(0, 0)]
    with pytest.raises(DataError):
        iter_windows(10, 20, (0, 4))


def test_box_to_map_and_map_to_pixel_round_trip(tiny_stack):
    info = read_info(tiny_stack.path)
    assert box_to_map((0, 0, 96, 128), info) == pytest.approx(info.bounds)
    x, y = tiny_stack.xy(10, 20)
    rows, cols = map_to_pixel(info, np.array([x]), np.array([y]))
    assert (rows[0], cols[0]) == pytest.approx((10.5, 20.5))
