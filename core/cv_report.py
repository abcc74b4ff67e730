"""What a person reads after cross-validation: cv_comparison.png and cv_summary.html.

The HTML leads with the ranking (pooled prediction-rate AUC of held-out deposits, with its
95 % interval), because that is the question a user comes with: which map to trust. The
success-rate AUC stands beside it, labelled as fit, so a model that memorised its training
deposits shows as a large gap. Both files are written atomically (files.py); links are
relative, so the folder can be moved or zipped.
"""
from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from .files import write_atomic, write_text_atomic
from .metrics import TOP_PERCENTS


def _f(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return html.escape(str(value))


def _ci(pair: Optional[Sequence[Optional[float]]], digits: int = 3) -> str:
    if not pair or pair[0] is None or pair[1] is None:
        return ""
    return f" [{pair[0]:.{digits}f}, {pair[1]:.{digits}f}]"


# ----------------------------------------------------------------------------- PNG


def write_comparison_png(path: Path, summary: Dict[str, Any], rows: Sequence[Dict[str, Any]]) -> Path:
    """Left: each fold's prediction-rate AUC per candidate (points), the fold mean (bar) and the
    pooled 95 % interval; right: the pooled prediction-rate curves."""
    order = [r["candidate"] for r in summary["ranking"]]

    def write(tmp: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5), dpi=110,
                                          gridspec_kw={"width_ratios": [max(3, len(order)), 4]})
        colours = plt.get_cmap("tab10")
        for i, name in enumerate(order):
            c = summary["candidates"][name]
            folds = [r["prediction_rate_auc"] for r in rows if r["candidate"] == name
                     and r.get("prediction_rate_auc") is not None]
            colour = colours(i % 10)
            mean = c["fold_mean"]["prediction_rate_auc"]
            if mean is not None:
                left.bar(i, mean - 0.5, bottom=0.5, width=0.6, color=colour, alpha=0.35,
                         label="fold mean" if i == 0 else None)
            left.scatter([i] * len(folds), folds, color=colour, zorder=3, s=22,
                         label="one fold" if i == 0 else None)
            pooled = c["pooled"]
            lo, hi = pooled.get("prediction_rate_auc_ci") or (None, None)
            if pooled["prediction_rate_auc"] is not None:
                auc = pooled["prediction_rate_auc"]
                err = None if lo is None else [[auc - lo], [hi - auc]]
                left.errorbar(i + 0.22, pooled["prediction_rate_auc"], yerr=err, fmt="D", color="black", ms=5,
                              capsize=3, zorder=4, label="pooled, 95 % interval" if i == 0 else None)
            curve = pooled.get("curve") or {}
            if curve.get("area"):
                right.plot([100 * v for v in curve["area"]], [100 * v for v in curve["captured"]], color=colour,
                           lw=2, label=f"{name} ({_f(pooled['prediction_rate_auc'])})")
        left.axhline(0.5, ls="--", color="grey", lw=1)
        left.set_xticks(range(len(order)))
        left.set_xticklabels(order, rotation=30, ha="right", fontsize=8)
        left.set(ylim=(min(0.3, left.get_ylim()[0]), 1.02), ylabel="prediction-rate AUC (held-out deposits)",
                 title="Per fold and pooled (0.5 = random)")
        left.legend(fontsize=8, loc="lower left")
        left.grid(axis="y", alpha=0.3)
        right.plot([0, 100], [0, 100], ls="--", color="grey", lw=1, label="random")
        right.set(xlim=(0, 100), ylim=(0, 100), xlabel="% of held-out area (ranked by score, highest first)",
                  ylabel="% of held-out deposits captured", title="Pooled prediction-rate curves")
        right.legend(fontsize=8, loc="lower right")
        right.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(tmp, format="png")
        plt.close(fig)

    return write_atomic(path, write)


# ----------------------------------------------------------------------------- HTML


def _against(candidate: Dict[str, Any]) -> str:
    """The paired difference to the best baseline, signed, with its interval and verdict ("" for that baseline)."""
    a = candidate.get("against_best_baseline")
    if not a or a["difference"] is None:
        return ""
    lo, hi = a["difference_ci"]
    return f"{_signed(a['difference'], 4)} [{_signed(lo)}, {_signed(hi)}] {a['verdict']}"


