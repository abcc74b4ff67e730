"""Smoke version of every benchmark (bench/), so they cannot rot.

One tiny end-to-end ``bench/run_all.py`` run (a 4-band 96 x 160 stack, a tiny U-Net) in
real subprocesses, then checks that each section of the JSON has the expected keys and
sane positive numbers, that the table is printed, and that the generated files are gone.
Plus the runner's own guards: disk-space check, memory limit, timeout.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict

import numpy as np
import pytest

from bench.common import ChildLimits, check_disk_space, run_child
from bench.report import ensemble_table, evaluate_targets
from bench.skill import render_skill

TINY_MODEL = "unet_sc2_layers2_e8"
BANDS, HEIGHT, WIDTH, TILE = 4, 96, 160, 64
MEMBERS = 3


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory, repo_root: Path) -> Dict[str, Any]:
    """Runs ``bench/run_all.py`` once at a tiny size as `make bench` would (a subprocess)."""
    base = tmp_path_factory.mktemp("bench")
    cmd = [
        sys.executable, str(repo_root / "bench" / "run_all.py"),
        "--bands", str(BANDS), "--height", str(HEIGHT), "--width", str(WIDTH), "--sizes", str(TILE),
        "--models", TINY_MODEL, "--predict-model", TINY_MODEL, "--steps", "1", "--pipeline-workers", "0",
        "--ensemble-models", TINY_MODEL, "--ensemble-members", str(MEMBERS),
        "--out-dir", str(base / "work"), "--results-dir", str(base / "results"), "--timeout", "240",
        "--only", "io", "baseline", "models", "pipeline", "predict", "ensemble", "cv_memory",  # skill: its own test
    ]
    proc = subprocess.run(cmd, cwd=str(base), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    latest = base / "results" / "latest.json"
    return {"results": json.loads(latest.read_text()), "stdout": proc.stdout, "base": base}


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and np.isfinite(value) and value > 0


@pytest.mark.slow  # one shared ~20 s end-to-end run
def test_results_written_and_table_printed(bench_run: Dict[str, Any]) -> None:
    base: Path = bench_run["base"]
    stamped = [p for p in (base / "results").glob("*.json") if p.name != "latest.json"]
    assert len(stamped) == 1
    assert json.loads(stamped[0].read_text()) == bench_run["results"]
    out = bench_run["stdout"]
    for title in ("I/O floor", "Prediction", "Ensemble prediction", "Training data pipeline",
                  "Per-model training cost", "Targets"):
        assert title in out
    assert "| unet_sc2_layers2_e8 | 64x64" in out
    # Generated stacks are removed without --keep.
    assert not any((base / "work").glob("stack_segmenter_bench_*"))


@pytest.mark.slow  # one shared ~20 s end-to-end run
def test_meta_describes_machine_and_stack(bench_run: Dict[str, Any]) -> None:
    meta = bench_run["results"]["meta"]
    assert meta["stack"]["bands"] == BANDS and meta["stack"]["height"] == HEIGHT and meta["stack"]["width"] == WIDTH
    assert meta["machine"]["cpu_count"] >= 1 and meta["machine"]["torch"]
    assert _positive(meta["total_s"])


@pytest.mark.slow  # one shared ~20 s end-to-end run
def test_generated_stacks_and_io_floor(bench_run: Dict[str, Any]) -> None:
    res = bench_run["results"]
    raw_mb = 4 * BANDS * HEIGHT * WIDTH / 1024 ** 2
    for key in ("none", "deflate"):
        gen = res["generate"][key]
        assert gen["status"] == "ok" and _positive(gen["write_s"]) and _positive(gen["file_mb"])
        io = res["io_floor"][key]
        assert io["status"] == "ok"
        assert io["windows"] == 1 * 1  # a 96 x 160 stack is one 256 x 256 block
        assert io["read_mb"] == pytest.approx(raw_mb, abs=0.1)
        for k in ("cold_s", "warm_s", "cold_mb_per_s", "peak_rss_mb"):
            assert _positive(io[k]), k
    assert res["generate"]["double"]["shape"] == [BANDS, HEIGHT, 2 * WIDTH]


@pytest.mark.slow  # one shared ~20 s end-to-end run
def test_baseline_loads_whole_stack(bench_run: Dict[str, Any]) -> None:
    base = bench_run["results"]["baseline"]
    assert base["status"] == "ok"
    assert base["tiles"] == 2 * 3  # 96 x 160 in 64 x 64 tiles (edge tiles included)
    for k in ("load_s", "total_s", "tiles_per_s", "peak_rss_mb"):
        assert _positive(base[k]), k


@pytest.mark.slow  # one shared ~20 s end-to-end run
def test_model_cost(bench_run: Dict[str, Any]) -> None:
    rows = bench_run["results"]["model_cost"]
    assert [(r["model"], r["tile"]) for r in rows] == [(TINY_MODEL, TILE)]
    row = rows[0]
    assert row["status"] == "ok"
    for k in ("params", "step_s", "s_per_tile", "tiles_per_s", "peak_rss_mb"):
        assert _positive(row[k]), k
    assert row["tiles_per_s"] == pytest.approx(row["batch"] / row["step_s"], rel=0.01)


@pytest.mark.slow  # one shared ~20 s end-to-end run
def test_pipeline_throughput(bench_run: Dict[str, Any]) -> None:
    pipe = bench_run["results"]["pipeline"]
    assert pipe["tile"] == TILE
    runs = {r["compress"]: r for r in pipe["runs"]}
    assert set(runs) == {"none", "deflate"}
    for run in runs.values():
        assert run["status"] == "ok", run
        assert run["tiles"] >= 6
        for k in ("seconds", "tiles_per_s", "peak_rss_mb"):
            assert _positive(run[k]), k


@pytest.mark.slow  # one shared ~20 s end-to-end run
def test_prediction(bench_run: Dict[str, Any]) -> None:
    pred = bench_run["results"]["predict"]
    one, two = pred["none"], pred["double"]
    assert one["status"] == "ok", one
    assert two["status"] == "ok", two
    assert one["shape"] == [BANDS, HEIGHT, WIDTH] and two["shape"] == [BANDS, HEIGHT, 2 * WIDTH]
    assert two["windows"] > one["windows"] >= 1
    assert one["forward_windows"] == one["windows"]
    for r in (one, two):
        for k in ("predict_s", "peak_rss_mb", "output_mb"):
            assert _positive(r[k]), k
    assert _positive(one["forward_s"]) and "forward_s" not in two  # the wall target needs the 1x stack only


@pytest.mark.slow  # one shared ~20 s end-to-end run
def test_ensemble_prediction(bench_run: Dict[str, Any]) -> None:
    """n members in one checkpoint, predicted with and without the uncertainty map, against n x forward."""
    ens = bench_run["results"]["ensemble"]
    assert ens["members"] == MEMBERS
    (run,) = ens["runs"]
    assert run["model"] == TINY_MODEL
    assert run["checkpoint"]["status"] == "ok" and run["checkpoint"]["members"] == MEMBERS
    single = bench_run["results"]["predict"]["none"]
    mean, spread = run["mean"], run["uncertainty"]
    for r in (mean, spread):
        assert r["status"] == "ok", r
        assert r["members"] == MEMBERS and r["windows"] == single["windows"]
        for k in ("predict_s", "peak_rss_mb", "output_mb"):
            assert _positive(r[k]), k
    # The forward-only reference is all n members over predict's windows, measured once.
    assert mean["forward_members"] == MEMBERS and mean["forward_windows"] == mean["windows"]
    assert _positive(mean["forward_s"]) and "forward_s" not in spread
    # The uncertainty map was written, full size, and random members disagree somewhere.
    assert "uncertainty_mb" not in mean
    assert spread["uncertainty_shape"] == [1, HEIGHT, WIDTH] and _positive(spread["uncertainty_mb"])
    assert _positive(spread["uncertainty_max"])
    targets = {t["name"]: t for t in bench_run["results"]["targets"]}
    for label in ("mean map", "mean + uncertainty maps"):
        name = f"ensemble of {MEMBERS} {TINY_MODEL}, {label}"
        assert targets[f"{name}: peak memory"]["met"] in (True, False)
        wall = targets[f"{name}: wall vs {MEMBERS} x forward + I/O floor"]
        assert wall["met"] in (True, False) and wall["measured"].endswith(" s)")
    assert re.search(rf"\| {TINY_MODEL} +\| {MEMBERS} +\| mean \+ uncertainty maps +\|", bench_run["stdout"])


@pytest.mark.slow  # one shared ~20 s end-to-end run
def test_targets_listed_with_verdicts(bench_run: Dict[str, Any]) -> None:
    targets = {t["name"]: t for t in bench_run["results"]["targets"]}
    for name in ("prediction peak memory", "prediction memory growth, 2x raster",
                 "prediction wall vs forward + I/O floor", "pipeline vs fastest model (uncompressed)"):
        assert targets[name]["met"] in (True, False), targets[name]
    assert "smaller stack" in targets["prediction peak memory"]["note"]


def test_targets_report_failures_honestly() -> None:
    """A 20 % memory growth and a slow pipeline are 'NOT met'; missing numbers are never 'met'."""
    results = {
        "meta": {"stack": {"bands": 99, "height": 2000, "width": 4000, "raw_gib": 2.95}},
        "io_floor": {"none": {"status": "ok", "cold_s": 10.0}},
        "predict": {"none": {"status": "ok", "peak_rss_mb": 1000.0, "predict_s": 30.0, "forward_s": 10.0},
                    "double": {"status": "ok", "peak_rss_mb": 1200.0}},
        "model_cost": [{"status": "ok", "model": "a", "tile": 256, "tiles_per_s": 10.0},
                       {"status": "ok", "model": "b", "tile": 256, "tiles_per_s": 1.0}],
        "pipeline": {"tile": 256, "runs": [{"status": "ok", "compress": "none", "workers": 0,
                                            "tiles_per_s": 20.0, "peak_rss_mb": 500.0}]},
    }
    t = {x["name"]: x for x in evaluate_targets(results)}
    assert t["prediction peak memory"]["met"] is True and t["prediction peak memory"]["note"] == ""
    assert t["prediction memory growth, 2x raster"]["met"] is False
    assert t["prediction wall vs forward + I/O floor"]["met"] is False  # 30 / (10 + 10) = 1.5
    assert t["pipeline vs fastest model (uncompressed)"]["met"] is False  # 20 / 10 = 2 < 3
    assert t["pipeline vs fastest model (deflate)"]["met"] is None
    assert t["pipeline never loads the stack"]["met"] is True


def test_ensemble_targets_measure_against_n_forward_passes() -> None:
    """Wall is judged against the n members' forward time + the I/O floor; a failed run is 'not measured'."""
    results = {
        "meta": {"stack": {"bands": 99, "height": 2000, "width": 4000, "raw_gib": 2.95}},
        "io_floor": {"none": {"status": "ok", "cold_s": 10.0}},
        "ensemble": {"members": 5, "runs": [
            {"model": "m", "checkpoint": {"status": "ok"},
             "mean": {"status": "ok", "peak_rss_mb": 1500.0, "predict_s": 60.0, "forward_s": 40.0},
             "uncertainty": {"status": "ok", "peak_rss_mb": 2500.0, "predict_s": 70.0}},
            {"model": "u", "checkpoint": {"status": "error", "error": "boom"}},
        ]},
    }
    t = {x["name"]: x for x in evaluate_targets(results)}
    assert t["ensemble of 5 m, mean map: peak memory"]["met"] is True
    assert t["ensemble of 5 m, mean map: wall vs 5 x forward + I/O floor"]["met"] is True  # 60 / 50 = 1.2
    assert t["ensemble of 5 m, mean + uncertainty maps: peak memory"]["met"] is False
    wall = t["ensemble of 5 m, mean + uncertainty maps: wall vs 5 x forward + I/O floor"]
    assert wall["met"] is False and wall["measured"].startswith("1.40 x")  # 70 / 50
    assert t["ensemble of 5 u, mean map: peak memory"]["met"] is None
    assert t["ensemble of 5 u, mean map: wall vs 5 x forward + I/O floor"]["measured"] == "not measured"
    assert "checkpoint: error boom" in ensemble_table(results)


