"""dataset.py: windows as tensors, validity, augmentation, lazy per-process raster handles."""
from __future__ import annotations

import pickle
import shutil

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from core.config import LabelOptions
from core.dataset import TileDataset, augment_bands, augment_planar, augment_spherical
from core.encoding import fit_encoder
from core.errors import DataError
from core.labels import rasterize_labels
from core.raster import open_raster, read_info, read_window

WINDOWS = [(0, 0, 32, 32), (32, 32, 64, 64), (64, 96, 96, 128), (80, 120, 112, 152)]  # last reaches outside


@pytest.fixture(scope="module")
def parts(tiny_stack, tiny_points, tiny_mask):
    info = read_info(tiny_stack.path)
    lr = rasterize_labels(LabelOptions(labels_path=str(tiny_points.path), mask_path=str(tiny_mask)), info)
    enc = fit_encoder(tiny_stack.path, [(0, 0, 96, 128)], categorical_bands=[5], mask=lr.study_mask)
    return lr, enc


def test_items_hold_encoded_x_labels_and_valid(tiny_stack, parts):
    lr, enc = parts
    ds = TileDataset(str(tiny_stack.path), WINDOWS, lr.labels, enc, lr.study_mask)
    assert len(ds) == 4
    for i, (r0, c0, r1, c1) in enumerate(WINDOWS):
        item = ds[i]
        assert item["x"].dtype == torch.float32 and item["x"].shape == (enc.out_channels, 32, 32)
        assert item["y"].dtype == torch.int64 and item["valid"].dtype == torch.bool
        with open_raster(tiny_stack.path) as src:
            data, valid = read_window(src, r0, c0, r1 - r0, c1 - c0)
        mask = np.zeros((32, 32), dtype=bool)
        h, w = min(r1, 96) - r0, min(c1, 128) - c0
        mask[:h, :w] = lr.study_mask[r0:r0 + h, c0:c0 + w]
        expected_valid = valid & mask
        np.testing.assert_array_equal(item["valid"].numpy(), expected_valid)
        np.testing.assert_array_equal(item["x"].numpy(), enc.encode(data, expected_valid))
        y = np.zeros((32, 32), dtype=np.int64)
        y[:h, :w] = lr.labels[r0:r0 + h, c0:c0 + w]
        np.testing.assert_array_equal(item["y"].numpy(), y)
    assert not ds[2]["valid"].any()  # right quarter is outside the study mask
    assert not ds[3]["valid"][:, 8:].any()  # padding outside the raster is invalid


def test_positives_reach_y(tiny_stack, parts):
    lr, enc = parts
    r, c = next((r, c) for r, c in tiny_stack.positives if c < 96)
    ds = TileDataset(str(tiny_stack.path), [(r - 8, c - 8, r + 8, c + 8)], lr.labels, enc, lr.study_mask)
    assert ds[0]["y"][8, 8] == 1


def _probe(h: int, w: int):
    """x whose channel 0 equals y and channel 1 equals valid, so any mismatch shows."""
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, 2, (h, w), generator=g)
    valid = torch.rand(h, w, generator=g) > 0.3
    x = torch.stack([y.float(), valid.float(), torch.arange(h * w, dtype=torch.float32).reshape(h, w)])
    return x, y, valid


def test_planar_augmentation_moves_x_y_valid_together():
    x, y, valid = _probe(16, 16)
    seen = set()
    g = torch.Generator().manual_seed(0)
    for _ in range(40):
        ax, ay, av = augment_planar(x, y, valid, g)
        assert torch.equal(ax[0].long(), ay) and torch.equal(ax[1].bool(), av)
        assert sorted(ax[2].flatten().tolist()) == sorted(x[2].flatten().tolist())  # a permutation of pixels
        seen.add(tuple(ax[2, 0, :2].tolist()))
    assert len(seen) == 8  # the 8 flips/rotations of a square all occur


def test_planar_augmentation_never_rotates_non_square_tiles():
    x, y, valid = _probe(8, 16)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        ax, ay, av = augment_planar(x, y, valid, g)
        assert ax.shape == x.shape and ay.shape == (8, 16)
        assert torch.equal(ax[0].long(), ay) and torch.equal(ax[1].bool(), av)


