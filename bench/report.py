"""Turns the benchmark results into target verdicts and Markdown tables.

Targets (issue "Benchmarks"): prediction peak memory < 2 GB on the full-size stack and
<= 10 % higher on a twice-as-large one; prediction wall <= 1.25 x (forward + I/O floor);
(issue 10) the same memory and wall targets for an ensemble of n members, wall against
n x forward + I/O floor, with and without the uncertainty map;
training pipeline >= 3 x the fastest model's consumption on the uncompressed stack, with
the stack never fully loaded. A target that could not be measured is 'not measured',
never 'met'.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

from .common import fmt, format_table

PEAK_LIMIT_MB = 2048.0
GROWTH_LIMIT = 1.10
WALL_FACTOR = 1.25
PIPELINE_FACTOR = 3.0


def _ok(r: Optional[Dict[str, Any]]) -> bool:
    return bool(r) and r.get("status") == "ok"


def _target(name: str, target: str, measured: str, met: Optional[bool], note: str = "") -> Dict[str, Any]:
    return {"name": name, "target": target, "measured": measured, "met": met, "note": note}


def fastest_consumer(results: Dict[str, Any], tile: int) -> Optional[Dict[str, Any]]:
    """The model that trains the most tiles per second at ``tile`` (None when none measured)."""
    rows = [r for r in results.get("model_cost", []) if _ok(r) and r.get("tile") == tile]
    return max(rows, key=lambda r: r["tiles_per_s"]) if rows else None


def pipeline_run(results: Dict[str, Any], compress: str) -> Optional[Dict[str, Any]]:
    """The fastest successful pipeline configuration (over worker counts) for one stack."""
    runs = [r for r in (results.get("pipeline") or {}).get("runs", []) if _ok(r) and r.get("compress") == compress]
    return max(runs, key=lambda r: r["tiles_per_s"]) if runs else None


def size_note(results: Dict[str, Any]) -> str:
    """'' on the full-size stack (99 x 2000 x 4000 or more), else a note that says it was smaller."""
    stack = (results.get("meta") or {}).get("stack", {})
    full = stack.get("bands", 0) >= 99 and stack.get("height", 0) * stack.get("width", 0) >= 2000 * 4000
    return "" if full else "measured on a smaller stack than the full 99 x 2000 x 4000"


def _predict_targets(results: Dict[str, Any]) -> List[Dict[str, Any]]:
    pred = results.get("predict") or {}
    one, two = pred.get("none"), pred.get("double")
    out = []
    if _ok(one):
        peak = one["peak_rss_mb"]
        out.append(_target("prediction peak memory", f"< {PEAK_LIMIT_MB:.0f} MB", f"{peak:.0f} MB",
                           peak < PEAK_LIMIT_MB, size_note(results)))
    else:
        out.append(_target("prediction peak memory", f"< {PEAK_LIMIT_MB:.0f} MB", "not measured", None))
    if _ok(one) and _ok(two):
        growth = two["peak_rss_mb"] / one["peak_rss_mb"]
        out.append(_target("prediction memory growth, 2x raster", f"<= {GROWTH_LIMIT:.2f} x",
                           f"{growth:.3f} x ({two['peak_rss_mb']:.0f} / {one['peak_rss_mb']:.0f} MB)",
                           growth <= GROWTH_LIMIT))
    else:
        out.append(_target("prediction memory growth, 2x raster", f"<= {GROWTH_LIMIT:.2f} x", "not measured", None))
    io = ((results.get("io_floor") or {}).get("none"))
    if _ok(one) and _ok(io):
        floor = one["forward_s"] + io["cold_s"]
        r = one["predict_s"] / floor
        out.append(_target("prediction wall vs forward + I/O floor", f"<= {WALL_FACTOR:.2f} x",
                           f"{r:.2f} x ({one['predict_s']:.1f} s / ({one['forward_s']:.1f} + {io['cold_s']:.1f}) s)",
                           r <= WALL_FACTOR))
    else:
        out.append(_target("prediction wall vs forward + I/O floor", f"<= {WALL_FACTOR:.2f} x", "not measured", None))
    return out


ENSEMBLE_VARIANTS = (("mean", "mean map"), ("uncertainty", "mean + uncertainty maps"))


def ensemble_cases(results: Dict[str, Any]) -> List[Dict[str, Any]]:
    """One case per ensemble model and variant: its run, the n-member forward time, the I/O floor, the ratio.

    Both variants run the same members over the same windows, so the n-member forward time
    measured in the run without the uncertainty map is the reference for both. ``run`` is
    None when the ensemble checkpoint could not be made (``made`` says why).
    """
    ens = results.get("ensemble") or {}
    io = (results.get("io_floor") or {}).get("none")
    cold = io["cold_s"] if _ok(io) else None
    cases = []
    for entry in ens.get("runs", []):
        mean = entry.get("mean")
        forward = mean.get("forward_s") if _ok(mean) else None
        for variant, label in ENSEMBLE_VARIANTS:
            run = entry.get(variant)
            ratio = run["predict_s"] / (forward + cold) if _ok(run) and forward and cold is not None else None
            cases.append({"model": entry.get("model"), "members": ens.get("members"), "label": label,
                          "made": entry.get("checkpoint") or {}, "run": run, "forward_s": forward,
                          "io_s": cold, "ratio": ratio})
    return cases


def _ensemble_targets(results: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Per ensemble model and variant: peak memory < 2 GB and wall <= 1.25 x (n x forward + I/O floor)."""
    out = []
    for c in ensemble_cases(results):
        name = f"ensemble of {c['members']} {c['model']}, {c['label']}"
        run, n = c["run"], c["members"]
        if _ok(run):
            peak = run["peak_rss_mb"]
            out.append(_target(f"{name}: peak memory", f"< {PEAK_LIMIT_MB:.0f} MB", f"{peak:.0f} MB",
                               peak < PEAK_LIMIT_MB, size_note(results)))
        else:
            out.append(_target(f"{name}: peak memory", f"< {PEAK_LIMIT_MB:.0f} MB", "not measured", None))
        wall = f"{name}: wall vs {n} x forward + I/O floor"
        if c["ratio"] is not None:
            out.append(_target(wall, f"<= {WALL_FACTOR:.2f} x",
                               f"{c['ratio']:.2f} x ({run['predict_s']:.1f} s / ({c['forward_s']:.1f} + "
                               f"{c['io_s']:.1f}) s)", c["ratio"] <= WALL_FACTOR))
        else:
            out.append(_target(wall, f"<= {WALL_FACTOR:.2f} x", "not measured", None))
    return out


