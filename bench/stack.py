"""Generates the benchmark inputs: a large float32 stack and point labels, window by window.

The stack is a tiled (256 x 256), pixel-interleaved GeoTIFF like the users' evidence
stacks: smooth per-band fields (sines of different frequency and phase) plus seeded
noise, nodata (-9999) in one corner so masking is exercised. It is written one 256 x 256
block at a time, so generating a 3.2 GB stack needs tens of MB, never the whole array.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, Iterator, Tuple

import numpy as np

from .common import child_main

TILE = 256
NODATA = -9999.0
CRS = "EPSG:32633"
PIXEL = 100.0
ORIGIN = (500000.0, 7000000.0)


def stack_profile(bands: int, height: int, width: int, compress: str) -> Dict[str, Any]:
    """The GeoTIFF creation profile: tiled 256 x 256, pixel interleaved, optional deflate."""
    from rasterio.transform import from_origin

    profile: Dict[str, Any] = dict(
        driver="GTiff", dtype="float32", count=bands, height=height, width=width, crs=CRS,
        transform=from_origin(ORIGIN[0], ORIGIN[1], PIXEL, PIXEL), nodata=NODATA,
        tiled=True, blockxsize=TILE, blockysize=TILE, interleave="pixel", BIGTIFF="IF_SAFER",
    )
    if compress == "deflate":
        # Floating-point predictor: what a user compressing a float stack would choose.
        profile.update(compress="deflate", predictor=3, zlevel=6)
    elif compress != "none":
        raise ValueError(f"compress must be 'none' or 'deflate', got {compress!r}")
    return profile


def block_origins(height: int, width: int, tile: int = TILE) -> Iterator[Tuple[int, int, int, int]]:
    """(row, col, h, w) of the raster's tile-aligned blocks, row by row."""
    for row in range(0, height, tile):
        for col in range(0, width, tile):
            yield row, col, min(tile, height - row), min(tile, width - col)


def synthetic_block(bands: int, row: int, col: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """One block of the synthetic stack, identical whatever order blocks are made in."""
    params = np.random.default_rng(seed)
    freq_x = params.uniform(0.001, 0.02, bands).astype(np.float32)[:, None, None]
    freq_y = params.uniform(0.001, 0.02, bands).astype(np.float32)[:, None, None]
    phase = params.uniform(0, 2 * np.pi, bands).astype(np.float32)[:, None, None]
    scale = params.uniform(0.5, 50.0, bands).astype(np.float32)[:, None, None]
    rows = np.arange(row, row + h, dtype=np.float32)[None, :, None]
    cols = np.arange(col, col + w, dtype=np.float32)[None, None, :]
    noise = np.random.default_rng([seed, row, col]).standard_normal((bands, h, w), dtype=np.float32)
    block = scale * (np.sin(cols * freq_x + phase) * np.cos(rows * freq_y) + 0.1 * noise)
    corner = (rows[0] + cols[0]) < 0.1 * TILE  # a small nodata triangle at the top-left corner
    block[:, corner] = NODATA
    return block


def generate_stack(path: Path, bands: int, height: int, width: int, compress: str = "none", seed: int = 0) -> None:
    """Writes the stack block by block (never the whole array in memory)."""
    import rasterio

    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.Env(GDAL_CACHEMAX=64 * 1024 * 1024):
        with rasterio.open(path, "w", **stack_profile(bands, height, width, compress)) as dst:
            for row, col, h, w in block_origins(height, width):
                dst.write(synthetic_block(bands, row, col, h, w, seed), window=((row, row + h), (col, col + w)))


def write_point_labels(path: Path, height: int, width: int, n_points: int = 200, seed: int = 0) -> None:
    """Random positive points (``label`` = 1) over the stack's extent, as a GeoPackage."""
    import geopandas as gpd
    from shapely.geometry import Point

    rng = np.random.default_rng(seed)
    rows = rng.uniform(0.1 * min(height, TILE), height, n_points)
    cols = rng.uniform(0.1 * min(width, TILE), width, n_points)
    points = [Point(ORIGIN[0] + (c + 0.5) * PIXEL, ORIGIN[1] - (r + 0.5) * PIXEL) for r, c in zip(rows, cols)]
    gdf = gpd.GeoDataFrame({"label": np.ones(n_points, dtype=np.int32)}, geometry=points, crs=CRS)
    path.parent.mkdir(parents=True, exist_ok=True)
    gdf.to_file(path, driver="GPKG", layer="deposits")


def run(params: Dict[str, Any]) -> Dict[str, Any]:
    """Child: generates one stack; reports time, file size and peak memory."""
    path = Path(params["path"])
    start = time.perf_counter()
    generate_stack(path, params["bands"], params["height"], params["width"], params.get("compress", "none"),
                   params.get("seed", 0))
    seconds = time.perf_counter() - start
    return {
        "path": str(path),
        "compress": params.get("compress", "none"),
        "shape": [params["bands"], params["height"], params["width"]],
        "write_s": round(seconds, 3),
        "file_mb": round(path.stat().st_size / 1024 ** 2, 1),
        "raw_mb": round(4 * params["bands"] * params["height"] * params["width"] / 1024 ** 2, 1),
    }


if __name__ == "__main__":
    child_main(run)
