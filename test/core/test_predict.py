"""predict() end to end on generated rasters with real (tiny) models saved as real checkpoints.

The checkpoints here are built directly (real encoder fitted on the raster, real model,
``save_checkpoint``) so each test takes a second; test_chain.py covers trained models.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from shapely.geometry import box

from core.checkpoint import save_checkpoint
from core.config import PredictConfig
from core.encoding import fit_encoder
from core.errors import Cancelled, ConfigError, DataError
from core.models.registry import build_model, model_kwargs
from core.predict import NODATA, predict
from core.raster import read_info

UNET = "unet_sc2_layers2_e8"
BANDS = ["slope", "curvature", "elevation"]


def write_stack(path: Path, height: int = 70, width: int = 90, names: Optional[List[str]] = None,
                crs: str = "EPSG:32717", transform: Optional[Affine] = None, seed: int = 0,
                order: Tuple[int, ...] = (0, 1, 2)) -> Path:
    """A smooth 3-band float stack with a nodata corner (seeded)."""
    rng = np.random.default_rng(seed)
    r = np.arange(height)[:, None] / 9.0
    c = np.arange(width)[None, :] / 7.0
    bands = [np.sin(r) * np.cos(c), np.cos(r + c), r - c]
    data = np.stack([bands[i] + 0.05 * rng.standard_normal((height, width)) for i in order]).astype(np.float32)
    data[:, :8, :10] = -9999.0
    names = names or BANDS
    profile = dict(driver="GTiff", width=width, height=height, count=3, dtype="float32", nodata=-9999.0, crs=crs,
                   transform=transform or Affine(10.0, 0.0, 700000.0, 0.0, -10.0, 9800000.0))
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        for i in range(1, 4):
            dst.set_band_description(i, names[order[i - 1]])
    return path


def make_checkpoint(raster: Path, path: Path, model_name: str = UNET, tile: Tuple[int, int] = (32, 32),
                    img_size: Optional[Tuple[int, int]] = None, seed: int = 0) -> Path:
    """A real checkpoint: encoder fitted on the raster, a freshly initialised model."""
    info = read_info(raster)
    enc = fit_encoder(raster, [(0, 0, info.height, info.width)])
    torch.manual_seed(seed)
    kwargs = model_kwargs(model_name, enc.out_channels, 2, img_size)
    model = build_model(**kwargs)
    ckpt: Dict = dict(
        model_name=model_name, model_kwargs=kwargs, in_channels=info.count, num_classes=2,
        band_names=info.band_names, band_count=info.count, encoder=enc.to_dict(), nodata=info.nodata,
        crs_wkt=info.crs_wkt, transform=list(info.transform), pixel_size=list(info.res),
        raster_shape=[info.height, info.width], tile_size=list(img_size or tile),
        validation_blocks=[], validation_blocks_map=[], state_dict=model.state_dict(),
    )
    return save_checkpoint(path, ckpt)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    d = tmp_path_factory.mktemp("predict")
    raster = write_stack(d / "stack.tif")
    return {"dir": d, "raster": raster, "ckpt": make_checkpoint(raster, d / "unet.pt")}


def cfg(setup: Dict[str, Path], out: Path, **kw) -> PredictConfig:
    kw.setdefault("checkpoint", str(setup["ckpt"]))
    kw.setdefault("raster_path", str(setup["raster"]))
    return PredictConfig(output_path=str(out), device="cpu", **kw)


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def test_output_grid_values_nodata_and_tags(setup: Dict[str, Path], tmp_path: Path) -> None:
    logs: List[str] = []
    progress: List[float] = []
    res = predict(cfg(setup, tmp_path / "sub" / "p.tif"), log=logs.append, progress=progress.append)
    out = Path(res["output_path"])
    assert res["model_name"] == UNET and res["nodata"] == NODATA and (res["width"], res["height"]) == (90, 70)
    with rasterio.open(out) as dst, rasterio.open(setup["raster"]) as src:
        assert (dst.width, dst.height, dst.count, dst.dtypes[0]) == (90, 70, 1, "float32")
        assert dst.crs == src.crs and dst.transform == src.transform
        assert dst.nodata == NODATA
        assert dst.profile["tiled"] and dst.profile["compress"] == "deflate"
        assert UNET in dst.descriptions[0]
        tags = dst.tags()
        a = dst.read(1)
    assert tags["model_name"] == UNET
    assert tags["checkpoint_sha256"] == hashlib.sha256(setup["ckpt"].read_bytes()).hexdigest()
    assert tags["stack_segmenter_version"] and tags["created"].startswith("20")
    assert np.all(a[:8, :10] == NODATA)  # the input's nodata corner
    inside = a[a != NODATA]
    assert inside.size == 70 * 90 - 80 and inside.min() >= 0 and inside.max() <= 1
    assert inside.std() > 1e-3  # a real model's output, not a constant
    assert progress[-1] == pytest.approx(1.0) and progress == sorted(progress)
    assert any("windows 32 x 32" in line for line in logs)


def test_tiles_match_a_single_window(setup: Dict[str, Path], tmp_path: Path) -> None:
    """Seamless tiling: the checkpoint's 32 x 32 tiles (default overlap) vs one window, borders included."""
    tiled_run = predict(cfg(setup, tmp_path / "t.tif"))
    whole_run = predict(cfg(setup, tmp_path / "w.tif", tile_size=(72, 92)))
    assert whole_run["windows"] == 1 and tiled_run["windows"] > 9
    tiled, whole = read(Path(tiled_run["output_path"])), read(Path(whole_run["output_path"]))
    valid = whole != NODATA
    assert np.array_equal(valid, tiled != NODATA)
    # Measured max difference: 5e-5 (0.10 when windows kept their padded borders).
    assert np.abs(tiled[valid] - whole[valid]).max() < 0.05