def _skill_run(diffs: Dict[str, float], best: str = "maxent") -> Dict[str, Any]:
    """One finished cv run of the skill benchmark: the default and the best baseline, with a paired difference."""
    def cand(kind: str, auc: float, diff: Any = None) -> Dict[str, Any]:
        c = {"kind": kind, "pooled": {"prediction_rate_auc": auc, "prediction_rate_auc_ci": [auc - 0.03, auc + 0.03],
                                      "top10": 50.0},
             "fold_mean": {"prediction_rate_auc": auc, "success_rate_auc": 0.9},
             "fold_std": {"prediction_rate_auc": 0.03}, "seconds": 10.0}
        if diff is not None:
            lo, hi = diff - 0.01, diff + 0.01
            c["against_best_baseline"] = {"baseline": best, "difference": diff, "difference_ci": [lo, hi],
                                          "n_deposits": 100,
                                          "verdict": "ahead" if lo > 0 else "behind" if hi < 0 else "level"}
        return c

    return {seed: {"status": "ok", "best_baseline": best, "ranking": ["pixel_sc1_layers2_e32", best],
                   "candidates": {"pixel_sc1_layers2_e32": cand("model", 0.8 + d, d), best: cand("baseline", 0.8)},
                   "folds": {}, "raster": {}} for seed, d in diffs.items()}