def _signed(value: Optional[float], digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:+.{digits}f}"


def _ranking_table(summary: Dict[str, Any]) -> str:
    head = ("<tr><th>rank</th><th>candidate</th><th>kind</th><th>prediction-rate AUC, pooled [95 %]</th>"
            "<th>fold mean &plusmn; sd</th>" + "".join(f"<th>top {k} %</th>" for k in TOP_PERCENTS)
            + "<th>PR AUC</th><th>success-rate AUC (fit)</th><th>against the best baseline [paired 95 %]</th>"
            "<th>seconds</th></tr>")
    body = []
    for r in summary["ranking"]:
        c = summary["candidates"][r["candidate"]]
        p, mean, std = c["pooled"], c["fold_mean"], c["fold_std"]
        tops = "".join(f"<td>{_f(p.get(f'top{k}'), 0)} %{_ci(p.get(f'top{k}_ci'), 0)}</td>" for k in TOP_PERCENTS)
        body.append(
            f"<tr><td>{r['rank']}</td><td><b>{html.escape(r['candidate'])}</b></td><td>{c['kind']}</td>"
            f"<td><b>{_f(p['prediction_rate_auc'])}</b>{_ci(p.get('prediction_rate_auc_ci'))}</td>"
            f"<td>{_f(mean['prediction_rate_auc'])} &plusmn; {_f(std['prediction_rate_auc'])}</td>{tops}"
            f"<td>{_f(p.get('pr_auc'))}</td><td>{_f(mean['success_rate_auc'])}</td><td>{_against(c)}</td>"
            f"<td>{_f(c['seconds'], 0)}</td></tr>")
    return "<table>" + head + "".join(body) + "</table>"


def _fold_table(rows: Sequence[Dict[str, Any]]) -> str:
    cols = ["fold", "candidate", "n_test_deposits", "prediction_rate_auc"] + [f"top{k}" for k in TOP_PERCENTS] + [
        "pr_auc", "success_rate_auc", "fit_seconds"]
    head = "<tr>" + "".join(f"<th>{c.replace('_', ' ')}</th>" for c in cols) + "</tr>"
    body = ["<tr>" + "".join(f"<td>{_f(r.get(c), 0 if c.startswith('top') else 3)}</td>" for c in cols) + "</tr>"
            for r in rows]
    return "<table>" + head + "".join(body) + "</table>"


def _folds_text(summary: Dict[str, Any]) -> str:
    f = summary["folds"]
    per = f["folds"]
    return (f"{f['k']} folds of {f['blocks']} spatial blocks ({f['block_size'][0]} x {f['block_size'][1]} px), "
            f"buffer {f['buffer'][0]} px between a fold's test blocks and its training data. Held-out deposits per "
            "fold: " + ", ".join(str(p["test_positive_features"]) for p in per)
            + "; share of the area per fold: " + ", ".join(f"{100 * p['test_area_fraction']:.0f} %" for p in per)
            + ".")


def comparison_text(name: str, against: Dict[str, Any]) -> str:
    """One plain sentence: a candidate against the best baseline, with the paired interval."""
    lo, hi = against["difference_ci"]
    words = {"ahead": "beats", "behind": "LOSES to", "level": "is level with", "n/a": "cannot be compared with"}
    why = {"ahead": "the interval lies above 0", "behind": "the interval lies below 0",
           "level": "the interval holds 0: no clear difference", "n/a": "no deposit scored by both"}
    return (f"{name} {words[against['verdict']]} the best baseline, {against['baseline']}: pooled prediction-rate "
            f"AUC {_signed(against['difference'], 4)}, paired 95 % interval [{_signed(lo)}, {_signed(hi)}] over the "
            f"{against['n_deposits']} held-out deposits both scored ({why[against['verdict']]})")


