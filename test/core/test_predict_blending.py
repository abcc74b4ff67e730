"""Window planning, blending and the streaming writer, with small torch callables as models.

These exercise predict.py's engine without a checkpoint: a reader that computes the
raster from pixel coordinates (so nothing raster-sized exists in memory) and a fixed
convolution as the "model". The full predict() is tested in test_predict.py.
"""
from __future__ import annotations

import tracemalloc
from pathlib import Path
from typing import Tuple

import numpy as np
import rasterio
import torch
import torch.nn.functional as F
from affine import Affine

from core.events import Callbacks
from core.models.catalog import parse_model_name
from core.predict import (
    NODATA,
    BlockRowWriter,
    blend_windows,
    axis_weight,
    context_margin,
    edge_ramp,
    plan_strips,
    resample_periodic,
    stride_for,
    window_weight,
)


def synthetic(row: int, col: int, h: int, w: int, height: int, width: int) -> Tuple[np.ndarray, np.ndarray]:
    """Two smooth bands computed from coordinates; outside the raster is invalid (as read_window)."""
    r = np.arange(row, row + h, dtype=np.float32)[:, None]
    c = np.arange(col, col + w, dtype=np.float32)[None, :]
    b1 = np.sin(r / 7.0) + np.cos(c / 5.0)
    b2 = np.cos((r + c) / 11.0)
    valid = (r < height) & (c < width) & np.ones_like(b1, dtype=bool)
    data = np.stack([b1, b2]) * valid
    return data.astype(np.float32), valid


def pointwise_runner(data: np.ndarray, valid: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-data[:, 0]))


KERNEL = torch.full((1, 2, 5, 5), 1.0 / 25.0)