def test_skill_targets_judge_every_seed() -> None:
    """Within 0.01 must hold at every seed; a dataset counts as 'above' only when every seed is above."""
    skill = {"meta": {"args": {"models": ["pixel_sc1_layers2_e32"], "quick": False}},
             "datasets": {"demo": {"seeds": _skill_run({"0": 0.012, "1": 0.004})},
                          "ecuador": {"seeds": _skill_run({"0": -0.0002, "1": 0.003})},
                          "cloncurry": {"seeds": _skill_run({"0": -0.012, "1": 0.002}, best="weights_of_evidence")}}}
    t = {x["name"]: x for x in evaluate_targets({"skill": skill})}
    demo = t["skill, demo: pixel_sc1_layers2_e32 vs the best baseline"]
    assert demo["met"] is True and demo["measured"] == "+0.0120 / +0.0040 (seeds 0, 1)"
    assert "1 ahead, 1 level, 0 behind" in demo["note"]
    assert t["skill, ecuador: pixel_sc1_layers2_e32 vs the best baseline"]["met"] is True
    clon = t["skill, cloncurry: pixel_sc1_layers2_e32 vs the best baseline"]
    assert clon["met"] is False and "weights_of_evidence" in clon["note"]
    above = t["skill: pixel_sc1_layers2_e32 above the best baseline"]
    assert above["met"] is False and above["measured"] == "1 of 3 (demo)"
    table = render_skill(skill)
    assert re.search(r"\| ecuador +\| 1 +\| pixel_sc1_layers2_e32 +\| model +\| 0\.8030 ", table)
    assert "+0.0030 [-0.007, +0.013] level" in table and "| NOT met |" in table
    del skill["datasets"]["cloncurry"]
    t = {x["name"]: x for x in evaluate_targets({"skill": skill})}
    assert t["skill, cloncurry: pixel_sc1_layers2_e32 vs the best baseline"]["met"] is None
    assert t["skill: pixel_sc1_layers2_e32 above the best baseline"]["measured"] == "not measured"


