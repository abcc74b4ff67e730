"""sampling.py: spatially separate validation blocks, positive-aware weights, blocks file."""
from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import torch
from pyproj import CRS

from core.config import LabelOptions
from core.errors import DataError
from core.labels import rasterize_labels
from core.raster import box_to_map, read_info, read_valid_mask
from core.sampling import make_split, positive_weights, resolve_tile, write_blocks_gpkg


def _labels(h: int, w: int, sites) -> np.ndarray:
    a = np.zeros((h, w), dtype=np.uint8)
    for r, c in sites:
        a[r, c] = 1
    return a


def _random_sites(n: int, h: int, w: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [(int(rng.integers(0, h)), int(rng.integers(0, w))) for _ in range(n)]


def _apart(a, b, gap) -> bool:
    """True when the boxes are at least gap[0] rows or gap[1] columns apart."""
    rows = max(b[0] - a[2], a[0] - b[2], 0)
    cols = max(b[1] - a[3], a[1] - b[3], 0)
    return rows >= gap[0] or cols >= gap[1]


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _check_separated(split, min_gap) -> None:
    assert split.train_windows and split.val_windows and split.val_blocks
    for w in split.train_windows:
        for b in split.val_blocks:
            assert not _overlap(w, b), (w, b)
            assert _apart(w, b, min_gap), (w, b)
    for v in split.val_windows:
        assert any(b[0] <= v[0] and b[1] <= v[1] and v[2] <= b[2] and v[3] <= b[3] for b in split.val_blocks)
        for w in split.train_windows:
            assert not _overlap(v, w)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("tile,stride", [((32, 32), None), ((32, 48), (16, 16)), ((20, 20), (7, 9))])
def test_no_validation_pixel_inside_any_training_tile_and_a_tile_wide_buffer(seed, tile, stride):
    h, w = 300, 260
    labels = _labels(h, w, _random_sites(40, h, w, seed))
    split = make_split(labels, np.ones((h, w), dtype=bool), tile, stride, seed=seed)
    assert tuple(split.buffer) == tile
    _check_separated(split, min_gap=tile)  # at least a tile (rows or columns) between them
    # pixel-level property, checked on the grid itself
    train = np.zeros((h, w), dtype=bool)
    for r0, c0, r1, c1 in split.train_windows:
        train[r0:r1, c0:c1] = True
    for r0, c0, r1, c1 in split.val_blocks:
        assert not train[r0:r1, c0:c1].any()
    assert all((r1 - r0, c1 - c0) == tile for r0, c0, r1, c1 in split.train_windows + split.val_windows)


def test_validation_fraction_is_close_to_the_target():
    h, w = 600, 600
    labels = _labels(h, w, _random_sites(60, h, w))
    for fraction in (0.1, 0.2, 0.3):
        split = make_split(labels, np.ones((h, w), dtype=bool), (32, 32), val_fraction=fraction)
        assert abs(split.summary["val_area_fraction"] - fraction) < 0.08, split.summary


def test_positive_counts_are_reported_on_both_sides():
    h, w = 300, 300
    sites = _random_sites(50, h, w, seed=3)
    labels = _labels(h, w, sites)
    logs = []
    points = np.array([(r + 0.5, c + 0.5) for r, c in sites])
    split = make_split(labels, np.ones((h, w), dtype=bool), (32, 32), positive_points=points, log=logs.append)
    s = split.summary
    in_val = sum(1 for r, c in set(sites) if any(b[0] <= r < b[2] and b[1] <= c < b[3] for b in split.val_blocks))
    assert s["val_positive_pixels"] == in_val > 0 and s["train_positive_pixels"] > 0
    assert s["val_positive_points"] >= s["val_positive_pixels"]
    assert any("positive pixels:" in m and "validation" in m for m in logs)


def test_tiny_label_set_gets_positives_on_both_sides():
    h, w = 256, 256
    labels = _labels(h, w, [(20, 20), (230, 230)])  # two positives, opposite corners
    split = make_split(labels, np.ones((h, w), dtype=bool), (32, 32), seed=0)
    assert split.summary["val_positive_pixels"] == 1 and split.summary["train_positive_pixels"] == 1


def test_a_single_positive_is_told_plainly():
    h, w = 256, 256
    logs = []
    split = make_split(_labels(h, w, [(128, 128)]), np.ones((h, w), dtype=bool), (32, 32), log=logs.append)
    assert split.summary["val_positive_pixels"] == 0 and split.summary["train_positive_pixels"] == 1
    assert any("NO positive label falls in the validation" in m for m in logs)


def test_split_is_repeatable_and_seed_dependent():
    h, w = 400, 400
    labels = _labels(h, w, _random_sites(80, h, w))
    usable = np.ones((h, w), dtype=bool)
    a = make_split(labels, usable, (32, 32), seed=5)
    b = make_split(labels, usable, (32, 32), seed=5)
    assert a.val_blocks == b.val_blocks and a.train_windows == b.train_windows
    others = {tuple(make_split(labels, usable, (32, 32), seed=s).val_blocks) for s in range(6, 10)}
    assert len(others | {tuple(a.val_blocks)}) > 1


def test_windows_without_usable_pixels_are_dropped():
    h, w = 256, 256
    usable = np.ones((h, w), dtype=bool)
    usable[:, 128:] = False  # right half nodata / outside the mask
    split = make_split(_labels(h, w, [(30, 30), (200, 60), (100, 100)]), usable, (32, 32))
    assert all(c0 < 128 for _, c0, _, _ in split.train_windows + split.val_windows)


def test_buffer_narrows_when_the_raster_is_small():
    logs = []
    h, w = 80, 80
    split = make_split(_labels(h, w, [(10, 10), (70, 70)]), np.ones((h, w), dtype=bool), (32, 32), log=logs.append)
    _check_separated(split, min_gap=split.buffer)
    assert tuple(split.buffer) != (32, 32) and any("narrower" in m for m in logs)


def test_impossible_split_and_tile_larger_than_raster_are_errors():
    with pytest.raises(DataError, match="smaller tile"):
        make_split(_labels(40, 40, [(5, 5)]), np.ones((40, 40), dtype=bool), (32, 32))
    with pytest.raises(DataError, match=r"larger than the raster.*--tile_size"):
        make_split(_labels(40, 40, [(5, 5)]), np.ones((40, 40), dtype=bool), (64, 32))
    with pytest.raises(DataError, match="no valid pixel"):
        make_split(_labels(40, 40, [(5, 5)]), np.zeros((40, 40), dtype=bool), (8, 8))


def test_resolve_tile_defaults_and_errors():
    logs = []
    assert resolve_tile(None, 2000, 4000, logs.append) == (256, 256)
    assert any("automatic tile size 256 x 256" in m for m in logs)
    assert resolve_tile(None, 900, 200, logs.append) == (256, 200)
    assert resolve_tile(None, 415, 383) == (128, 128)  # halved so a spatial split fits
    assert resolve_tile((64, 32), 100, 100) == (64, 32)
    with pytest.raises(DataError, match=r"tile 512 x 512 is larger than the raster \(100 x 300"):
        resolve_tile((512, 512), 100, 300)


def test_small_models_get_a_small_automatic_tile():
    """Per-pixel and small CNN models split the raster in 64-px tiles (more deposits in training)."""
    from core.models.catalog import parse_model_name

    pixel, cnn, unet = (parse_model_name(n) for n in ("pixel_sc1_layers2_e32", "cnn_sc1_layers2_e16",
                                                         "unet_sc2_layers4_e32"))
    assert pixel.auto_tile == cnn.auto_tile == 64 and unet.auto_tile is None
    logs = []
    assert resolve_tile(None, 2000, 4000, logs.append, pixel.auto_tile) == (64, 64)
    assert any("automatic tile size 64 x 64" in m for m in logs)
    assert resolve_tile(None, 2000, 4000, None, unet.auto_tile) == (256, 256)
    assert resolve_tile((32, 32), 2000, 4000, None, pixel.auto_tile) == (32, 32)  # a given tile wins


@pytest.mark.parametrize("seed", [0, 1])
def test_a_masked_split_keeps_validation_pixels_out_of_training_and_more_deposits_in(seed):
    """Local models: training windows reach into the blocks, but no block or buffer pixel trains."""
    from core.sampling import buffer_mask

    h, w = 300, 400
    sites = _random_sites(60, h, w, seed)
    labels, usable = _labels(h, w, sites), np.ones((h, w), dtype=bool)
    points = np.array(sites, dtype=float)
    plain = make_split(labels, usable, (64, 64), seed=seed, positive_points=points)
    masked = make_split(labels, usable, (64, 64), seed=seed, positive_points=points, buffer=(4, 4), masked=True)
    assert plain.train_mask is None and masked.train_mask is not None
    assert tuple(masked.buffer) == (4, 4) and masked.summary["masked"] is True
    assert not (masked.train_mask & buffer_mask((h, w), masked.val_blocks, (4, 4))).any()
    assert masked.train_mask[~buffer_mask((h, w), masked.val_blocks, (4, 4))].all()  # everything else trains
    cover = np.zeros((h, w), dtype=bool)
    for r0, c0, r1, c1 in masked.train_windows:
        cover[r0:r1, c0:c1] = True
    assert (cover & buffer_mask((h, w), masked.val_blocks, (0, 0))).any()  # windows do reach into blocks
    assert not (masked.train_mask & ~cover).any()  # every training pixel lies in a training window
    assert masked.summary["train_positive_points"] > plain.summary["train_positive_points"]
    in_val = masked.summary["val_positive_points"]
    assert masked.summary["train_positive_points"] == len(sites) - in_val - int(
        sum(buffer_mask((h, w), masked.val_blocks, (4, 4))[r, c] and not buffer_mask(
            (h, w), masked.val_blocks, (0, 0))[r, c] for r, c in sites))
    # a window whose only positives are masked out is not counted (nor drawn) as a positive window
    holds = [bool((labels[r0:r1, c0:c1] & masked.train_mask[r0:r1, c0:c1]).any())
             for r0, c0, r1, c1 in masked.train_windows]
    anywhere = [bool(labels[r0:r1, c0:c1].any()) for r0, c0, r1, c1 in masked.train_windows]
    assert masked.summary["train_windows_with_positives"] == sum(holds) < sum(anywhere)


def test_local_models_get_a_narrow_split_buffer():
    """The per-pixel and small CNN models split with their context plus a margin; the others a tile."""
    from core.models.catalog import SPLIT_MARGIN, parse_model_name

    assert parse_model_name("pixel_sc1_layers2_e32").split_buffer == SPLIT_MARGIN
    assert parse_model_name("cnn_sc2_layers2_e16").split_buffer == 4 + SPLIT_MARGIN  # dilation 2 x 2 layers
    for name in ("unet_sc2_layers4_e32", "transformer_sc2_layers4_e128", "s2unet_sc2_layers4_e32"):
        assert parse_model_name(name).split_buffer is None


def test_positive_aware_weights_draw_positives_often():
    h, w = 512, 512
    labels = _labels(h, w, [(40, 40), (300, 400)])  # 2 positives in 262k pixels
    split = make_split(labels, np.ones((h, w), dtype=bool), (32, 32), seed=0)
    has = np.array([labels[r0:r1, c0:c1].any() for r0, c0, r1, c1 in split.train_windows])
    assert 0 < has.sum() < len(has) / 20  # rare
    weights = np.array(split.train_weights)
    assert weights.sum() == pytest.approx(1.0) and weights[has].sum() == pytest.approx(0.5)
    torch.manual_seed(0)
    draws = list(torch.utils.data.WeightedRandomSampler(split.train_weights, 2000, replacement=True))
    assert 0.4 < has[draws].mean() < 0.6


def test_weights_are_uniform_when_positives_are_common():
    pos = np.ones((64, 64), dtype=np.int32)
    s = np.zeros((65, 65), dtype=np.int32)
    s[1:, 1:] = pos.cumsum(0).cumsum(1)
    assert positive_weights([(0, 0, 8, 8), (8, 8, 16, 16)], s) == [0.5, 0.5]
    assert positive_weights([], s) == []


def test_write_blocks_gpkg_round_trip(tiny_stack, tmp_path):
    info = read_info(tiny_stack.path)
    blocks = [(0, 0, 32, 64), (40, 64, 96, 128)]
    out = write_blocks_gpkg(blocks, info, tmp_path / "sub" / "validation_blocks.gpkg")
    gdf = gpd.read_file(out)
    assert len(gdf) == 2 and list(gdf["row1"]) == [32, 96]
    assert CRS.from_user_input(gdf.crs).equals(CRS.from_wkt(info.crs_wkt))
    for geom, b in zip(gdf.geometry, blocks):
        assert geom.bounds == pytest.approx(box_to_map(b, info))
    assert sorted(p.name for p in out.parent.iterdir()) == ["validation_blocks.gpkg"]  # no temp file left
    write_blocks_gpkg(blocks[:1], info, out)  # overwrites
    assert len(gpd.read_file(out)) == 1


def test_real_cloncurry_split(shared_data):
    d = shared_data / "cloncurry_iocg"
    info = read_info(d / "cloncurry_stack.tif")
    lr = rasterize_labels(LabelOptions(labels_path=str(d / "iocg_deposits.shp")), info)
    usable = read_valid_mask(info.path)
    split = make_split(lr.labels, usable, (64, 64), positive_points=lr.positive_points, seed=0)
    _check_separated(split, min_gap=(64, 64))
    s = split.summary
    assert s["val_positive_points"] > 5 and s["train_positive_points"] > 50
    assert abs(s["val_area_fraction"] - 0.2) < 0.08
    assert len(split.val_blocks_map(info)) == len(split.val_blocks)


def test_real_ecuador_split_inside_study_mask(ecuador_usable):
    info, lr, usable = ecuador_usable
    tile = resolve_tile(None, info.height, info.width)
    split = make_split(lr.labels, usable, tile, positive_points=lr.positive_points)
    _check_separated(split, min_gap=split.buffer)
    assert split.summary["val_positive_pixels"] > 0 and split.summary["train_positive_pixels"] > 0


def test_the_globe_buffer_reaches_across_the_antimeridian():
    """A block at the east edge of a whole-globe grid is buffered on the west edge too (longitude wraps);
    a planar buffer stops at the edge."""
    from core.sampling import buffer_mask

    h, w = 20, 40
    block = (8, 36, 12, 40)  # the last four columns
    wrapped = buffer_mask((h, w), [block], (2, 3), wrap=True)
    assert wrapped[6:14, 33:].all() and wrapped[6:14, :3].all()  # 3 columns across the antimeridian
    assert not wrapped[:, 3:33].any() and not wrapped[:6].any() and not wrapped[14:].any()
    planar = buffer_mask((h, w), [block], (2, 3))
    assert planar[6:14, 33:].all() and not planar[:, :33].any()