def test_raster_smaller_than_a_tile_is_padded(setup: Dict[str, Path], tmp_path: Path) -> None:
    small = write_stack(tmp_path / "small.tif", height=20, width=13)
    a = read(Path(predict(cfg(setup, tmp_path / "s.tif", raster_path=str(small), tile_size=(64, 64)))["output_path"]))
    assert a.shape == (20, 13)
    assert np.all((a[a != NODATA] >= 0) & (a[a != NODATA] <= 1))


def test_mask_outside_is_nodata(setup: Dict[str, Path], tmp_path: Path) -> None:
    info = read_info(setup["raster"])
    left, bottom, right, top = info.bounds
    gpd.GeoDataFrame(geometry=[box(left, bottom, (left + right) / 2, top)], crs=info.crs_wkt).to_file(
        tmp_path / "mask.gpkg", driver="GPKG")
    a = read(Path(predict(cfg(setup, tmp_path / "m.tif", mask_path=str(tmp_path / "mask.gpkg")))["output_path"]))
    assert np.all(a[:, 45:] == NODATA)
    assert np.all(a[10:, :45] != NODATA)


def test_cancel_leaves_no_file(setup: Dict[str, Path], tmp_path: Path) -> None:
    calls = []

    def stop_after_three() -> bool:
        calls.append(1)
        return len(calls) > 3

    out = tmp_path / "c.tif"
    out.write_bytes(b"previous map")  # an older map under the name survives a cancelled run
    with pytest.raises(Cancelled):
        predict(cfg(setup, out), should_stop=stop_after_three)
    assert out.read_bytes() == b"previous map"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.tif"]


def test_band_count_mismatch_fails_before_work(setup: Dict[str, Path], tmp_path: Path) -> None:
    two = tmp_path / "two.tif"
    with rasterio.open(setup["raster"]) as src:
        profile = src.profile | {"count": 2}
        data = src.read([1, 2])
    with rasterio.open(two, "w", **profile) as dst:
        dst.write(data)
    with pytest.raises(DataError, match="2 band.*trained on 3"):
        predict(cfg(setup, tmp_path / "x.tif", raster_path=str(two)), progress=lambda v: pytest.fail("work started"))
    assert not (tmp_path / "x.tif").exists()


def test_bands_are_matched_by_name_in_any_order(setup: Dict[str, Path], tmp_path: Path) -> None:
    """The same evidence in another band order (and with a band the model never saw) gives the same map."""
    swapped = tmp_path / "swapped.tif"
    with rasterio.open(setup["raster"]) as src:
        profile, data = src.profile, src.read([1, 3, 2])
    with rasterio.open(swapped, "w", **profile) as dst:
        dst.write(data)
        for i, name in enumerate(("slope", "elevation", "curvature"), start=1):
            dst.set_band_description(i, name)
    logs: List[str] = []
    same = read(Path(predict(cfg(setup, tmp_path / "s.tif", raster_path=str(swapped)), log=logs.append)["output_path"]))
    reference = read(Path(predict(cfg(setup, tmp_path / "r.tif"))["output_path"]))
    assert np.array_equal(same, reference)
    assert any("matched by name" in line for line in logs)

    extra = tmp_path / "extra.tif"
    with rasterio.open(swapped) as src:
        profile, data, names = src.profile | {"count": 4}, src.read(), src.descriptions
    with rasterio.open(extra, "w", **profile) as dst:
        dst.write(np.concatenate([np.full((1,) + data.shape[1:], 7.0, np.float32), data]))
        for i, name in enumerate(("magnetics",) + names, start=1):
            dst.set_band_description(i, name)
    logs.clear()
    with_extra = read(Path(predict(cfg(setup, tmp_path / "e.tif", raster_path=str(extra)),
                                   log=logs.append)["output_path"]))
    assert np.array_equal(with_extra, reference)
    assert any("ignored: magnetics" in line for line in logs)