def _verdict(summary: Dict[str, Any]) -> str:
    """One plain sentence: the best candidate, and where each deep model stands against the best baseline."""
    ranking = summary["ranking"]
    if not ranking:
        return "No candidate finished a fold."
    best = ranking[0]
    lines = [f"Best: <b>{html.escape(best['candidate'])}</b> (pooled prediction-rate AUC "
             f"{_f(best['prediction_rate_auc'])}{_ci(best['prediction_rate_auc_ci'])})."]
    for r in ranking:
        if r["kind"] == "model" and r.get("against_best_baseline"):
            lines.append(html.escape(comparison_text(r["candidate"], r["against_best_baseline"])) + ".")
    return " ".join(lines)


def write_summary_html(path: Path, summary: Dict[str, Any], rows: Sequence[Dict[str, Any]],
                       png_name: Optional[str]) -> Path:
    """cv_summary.html: the ranking first, then the plot, the fold table, the folds and the files."""
    files = summary.get("files") or {}
    maps = files.get("oof_maps") or {}
    links = [f'<li><a href="{html.escape(v)}">{html.escape(v)}</a> (out-of-fold map of {html.escape(k)})</li>'
             for k, v in maps.items()]
    links += [f'<li><a href="{html.escape(files[k])}">{html.escape(files[k])}</a></li>'
              for k in ("results_csv", "summary_json", "folds_gpkg") if files.get(k)]
    notes: List[str] = []
    for name, c in summary["candidates"].items():
        for n in c.get("notes") or []:
            notes.append(f"<li><b>{html.escape(name)}</b> {html.escape(n)}</li>")
    status = "" if summary.get("complete") else (
        "<p class='warn'>Cancelled before every fold finished: the figures cover the folds finished by every "
        "candidate only.</p>")
    failed = summary.get("failed") or {}
    if failed:
        status += "<p class='warn'>Left out (could not train): " + "; ".join(
            f"{html.escape(k)}: {html.escape(v)}" for k, v in failed.items()) + "</p>"
    raster = summary.get("raster") or {}
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Cross-validation: which map to trust</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:1em auto;padding:0 1em}}
table{{border-collapse:collapse;margin:0.5em 0}}td,th{{border:1px solid #bbb;padding:3px 6px;font-size:90%}}
th{{background:#eee}}.warn{{color:#a00;font-weight:bold}}</style></head><body>
<h2>Cross-validation: which map to trust</h2>
{status}
<p>{_verdict(summary)}</p>
<h3>Ranking</h3>
{_ranking_table(summary)}
<p>Skill, measured on ground each model never saw: every pixel of the out-of-fold maps was predicted by the
model that did not train on its fold. <b>Prediction-rate AUC</b> ranks the held-out deposits against all
held-out usable pixels (0.5 = random, 1 = every deposit above every other pixel); <b>top k %</b> is the share
of held-out deposits in the k % of the held-out area with the highest scores. Pooled figures rank every
held-out deposit against the whole out-of-fold map, with a 95 % bootstrap interval over deposits. <b>Against
the best baseline</b> is the difference of pooled AUCs on the same held-out deposits, with a paired interval
(the deposits resampled together for both maps): "level" when it holds 0, i.e. no clear difference; the fold mean
and spread show how much one split can swing. <b>Success-rate AUC</b> ranks the training deposits against the
training area: that is fit, not skill, and a large gap to the prediction rate means over-fitting.</p>
{f'<p><img src="{html.escape(png_name)}" alt="comparison" style="max-width:100%"></p>' if png_name else ''}
<h3>Folds</h3>
<p>{_folds_text(summary)} Raster: {raster.get('width')} x {raster.get('height')} px, {raster.get('bands')} band(s),
{raster.get('usable_pixels')} usable pixel(s), {raster.get('deposits')} deposit(s). Wall time
{_f(summary.get('wall_seconds'), 0)} s.</p>
<h3>Every fold</h3>
{_fold_table(rows)}
<h3>What each candidate kept or chose</h3>
<ul>{''.join(notes)}</ul>
<h3>Files</h3>
<ul>{''.join(links)}</ul>
</body></html>
"""
    return write_text_atomic(path, page)
