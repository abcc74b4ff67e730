"""Benchmark 3: tiles per second the training data pipeline delivers.

The core's TileDataset (window read, nodata mask, labels, band encoding) through a torch
DataLoader at the training batch size, shuffled like an epoch, over every tile of the
stack's grid, starting from a cold page cache. Labels are rasterised by the core from a
point GeoPackage; the encoder is fitted by the core on the first row of tiles (fitting is
a one-off before training and is timed separately). The stack is never loaded whole: the
peak memory reported shows it.
"""
from __future__ import annotations

import resource
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

from .common import child_main, evict_from_page_cache, peak_rss_mb

Box = Tuple[int, int, int, int]


def grid_boxes(height: int, width: int, tile: int) -> List[Box]:
    """Every tile of the grid as (row0, col0, row1, col1), edge tiles aligned to the border."""
    from core.raster import iter_windows

    return [(r, c, r + tile, c + tile) for r, c in iter_windows(height, width, (tile, tile))]


def deliver_epoch(dataset: Any, batch: int, workers: int) -> Dict[str, float]:
    """Iterates one shuffled epoch through a DataLoader; returns tiles, seconds and a checksum."""
    import torch
    from torch.utils.data import DataLoader

    loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers,
                        generator=torch.Generator().manual_seed(0))
    tiles = 0
    positives = 0
    start = time.perf_counter()
    for item in loader:
        tiles += int(item["x"].shape[0])
        positives += int(item["y"].sum())
    return {"tiles": tiles, "seconds": time.perf_counter() - start, "positive_pixels": positives}


def run(params: Dict[str, Any]) -> Dict[str, Any]:
    """Child: build the dataset with the core's pieces, then time one epoch."""
    import torch

    from core.config import LabelOptions
    from core.dataset import TileDataset
    from core.encoding import fit_encoder
    from core.labels import rasterize_labels
    from core.raster import read_info

    path = Path(params["path"])
    tile, batch, workers = int(params["tile"]), int(params["batch"]), int(params["workers"])
    info = read_info(path)
    start = time.perf_counter()
    labels = rasterize_labels(LabelOptions(labels_path=params["labels"]), info)
    labels_s = time.perf_counter() - start
    boxes = grid_boxes(info.height, info.width, tile)
    start = time.perf_counter()
    encoder = fit_encoder(path, [b for b in boxes if b[0] == 0])
    fit_s = time.perf_counter() - start
    dataset = TileDataset(str(path), boxes, labels.labels, encoder)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    evict_from_page_cache(path)
    epoch = deliver_epoch(dataset, batch, workers)
    worker_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0 if workers else 0.0
    return {
        "path": str(path),
        "tile": tile,
        "batch": batch,
        "workers": workers,
        "tiles": epoch["tiles"],
        "seconds": round(epoch["seconds"], 3),
        "tiles_per_s": round(epoch["tiles"] / epoch["seconds"], 2),
        "positive_pixels": epoch["positive_pixels"],
        "labels_s": round(labels_s, 3),
        "fit_encoder_s": round(fit_s, 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        # Upper bound: forked workers share the parent's pages, which RSS counts in both.
        "workers_peak_rss_mb": round(workers * worker_peak, 1),
    }


if __name__ == "__main__":
    child_main(run)
