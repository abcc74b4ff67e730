"""A lithology band with 300 codes, as real 1:200k geology maps have: trains and predicts, unseen codes too."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio

from core.checkpoint import load_checkpoint
from core.config import LabelOptions, PredictConfig, TrainConfig
from core.encoding import MAX_CATEGORIES
from core.predict import NODATA, predict
from core.training import train

TINY = "unet_sc2_layers2_e8"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def with_codes(src_path: Path, out: Path, codes: np.ndarray) -> Path:
    """A copy of the stack whose class band (5) holds ``codes`` (nodata pixels stay nodata)."""
    with rasterio.open(src_path) as src:
        profile, data = src.profile, src.read()
    band = data[4]
    keep = np.isfinite(band) & (band != profile["nodata"])
    band[keep] = codes[keep]
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(data)
    return out


def test_300_code_lithology_band_trains_and_predicts_unseen_codes(tiny_stack, tiny_points, tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    weights = 1.0 / np.arange(1, 301) ** 0.5
    codes = (100 + rng.choice(300, size=(tiny_stack.height, tiny_stack.width), p=weights / weights.sum()))
    raster = with_codes(tiny_stack.path, tmp_path / "lith300.tif", codes.astype(np.float32))
    config = TrainConfig(raster_path=str(raster), labels=LabelOptions(labels_path=str(tiny_points.path)),
                         models=[TINY], tile_size=(32, 32), num_epochs=1, batch_size=4, output_path=str(tmp_path / "o"),
                         device="cpu", categorical_bands=[5])
    logs = []
    train(config, log=logs.append)
    ckpt = load_checkpoint(tmp_path / "o" / TINY / "checkpoint.pt")
    enc = ckpt["encoder"]
    assert len(enc["categories"]["5"]) == MAX_CATEGORIES and enc["other"] == ["5"]
    assert ckpt["model_kwargs"]["in_channels"] == 4 + MAX_CATEGORIES + 1
    assert any("share one 'other' channel" in line for line in logs)

    unseen = codes.astype(np.float32).copy()
    unseen[40:60, 20:50] = 777777.0  # a code the model never saw
    target = with_codes(tiny_stack.path, tmp_path / "unseen.tif", unseen)
    res = predict(PredictConfig(checkpoint=str(tmp_path / "o" / TINY / "checkpoint.pt"), raster_path=str(target),
                                output_path=str(tmp_path / "p.tif"), device="cpu"))
    with rasterio.open(res["output_path"]) as src:
        p = src.read(1)
    block = p[40:60, 20:50]
    assert (block != NODATA).all() and np.isfinite(block).all() and (block >= 0).all() and (block <= 1).all()
    assert (p != NODATA).sum() == (~tiny_stack.invalid).sum()
