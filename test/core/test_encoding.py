"""encoding.py: statistics from the training area only, one-hot categories, JSON round trip."""
from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio

from core.encoding import BandEncoder, fit_encoder, robust_mean_std
from core.errors import ConfigError, DataError
from core.raster import open_raster, read_window

WHOLE = [(0, 0, 96, 128)]


def _valid_values(stack, band: int, box=(0, 0, 96, 128), mask=None) -> np.ndarray:
    with rasterio.open(stack.path) as src:
        data = src.read(band).astype(np.float64)
    inside = ~stack.invalid
    r0, c0, r1, c1 = box
    sel = np.zeros_like(inside)
    sel[r0:r1, c0:c1] = True
    sel &= inside
    if mask is not None:
        sel &= mask
    return data[sel]


def test_statistics_exclude_nodata_and_match_numpy(tiny_stack):
    enc = fit_encoder(tiny_stack.path, WHOLE)
    mean, std = robust_mean_std(_valid_values(tiny_stack, 2))
    assert enc.mean[1] == pytest.approx(mean, rel=1e-5) and enc.std[1] == pytest.approx(std, rel=1e-5)
    assert 95 < enc.mean[1] < 105 and 15 < enc.std[1] < 25  # -9999 nodata would wreck these
    assert enc.band_names == tiny_stack.band_names and enc.band_count == 5


def test_statistics_come_from_the_training_windows_and_mask_only(tiny_stack):
    top = fit_encoder(tiny_stack.path, [(0, 0, 32, 128)])
    bottom = fit_encoder(tiny_stack.path, [(64, 0, 96, 128)])
    # band 3 is a row gradient 0..50: the two areas give clearly different means
    assert top.mean[2] < 20 < 30 < bottom.mean[2]
    assert top.mean[2] == pytest.approx(robust_mean_std(_valid_values(tiny_stack, 3, (0, 0, 32, 128)))[0], rel=1e-5)
    mask = np.zeros((96, 128), dtype=bool)
    mask[:, :40] = True
    masked = fit_encoder(tiny_stack.path, WHOLE, mask=mask)
    # band 5 codes are 1 + col * 4 // 128: inside the mask only codes 1 and 2 exist
    assert masked.mean[4] == pytest.approx(robust_mean_std(_valid_values(tiny_stack, 5, mask=mask))[0], rel=1e-5)
    assert masked.mean[4] < 2.0


def test_overlapping_windows_count_each_pixel_once(tiny_stack):
    once = fit_encoder(tiny_stack.path, [(0, 0, 64, 64)])
    twice = fit_encoder(tiny_stack.path, [(0, 0, 64, 64), (0, 0, 64, 64), (32, 32, 64, 64)])
    assert once.mean == twice.mean and once.std == twice.std


def test_subsample_keeps_memory_bounded_and_estimates_close(tiny_stack):
    full = fit_encoder(tiny_stack.path, WHOLE)
    sampled = fit_encoder(tiny_stack.path, WHOLE, max_samples=2000, seed=1)
    assert sampled.mean[1] == pytest.approx(full.mean[1], abs=2.0)
    assert sampled.std[1] == pytest.approx(full.std[1], rel=0.1)


def test_robust_statistics_ignore_outliers_and_constant_bands():
    values = np.concatenate([np.random.default_rng(0).normal(0, 1, 10000), [1e9] * 5])
    mean, std = robust_mean_std(values)
    assert abs(mean) < 0.1 and 0.8 < std < 1.2
    assert robust_mean_std(np.full(50, 3.0)) == (3.0, 1.0)


def test_categorical_band_is_one_hot_and_unseen_codes_are_zero(tiny_stack):
    enc = fit_encoder(tiny_stack.path, [(0, 0, 96, 64)], categorical_bands=[5])
    assert enc.categories == {"5": [1, 2]}  # only codes 1, 2 in the left half
    assert enc.out_channels == 4 + 2
    assert enc.channel_names[-2:] == ["lithology=1", "lithology=2"]
    with open_raster(tiny_stack.path) as src:
        data, valid = read_window(src, 0, 0, 96, 128)
    x = enc.encode(data, valid)
    assert x.shape == (6, 96, 128) and x.dtype == np.float32
    onehot = x[4:]
    assert set(np.unique(onehot)) <= {0.0, 1.0}
    left = valid.copy()
    left[:, 64:] = False
    assert (onehot.sum(axis=0)[left] == 1).all()  # codes seen in training: exactly one channel
    assert not onehot[:, :, 64:].any()  # codes 3, 4 never seen in training: all-zero "other"
    np.testing.assert_array_equal(onehot[0][left], data[4][left] == 1)
    assert not x[:, ~valid].any()  # invalid pixels encode as 0


def test_numeric_encoding_is_standardised_and_clipped(tiny_stack):
    enc = fit_encoder(tiny_stack.path, WHOLE)
    with open_raster(tiny_stack.path) as src:
        data, valid = read_window(src, 0, 0, 96, 128)
    x = enc.encode(data, valid)
    assert abs(x[1][valid].mean()) < 0.05 and 0.9 < x[1][valid].std() < 1.1
    data[1, 5, 5] = 1e12
    assert enc.encode(data, valid)[1, 5, 5] == enc.z_clip


def test_to_dict_is_plain_json_and_round_trips(tiny_stack):
    enc = fit_encoder(tiny_stack.path, WHOLE, categorical_bands=[4, 5])
    d = enc.to_dict()
    text = json.dumps(d)  # fails on any numpy scalar
    assert json.loads(text) == d
    assert d["band_names"] == tiny_stack.band_names and d["band_count"] == 5
    assert d["categories"] == {"4": [0, 1], "5": [1, 2, 3, 4]}
    back = BandEncoder.from_dict(json.loads(text))
    with open_raster(tiny_stack.path) as src:
        data, valid = read_window(src, 10, 10, 40, 40)
    np.testing.assert_array_equal(back.encode(data, valid), enc.encode(data, valid))
    assert back.out_channels == enc.out_channels == 3 + 2 + 4


def test_errors(tiny_stack):
    with pytest.raises(ConfigError, match="bands 1..5"):
        fit_encoder(tiny_stack.path, WHOLE, categorical_bands=[6])
    with pytest.raises(DataError, match="more than 8 distinct codes"):
        fit_encoder(tiny_stack.path, WHOLE, categorical_bands=[2], max_categories=8)
    nothing = np.zeros((96, 128), dtype=bool)
    with pytest.raises(DataError, match="no valid pixel"):
        fit_encoder(tiny_stack.path, WHOLE, mask=nothing)
    enc = fit_encoder(tiny_stack.path, WHOLE)
    with pytest.raises(DataError, match="trained on 5"):
        enc.encode(np.zeros((3, 4, 4), dtype=np.float32), np.ones((4, 4), dtype=bool))
    with pytest.raises(DataError, match="format"):
        BandEncoder.from_dict({"mean": []})


def test_real_cloncurry_class_bands(shared_data):
    path = shared_data / "cloncurry_iocg" / "cloncurry_stack.tif"
    enc = fit_encoder(path, [(0, 0, 600, 1259)], categorical_bands=[2, 4])
    assert enc.categories["4"] == [0, 1]
    assert set(enc.categories["2"]) <= set(range(1, 11))
    assert enc.band_names[0] == "dist2breccia" and enc.std[0] > 0
    json.dumps(enc.to_dict())