def conv_runner(data: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """A fixed 5 x 5 convolution with zero padding: tile edges differ from a whole-raster run."""
    x = torch.from_numpy(data)
    return torch.sigmoid(3 * F.conv2d(x, KERNEL, padding=2))[:, 0].numpy()


def run_blend(path: Path, height: int, width: int, tile: Tuple[int, int], overlap: float, runner, mask_fn=None):
    profile = dict(driver="GTiff", width=width, height=height, count=1, dtype="float32", nodata=NODATA,
                   tiled=True, blockxsize=32, blockysize=32, compress="deflate",
                   transform=Affine(1, 0, 0, 0, -1, height), crs="EPSG:3857")
    with rasterio.open(path, "w", **profile) as dst:
        writer = BlockRowWriter(dst, 32, mask_fn)
        stats = blend_windows(lambda r, c, h, w: synthetic(r, c, h, w, height, width), runner, writer,
                              height, width, tile, stride_for(tile, overlap), 3, Callbacks.of())
    return stats, writer


def write_map(path: Path, height: int, width: int, tile: Tuple[int, int], overlap: float, runner, mask_fn=None):
    stats, writer = run_blend(path, height, width, tile, overlap, runner, mask_fn)
    with rasterio.open(path) as src:
        return src.read(1), stats, writer


def test_window_origins_form_a_regular_grid_that_covers_the_raster() -> None:
    assert [s.row0 for s in plan_strips(10, 10, (32, 32), (24, 24))] == [0]
    assert plan_strips(10, 10, (32, 32), (24, 24))[0].final_end == 10
    strips = plan_strips(100, 50, (32, 32), (24, 24))
    assert [s.row0 for s in strips] == [0, 24, 48, 72]  # the last window passes the edge (padded)
    assert [s.final_end for s in strips] == [24, 48, 72, 100]
    assert strips[0].cols == (0, 24)


def test_stride_is_a_multiple_of_the_model_downsampling() -> None:
    """Windows on one pooling lattice: the step is rounded down to the model's multiple."""
    assert stride_for((128, 128), 0.25) == (96, 96)
    assert stride_for((100, 72), 0.25, multiple=16) == (64, 48)
    assert stride_for((8, 8), 0.25, multiple=16) == (6, 6)


def test_stride_leaves_room_for_the_model_context() -> None:
    """The shared band is at least twice the context (capped at half a tile), else the overlap decides."""
    assert stride_for((256, 256), 0.25, 16, context=32) == (192, 192)  # the overlap already suffices
    assert stride_for((32, 32), 0.25, 4, context=8) == (16, 16)  # 8 px discarded on each side
    assert stride_for((32, 64), 0.25, 4, context=100) == (16, 32)  # capped: shared band <= half a tile
    assert context_margin(32, 16) == 8 and context_margin(32, 24) == 4 and context_margin(20, 20) == 0


def test_model_context_grows_with_the_unet_depth() -> None:
    context = [parse_model_name(f"unet_sc2_layers{layers}_e8").context for layers in (1, 2, 3, 4)]
    assert context == [2, 8, 16, 32]
    assert parse_model_name("unet_sc1_layers3_e8").context == 10  # no downsampling: the plain receptive radius
    assert parse_model_name("transformer_sc2_layers4_e8").context == 0


def test_the_registry_answers_the_unet_input_multiple() -> None:
    """Prediction steps its windows by the multiple the catalog declares: the one the U-Net pads to."""
    from core.models.registry import build_model

    for layers in (2, 3, 4):
        name = f"unet_sc2_layers{layers}_e4"
        assert parse_model_name(name).multiple == build_model(name, 3).multiple == 2 ** (layers - 1)


def test_inner_edges_are_discarded_and_raster_borders_trusted() -> None:
    # Windows at 0, 24, 48 of a 70-px axis, tile 32, stride 24: margin 4, no ramp left.
    first, middle, last = (axis_weight(o, 70, 32, 24) for o in (0, 24, 48))
    assert first.shape == (32,) and last.shape == (22,)  # clipped to the raster
    assert np.all(first[:28] == 1.0) and np.all(first[28:] < 1e-3)  # raster border kept, inner margin not
    assert np.all(middle[:4] < 1e-3) and np.all(middle[4:28] == 1.0) and np.all(middle[28:] < 1e-3)
    assert np.all(last[:4] < 1e-3) and np.all(last[4:] == 1.0)  # trusted up to the raster's edge
    assert axis_weight(0, 20, 32, 24).tolist() == [1.0] * 20  # one window: all of it
    # An odd shared band (7 px): 3 px margins and the middle pixel split 0.5 / 0.5.
    a, b = axis_weight(0, 40, 16, 9), axis_weight(9, 40, 16, 9)
    assert a[12] == b[3] == 0.5
    np.testing.assert_allclose(a[9:] + b[:7], 1.0, atol=2e-4)
    w = edge_ramp(16, 2, 4)  # a margin then a smoothstep: positive, rising, flat after 6 px
    assert w.min() > 0 and np.all(np.diff(w) >= 0) and np.all(w[6:] == 1.0)
    assert window_weight((24, 0), (70, 20), (32, 32), (24, 24)).shape == (32, 20)


def test_blending_reproduces_a_pointwise_model_exactly() -> None:
    # A pixel-wise model has no seams by nature: any planning or accumulation bug shows.
    height, width = 77, 53
    expected = pointwise_runner(synthetic(0, 0, height, width, height, width)[0][None], None)[0]
    for tile, overlap in (((32, 32), 0.25), ((16, 24), 0.5), ((128, 128), 0.25), ((20, 20), 0.0)):
        with rasterio.MemoryFile() as mem:
            got, _, _ = write_map(Path(mem.name), height, width, tile, overlap, pointwise_runner)
        np.testing.assert_allclose(got, expected, atol=1e-5, err_msg=f"tile {tile} overlap {overlap}")


def test_tiled_convolution_matches_a_single_window(tmp_path: Path) -> None:
    height, width = 90, 70
    tiled, stats, _ = write_map(tmp_path / "tiled.tif", height, width, (32, 32), 0.25, conv_runner)
    whole, _, _ = write_map(tmp_path / "whole.tif", height, width, (height, width), 0.25, conv_runner)
    assert stats["windows"] > 9
    # The 5 x 5 kernel reaches 2 px; the 4 px discarded at inner edges cover that: exact.
    assert np.abs(tiled - whole).max() < 1e-3
    # Without overlap the zero padding of every tile shows as seams: the margins are what helps.
    seams, _, _ = write_map(tmp_path / "seams.tif", height, width, (32, 32), 0.0, conv_runner)
    assert np.abs(seams - whole).max() > 0.05


def test_mask_rows_become_nodata(tmp_path: Path) -> None:
    def left_half(row0: int, n: int) -> np.ndarray:
        m = np.zeros((n, 40), dtype=bool)
        m[:, :20] = True
        return m

    got, _, _ = write_map(tmp_path / "m.tif", 50, 40, (16, 16), 0.25, pointwise_runner, left_half)
    assert np.all(got[:, 20:] == NODATA)
    assert np.all((got[:, :20] >= 0) & (got[:, :20] <= 1))


def _peak_bytes(tmp_path: Path, height: int) -> Tuple[int, int, int]:
    tracemalloc.start()
    try:
        stats, writer = run_blend(tmp_path / f"h{height}.tif", height, 64, (32, 32), 0.25, pointwise_runner)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak, stats["buffer_bytes"], writer.peak_pending_bytes


def test_memory_does_not_grow_with_the_raster_height(tmp_path: Path) -> None:
    small_peak, small_buf, small_pending = _peak_bytes(tmp_path, 96)
    big_peak, big_buf, big_pending = _peak_bytes(tmp_path, 1536)
    assert small_buf == big_buf == 2 * 32 * 64 * 4 + 32 * 64  # acc + wsum float32, valid bool
    assert big_pending <= (32 + 24) * 64 * 4  # at most a block row plus one strip waits
    # 16x the rows, yet the peak of Python-side allocations stays about the same.
    assert big_peak < 1.5 * small_peak + 64 * 1024
    assert big_peak < 1536 * 64 * 4  # less than one full-size float32 band


def test_periodic_resampling_respects_the_antimeridian() -> None:
    # A bump centred on the antimeridian: after down- and up-sampling it stays symmetric
    # around it (left and right columns agree), which a non-periodic resample breaks.
    h, w = 16, 32
    lon = (torch.arange(w) + 0.5) * 360 / w - 180
    field = torch.exp(-((lon.abs() - 180) / 30) ** 2).repeat(h, 1)[None, None]
    down = resample_periodic(field, (8, 16))
    back = resample_periodic(down, (h, w))
    assert back.shape == (1, 1, h, w)
    assert torch.allclose(back[..., 0], back[..., -1], atol=1e-5)
    assert torch.allclose(back[..., 1], back[..., -2], atol=1e-5)
    assert float(back[..., 0].mean()) > 0.8
    assert torch.equal(resample_periodic(field, (h, w)), field)
