"""Child of bench/skill.py: one cross-validation run (``core.cv``) in its own process.

Params (JSON): ``raster``, ``labels``, optional ``label_column``, ``mask``,
``categorical_bands``, ``truth`` (a GeoTIFF of the true probability: then the Spearman rank
correlation of each out-of-fold map with it over the usable pixels is reported), ``models``,
``baselines``, ``folds``, ``seed``, ``num_epochs``, ``tile_size``, ``augment``, ``background``, ``out``.
Returns the ranking, each candidate's pooled and per-fold figures, seconds and paired difference
to the best baseline (``core.cv.paired_comparisons``), the cv wall
time and (added by child_main) the process's peak resident memory.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict

from bench.common import child_main


def run(params: Dict[str, Any]) -> Dict[str, Any]:
    from core.config import CVConfig, LabelOptions, TrainConfig
    from core.cv import cv
    from core.demo_data import truth_correlation

    train_kw: Dict[str, Any] = {"categorical_bands": params.get("categorical_bands") or [],
                                "seed": int(params.get("seed", 0))}
    if params.get("num_epochs") is not None:
        train_kw["num_epochs"] = int(params["num_epochs"])
    if params.get("tile_size"):
        train_kw["tile_size"] = tuple(params["tile_size"])
    if params.get("augment"):
        train_kw["augment"] = True
    labels = LabelOptions(labels_path=params["labels"], label_column=params.get("label_column"),
                          mask_path=params.get("mask"))
    config = CVConfig(train=TrainConfig(raster_path=params["raster"], labels=labels, **train_kw),
                      models=list(params.get("models") or []), baselines=list(params.get("baselines") or []),
                      folds=int(params.get("folds", 5)), background=int(params.get("background", 20000)),
                      output_path=params["out"])
    start = time.perf_counter()
    result = cv(config)
    wall = time.perf_counter() - start
    summary = json.loads(Path(result["summary_json"]).read_text())
    candidates: Dict[str, Any] = {}
    for name, c in summary["candidates"].items():
        entry = {"kind": c["kind"], "pooled": {k: v for k, v in c["pooled"].items() if k != "curve"},
                 "fold_mean": c["fold_mean"], "fold_std": c["fold_std"], "seconds": c["seconds"],
                 "notes": c["notes"], "against_best_baseline": c.get("against_best_baseline")}
        if params.get("truth"):
            entry["spearman_truth"] = truth_correlation(result["oof_maps"][name], params["truth"])
        candidates[name] = entry
    return {"ranking": [r["candidate"] for r in summary["ranking"]], "candidates": candidates,
            "best_baseline": summary.get("best_baseline"), "folds": summary["folds"], "cv_wall_s": round(wall, 1),
            "raster": summary["raster"], "output": result["output_path"]}


if __name__ == "__main__":
    child_main(run)