def _pipeline_targets(results: Dict[str, Any]) -> List[Dict[str, Any]]:
    tile = (results.get("pipeline") or {}).get("tile")
    fastest = fastest_consumer(results, tile) if tile else None
    out = []
    for compress in ("none", "deflate"):
        run = pipeline_run(results, compress)
        name = f"pipeline vs fastest model ({'uncompressed' if compress == 'none' else 'deflate'})"
        if run and fastest:
            r = run["tiles_per_s"] / fastest["tiles_per_s"]
            measured = (f"{r:.1f} x ({run['tiles_per_s']:.1f} vs {fastest['model']} "
                        f"{fastest['tiles_per_s']:.1f} tiles/s)")
            # The target is set on the uncompressed stack; the compressed one is reported.
            met = r >= PIPELINE_FACTOR if compress == "none" else None
            note = "" if compress == "none" else "reported, no target"
            out.append(_target(name, f">= {PIPELINE_FACTOR:.0f} x", measured, met, note))
        else:
            out.append(_target(name, f">= {PIPELINE_FACTOR:.0f} x", "not measured", None))
    run = pipeline_run(results, "none")
    raw_mb = (results.get("meta") or {}).get("stack", {}).get("raw_gib", 0) * 1024
    if run:
        peak = run["peak_rss_mb"] + run.get("workers_peak_rss_mb", 0.0)
        # Below ~1 GiB the interpreter and torch alone outweigh the stack: nothing to tell.
        telling = raw_mb >= 1024
        out.append(_target("pipeline never loads the stack", f"peak < stack ({raw_mb:.0f} MB)", f"{peak:.0f} MB",
                           peak < raw_mb if telling else None,
                           "" if telling else "stack under 1 GiB: smaller than torch itself, cannot tell"))
    return out


CV_DEMO_LIMIT_S = 15 * 60.0


