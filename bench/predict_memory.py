"""Benchmark 2: prediction over the whole stack with the core's predict().

Two subprocess kinds: ``make_checkpoint`` builds a real checkpoint (random weights, band
statistics fitted by the core's encoder on a few windows) once; ``predict`` runs
``core.predict`` on a cold stack and records its wall time and peak resident memory at
once, then times the model's forward pass alone over exactly the windows predict() ran
(same tile, overlap, batch; the same strip plan from core.predict), on random input.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

from .common import child_main, evict_from_page_cache, gpu_peak_mb, peak_rss_mb, resolve_device, sync_device

TILE = (256, 256)


def make_checkpoint(stack: Path, model_name: str, out: Path, tile: Tuple[int, int] = TILE) -> Dict[str, Any]:
    """Saves a self-describing checkpoint with random weights for ``model_name`` on ``stack``.

    Same keys as training writes (docs/ARCHITECTURE.md); band statistics are fitted by the
    core's encoder on the top-left 2 x 2 tiles (prediction speed does not depend on them).
    """
    import torch

    from core.checkpoint import save_checkpoint
    from core.encoding import fit_encoder
    from core.models.registry import build_model, model_kwargs
    from core.raster import read_info

    info = read_info(stack)
    encoder = fit_encoder(stack, [(0, 0, min(tile[0] * 2, info.height), min(tile[1] * 2, info.width))])
    torch.manual_seed(0)
    model = build_model(model_name, in_channels=encoder.out_channels, num_classes=2, img_size=tile)
    ckpt = {
        "model_name": model_name,
        "model_kwargs": model_kwargs(model_name, encoder.out_channels, 2, tile),
        "in_channels": info.count,
        "num_classes": 2,
        "band_names": list(info.band_names),
        "band_count": info.count,
        "encoder": encoder.to_dict(),
        "nodata": list(info.nodata),
        "crs_wkt": info.crs_wkt,
        "transform": list(info.transform),
        "pixel_size": list(info.res),
        "raster_shape": [info.height, info.width],
        "tile_size": list(tile),
        "validation_blocks": [],
        "seed": 0,
        "state_dict": model.state_dict(),
        "epoch": 0,
        "history": [],
    }
    save_checkpoint(out, ckpt)
    return {"checkpoint": str(out), "in_channels": encoder.out_channels}


def predict_batches(ckpt: Dict[str, Any], height: int, width: int, tile: Tuple[int, int], overlap: float,
                    batch: int) -> List[Tuple[int, int, int]]:
    """(windows, height, width) of every model call predict() makes, as the model sees them.

    Built from core.predict's own planning functions (stride with the model's multiple and
    context, strip plan, windows clipped at the raster edge, batches of equal width), then
    padded to the model's multiple as its runner pads them.
    """
    from core.models.catalog import parse_model_name
    from core.predict import _batches, plan_strips, stride_for

    spec = parse_model_name(str(ckpt["model_name"]))
    multiple = 1 if spec.spherical else spec.scale ** spec.layers
    stride = stride_for(tile, overlap, multiple, spec.context)

    def padded(n: int) -> int:
        return n + (-n) % multiple

    out: List[Tuple[int, int, int]] = []
    for strip in plan_strips(height, width, tile, stride):
        h = min(tile[0], height - strip.row0)
        for cols in _batches(strip.cols, width, tile[1], batch):
            out.append((len(cols), padded(h), padded(min(tile[1], width - cols[0]))))
    return out


def forward_only(checkpoint: Path, height: int, width: int, tile: Tuple[int, int], overlap: float, batch: int,
                 device: str) -> Dict[str, Any]:
    """Times the model alone over the windows predict() runs, on random input of their shapes."""
    import torch

    from core.checkpoint import build_model_from_checkpoint, encoder_from_checkpoint, load_checkpoint

    ckpt = load_checkpoint(str(checkpoint))
    model = build_model_from_checkpoint(ckpt).to(device).eval()
    channels = encoder_from_checkpoint(ckpt).out_channels
    batches = predict_batches(ckpt, height, width, tile, overlap, batch)
    inputs = {shape: torch.randn(shape[0], channels, shape[1], shape[2], device=device) for shape in set(batches)}
    with torch.inference_mode():
        model(inputs[batches[0]])  # warm-up (predict() ran just before in this process anyway)
        sync_device(device)
        start = time.perf_counter()
        for shape in batches:
            model(inputs[shape])
        sync_device(device)
    return {"forward_s": round(time.perf_counter() - start, 3), "forward_windows": sum(b[0] for b in batches)}


def run_predict(params: Dict[str, Any]) -> Dict[str, Any]:
    """predict() on a cold stack: wall time and peak memory; then forward-only time.

    torch and the core's modules are imported before the clock starts: interpreter start-up
    is the same for every job and says nothing about streaming prediction.
    """
    import torch  # noqa: F401 - imported up front, see above

    import core.checkpoint  # noqa: F401
    import core.models.registry  # noqa: F401
    from core.config import PredictConfig
    from core.predict import predict  # the module's function: `core.predict` becomes the module once imported
    from core.raster import read_info

    device = resolve_device(params.get("device", "cpu"))
    stack = Path(params["path"])
    out = Path(params["work"]) / "probability.tif"
    info = read_info(stack)
    config = PredictConfig(checkpoint=params["checkpoint"], raster_path=str(stack), output_path=str(out),
                           batch_size=int(params["batch"]), device=device)
    evict_from_page_cache(stack)
    start = time.perf_counter()
    result = predict(config)
    sync_device(device)
    seconds = time.perf_counter() - start
    peak = peak_rss_mb()
    gpu = gpu_peak_mb(device)
    tile = tuple(result.get("tile_size") or TILE)
    fwd: Dict[str, Any] = {}
    if params.get("forward", True):  # only the wall-time target needs it (skipped on the 2x stack)
        fwd = forward_only(Path(params["checkpoint"]), info.height, info.width, tile,  # type: ignore[arg-type]
                           config.overlap, config.batch_size, device)
    return {
        "shape": [info.count, info.height, info.width],
        "device": device,
        "tile": list(tile),
        "overlap": config.overlap,
        "windows": result.get("windows"),
        "predict_s": round(seconds, 3),
        "peak_rss_mb": round(peak, 1),
        "gpu_peak_mb": gpu,
        "output_mb": round(out.stat().st_size / 1024 ** 2, 1),
        **fwd,
    }


def run(params: Dict[str, Any]) -> Dict[str, Any]:
    """Child: ``mode`` 'checkpoint' builds the checkpoint, anything else predicts."""
    if params.get("mode") == "checkpoint":
        tile = int(params.get("tile", TILE[0]))
        return make_checkpoint(Path(params["path"]), params["model"], Path(params["checkpoint"]), (tile, tile))
    return run_predict(params)


if __name__ == "__main__":
    child_main(run)
