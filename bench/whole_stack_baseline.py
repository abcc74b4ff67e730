"""Benchmark 4: the original tool's approach, for comparison.

The original train_raster.py read the whole stack into memory, computed band statistics
over the whole array and sliced tiles out of it. Here: the same, over the same tile grid
our pipeline benchmark delivers (non-overlapping tiles, normalised float32 tensors), so
peak memory and time stand side by side with ours.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict

import numpy as np

from .common import child_main, evict_from_page_cache
from .stack import block_origins


def run(params: Dict[str, Any]) -> Dict[str, Any]:
    """Child: load everything, whole-array statistics, slice and normalise every tile."""
    import rasterio
    import torch

    path = Path(params["path"])
    tile = int(params.get("tile", 256))
    evict_from_page_cache(path)
    start = time.perf_counter()
    with rasterio.open(path) as src:
        stack = src.read()  # the whole (C, H, W) array, as the original did
        nodata = src.nodata
    loaded = time.perf_counter()
    valid = np.all(stack != nodata, axis=0) if nodata is not None else np.ones(stack.shape[1:], bool)
    mean = np.array([band[valid].mean() for band in stack], dtype=np.float32)[:, None, None]
    std = np.array([band[valid].std() for band in stack], dtype=np.float32)[:, None, None] + 1e-6
    stats = time.perf_counter()
    tiles = 0
    checksum = 0.0
    for row, col, h, w in block_origins(stack.shape[1], stack.shape[2], tile):
        x = torch.from_numpy((stack[:, row:row + h, col:col + w] - mean) / std)
        checksum += float(x[0, 0, 0])
        tiles += 1
    end = time.perf_counter()
    return {
        "path": str(path),
        "tiles": tiles,
        "load_s": round(loaded - start, 3),
        "stats_s": round(stats - loaded, 3),
        "slice_s": round(end - stats, 3),
        "total_s": round(end - start, 3),
        "tiles_per_s": round(tiles / (end - start), 2),
        "checksum": checksum,
    }


if __name__ == "__main__":
    child_main(run)