def _skill_targets(results: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Issue 9: baselines' cv under 2 GB on the full-size stack; demo cv (six baselines + the deep
    default) within 15 minutes."""
    out = []
    mem = results.get("cv_memory")
    if _ok(mem):
        out.append(_target("baselines' cv peak memory", f"< {PEAK_LIMIT_MB:.0f} MB", f"{mem['peak_rss_mb']:.0f} MB",
                           mem["peak_rss_mb"] < PEAK_LIMIT_MB,
                           size_note(results)))
    else:
        out.append(_target("baselines' cv peak memory", f"< {PEAK_LIMIT_MB:.0f} MB", "not measured", None))
    demo = (((results.get("skill") or {}).get("datasets") or {}).get("demo") or {}).get("seeds") or {}
    run = next((r for r in demo.values() if _ok(r)), None)
    meta = (results.get("skill") or {}).get("meta") or {}
    args = meta.get("args", {})
    if run is not None and not args.get("quick") and args.get("models") and len(args.get("baselines") or []) == 6:
        out.append(_target("demo cv: six baselines + deep default", f"<= {CV_DEMO_LIMIT_S / 60:.0f} min",
                           f"{run['cv_wall_s'] / 60:.1f} min", run["cv_wall_s"] <= CV_DEMO_LIMIT_S,
                           f"load average at start {meta.get('load_avg_start')}"))
    else:
        out.append(_target("demo cv: six baselines + deep default", f"<= {CV_DEMO_LIMIT_S / 60:.0f} min",
                           "not measured", None))
    from .skill import skill_targets

    return out + skill_targets(results.get("skill") or {"datasets": {}})


def evaluate_targets(results: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Every target with what was measured and whether it was met (None = not measured)."""
    return _predict_targets(results) + _ensemble_targets(results) + _pipeline_targets(results) + _skill_targets(results)


# ----------------------------------------------------------------------------- tables


def _verdict(target: Dict[str, Any]) -> str:
    if target["met"] is None and target["measured"] != "not measured":
        return "-"
    return {True: "met", False: "NOT met", None: "not measured"}[target["met"]]


def io_table(results: Dict[str, Any]) -> str:
    gen = results.get("generate") or {}
    rows = []
    for key, io in (results.get("io_floor") or {}).items():
        g = gen.get(key, {})
        rows.append([key, fmt(g.get("file_mb"), 0), fmt(g.get("write_s")), fmt(io.get("cold_s")),
                     fmt(io.get("cold_mb_per_s"), 0), fmt(io.get("warm_s")), fmt(io.get("peak_rss_mb"), 0),
                     io.get("status")])
    return format_table(["stack", "file MB", "write s", "read cold s", "cold MB/s", "read warm s", "peak RSS MB",
                         "status"], rows)


def memory_table(results: Dict[str, Any]) -> str:
    """Ours (windowed) vs the original approach (whole stack in memory), same tiles."""
    rows = []
    base = results.get("baseline")
    if base:
        rows.append(["original: whole stack in memory", base.get("tiles"), fmt(base.get("total_s")),
                     fmt(base.get("tiles_per_s")), fmt(base.get("peak_rss_mb"), 0), base.get("status")])
    for run in (results.get("pipeline") or {}).get("runs", []):
        peak = None if run.get("peak_rss_mb") is None else run["peak_rss_mb"] + run.get("workers_peak_rss_mb", 0.0)
        rows.append([f"ours: TileDataset, {run['compress']}, {run['workers']} workers", run.get("tiles"),
                     fmt(run.get("seconds")), fmt(run.get("tiles_per_s")), fmt(peak, 0), run.get("status")])
    return format_table(["approach", "tiles", "time s", "tiles/s", "peak RSS MB", "status"], rows)


def model_table(results: Dict[str, Any]) -> str:
    rows = []
    for r in results.get("model_cost", []):
        ok = _ok(r)
        median = r["step_median_s"] / r["batch"] if ok and r.get("step_median_s") else None
        rows.append([r.get("model"), f"{r.get('tile')}x{r.get('tile')}", r.get("batch"),
                     fmt(r.get("s_per_tile"), 3) if ok else r.get("status"), fmt(median, 3),
                     fmt(r.get("tiles_per_s")) if ok else "-", fmt(r.get("peak_rss_mb"), 0) if ok else "-",
                     fmt(r.get("gpu_peak_mb"), 0) if ok else "-"])
    return format_table(["model", "tile", "batch", "fwd+bwd s/tile (best)", "median s/tile", "tiles/s", "peak RSS MB",
                         "GPU MB"], rows)


