"""Training reports: the original tool's files plus curves, per-epoch history and one HTML page.

Per model folder: ``figures/curves.png`` (losses and validation metrics per epoch),
``figures/validation_<i>.png`` (prediction | label | first three channels, as the
original), ``figures/validation_blocks.png`` (the held-out blocks over the usable area,
training and held-out deposits), ``figures/capture.png`` (held-out deposits captured in the
top k % of the validation area, when the run measured them), ``output_data/metrics.pkl``
(pandas DataFrame, one column per model trained in this run; rows as the original plus
ROC/PR AUC), ``metrics.json`` (history + final numbers, NaN written as null) and
``report.html``, which leads with held-out skill, then fit, then the pixel figures, and shows
the figures above. Only our own outputs are pickled; we never read pickles.
"""
from __future__ import annotations

import datetime as _dt
import html
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .events import LogFn
from .files import write_atomic, write_text_atomic
from .raster import PixelBox

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


# ----------------------------------------------------------------------------- the HTML report

#: (metrics key, label) of the deposit-level figures: held-out skill first, then fit, as the log says them.
SKILL_ROWS = (
    ("val_prediction_rate_auc", "Prediction-rate AUC (held-out deposits against the validation area)"),
    ("val_top1", "% of held-out deposits in the top 1 % of the validation area"),
    ("val_top5", "% of held-out deposits in the top 5 % of the validation area"),
    ("val_top10", "% of held-out deposits in the top 10 % of the validation area"),
    ("val_top20", "% of held-out deposits in the top 20 % of the validation area"),
    ("val_n_deposits", "Held-out deposits (in the validation blocks)"),
)
FIT_ROWS = (
    ("train_success_rate_auc", "Success-rate AUC (training deposits against training windows)"),
    ("train_top10", "% of training deposits in the top 10 % of the training area"),
    ("train_n_deposits", "Training deposits"),
)
PIXEL_ROWS = (
    ("val_roc_auc", "ROC AUC (validation pixels)"),
    ("val_pr_auc", "PR AUC (validation pixels)"),
    ("val_loss", "Loss (validation pixels)"),
    ("val_iou", "Mean IoU (validation pixels)"),
    ("val_accuracy", "Accuracy (validation pixels)"),
)
TOP_KS = (1, 5, 10, 20)


@dataclass
class BlockMap:
    """What the validation-block map draws: the usable area and the training area (decimated to at
    most ``MAX_SIDE`` pixels on the long side), the validation blocks, the positive features (pixel
    (row, col)) and which of them lie in the training area (trained the model)."""

    usable: np.ndarray
    training: np.ndarray
    step: int
    shape: Tuple[int, int]
    blocks: List[PixelBox]
    trained: np.ndarray
    points: np.ndarray

    MAX_SIDE = 800

    @classmethod
    def of(cls, usable: np.ndarray, blocks: Sequence[PixelBox], training: np.ndarray,
           points: Optional[np.ndarray]) -> "BlockMap":
        """``training``: bool (H, W) of the pixels that trained the model (TileData.train_area)."""
        step = max(1, math.ceil(max(usable.shape) / cls.MAX_SIDE))
        pts = np.zeros((0, 2)) if points is None else np.asarray(points, dtype=float).reshape(-1, 2)
        rows = np.clip(pts[:, 0].astype(int), 0, usable.shape[0] - 1)
        cols = np.clip(pts[:, 1].astype(int), 0, usable.shape[1] - 1)
        trained = training[rows, cols] if len(pts) else np.zeros(0, dtype=bool)
        return cls(usable[::step, ::step].copy(), (training & usable)[::step, ::step].copy(), step,
                   tuple(usable.shape), [tuple(map(int, b)) for b in blocks], trained, pts)

    def _inside(self, boxes: Sequence[PixelBox]) -> np.ndarray:
        inside = np.zeros(len(self.points), dtype=bool)
        for r0, c0, r1, c1 in boxes:
            inside |= ((self.points[:, 0] >= r0) & (self.points[:, 0] < r1)
                       & (self.points[:, 1] >= c0) & (self.points[:, 1] < c1))
        return inside

    def kinds(self) -> Tuple[np.ndarray, np.ndarray]:
        """(held out: in a validation block, trained on: in the training area); a deposit that is
        neither lies in the buffer between them and was not used."""
        held = self._inside(self.blocks)
        return held, self.trained & ~held