def test_spherical_augmentation_rolls_longitude_and_keeps_latitudes():
    x, y, valid = _probe(8, 16)
    g = torch.Generator().manual_seed(0)
    shifted = 0
    for _ in range(20):
        ax, ay, av = augment_spherical(x, y, valid, g)
        assert torch.equal(ax[0].long(), ay) and torch.equal(ax[1].bool(), av)
        for r in range(8):  # each row (latitude) keeps its own values
            assert sorted(ax[2, r].tolist()) == sorted(x[2, r].tolist())
        shifted += int(not torch.equal(ax, x))
    assert shifted > 10


def test_dataset_augments_when_asked(tiny_stack, parts):
    lr, enc = parts
    ds = TileDataset(str(tiny_stack.path), [(0, 0, 32, 32)], lr.labels, enc, lr.study_mask, augment=True)
    plain = TileDataset(str(tiny_stack.path), [(0, 0, 32, 32)], lr.labels, enc, lr.study_mask)[0]
    torch.manual_seed(0)
    items = [ds[0] for _ in range(12)]
    assert any(not torch.equal(it["x"], plain["x"]) for it in items)
    for it in items:  # same pixels, just moved
        assert it["valid"].sum() == plain["valid"].sum() and it["y"].sum() == plain["y"].sum()


def test_lazy_handle_pickles_and_works_in_worker_processes(tiny_stack, parts):
    lr, enc = parts
    ds = TileDataset(str(tiny_stack.path), WINDOWS[:3] * 2, lr.labels, enc, lr.study_mask)
    assert ds._src is None  # nothing opened before the first item
    first = ds[0]
    assert ds._src is not None
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._src is None and torch.equal(clone[0]["x"], first["x"])
    loader = DataLoader(ds, batch_size=3, num_workers=2)
    batches = list(loader)
    assert [b["x"].shape for b in batches] == [(3, enc.out_channels, 32, 32)] * 2
    assert torch.equal(batches[0]["x"][0], first["x"])
    ds.close()
    assert ds._src is None


def test_mismatched_study_mask_is_an_error(tiny_stack, parts):
    lr, enc = parts
    with pytest.raises(DataError, match="differ in shape"):
        TileDataset(str(tiny_stack.path), WINDOWS, lr.labels, enc, np.ones((4, 4), dtype=bool))


def test_missing_raster_is_a_data_error(tmp_path, parts):
    lr, enc = parts
    ds = TileDataset(str(tmp_path / "gone.tif"), WINDOWS, lr.labels, enc)
    with pytest.raises(DataError, match="does not exist"):
        ds[0]


def test_real_ecuador_pipeline_feeds_positive_batches(ecuador_usable):
    """labels -> valid mask -> split -> statistics on training windows -> weighted batches."""
    from torch.utils.data import WeightedRandomSampler

    from core.sampling import make_split

    info, lr, usable = ecuador_usable
    split = make_split(lr.labels, usable, (64, 64), positive_points=lr.positive_points, seed=0)
    enc = fit_encoder(info.path, split.train_windows, mask=lr.study_mask)
    ds = TileDataset(info.path, split.train_windows, lr.labels, enc, lr.study_mask, augment=True)
    torch.manual_seed(0)
    sampler = WeightedRandomSampler(split.train_weights, 16, replacement=True)
    batch = next(iter(DataLoader(ds, batch_size=16, sampler=sampler)))
    assert batch["x"].shape == (16, 5, 64, 64)
    assert int(batch["y"].sum()) > 0  # positives are drawn
    x = batch["x"].permute(1, 0, 2, 3)[:, batch["valid"]]
    assert x.abs().max() <= enc.z_clip and 0.3 < float(x.std()) < 3.0  # standardised
    assert not batch["valid"].all()  # outside the study mask / nodata is not valid


def test_a_small_raster_is_read_once_and_windows_come_from_memory(tiny_stack, parts, tmp_path):
    """Windows sliced from the in-memory encoded raster equal windows read from disk (also windows
    reaching outside the raster); once loaded, the file is no longer needed."""
    from core.dataset import EncodedRaster

    lr, enc = parts
    path = tmp_path / "stack.tif"
    shutil.copy(tiny_stack.path, path)
    from_disk = TileDataset(str(path), WINDOWS, lr.labels, enc, lr.study_mask)
    expected = [from_disk[i] for i in range(len(WINDOWS))]
    from_disk.close()
    assert EncodedRaster.fits(96, 128, enc) and not EncodedRaster.fits(96, 128, enc, budget=1000)
    memory = EncodedRaster(str(path), enc)
    path.unlink()
    ds = TileDataset(str(path), WINDOWS, lr.labels, enc, lr.study_mask, memory=memory)
    for i, want in enumerate(expected):
        got = ds[i]
        assert all(torch.equal(got[k], want[k]) for k in ("x", "y", "valid")), i
    got = ds[0]
    got["x"] += 1.0  # items are copies: the raster in memory stays as it was
    assert torch.equal(ds[0]["x"], expected[0]["x"])