def test_a_missing_band_is_named(setup: Dict[str, Path], tmp_path: Path) -> None:
    partial = tmp_path / "partial.tif"
    with rasterio.open(setup["raster"]) as src:
        profile, data = src.profile | {"count": 3}, src.read()
    with rasterio.open(partial, "w", **profile) as dst:
        dst.write(data)
        for i, name in enumerate(("slope", "curvature", "elevation_m"), start=1):
            dst.set_band_description(i, name)
    with pytest.raises(DataError, match="lacks 1 band.*'elevation'.*Its bands are: 'slope', 'curvature', "
                                        "'elevation_m'"):
        predict(cfg(setup, tmp_path / "x.tif", raster_path=str(partial)), progress=lambda v: pytest.fail("work"))
    assert not (tmp_path / "x.tif").exists()


def test_unnamed_bands_are_not_compared(setup: Dict[str, Path], tmp_path: Path) -> None:
    plain = tmp_path / "plain.tif"
    with rasterio.open(setup["raster"]) as src:
        profile, data = src.profile, src.read()
    with rasterio.open(plain, "w", **profile) as dst:
        dst.write(data)
    assert read_info(plain).band_names == ["band_1", "band_2", "band_3"]
    assert Path(predict(cfg(setup, tmp_path / "x.tif", raster_path=str(plain)))["output_path"]).exists()


def test_other_crs_or_pixel_size_warns(setup: Dict[str, Path], tmp_path: Path) -> None:
    other = write_stack(tmp_path / "o.tif", crs="EPSG:32718", transform=Affine(20.0, 0, 700000.0, 0, -20.0, 9800000.0))
    logs: List[str] = []
    predict(cfg(setup, tmp_path / "x.tif", raster_path=str(other)), log=logs.append)
    assert any("CRS differs" in line for line in logs)
    assert any("pixel size 20 x 20 differs" in line for line in logs)


@pytest.mark.parametrize("option, value", [("model_name", "unet_sc2_layers3_e8"), ("in_channels", 5),
                                           ("num_classes", 3)])
def test_options_that_disagree_with_the_checkpoint(setup: Dict[str, Path], tmp_path: Path, option: str,
                                                   value) -> None:
    with pytest.raises(ConfigError, match=f"--{option}"):
        predict(cfg(setup, tmp_path / "x.tif", **{option: value}))
    # Matching values are accepted.
    same = {"model_name": UNET, "in_channels": 3, "num_classes": 2}[option]
    assert predict(cfg(setup, tmp_path / "y.tif", **{option: same}))["model_name"] == UNET


