"""encoding.py: statistics from the training area only, one-hot categories, JSON round trip."""
from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio

from core.encoding import MAX_CATEGORIES, BandEncoder, fit_encoder, robust_mean_std
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


def test_categorical_bands_by_name(tiny_stack):
    """The band description picks the band (exact, else ignoring case), as a number does."""
    by_number = fit_encoder(tiny_stack.path, WHOLE, categorical_bands=[5])
    assert fit_encoder(tiny_stack.path, WHOLE, categorical_bands=["lithology"]).categories == by_number.categories
    assert fit_encoder(tiny_stack.path, WHOLE, categorical_bands=["LITHOLOGY"]).categories == by_number.categories
    with pytest.raises(ConfigError, match="'geology' are not band names.*lithology"):
        fit_encoder(tiny_stack.path, WHOLE, categorical_bands=["geology"])


def test_numeric_encoding_is_standardised_and_clipped(tiny_stack):
    enc = fit_encoder(tiny_stack.path, WHOLE, scaling="zscore")
    assert not enc.ranks
    with open_raster(tiny_stack.path) as src:
        data, valid = read_window(src, 0, 0, 96, 128)
    x = enc.encode(data, valid)
    assert abs(x[1][valid].mean()) < 0.05 and 0.9 < x[1][valid].std() < 1.1
    data[1, 5, 5] = 1e12
    assert enc.encode(data, valid)[1, 5, 5] == enc.z_clip


def test_rank_encoding_is_the_normal_score_of_the_training_rank(tiny_stack):
    """Default: each numeric band's value becomes the normal score of its rank in the training area."""
    from scipy.stats import spearmanr

    enc = fit_encoder(tiny_stack.path, WHOLE)
    assert set(enc.ranks) == {"1", "2", "3", "4", "5"}  # no categorical band given: all numeric
    with open_raster(tiny_stack.path) as src:
        data, valid = read_window(src, 0, 0, 96, 128)
    x = enc.encode(data, valid)
    for band in (1, 2):  # normal(100, 20) and a second continuous band: ~N(0, 1) scores
        assert abs(x[band - 1][valid].mean()) < 0.05 and 0.9 < x[band - 1][valid].std() < 1.1
        # the table lookup agrees with interpolating between the training quantiles
        values, scores = enc.ranks[str(band)]
        exact = np.interp(data[band - 1][valid], values, scores)
        assert np.abs(x[band - 1][valid] - exact).max() < 0.03
        # monotone: the order of the pixels is kept (up to ties in the table cells)
        assert spearmanr(x[band - 1][valid], data[band - 1][valid])[0] > 0.999
    top = max(enc.ranks["2"][1])
    data[1, 5, 5] = 1e12  # an outlier gets the highest training score, not a huge input
    assert enc.encode(data, valid)[1, 5, 5] == pytest.approx(top, abs=1e-6) and top < 3.0


def test_rank_encoding_of_a_skewed_band_with_ties():
    """A band with a mass of zeros and a long tail: the zeros share the middle of their ranks."""
    from core.encoding import rank_table

    rng = np.random.default_rng(0)
    values = np.concatenate([np.zeros(6000), rng.lognormal(0.0, 2.0, 4000)])
    knots, scores = rank_table(values)
    enc = BandEncoder(band_names=["grade"], mean=[0.0], std=[1.0], ranks={"1": [knots, scores]})
    x = enc.encode(values.astype(np.float32)[None, :, None], np.ones((values.size, 1), dtype=bool))[0, :, 0]
    zeros = x[:6000]
    # the 60 % of pixels at 0 share the mean normal score of the lowest 60 % of levels:
    # -pdf(ppf(0.6)) / 0.6 = -0.644 for a continuum, not the lowest score (-2.9)
    assert np.ptp(zeros) == 0.0 and zeros[0] == pytest.approx(-0.644, abs=0.05)
    tail = values[6000:]
    order = np.argsort(tail)
    assert (np.diff(x[6000:][order]) >= 0).all() and x[6000:].min() >= zeros[0]  # the tail keeps its order
    assert x[6000:].max() == pytest.approx(max(scores), abs=0.02)  # and spreads up to the top rank


def test_rank_encoding_of_a_constant_band_is_zero_and_outliers_are_bounded():
    from core.encoding import rank_table

    enc = BandEncoder(band_names=["flat"], mean=[7.0], std=[1.0], ranks={"1": rank_table(np.full(500, 7.0))})
    data = np.array([[[7.0, 7.0, -1e30, 1e30, np.inf]]], dtype=np.float32)
    x = enc.encode(data, np.ones((1, 5), dtype=bool))
    assert np.isfinite(x).all() and np.abs(x).max() < 1e-6  # one value: the middle rank, whatever comes