def write_block_map(bm: BlockMap, path: Path, title: str) -> Path:
    """The validation blocks (red, dashed) over the training area (grey) and the rest of the usable
    area (light grey); deposits held out, trained on, or in the buffer between."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch, Rectangle

    h, w = bm.shape
    fig, ax = plt.subplots(figsize=(8, max(3.0, 8 * h / max(w, 1))))
    shade = np.where(bm.training, 0.70, np.where(bm.usable, 0.90, 1.0))
    ax.imshow(shade, cmap="gray", vmin=0, vmax=1, extent=(0, w, h, 0), interpolation="nearest")
    handles = [Patch(color="0.70", label="training area"), Patch(color="0.90", label="buffer / not used")]
    for r0, c0, r1, c1 in bm.blocks:
        ax.add_patch(Rectangle((c0, r0), c1 - c0, r1 - r0, fill=False, edgecolor="#e31a1c", linewidth=1.5,
                               linestyle="--"))
    handles.append(Patch(fill=False, edgecolor="#e31a1c", linestyle="--", label="validation block (held out)"))
    held, trained = bm.kinds()
    unused = ~held & ~trained
    for mask, style, label in ((trained, dict(s=14, c="black"), "deposit trained on"),
                               (held, dict(s=26, c="#e31a1c", marker="^", edgecolors="white", linewidths=0.5),
                                "held-out deposit"),
                               (unused, dict(s=14, facecolors="none", edgecolors="black"), "deposit in the buffer")):
        if mask.any():
            handles.append(ax.scatter(bm.points[mask, 1], bm.points[mask, 0], label=f"{label} ({mask.sum()})",
                                      **style))
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_xlabel("column (pixels)")
    ax.set_ylabel("row (pixels)")
    ax.set_title(title)
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    _save_png(fig, path)
    return path


def _save_png(fig: Any, path: Path) -> None:
    """Writes a report figure atomically (cropped to what it draws) and frees it."""
    import matplotlib.pyplot as plt

    try:
        write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=90, bbox_inches="tight"))
    finally:
        plt.close(fig)


def _number(value: Any) -> Optional[float]:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(float(value)) else None


def write_capture_figure(metrics: Dict[str, Any], path: Path, title: str) -> Optional[Path]:
    """% of held-out deposits in the top k % of the validation area, beside what chance gives (k %)."""
    captured = [_number(metrics.get(f"val_top{k}")) for k in TOP_KS]
    if not metrics.get("val_n_deposits") or any(v is None for v in captured):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(len(TOP_KS))
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    ax.bar(x - 0.2, captured, width=0.4, color="#31688e", label=f"held-out deposits ({metrics['val_n_deposits']})")
    ax.bar(x + 0.2, TOP_KS, width=0.4, color="#cccccc", label="chance (a random map)")
    fit = _number(metrics.get("train_top10"))
    if fit is not None:
        ax.scatter([x[TOP_KS.index(10)]], [fit], marker="D", color="black", zorder=3,
                   label="training deposits, top 10 % (fit, not skill)")
    ax.set_xticks(x, [f"top {k} %" for k in TOP_KS])
    ax.set_ylabel("% of deposits captured")
    ax.set_ylim(0, 104)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, frameon=False)
    fig.tight_layout()
    _save_png(fig, path)
    return path


def _format(key: str, value: Any, metrics: Dict[str, Any]) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if key.endswith("n_deposits"):
        return str(int(value))
    if "_top" in key:
        return f"{float(value):.0f} %"
    text = f"{float(value):.3f}"
    lo, hi = _number(metrics.get(f"{key}_lo")), _number(metrics.get(f"{key}_hi"))
    if lo is not None and hi is not None:
        text += f" (95 % interval {lo:.3f} to {hi:.3f})"
    return text


def _table(rows: Sequence[Tuple[str, str]], metrics: Dict[str, Any]) -> str:
    body = "".join(f"<tr><td>{html.escape(label)}</td><td>{html.escape(_format(key, metrics.get(key), metrics))}"
                   "</td></tr>" for key, label in rows if key in metrics)
    return f"<table>{body}</table>" if body else ""


def _image(folder: Path, path: Optional[Path], alt: str) -> str:
    if path is None or not path.is_file():
        return ""
    return f'<p><img src="{html.escape(path.relative_to(folder).as_posix())}" alt="{html.escape(alt)}"></p>'


def _settings(folder: Path) -> str:
    """What the run was given (config.json), in a few readable lines."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    labels = config.get("labels") or {}
    rows = [("Evidence raster", config.get("raster_path")), ("Labels", labels.get("labels_path")),
            ("Label field", labels.get("label_column") or "(label, or every feature positive)"),
            ("Study area mask", labels.get("mask_path") or "(none)"),
            ("Categorical bands", ", ".join(map(str, config.get("categorical_bands") or [])) or "(none)"),
            ("Epochs asked", config.get("num_epochs")), ("Tile size", config.get("tile_size") or "automatic"),
            ("Validation fraction", config.get("val_fraction")), ("Seed", config.get("seed"))]
    body = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f"<h2>Settings</h2><table>{body}</table>"


STYLE = ("body{font-family:sans-serif;max-width:980px;margin:1em auto;color:#222}"
         "table{border-collapse:collapse;margin:.5em 0}td{border:1px solid #ccc;padding:3px 8px}"
         "img{max-width:100%}.note{color:#555}")