def test_bad_checkpoints(setup: Dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        predict(cfg(setup, tmp_path / "x.tif", checkpoint=str(tmp_path / "missing.pt")))
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(setup["ckpt"].read_bytes()[:500])
    with pytest.raises(DataError, match="cannot be read"):
        predict(cfg(setup, tmp_path / "x.tif", checkpoint=str(corrupt)))
    foreign = tmp_path / "foreign.pt"
    torch.save({"conv.weight": torch.zeros(2, 2)}, foreign)
    with pytest.raises(DataError, match="not a Stack Segmenter checkpoint"):
        predict(cfg(setup, tmp_path / "x.tif", checkpoint=str(foreign)))


def test_unwritable_output_folder(setup: Dict[str, Path], tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(DataError, match="--output_path.*a_file' is a file, not a folder"):
        predict(cfg(setup, blocker / "p.tif"))
    with pytest.raises(DataError, match="is the input raster"):
        predict(cfg(setup, setup["raster"]))
    with pytest.raises(DataError, match="is the model file"):
        predict(cfg(setup, setup["ckpt"]))


def test_fp16_on_cpu_is_refused_and_bf16_runs(setup: Dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU"):
        predict(cfg(setup, tmp_path / "x.tif", amp_mode="fp16"))
    bf = read(Path(predict(cfg(setup, tmp_path / "bf.tif", amp_mode="bf16"))["output_path"]))
    fp = read(Path(predict(cfg(setup, tmp_path / "fp.tif"))["output_path"]))
    valid = fp != NODATA
    assert np.abs(bf[valid] - fp[valid]).max() < 0.05


# ----------------------------------------------------------------------------- spherical

GLOBE = Affine(360 / 32, 0.0, -180.0, 0.0, -180 / 16, 90.0)


def write_globe(path: Path, roll: int = 0) -> Path:
    """A 16 x 32 global EPSG:4326 stack; ``roll`` shifts the data east by that many columns."""
    lat = np.linspace(80, -80, 16)[:, None]
    lon = np.linspace(-174, 174, 32)[None, :]
    bands = [np.cos(np.deg2rad(lat)) * np.sin(np.deg2rad(2 * lon)), np.sin(np.deg2rad(lat)) + 0 * lon,
             np.cos(np.deg2rad(lon - 30)) + 0 * lat]
    data = np.roll(np.stack(bands).astype(np.float32), roll, axis=2)
    with rasterio.open(path, "w", driver="GTiff", width=32, height=16, count=3, dtype="float32", crs="EPSG:4326",
                       transform=GLOBE, nodata=-9999.0) as dst:
        dst.write(data)
    return path


@pytest.fixture(scope="module")
def globe(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    d = tmp_path_factory.mktemp("globe")
    raster = write_globe(d / "globe.tif")
    # The model's grid (8 x 16) differs from the raster's: predict resamples there and back.
    ckpt = make_checkpoint(raster, d / "s2.pt", model_name="s2unet_sc2_layers2_e8", img_size=(8, 16))
    return {"dir": d, "raster": raster, "ckpt": ckpt}


def test_spherical_whole_globe_is_periodic_in_longitude(globe: Dict[str, Path], tmp_path: Path) -> None:
    res = predict(PredictConfig(checkpoint=str(globe["ckpt"]), raster_path=str(globe["raster"]),
                                output_path=str(tmp_path / "g.tif"), spherical=True, device="cpu"))
    a = read(Path(res["output_path"]))
    assert a.shape == (16, 32) and res["windows"] == 1
    assert a.min() >= 0 and a.max() <= 1 and a.std() > 1e-4
    # Rotating the globe by 4 raster columns (one column of the model's coarsest grid, 4 x 8)
    # rotates the map with it, across the antimeridian too: the longitude is periodic.
    rolled = write_globe(tmp_path / "rolled.tif", roll=4)
    b = read(Path(predict(PredictConfig(checkpoint=str(globe["ckpt"]), raster_path=str(rolled),
                                        output_path=str(tmp_path / "r.tif"), spherical=True,
                                        device="cpu"))["output_path"]))
    np.testing.assert_allclose(b, np.roll(a, 4, axis=1), atol=2e-3)


def test_planar_model_on_the_whole_globe(globe: Dict[str, Path], tmp_path: Path) -> None:
    ckpt = make_checkpoint(globe["raster"], tmp_path / "planar.pt")
    logs: List[str] = []
    res = predict(PredictConfig(checkpoint=str(ckpt), raster_path=str(globe["raster"]), spherical=True,
                                output_path=str(tmp_path / "p.tif"), device="cpu"), log=logs.append)
    a = read(Path(res["output_path"]))
    assert a.shape == (16, 32) and a.min() >= 0 and a.max() <= 1 and res["windows"] == 1
    assert any("wrapped in longitude" in line for line in logs)


def test_spherical_refuses_a_projected_raster(globe: Dict[str, Path], setup: Dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a global EPSG:4326 raster.*not geographic"):
        predict(PredictConfig(checkpoint=str(globe["ckpt"]), raster_path=str(setup["raster"]),
                              output_path=str(tmp_path / "x.tif"), spherical=True, device="cpu"))
    half = tmp_path / "half.tif"
    with rasterio.open(globe["raster"]) as src:
        profile = src.profile | {"width": 16, "transform": GLOBE}
        data = src.read()[:, :, :16]
    with rasterio.open(half, "w", **profile) as dst:
        dst.write(data)
    with pytest.raises(DataError, match="not the whole globe"):
        predict(PredictConfig(checkpoint=str(globe["ckpt"]), raster_path=str(half),
                              output_path=str(tmp_path / "x.tif"), spherical=True, device="cpu"))
    assert not (tmp_path / "x.tif").exists()


def _traced_peak(setup: Dict[str, Path], raster: Path, out: Path) -> int:
    import tracemalloc

    tracemalloc.start()
    try:
        predict(cfg(setup, out, raster_path=str(raster)))
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_peak_memory_does_not_grow_with_raster_height(setup: Dict[str, Path], tmp_path: Path) -> None:
    # Both rasters span many strips, so the read-ahead batch (alive or not at the peak,
    # a timing matter worth ~50 KB either way) and the fixed buffers are in both figures.
    short = write_stack(tmp_path / "short.tif", height=512, width=64)
    tall = write_stack(tmp_path / "tall.tif", height=8192, width=64)
    _traced_peak(setup, short, tmp_path / "warm.tif")  # first-call imports and caches
    small = _traced_peak(setup, short, tmp_path / "a.tif")
    big = _traced_peak(setup, tall, tmp_path / "b.tif")
    # 7680 more rows: a whole-raster float32 band would be 1.9 MiB more, a whole-raster
    # mask 480 KiB; the per-strip plan (a few bytes per row) and timing stay under 200 KiB.
    assert big < small + 384 * 1024, (small, big)