def test_disk_check_stops_with_clear_message(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"not enough disk space.*--out-dir"):
        check_disk_space(tmp_path, 1 << 60, "a huge stack")
    check_disk_space(tmp_path, 1, "a tiny file")  # enough: no error


def test_child_over_memory_limit_is_reported_not_fatal(tmp_path: Path) -> None:
    params = {"path": str(tmp_path / "s.tif"), "bands": 64, "height": 2048, "width": 2048}
    result = run_child("stack", params, ChildLimits(timeout_s=120, mem_limit_mb=40))
    assert result["status"] == "out of memory"


def test_child_over_time_limit_is_reported_not_fatal(tmp_path: Path) -> None:
    params = {"path": str(tmp_path / "s.tif"), "bands": 64, "height": 4096, "width": 4096}
    result = run_child("stack", params, ChildLimits(timeout_s=1.0, mem_limit_mb=1e6))
    assert result["status"] == "timeout"


def test_cuda_without_gpu_stops_before_any_work(repo_root: Path, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: --device cuda is valid here")
    cmd = [sys.executable, str(repo_root / "bench" / "run_all.py"), "--device", "cuda", "--out-dir", str(tmp_path),
           "--results-dir", str(tmp_path / "results")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "no CUDA GPU" in proc.stderr and "--device cpu" in proc.stderr
    assert not any(tmp_path.iterdir())  # nothing generated, no results written


@pytest.mark.slow  # the skill benchmark's quick mode: cv of a tiny U-Net and the six baselines on tiny demo data
def test_skill_quick_prints_the_table_and_writes_json(tmp_path: Path, repo_root: Path) -> None:
    proc = subprocess.run([sys.executable, str(repo_root / "bench" / "skill.py"), "--quick", "--baselines",
                           "logistic", "best_band", "--out-dir", str(tmp_path / "work"), "--results-dir",
                           str(tmp_path / "results"), "--timeout", "600"],
                          cwd=str(tmp_path), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "results" / "skill_latest.json").read_text())
    run = results["datasets"]["demo"]["seeds"]["0"]
    assert run["status"] == "ok" and run["peak_rss_mb"] > 0 and run["cv_wall_s"] > 0
    assert set(run["candidates"]) == {"logistic", "best_band", "unet_sc2_layers2_e8"}
    for c in run["candidates"].values():
        assert 0.0 <= c["pooled"]["prediction_rate_auc"] <= 1.0 and -1.0 <= c["spearman_truth"] <= 1.0
    assert "demo: Spearman with truth" in proc.stdout and "| best_band" in proc.stdout
    assert not any((tmp_path / "work").glob("stack_segmenter_skill_*"))  # work files removed


def test_cv_memory_measured_in_the_bench(bench_run: Dict[str, Any]) -> None:
    mem = bench_run["results"]["cv_memory"]
    assert mem["status"] == "ok" and mem["peak_rss_mb"] > 0
    assert set(mem["candidates"]) == {"weights_of_evidence", "maxent", "logistic", "random_forest",
                                      "gradient_boosting", "best_band"}
    names = {t["name"] for t in bench_run["results"]["targets"]}
    assert "baselines' cv peak memory" in names