def write_training_report(run: Any, folder: Path, figures: Dict[str, Optional[Path]]) -> Path:
    """report.html: held-out skill first, fit second, pixels third; the figures; links to the files."""
    metrics = dict(run.final.metrics)
    skill = _table(SKILL_ROWS, metrics)
    if not skill:
        skill = ("<p class='note'>This run measured no deposit-level held-out figures; score the predicted map "
                 "with Evaluate probability map and this model to get them.</p>")
    elif not metrics.get("val_n_deposits"):
        skill += ("<p class='note'>No deposit lies in the validation blocks, so skill is not measured here: "
                  "cross-validate (several held-out folds) to measure it.</p>")
    if metrics.get("final_fit_epochs"):
        skill += ("<p class='note'>These are the validated model's figures. The saved model was then trained "
                  "again on the whole training area, validation blocks included, for the epochs validation chose "
                  f"({', '.join(str(e) for e in metrics['final_fit_epochs'])}: final fit), so these blocks are no "
                  "longer held out from its map; Cross-validate measures the whole procedure on new ground.</p>")
    members = getattr(run, "members", 1)
    facts = (f"{html.escape(run.name)}{f', an ensemble of {members} members' if members > 1 else ''}; "
             f"{run.epoch} epoch(s) in the model, {run.epochs_run} trained in this run, "
             f"{run.training_time / 60:.1f} min; {run.num_params:,} parameters.")
    links = "".join(f'<li><a href="{html.escape(name)}">{html.escape(name)}</a></li>'
                    for name in ("metrics.json", "train.log", "config.json", "validation_blocks.gpkg")
                    if (folder / name).is_file())
    checkpoint = Path(run.checkpoint)
    title = checkpoint.stem if checkpoint.stem not in ("checkpoint", "model") else f"{checkpoint.parent.name}/{checkpoint.stem}"
    page = (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>Training report: {html.escape(run.name)}</title><style>{STYLE}</style></head><body>\n"
        f"<h1>Training report: {html.escape(title)}</h1>\n<p>{facts}<br>Model file: "
        f"<code>{html.escape(str(checkpoint))}</code><br>Written "
        f"{_dt.datetime.now().isoformat(timespec='seconds')}.</p>\n"
        "<h2>Held-out skill</h2><p class='note'>Deposits in the validation blocks, which training never saw, "
        "ranked against the validation area: the honest measure of skill (0.5 = a random map).</p>"
        f"{skill}{_image(folder, figures.get('capture'), 'held-out capture')}\n"
        "<h2>Fit, not skill</h2><p class='note'>Training deposits against the training area: how well the "
        "model learnt what it was shown. Far above the held-out figures means it memorised.</p>"
        f"{_table(FIT_ROWS, metrics) or '<p class=note>Not measured in this run.</p>'}\n"
        "<h2>Pixels</h2>" + _table(PIXEL_ROWS, metrics) + "\n"
        "<h2>Validation blocks</h2><p class='note'>Held-out blocks (red, dashed; QGIS loads them as a layer) "
        "over the usable area (grey), with the training and held-out deposits.</p>"
        f"{_image(folder, figures.get('blocks'), 'validation blocks')}\n"
        f"<h2>Training curves</h2>{_image(folder, figures.get('curves'), 'curves')}\n"
        + "".join(_image(folder, p, "validation example") for p in sorted((folder / "figures").glob("validation_*.png"))
                  if p.name != "validation_blocks.png")
        + f"\n{_settings(folder)}\n<h2>Files</h2><ul>{links}</ul>\n</body></html>\n"
    )
    return write_text_atomic(folder / "report.html", page)


def write_reports(runs: Sequence[Any], log: LogFn) -> Path:
    """Writes the report files of the latest run (metrics.pkl holds every model of this call); returns
    its report.html."""
    run = runs[-1]
    folder = Path(run.output_dir)
    write_metrics_pkl(runs, folder / "output_data" / "metrics.pkl")
    write_metrics_json(run, folder / "metrics.json")
    figures: Dict[str, Optional[Path]] = {"curves": None, "blocks": None, "capture": None}
    if run.history:
        figures["curves"] = folder / "figures" / "curves.png"
        write_curves(run, figures["curves"])
    write_validation_images(run, folder / "figures")
    if getattr(run, "block_map", None) is not None:
        figures["blocks"] = write_block_map(run.block_map, folder / "figures" / "validation_blocks.png",
                                            f"{run.name}: validation blocks")
    figures["capture"] = write_capture_figure(run.final.metrics, folder / "figures" / "capture.png",
                                              f"{run.name}: held-out capture")
    report = write_training_report(run, folder, figures)
    log(f"{run.name}: outputs written to {folder}; training report {report}")
    return report
