#!/usr/bin/env python3
"""`make demo`: the main job on the built-in demo dataset, through qgis_process.

1. generate the seeded synthetic demo dataset (``python -m core make-demo-data``);
2. ``qgis_process.bin run stacksegmenter:trainsegmenter`` -> model, with Train's defaults
   (what a user gets without touching Advanced) plus one option: an ensemble of
   ``DEMO_ENSEMBLE`` members, so the uncertainty map has members to compare;
3. ``... predictprobabilitymap`` -> ``probability.tif`` and ``uncertainty.tif`` (the spread
   of the members) at the top of the output folder;
4. ``... evaluateprobabilitymap`` -> scores, curves, HTML summary;
5. render the styled probability layer to a PNG with QGIS's map renderer;
then scores the map against the known truth (Spearman rank correlation over the valid
area) and prints where everything is. Runs in a throwaway QGIS profile with the plugin
enabled through QGIS_PLUGINPATH (a symlink named ``stack_segmenter`` to this folder).
Environment overrides: DEMO_OUT, DEMO_ENSEMBLE.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(os.environ.get("DEMO_OUT", ROOT / "demo_output")).resolve()
QGIS_PROCESS = "/usr/bin/qgis_process.bin"
ENSEMBLE = os.environ.get("DEMO_ENSEMBLE", "5")


def step(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


def qgis_env() -> Dict[str, str]:
    """A throwaway profile, the plugin visible as `stack_segmenter`, headless."""
    plugins = OUT / "plugins"
    plugins.mkdir(parents=True, exist_ok=True)
    link = plugins / "stack_segmenter"
    if not link.is_symlink():
        link.symlink_to(ROOT, target_is_directory=True)
    profile = OUT / "qgis_profile"
    # Throwaway: a profile left by an earlier run has the plugin enabled already, and
    # `qgis_process plugins enable` then exits 1, which made a second `make demo` fail.
    shutil.rmtree(profile, ignore_errors=True)
    env = dict(os.environ)
    env.update(QGIS_PLUGINPATH=str(plugins), QGIS_CUSTOM_CONFIG_PATH=str(profile),
               QT_QPA_PLATFORM="offscreen")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def run(cmd: List[str], env: Dict[str, str]) -> None:
    started = time.time()
    proc = subprocess.run(cmd, env=env, cwd=ROOT)
    if proc.returncode != 0:
        sys.exit(f"demo: step failed (exit {proc.returncode}): {' '.join(cmd[:4])} ...")
    print(f"(took {time.time() - started:.0f} s)", flush=True)


def qgis_run(alg: str, params: Dict[str, str], env: Dict[str, str]) -> None:
    run([QGIS_PROCESS, "run", alg, "--", *(f"{k}={v}" for k, v in params.items())], env)


def make_data(env: Dict[str, str]) -> Dict[str, str]:
    data_dir = OUT / "data"
    proc = subprocess.run([sys.executable, "-m", "core", "make-demo-data", "--output_dir", str(data_dir),
                           "--events", "jsonl"], cwd=ROOT, env=env, capture_output=True, text=True)
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    for e in events:
        if e["event"] == "log":
            print(e["message"])
    if proc.returncode != 0:
        sys.exit(f"demo: could not make the demo data: {proc.stderr.strip()}")
    return next(e["value"] for e in events if e["event"] == "result")


def truth_correlation(prob: Path, truth: str) -> Optional[float]:
    """The map's Spearman correlation with the known truth (core.demo_data's yardstick)."""
    sys.path.insert(0, str(ROOT))
    from core.demo_data import truth_correlation as correlation

    return correlation(prob, truth)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    env = qgis_env()
    step("1/5 demo dataset")
    data = make_data(env)
    print(f"raster: {data['raster']}\ndeposits: {data['deposits']}\ntruth: {data['truth']}")

    step("2/5 enable the plugin in a throwaway QGIS profile")
    run([QGIS_PROCESS, "plugins", "enable", "stack_segmenter"], env)

    model = OUT / "model.pt"
    train_dir = OUT / "training"
    step(f"3/5 Train segmenter (Train's defaults, ensemble of {ENSEMBLE})")
    qgis_run("stacksegmenter:trainsegmenter", {
        "INPUT": data["raster"], "LABELS": data["deposits"], "LABEL_FIELD": "label",
        "CATEGORICAL_BANDS": str(data.get("categorical_band", "")), "ENSEMBLE": ENSEMBLE, "OVERWRITE": "true",
        "OUTPUT_MODEL": str(model), "OUTPUT_FOLDER": str(train_dir),
    }, env)

    prob = OUT / "probability.tif"
    spread = OUT / "uncertainty.tif"
    step("4/5 Predict probability map and uncertainty")
    qgis_run("stacksegmenter:predictprobabilitymap", {
        "INPUT": data["raster"], "MODEL": str(model), "OUTPUT": str(prob), "UNCERTAINTY": str(spread)}, env)

    scores = OUT / "evaluation"
    step("5/5 Evaluate probability map")
    qgis_run("stacksegmenter:evaluateprobabilitymap", {
        "PROBABILITY_MAP": str(prob), "LABELS": data["deposits"], "LABEL_FIELD": "label",
        "MODEL": str(model), "OUTPUT_FOLDER": str(scores),
    }, env)

    png = OUT / "probability_map.png"
    run([sys.executable, str(ROOT / "scripts" / "render_map.py"), str(prob), str(png)], env)

    metrics_file = scores / "metrics.json"
    print("\n=== done ===")
    rho = truth_correlation(prob, data["truth"])
    print(f"  Spearman rank correlation with the known truth: {'n/a' if rho is None else f'{rho:.3f}'}")
    if metrics_file.is_file():
        metrics = json.loads(metrics_file.read_text())
        flat = metrics.get("metrics", metrics)
        for key in ("roc_auc", "pr_auc", "success_rate_auc", "prediction_rate_auc", "top10", "top20"):
            if key in flat:
                print(f"  {key}: {flat[key]}")
    print(f"model:            {model}\ntraining outputs: {train_dir}\nprobability map:  {prob}\n"
          f"uncertainty map:  {spread}\n"
          f"map rendering:    {png}\nscores and plots: {scores}\nknown truth:      {data['truth']}")


if __name__ == "__main__":
    main()
