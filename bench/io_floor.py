"""Benchmark 1: the I/O floor, reading the whole stack window by window with rasterio.

No model, no normalisation: the time below which no prediction or training epoch over
the same windows can go. Read cold (the file evicted from the page cache first, as
every benchmark that reads the stack does) and then warm (second pass).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict

from .common import child_main, evict_from_page_cache
from .stack import TILE, block_origins


def read_all_windows(path: Path, tile: int = TILE) -> Dict[str, float]:
    """Reads every tile-aligned window (all bands); returns seconds, windows and bytes."""
    import rasterio

    start = time.perf_counter()
    n_bytes = 0
    windows = 0
    with rasterio.Env(GDAL_CACHEMAX=64 * 1024 * 1024):
        with rasterio.open(path) as src:
            for row, col, h, w in block_origins(src.height, src.width, tile):
                data = src.read(window=((row, row + h), (col, col + w)))
                n_bytes += data.nbytes
                windows += 1
    return {"seconds": time.perf_counter() - start, "windows": windows, "bytes": n_bytes}


def run(params: Dict[str, Any]) -> Dict[str, Any]:
    """Child: cold then warm window-by-window read of one stack."""
    path = Path(params["path"])
    evict_from_page_cache(path)
    cold = read_all_windows(path)
    warm = read_all_windows(path)
    mb = cold["bytes"] / 1024 ** 2
    return {
        "path": str(path),
        "windows": cold["windows"],
        "read_mb": round(mb, 1),
        "cold_s": round(cold["seconds"], 3),
        "warm_s": round(warm["seconds"], 3),
        "cold_mb_per_s": round(mb / cold["seconds"], 1),
        "warm_mb_per_s": round(mb / warm["seconds"], 1),
    }


if __name__ == "__main__":
    child_main(run)
