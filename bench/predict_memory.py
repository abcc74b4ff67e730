"""Benchmark 2 (and 2b): prediction over the whole stack with the core's predict(), one model or an ensemble.

Two subprocess kinds: ``make_checkpoint`` builds a real checkpoint (random weights, band
statistics fitted by the core's encoder on a few windows) once, ``make_ensemble`` one
holding n such members (``core.checkpoint.save_ensemble``); ``predict`` runs
``core.predict`` on a cold stack and records its wall time and peak resident memory at
once, then times the model's forward pass alone over exactly the windows predict() ran
(same tile, overlap, batch; the same strip plan from core.predict), on random input: every
member of an ensemble, one after another, as predict() runs them. With ``uncertainty`` the
run also writes the members' spread map (predict's ``uncertainty_path``).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

from .common import child_main, evict_from_page_cache, gpu_peak_mb, peak_rss_mb, resolve_device, sync_device

TILE = (256, 256)


def checkpoint_dict(stack: Path, model_name: str, encoder: Any, tile: Tuple[int, int], seed: int) -> Dict[str, Any]:
    """A checkpoint of ``model_name`` with random weights (seeded) and the given band encoder.

    Same keys as training writes (docs/ARCHITECTURE.md); prediction speed does not depend on
    the weights.
    """
    import torch

    from core.models.registry import build_model, model_kwargs
    from core.raster import read_info

    info = read_info(stack)
    torch.manual_seed(seed)
    model = build_model(model_name, in_channels=encoder.out_channels, num_classes=2, img_size=tile)
    return {
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
        "seed": seed,
        "state_dict": model.state_dict(),
        "epoch": 0,
        "history": [],
    }


def fitted_encoder(stack: Path, tile: Tuple[int, int]) -> Any:
    """The core's band encoder fitted on the top-left 2 x 2 tiles (speed does not depend on the statistics)."""
    from core.encoding import fit_encoder
    from core.raster import read_info

    info = read_info(stack)
    return fit_encoder(stack, [(0, 0, min(tile[0] * 2, info.height), min(tile[1] * 2, info.width))])


def make_checkpoint(stack: Path, model_name: str, out: Path, tile: Tuple[int, int] = TILE) -> Dict[str, Any]:
    """Saves a self-describing checkpoint with random weights for ``model_name`` on ``stack``."""
    from core.checkpoint import save_checkpoint

    encoder = fitted_encoder(stack, tile)
    save_checkpoint(out, checkpoint_dict(stack, model_name, encoder, tile, seed=0))
    return {"checkpoint": str(out), "in_channels": encoder.out_channels}


def make_ensemble(stack: Path, model_name: str, out: Path, members: int, tile: Tuple[int, int] = TILE
                  ) -> Dict[str, Any]:
    """Saves an ensemble checkpoint of ``members`` random-weight models (seeds 0..n-1) through the core.

    The members share one band encoder, as Train's ensemble members do (one split, one set
    of band statistics); ``core.checkpoint.save_ensemble`` bundles them into one file.
    """
    from core.checkpoint import ensemble_members, load_checkpoint, save_ensemble

    encoder = fitted_encoder(stack, tile)
    save_ensemble(out, [checkpoint_dict(stack, model_name, encoder, tile, seed) for seed in range(members)])
    stored = len(ensemble_members(load_checkpoint(out)))
    return {"checkpoint": str(out), "in_channels": encoder.out_channels, "members": stored,
            "checkpoint_mb": round(out.stat().st_size / 1024 ** 2, 2)}


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
    """Times every member of the checkpoint alone over the windows predict() runs, on random input.

    The members are loaded as predict() loads them (``core.predict.load_members``); for an
    ensemble of n the time is that of n forward passes per batch (one member after another).
    """
    import torch

    from core.checkpoint import load_checkpoint
    from core.predict import load_members

    ckpt = load_checkpoint(str(checkpoint))
    members, encoders = load_members(ckpt, device)
    models = [m.model for m in members]
    channels = encoders[0].out_channels  # the bench's members share one encoder
    batches = predict_batches(ckpt, height, width, tile, overlap, batch)
    inputs = {shape: torch.randn(shape[0], channels, shape[1], shape[2], device=device) for shape in set(batches)}
    with torch.inference_mode():
        for model in models:
            model(inputs[batches[0]])  # warm-up (predict() ran just before in this process anyway)
        sync_device(device)
        start = time.perf_counter()
        for shape in batches:
            for model in models:
                model(inputs[shape])
        sync_device(device)
    return {"forward_s": round(time.perf_counter() - start, 3), "forward_windows": sum(b[0] for b in batches),
            "forward_members": len(models)}


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
    spread = Path(params["work"]) / "uncertainty.tif" if params.get("uncertainty") else None
    info = read_info(stack)
    config = PredictConfig(checkpoint=params["checkpoint"], raster_path=str(stack), output_path=str(out),
                           batch_size=int(params["batch"]), device=device,
                           uncertainty_path=str(spread) if spread is not None else None)
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
        "output_mb": round(out.stat().st_size / 1024 ** 2, 3),
        "members": result.get("members"),
        **(uncertainty_figures(spread) if spread is not None else {}),
        **fwd,
    }


def uncertainty_figures(path: Path) -> Dict[str, Any]:
    """Size and spread of the uncertainty map predict() wrote (its own p99/max tags): proof it was written."""
    import rasterio

    with rasterio.open(path) as src:
        tags = src.tags()
        shape = [src.count, src.height, src.width]
    return {"uncertainty_mb": round(path.stat().st_size / 1024 ** 2, 3), "uncertainty_shape": shape,
            "uncertainty_p99": float(tags["p99"]) if "p99" in tags else None,
            "uncertainty_max": float(tags["max"]) if "max" in tags else None}


def run(params: Dict[str, Any]) -> Dict[str, Any]:
    """Child: ``mode`` 'checkpoint' builds the checkpoint, 'ensemble' an ensemble of ``members``, anything
    else predicts (with ``uncertainty``: the members' spread map too)."""
    tile = int(params.get("tile", TILE[0]))
    if params.get("mode") == "checkpoint":
        return make_checkpoint(Path(params["path"]), params["model"], Path(params["checkpoint"]), (tile, tile))
    if params.get("mode") == "ensemble":
        return make_ensemble(Path(params["path"]), params["model"], Path(params["checkpoint"]),
                             int(params["members"]), (tile, tile))
    return run_predict(params)


if __name__ == "__main__":
    child_main(run)
