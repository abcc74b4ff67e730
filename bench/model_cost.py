"""Benchmark 5: per-model training cost (forward + backward + optimiser step).

One model at one tile size per subprocess (so the peak memory is that model's), built by
the core's registry exactly as training builds it, fed random (B, C, H, W) batches. The
first steps are a warm-up and not timed; the best of the timed steps is reported. The s2
models are slow on CPU, so the number of timed steps is a parameter.
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Dict

from .common import child_main, gpu_peak_mb, resolve_device, sync_device


def train_step_cost(name: str, bands: int, tile: int, batch: int, steps: int, device: str, warmup: int = 2
                    ) -> Dict[str, Any]:
    """Times ``steps`` forward+backward+AdamW steps of ``name`` on random data."""
    import torch

    from core.models.registry import build_model

    torch.manual_seed(0)
    model = build_model(name, in_channels=bands, num_classes=2, img_size=(tile, tile)).to(device).train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    x = torch.randn(batch, bands, tile, tile, device=device)
    y = torch.randint(0, 2, (batch, tile, tile), device=device)

    def step() -> float:
        optimiser.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        optimiser.step()
        return float(loss.detach())

    for _ in range(warmup):  # allocator, kernels, lazy initialisation
        step()
    times = []
    for _ in range(steps):
        sync_device(device)
        start = time.perf_counter()
        step()
        sync_device(device)
        times.append(time.perf_counter() - start)
    # Best of the timed steps (timeit's convention): on a shared machine other processes
    # only ever add time. The median is kept to show how noisy the machine was.
    seconds = min(times)
    return {
        "params": int(sum(p.numel() for p in model.parameters())),
        "steps": steps,
        "step_median_s": round(statistics.median(times), 4),
        "step_s": round(seconds, 4),
        "s_per_tile": round(seconds / batch, 4),
        "tiles_per_s": round(batch / seconds, 3),
        "gpu_peak_mb": gpu_peak_mb(device),
    }


def run(params: Dict[str, Any]) -> Dict[str, Any]:
    """Child: the cost of one model at one tile size."""
    import torch

    torch.set_num_threads(max(1, int(params.get("threads") or torch.get_num_threads())))
    device = resolve_device(params.get("device", "cpu"))
    result = train_step_cost(params["model"], int(params["bands"]), int(params["tile"]), int(params["batch"]),
                             int(params.get("steps", 2)), device, int(params.get("warmup", 2)))
    result.update(model=params["model"], tile=int(params["tile"]), batch=int(params["batch"]),
                  bands=int(params["bands"]), device=device)
    return result


if __name__ == "__main__":
    child_main(run)
