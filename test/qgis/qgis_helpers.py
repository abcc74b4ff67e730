"""Helpers of the QGIS tests: the seeded tiny dataset and the parameters of a tiny training run.

Nothing binary is committed: the raster is written with rasterio and the labels with
geopandas from seeded code. (A module of its own, not conftest, so tests can import it by a
name no other folder uses.)
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np

NODATA = -9999.0
CRS = "EPSG:32633"
PIXEL = 10.0
LEFT, TOP = 400000.0, 5000000.0
SIZE = 128
TILE = 32
QGIS_PROCESS = "/usr/bin/qgis_process.bin"


def default_model() -> str:
    """Train's default model (the catalog is torch-free; the repository root is on sys.path)."""
    from core.models.catalog import DEFAULT_MODELS

    return DEFAULT_MODELS[0]


@dataclass
class TinyData:
    """The generated files and what tests need to know about them."""

    folder: Path
    raster: Path
    labels_gpkg: Path
    labels_shp: Path
    mask: Path
    positives: List[Tuple[int, int]]
    negatives: List[Tuple[int, int]]


def pixel_xy(row: float, col: float) -> Tuple[float, float]:
    """Map coordinates of a pixel centre."""
    return LEFT + (col + 0.5) * PIXEL, TOP - (row + 0.5) * PIXEL


def _smooth_noise(rng: np.random.Generator, size: int, scale: int) -> np.ndarray:
    coarse = rng.normal(size=(size // scale + 2, size // scale + 2))
    fine = np.kron(coarse, np.ones((scale, scale)))[:size, :size]
    return fine.astype(np.float32)


def make_tiny_data(folder: Path, seed: int = 7) -> TinyData:
    """A 4-band 128 x 128 float32 stack (band 1 carries bumps at the positives) + points + mask."""
    import geopandas as gpd
    import rasterio
    from rasterio.transform import from_origin
    from shapely.geometry import Point, box

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = rng.integers(12, SIZE - 12, size=24)
    cols = rng.integers(12, SIZE - 12, size=24)
    positives = [(int(r), int(c)) for r, c in zip(rows[:12], cols[:12])]
    negatives = [(int(r), int(c)) for r, c in zip(rows[12:], cols[12:])]
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    signal = np.zeros((SIZE, SIZE), np.float32)
    for r, c in positives:
        signal += np.exp(-((yy - r) ** 2 + (xx - c) ** 2) / (2 * 3.0 ** 2))
    bands = np.stack([signal + 0.05 * rng.normal(size=signal.shape).astype(np.float32),
                      _smooth_noise(rng, SIZE, 8), _smooth_noise(rng, SIZE, 16), yy / SIZE])
    bands[:, :8, :8] = NODATA
    raster = folder / "stack.tif"
    profile = dict(driver="GTiff", width=SIZE, height=SIZE, count=4, dtype="float32", crs=CRS,
                   transform=from_origin(LEFT, TOP, PIXEL, PIXEL), nodata=NODATA)
    with rasterio.open(raster, "w", **profile) as dst:
        dst.write(bands.astype(np.float32))
        for i, name in enumerate(("signal", "noise_fine", "noise_coarse", "northing"), start=1):
            dst.set_band_description(i, name)
    points = [Point(*pixel_xy(r, c)) for r, c in positives + negatives]
    labels = gpd.GeoDataFrame({"label": [1] * len(positives) + [0] * len(negatives),
                               "kind": ["deposit"] * len(positives) + ["barren"] * len(negatives)},
                              geometry=points, crs=CRS)
    labels_gpkg = folder / "labels.gpkg"
    labels.to_file(labels_gpkg, layer="deposits", driver="GPKG")
    labels_shp = folder / "labels.shp"
    labels.to_file(labels_shp)
    mask = folder / "mask.gpkg"
    area = box(LEFT, TOP - SIZE * PIXEL, LEFT + SIZE * PIXEL * 0.9, TOP)
    gpd.GeoDataFrame({"name": ["study"]}, geometry=[area], crs=CRS).to_file(mask, layer="study_area", driver="GPKG")
    return TinyData(folder, raster, labels_gpkg, labels_shp, mask, positives, negatives)


@dataclass
class EvidenceLayers:
    """The tiny stack's bands as separate rasters on different grids, plus a lithology code raster."""

    signal: Path  # 10 m, the labels' grid (the reference when it comes first)
    noise_fine: Path  # 20 m
    noise_coarse: Path  # 5 m, a larger extent
    lithology: Path  # 40 m, uint8 class codes 1..3, nodata 0

    @property
    def paths(self) -> List[Path]:
        return [self.signal, self.noise_fine, self.noise_coarse, self.lithology]


def make_evidence_layers(data: TinyData, folder: Path) -> EvidenceLayers:
    """Writes the evidence layers (seeded, from the tiny stack) with their own pixel sizes and extents."""
    import rasterio
    from rasterio.transform import from_origin

    folder.mkdir(parents=True, exist_ok=True)
    with rasterio.open(data.raster) as src:
        bands = src.read()

    def write(name: str, array: np.ndarray, pixel: float, left: float = LEFT, top: float = TOP,
              nodata: float = NODATA, dtype: str = "float32") -> Path:
        path = folder / f"{name}.tif"
        profile = dict(driver="GTiff", width=array.shape[1], height=array.shape[0], count=1, dtype=dtype, crs=CRS,
                       transform=from_origin(left, top, pixel, pixel), nodata=nodata)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(array.astype(dtype), 1)
        return path

    fine = bands[1].reshape(SIZE // 2, 2, SIZE // 2, 2).mean(axis=(1, 3))
    fine[:4, :4] = NODATA
    coarse = np.pad(np.kron(bands[2], np.ones((2, 2))), 20, mode="edge")  # 5 m, 100 m wider on every side
    yy, xx = np.mgrid[0:SIZE // 4, 0:SIZE // 4]
    lithology = (1 + (xx // 11 + yy // 13) % 3).astype(np.uint8)  # 40 m blocks of codes 1, 2, 3
    return EvidenceLayers(
        signal=write("signal", bands[0], PIXEL),
        noise_fine=write("noise_fine", fine, 2 * PIXEL),
        noise_coarse=write("noise_coarse", coarse, PIXEL / 2, LEFT - 100.0, TOP + 100.0),
        lithology=write("lithology", lithology, 4 * PIXEL, nodata=0, dtype="uint8"),
    )


def train_params(data: TinyData, out: Path, **extra: Any) -> Dict[str, Any]:
    """Train parameters for the tiny dataset: 1 epoch, 32-pixel tiles, Train's default model."""
    params: Dict[str, Any] = {
        "INPUT": str(data.raster), "LABELS": str(data.labels_shp), "LABEL_FIELD": "label",
        "EPOCHS": 1, "TILE_SIZE": TILE, "BATCH_SIZE": 8, "SEED": 0, "DEVICE": "cpu",
        "OUTPUT_MODEL": str(out / "model.pt"), "OUTPUT_FOLDER": str(out / "training"),
    }
    params.update(extra)
    return params


def qgis_process_env(plugins_dir: Path, profile: Path) -> Dict[str, str]:
    """A headless qgis_process with a throwaway profile that sees the plugin and the venv."""
    env = {k: v for k, v in os.environ.items() if k != "STACK_SEGMENTER_PYTHON"}
    env.update(QGIS_PLUGINPATH=str(plugins_dir), QGIS_CUSTOM_CONFIG_PATH=str(profile), QT_QPA_PLATFORM="offscreen")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}/usr/local/bin:/usr/bin:/bin"
    return env