def test_pixel_patches_from_memory_equal_the_windows_around_those_pixels(tiny_stack, parts):
    """A context model trains on the square around each sampled pixel: the same values a window
    centred there holds, 0 beyond the raster's edge (as a prediction window sees there)."""
    from core.dataset import EncodedRaster

    _, enc = parts
    memory = EncodedRaster(str(tiny_stack.path), enc)
    height, width = memory.valid.shape
    pixels = [(0, 0), (40, 77), (height - 1, width - 2), (1, width - 1)]
    flat = np.array([r * width + c for r, c in pixels])
    for radius in (1, 2):
        patches = memory.patches(flat, radius)
        assert patches.shape == (len(pixels), enc.out_channels, 2 * radius + 1, 2 * radius + 1)
        for k, (r, c) in enumerate(pixels):
            want, _ = memory.window((r - radius, c - radius, r + radius + 1, c + radius + 1))
            assert np.array_equal(patches[k], want), (radius, r, c)
            assert np.array_equal(patches[k, :, radius, radius], memory.pixels(flat[k:k + 1])[0][:, 0])
        assert not patches[0, :, :radius, :].any() and not patches[0, :, :, :radius].any()  # beyond the edge


def test_patch_augmentation_turns_each_patch_by_its_own_symmetry_of_the_square():
    """A context model's patches (--enable_data_augmentation) are flipped and turned one by one; the centre
    pixel, whose label the loss reads, stays the centre."""
    from core.dataset import augment_patches

    torch.manual_seed(0)
    x = torch.randn(400, 3, 5, 5)
    out = augment_patches(x, np.random.default_rng(0))
    assert torch.equal(out[:, :, 2, 2], x[:, :, 2, 2])
    seen = set()
    for patch, turned in zip(x, out):
        symmetries = [patch.rot90(k, dims=(-2, -1)) for k in range(4)]
        symmetries += [patch.flip(-1).rot90(k, dims=(-2, -1)) for k in range(4)]
        match = [k for k, s in enumerate(symmetries) if torch.equal(s, turned)]
        assert len(match) == 1
        seen.add(match[0])
    assert seen == set(range(8))  # every symmetry occurs, drawn patch by patch
    assert torch.equal(augment_patches(x, np.random.default_rng(0)), out)  # seeded: a resume repeats it
    pixels_last = x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)  # as EncodedRaster.patches cuts them
    assert torch.equal(augment_patches(pixels_last, np.random.default_rng(0)), out)


@pytest.mark.parametrize("pixels_last", [False, True])
def test_band_augmentation_drops_whole_bands_and_adds_noise_to_numeric_bands_only(pixels_last: bool):
    """Windows come as planes of bands, patches pixels-last (``EncodedRaster.patches``): the same rules."""
    torch.manual_seed(0)
    x = torch.zeros(64, 5, 5, 4).permute(0, 3, 1, 2) if pixels_last else torch.zeros(64, 4, 5, 5)
    x[:, 2:] = 1.0  # channels 2, 3: one one-hot band
    valid = torch.ones(64, 5, 5, dtype=torch.bool)
    valid[:, 0, 0] = False
    out = augment_bands(x, valid, [[0], [1], [2, 3]], noise=0.5, drop=0.5)
    assert (out[:, :, 0, 0] == 0).all()  # invalid pixels stay 0
    one_hot = out[:, 2:, 1:, 1:]
    assert set(one_hot.unique().tolist()) <= {0.0, 1.0}  # no noise on class channels
    kept = one_hot.flatten(1).amax(dim=1) > 0
    assert 10 < int(kept.sum()) < 54  # about half the samples lose the class band ...
    assert torch.equal(out[:, 2, 1:, 1:].flatten(1).amax(1) > 0, out[:, 3, 1:, 1:].flatten(1).amax(1) > 0)  # whole
    numeric = out[:, 0, 1:, 1:]
    present = numeric.abs().flatten(1).amax(dim=1) > 0
    assert 10 < int(present.sum()) < 54
    assert 0.3 < float(numeric[present].std()) < 0.7  # noise of the asked size where the band is kept
