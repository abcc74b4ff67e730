"""Training reports: the original tool's files plus curves and per-epoch history.

Per model folder: ``figures/curves.png`` (losses and validation metrics per epoch),
``figures/validation_<i>.png`` (prediction | label | first three channels, as the
original), ``output_data/metrics.pkl`` (pandas DataFrame, one column per model trained in
this run; rows as the original plus ROC/PR AUC) and ``metrics.json`` (history + final
numbers, NaN written as null). Only our own outputs are pickled; we never read pickles.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List, Sequence

import numpy as np

from .events import LogFn
from .files import write_atomic, write_text_atomic

ROWS = ("num_params", "loss mean", "loss std", "mean IoU mean", "mean IoU std", "mean Accuracy mean",
        "mean Accuracy std", "training_time", "roc_auc", "pr_auc", "epochs")


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    arr = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if arr.size == 0:
        return float("nan"), float("nan")
    return float(arr.mean()), float(arr.std())


def metrics_column(run: Any) -> Dict[str, float]:
    """One model's column of metrics.pkl (per-tile mean/std from the final validation pass)."""
    s = run.final.tile_stats
    loss, iou, acc = _mean_std(s.get("loss", [])), _mean_std(s.get("iou", [])), _mean_std(s.get("accuracy", []))
    return {
        "num_params": float(run.num_params), "loss mean": loss[0], "loss std": loss[1],
        "mean IoU mean": iou[0], "mean IoU std": iou[1], "mean Accuracy mean": acc[0], "mean Accuracy std": acc[1],
        "training_time": float(run.training_time), "roc_auc": float(run.final.metrics["val_roc_auc"]),
        "pr_auc": float(run.final.metrics["val_pr_auc"]), "epochs": float(run.epoch),
    }


def write_metrics_pkl(runs: Sequence[Any], path: Path) -> None:
    """The original's metrics.pkl: a DataFrame, rows = ROWS, one column per model."""
    import pandas as pd

    frame = pd.DataFrame({run.name: metrics_column(run) for run in runs}, index=list(ROWS))
    write_atomic(path, lambda tmp: frame.to_pickle(tmp, compression=None))


def _finite(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def write_metrics_json(run: Any, path: Path) -> None:
    """History per epoch and the final validation numbers (JSON, NaN -> null)."""
    doc = {
        "model": run.name,
        "epoch": run.epoch,
        "epochs_run": run.epochs_run,
        "num_params": run.num_params,
        "members": getattr(run, "members", 1),
        "training_time": run.training_time,
        "final": {k: _finite(v) for k, v in run.final.metrics.items()},
        "history": [{k: _finite(v) for k, v in row.items()} for row in run.history],
    }
    write_text_atomic(path, json.dumps(doc, indent=2) + "\n")


def _stretch(band: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """2-98 % percentile stretch to 0..1 over the valid pixels."""
    vals = band[valid]
    if vals.size == 0:
        return np.zeros_like(band)
    lo, hi = np.percentile(vals, (2, 98))
    return np.clip((band - lo) / (hi - lo if hi > lo else 1.0), 0, 1)


def write_curves(run: Any, path: Path) -> None:
    """Loss and validation metric curves per epoch (one line per ensemble member, same colour per metric)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    members = sorted({int(r.get("member", 1)) for r in run.history}) or [1]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))

    def plot(ax: Any, keys: Sequence[str]) -> None:
        for i, key in enumerate(keys):
            for j, member in enumerate(members):
                rows = [r for r in run.history if int(r.get("member", 1)) == member]
                ax.plot([r["epoch"] for r in rows], [np.nan if r.get(key) is None else r[key] for r in rows],
                        marker="o", color=f"C{i}", alpha=1.0 if len(members) == 1 else 0.6,
                        label=key if j == 0 else None)

    plot(ax1, ("train_loss", "val_loss"))
    ax1.set_xlabel("epoch")
    ax1.set_title("loss" + (f" ({len(members)} members)" if len(members) > 1 else ""))
    ax1.legend()
    plot(ax2, ("val_iou", "val_accuracy", "val_roc_auc", "val_pr_auc"))
    ax2.set_xlabel("epoch")
    ax2.set_title("validation metrics")
    ax2.set_ylim(0, 1)
    ax2.legend()
    fig.suptitle(run.name)
    fig.tight_layout()
    try:
        write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=80))
    finally:
        plt.close(fig)


def write_validation_images(run: Any, folder: Path) -> List[Path]:
    """validation_<i>.png: predicted probability | label | first three input channels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: List[Path] = []
    for i, (prob, label, valid, bands) in enumerate(run.final.examples):
        rgb = np.stack([_stretch(bands[min(k, bands.shape[0] - 1)], valid) for k in range(3)], axis=-1)
        fig, axes = plt.subplots(1, 3, figsize=(12, 4))
        axes[0].imshow(np.where(valid, prob, np.nan), vmin=0, vmax=1, cmap="viridis")
        axes[0].set_title("prediction (probability)")
        axes[1].imshow(np.where(valid, label, np.nan), vmin=0, vmax=1, cmap="gray")
        axes[1].set_title("label")
        axes[2].imshow(rgb)
        axes[2].set_title("first three channels")
        for ax in axes:
            ax.axis("off")
        path = folder / f"validation_{i}.png"
        try:
            write_atomic(path, lambda tmp, fig=fig: fig.savefig(tmp, format="png", dpi=80))
        finally:
            plt.close(fig)
        out.append(path)
    return out


def write_reports(runs: Sequence[Any], log: LogFn) -> None:
    """Writes the report files of the latest run; metrics.pkl holds every model of this call."""
    run = runs[-1]
    folder = Path(run.output_dir)
    write_metrics_pkl(runs, folder / "output_data" / "metrics.pkl")
    write_metrics_json(run, folder / "metrics.json")
    if run.history:
        write_curves(run, folder / "figures" / "curves.png")
    write_validation_images(run, folder / "figures")
    log(f"{run.name}: outputs written to {folder}")