def test_old_encoders_without_ranks_still_encode_by_z_score(tiny_stack):
    enc = fit_encoder(tiny_stack.path, WHOLE, scaling="zscore")
    old = {**enc.to_dict(), "format": "stack_segmenter.encoder/2"}
    del old["ranks"]
    back = BandEncoder.from_dict(old)
    with open_raster(tiny_stack.path) as src:
        data, valid = read_window(src, 0, 0, 96, 128)
    np.testing.assert_array_equal(back.encode(data, valid), enc.encode(data, valid))
    damaged = fit_encoder(tiny_stack.path, WHOLE).to_dict()
    damaged["ranks"]["1"][0] = damaged["ranks"]["1"][0][::-1]
    with pytest.raises(DataError, match="rank table of band 1.*damaged"):
        BandEncoder.from_dict(damaged)


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
    with pytest.raises(DataError, match="band 2 .*not whole numbers.*looks continuous"):
        fit_encoder(tiny_stack.path, WHOLE, categorical_bands=[2])
    with pytest.raises(DataError, match="more than 3 distinct codes"):
        fit_encoder(tiny_stack.path, WHOLE, categorical_bands=[5], max_distinct=3)
    nothing = np.zeros((96, 128), dtype=bool)
    with pytest.raises(DataError, match="no valid pixel"):
        fit_encoder(tiny_stack.path, WHOLE, mask=nothing)
    enc = fit_encoder(tiny_stack.path, WHOLE)
    with pytest.raises(DataError, match="trained on 5"):
        enc.encode(np.zeros((3, 4, 4), dtype=np.float32), np.ones((4, 4), dtype=bool))
    with pytest.raises(DataError, match="format"):
        BandEncoder.from_dict({"mean": []})
    with pytest.raises(ConfigError, match="unknown band scaling 'ranks'.*rank, zscore"):
        fit_encoder(tiny_stack.path, WHOLE, scaling="ranks")


def test_real_cloncurry_class_bands(shared_data):
    path = shared_data / "cloncurry_iocg" / "cloncurry_stack.tif"
    enc = fit_encoder(path, [(0, 0, 600, 1259)], categorical_bands=[2, 4])
    assert enc.categories["4"] == [0, 1]
    assert set(enc.categories["2"]) <= set(range(1, 11))
    assert enc.band_names[0] == "dist2breccia" and enc.std[0] > 0
    json.dumps(enc.to_dict())


def _write_codes(tmp_path, codes: np.ndarray):
    """A 2-band raster: a numeric band and a class band holding ``codes``."""
    import rasterio
    from rasterio.transform import from_origin

    h, w = codes.shape
    numeric = np.random.default_rng(1).normal(size=(h, w)).astype(np.float32)
    path = tmp_path / "codes.tif"
    with rasterio.open(path, "w", driver="GTiff", height=h, width=w, count=2, dtype="float32", crs="EPSG:3067",
                       transform=from_origin(500000, 7000000, 10, 10), nodata=-9999.0) as dst:
        dst.write(np.stack([numeric, codes.astype(np.float32)]))
    return path


def test_many_codes_keep_the_most_frequent_and_group_the_rest_as_other(tmp_path):
    """A lithology band of 300 codes (skewed frequencies, as real maps): 64 channels + 'other', no error."""
    rng = np.random.default_rng(0)
    weights = 1.0 / np.arange(1, 301) ** 0.7
    codes = 1000 + rng.choice(300, size=(120, 150), p=weights / weights.sum())
    path = _write_codes(tmp_path, codes)
    enc = fit_encoder(path, [(0, 0, 120, 150)], categorical_bands=[2])
    kept = enc.categories["2"]
    assert len(kept) == MAX_CATEGORIES and enc.other == ["2"]
    assert enc.out_channels == 1 + MAX_CATEGORIES + 1 and enc.channel_names[-1].endswith("=other")
    values, counts = np.unique(codes, return_counts=True)
    assert min(counts[np.isin(values, kept)]) >= max(counts[~np.isin(values, kept)])  # the most frequent kept
    data = np.stack([np.zeros_like(codes, dtype=np.float32), codes.astype(np.float32)])
    data[1, :5, :5] = 99999  # a code never seen in training
    valid = np.ones(codes.shape, dtype=bool)
    x = enc.encode(data, valid)
    onehot, other = x[1:-1], x[-1]
    assert (onehot.sum(axis=0) + other == 1).all()  # every pixel in exactly one class channel
    assert other[:5, :5].all()  # unseen: "other"
    rare = ~np.isin(codes, kept)
    rare[:5, :5] = False
    assert rare.any() and other[rare].all() and not other[np.isin(codes, kept) & (data[1] != 99999)].any()
    back = BandEncoder.from_dict(json.loads(json.dumps(enc.to_dict())))
    np.testing.assert_array_equal(back.encode(data, valid), x)


def test_encoders_written_before_other_channels_still_load(tiny_stack):
    enc = fit_encoder(tiny_stack.path, WHOLE, categorical_bands=[5])
    old = enc.to_dict()
    old["format"] = "stack_segmenter.encoder/1"
    del old["other"]
    back = BandEncoder.from_dict(old)
    assert back.other == [] and back.out_channels == enc.out_channels == 4 + 4