def predict_table(results: Dict[str, Any]) -> str:
    pred = results.get("predict") or {}
    rows = []
    for key in ("none", "double"):
        r = pred.get(key)
        if not r:
            continue
        rows.append([key, r.get("shape") and "x".join(str(s) for s in r["shape"]), r.get("windows"),
                     fmt(r.get("predict_s")), fmt(r.get("forward_s")), fmt(r.get("peak_rss_mb"), 0),
                     fmt(r.get("gpu_peak_mb"), 0), r.get("status")])
    return format_table(["stack", "bands x H x W", "windows", "predict s", "forward only s", "peak RSS MB", "GPU MB",
                         "status"], rows)


def ensemble_table(results: Dict[str, Any]) -> str:
    """Ensemble prediction per model: without and with the uncertainty map, against n x forward + I/O floor."""
    rows = []
    for c in ensemble_cases(results):
        r = c["run"] or {}
        made = c["made"]
        status = r.get("status") if c["run"] else f"checkpoint: {made.get('status')} {made.get('error', '')}".strip()
        rows.append([c["model"], r.get("members", c["members"]), c["label"], r.get("windows"),
                     fmt(r.get("predict_s")), fmt(c["forward_s"]), fmt(c["io_s"]), fmt(c["ratio"]),
                     fmt(r.get("peak_rss_mb"), 0), fmt(r.get("uncertainty_mb"), 1), status])
    return format_table(["model", "members", "writes", "windows", "predict s", "n x forward s", "I/O floor s",
                         "wall / (n x fwd + I/O)", "peak RSS MB", "uncertainty MB", "status"], rows)


def targets_table(results: Dict[str, Any]) -> str:
    rows = [[t["name"], t["target"], t["measured"], _verdict(t), t.get("note", "")]
            for t in results.get("targets", [])]
    return format_table(["target", "wanted", "measured", "verdict", "note"], rows)


def _load(values: Any) -> str:
    return f"{values[0]:.1f}" if values else "-"


def render_report(results: Dict[str, Any]) -> str:
    """All tables, in the order of the issue, with the machine they were measured on."""
    meta = results.get("meta", {})
    m = meta.get("machine", {})
    s = meta.get("stack", {})
    head = (f"Stack Segmenter benchmarks: {s.get('bands')} x {s.get('height')} x {s.get('width')} float32 "
            f"({s.get('raw_gib')} GiB), device {meta.get('args', {}).get('device')}; "
            f"{m.get('cpu_count')} CPU ({m.get('cpu_model')}), {m.get('mem_total_gb')} GB RAM, {m.get('os')}; "
            f"torch {m.get('torch')}, GDAL {m.get('gdal')}; total {meta.get('total_s')} s; "
            f"load average (1 min) at start {_load(meta.get('load_avg_start'))}, end {_load(meta.get('load_avg_end'))}")
    parts = [head]
    sections = [("1. I/O floor: window-by-window read (rasterio)", "io_floor", io_table),
                ("2. Prediction (core predict())", "predict", predict_table),
                ("2b. Ensemble prediction (core predict(), n members)", "ensemble", ensemble_table),
                ("3/4. Training data pipeline vs the original whole-stack approach", None, memory_table),
                ("5. Per-model training cost (forward + backward + step)", "model_cost", model_table)]
    for title, key, fn in sections:
        if key is None and not (results.get("baseline") or results.get("pipeline")):
            continue
        if key is not None and not results.get(key):
            continue
        parts.append(f"\n## {title}\n\n{fn(results)}")
    if results.get("skill"):
        from .skill import render_skill

        parts.append(f"\n## 6. Skill: spatial cross-validation (bench/skill.py)\n\n{render_skill(results['skill'])}")
    mem = results.get("cv_memory")
    if mem:
        parts.append(f"\n## 7. Cross-validation of the six baselines on the benchmark stack\n\n"
                     f"status {mem.get('status')}, wall {fmt(mem.get('cv_wall_s'), 0)} s, peak "
                     f"{fmt(mem.get('peak_rss_mb'), 0)} MB {mem.get('error', '')}".rstrip())
    parts.append(f"\n## Targets\n\n{targets_table(results)}")
    return "\n".join(parts)
