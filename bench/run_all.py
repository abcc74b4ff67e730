#!/usr/bin/env python3
"""Runs every benchmark, prints a table and writes JSON (``make bench``).

    .venv/bin/python bench/run_all.py [--quick] [--bands 99 --height 2000 --width 4000]
                                      [--device cpu|cuda] [--out-dir DIR] [--keep] [--only io ensemble]

Each measurement runs in a fresh subprocess (``python -m bench.<module>``) so peak memory
is whole-process and independent. Results go to bench/results/<timestamp>.json and
bench/results/latest.json; generated stacks go to a folder under --out-dir (default: the
system temp dir), removed afterwards unless --keep.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import GIB, ChildLimits, check_disk_space, machine_info, run_child, write_results  # noqa: E402
from bench.report import render_report, evaluate_targets  # noqa: E402

BENCHMARKS = ("io", "baseline", "models", "pipeline", "predict", "ensemble", "skill", "cv_memory")
FULL = {"bands": 99, "height": 2000, "width": 4000, "sizes": [128, 256], "steps": 4, "s2_steps": 3}
QUICK = {"bands": 99, "height": 512, "width": 1024, "sizes": [128], "steps": 2, "s2_steps": 1}
PREDICT_MODEL = "unet_sc2_layers4_e32"
ENSEMBLE_MEMBERS = 5


def default_ensemble_models() -> List[str]:
    """Train's default model, then the U-Net (when the default is another model)."""
    from core.models.catalog import DEFAULT_MODELS

    return list(dict.fromkeys([DEFAULT_MODELS[0], PREDICT_MODEL]))


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Command-line flags; sizes left out take the --quick or full defaults."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bands", type=int, default=None, help="bands of the generated stack (default 99)")
    p.add_argument("--height", type=int, default=None, help="rows of the generated stack (default 2000; quick 512)")
    p.add_argument("--width", type=int, default=None, help="columns of the generated stack (default 4000; quick 1024)")
    p.add_argument("--quick", action="store_true", help="small-machine mode: a 512 x 1024 stack, 128 px model costs")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    p.add_argument("--out-dir", type=Path, default=Path(tempfile.gettempdir()),
                   help="where the generated stacks go (a subfolder is made; default: the system temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the generated files (default: remove them)")
    p.add_argument("--results-dir", type=Path, default=Path(__file__).resolve().parent / "results",
                   help="where <timestamp>.json and latest.json are written (default bench/results)")
    p.add_argument("--only", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS),
                   help="run only these benchmarks (the stack is generated when any needs it)")
    p.add_argument("--models", nargs="+", default=None,
                   help="models for the per-model cost and consumption rates (default: the registry presets)")
    p.add_argument("--predict-model", default=PREDICT_MODEL,
                   help=f"model of the prediction benchmark ({PREDICT_MODEL})")
    p.add_argument("--ensemble-models", nargs="+", default=None,
                   help="models of the ensemble prediction benchmark (default: Train's default model, then "
                        f"{PREDICT_MODEL})")
    p.add_argument("--ensemble-members", type=int, default=ENSEMBLE_MEMBERS,
                   help=f"members of each benchmark ensemble (default {ENSEMBLE_MEMBERS})")
    p.add_argument("--sizes", type=int, nargs="+", default=None, help="tile sizes of the model costs (128 256)")
    p.add_argument("--batch", type=int, default=4, help="batch size of training and prediction (default 4)")
    p.add_argument("--steps", type=int, default=None,
                   help="timed training steps per planar model, best reported (4; quick 2)")
    p.add_argument("--s2-steps", type=int, default=None,
                   help="timed steps per spherical model, best reported (3; quick 1)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds one benchmark subprocess may take")
    p.add_argument("--mem-limit-gb", type=float, default=16.0,
                   help="a subprocess using more resident memory is stopped and reported 'out of memory'")
    p.add_argument("--markdown", type=Path, default=None,
                   help="also write the report (tables and targets) as Markdown to this file, e.g. bench/RESULTS.md")
    p.add_argument("--pipeline-workers", type=int, nargs="+", default=[0, 2],
                   help="DataLoader num_workers values measured for the pipeline (default 0 2)")
    args = p.parse_args(argv)
    defaults = QUICK if args.quick else FULL
    for key in ("bands", "height", "width", "sizes", "steps", "s2_steps"):
        if getattr(args, key) is None:
            setattr(args, key, defaults[key])
    if args.models is None:
        from core.models.catalog import MIX, PRESET_MODELS

        args.models = [m for m in PRESET_MODELS if MIX not in m]  # a mixed preset's parts are presets too
    if args.ensemble_models is None:
        args.ensemble_models = default_ensemble_models()
    if args.ensemble_members < 2:
        p.error("--ensemble-members must be >= 2 (one member is the single-model prediction benchmark)")
    for key in ("bands", "height", "width", "batch", "steps", "s2_steps"):
        if getattr(args, key) < 1:
            p.error(f"--{key.replace('_', '-')} must be >= 1")
    if args.device.startswith("cuda") or args.device == "auto":
        import torch

        if args.device == "auto":
            args.device = "cuda" if torch.cuda.is_available() else "cpu"
        elif not torch.cuda.is_available():
            p.error(f"--device {args.device}: torch sees no CUDA GPU here (torch {torch.__version__}); "
                    "use --device cpu, or run on a machine with a GPU and a CUDA build of torch")
    return args


class Bench:
    """One benchmark run: the work folder, the limits and the results gathered so far."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.limits = ChildLimits(timeout_s=args.timeout, mem_limit_mb=args.mem_limit_gb * 1024)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        self.work = args.out_dir / f"stack_segmenter_bench_{stamp}"
        self.results: Dict[str, Any] = {}

    def log(self, message: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)

    def child(self, module: str, params: Dict[str, Any], what: str) -> Dict[str, Any]:
        """Runs one measurement subprocess and logs its outcome."""
        self.log(f"{what} ...")
        result = run_child(module, params, self.limits)
        if result.get("status") != "ok":
            self.log(f"{what}: {result.get('status')} {result.get('error', '')}".rstrip())
        return result

    # ------------------------------------------------------------------ inputs

    @property
    def raw_bytes(self) -> int:
        a = self.args
        return 4 * a.bands * a.height * a.width

    def needs_stack(self) -> bool:
        return any(b in self.args.only for b in ("io", "baseline", "pipeline", "predict", "ensemble", "cv_memory"))

    def check_disk(self) -> None:
        """Uncompressed + deflate (<= raw) + the twice-as-large stack + maps (two per ensemble) and margin."""
        maps = 2 * 4 * self.args.height * self.args.width * ("ensemble" in self.args.only)
        need = int(self.raw_bytes * (1 + 1 + (2 if "predict" in self.args.only else 0)) * 1.1) + maps + 256 * 1024 ** 2
        check_disk_space(self.work, need, f"the benchmark stacks ({self.args.bands} x {self.args.height} x "
                                          f"{self.args.width} float32, {self.raw_bytes / GIB:.2f} GiB each)")

    def generate(self) -> Dict[str, Path]:
        """Writes the stacks (window by window, each in its own subprocess) and the labels."""
        a = self.args
        paths = {"none": self.work / "stack_none.tif", "deflate": self.work / "stack_deflate.tif"}
        # The twice-as-large stack is twice as WIDE: prediction buffers one strip of rows, so
        # width is the direction in which its memory could grow (height is streamed).
        jobs = [("none", a.width), ("deflate", a.width)]
        if "predict" in a.only:
            paths["double"] = self.work / "stack_double.tif"
            jobs.append(("double", 2 * a.width))
        gen: Dict[str, Any] = {}
        for key, width in jobs:
            compress = "deflate" if key == "deflate" else "none"
            params = {"path": str(paths[key]), "bands": a.bands, "height": a.height, "width": width,
                      "compress": compress}
            gen[key] = self.child("stack", params, f"writing the {key} stack {a.bands} x {a.height} x {width}")
            if gen[key].get("status") != "ok":
                raise SystemExit(f"could not generate the benchmark stack: {gen[key].get('error')}")
        self.results["generate"] = gen
        return paths

    # ------------------------------------------------------------------ benchmarks

    def io_floor(self, paths: Dict[str, Path]) -> None:
        self.results["io_floor"] = {
            key: self.child("io_floor", {"path": str(paths[key])}, f"I/O floor ({key})") for key in ("none", "deflate")
        }

    def baseline(self, paths: Dict[str, Path]) -> None:
        tile = self.pipeline_tile()
        self.results["baseline"] = self.child("whole_stack_baseline", {"path": str(paths["none"]), "tile": tile},
                                              "original approach: whole stack in memory")

    def model_costs(self) -> None:
        from core.models.catalog import parse_model_name

        a = self.args
        rows: List[Dict[str, Any]] = []
        for name in a.models:
            steps = a.s2_steps if parse_model_name(name).spherical else a.steps
            for tile in a.sizes:
                params = {"model": name, "bands": a.bands, "tile": tile, "batch": a.batch, "steps": steps,
                          "device": a.device}
                result = self.child("model_cost", params, f"model cost {name} {tile}x{tile}")
                result.update(model=name, tile=tile, batch=a.batch)
                rows.append(result)
        self.results["model_cost"] = rows

    def pipeline_tile(self) -> int:
        """The tile the pipeline and its consumers use: 256 (the default), 128 in quick mode."""
        fits = [s for s in self.args.sizes if s <= 256] or [min(self.args.sizes)]
        return min(max(fits), self.args.height, self.args.width)

    def pipeline(self, paths: Dict[str, Path]) -> None:
        a = self.args
        tile = self.pipeline_tile()
        labels = self.work / "labels.gpkg"
        out: Dict[str, Any] = {"tile": tile, "batch": a.batch, "runs": []}
        for key in ("none", "deflate"):
            for workers in a.pipeline_workers:
                params = {"path": str(paths[key]), "labels": str(labels), "tile": tile, "batch": a.batch,
                          "workers": workers, "compress": key}
                result = self.child("pipeline_throughput", params, f"training pipeline ({key}, {workers} workers)")
                result.update(compress=key, workers=workers)
                out["runs"].append(result)
        self.results["pipeline"] = out

    def predict(self, paths: Dict[str, Path]) -> None:
        a = self.args
        ckpt = self.work / "checkpoint.pt"
        made = self.child("predict_memory", {"mode": "checkpoint", "path": str(paths["none"]),
                                             "model": a.predict_model, "checkpoint": str(ckpt),
                                             "tile": self.pipeline_tile()},
                          f"checkpoint of {a.predict_model} (random weights, fitted band statistics)")
        out: Dict[str, Any] = {"model": a.predict_model, "checkpoint": made}
        if made.get("status") != "ok":
            self.results["predict"] = out
            return
        for key in ("none", "double"):
            params = {"path": str(paths[key]), "checkpoint": str(ckpt), "batch": a.batch, "device": a.device,
                      "work": str(self.work / f"predict_{key}"), "forward": key == "none"}
            out[key] = self.child("predict_memory", params, f"prediction over the {key} stack")
        self.results["predict"] = out

    def ensemble(self, paths: Dict[str, Path]) -> None:
        """Prediction with an ensemble of n random-weight members per model, without and with the uncertainty map.

        The forward-only time of the n members is measured once per model, in the run without
        the uncertainty map (the same windows and members serve both runs).
        """
        a = self.args
        out: Dict[str, Any] = {"members": a.ensemble_members, "runs": []}
        for model in a.ensemble_models:
            ckpt = self.work / f"ensemble_{model}.pt"
            made = self.child("predict_memory", {"mode": "ensemble", "path": str(paths["none"]), "model": model,
                                                 "checkpoint": str(ckpt), "members": a.ensemble_members,
                                                 "tile": self.pipeline_tile()},
                              f"ensemble of {a.ensemble_members} {model} (random weights, fitted band statistics)")
            run: Dict[str, Any] = {"model": model, "checkpoint": made}
            if made.get("status") == "ok":
                for variant, spread in (("mean", False), ("uncertainty", True)):
                    params = {"path": str(paths["none"]), "checkpoint": str(ckpt), "batch": a.batch,
                              "device": a.device, "work": str(self.work / f"ensemble_{model}_{variant}"),
                              "uncertainty": spread, "forward": not spread}
                    what = f"ensemble prediction, {model}" + (" + uncertainty map" if spread else "")
                    run[variant] = self.child("predict_memory", params, what)
            out["runs"].append(run)
        self.results["ensemble"] = out

    def skill(self) -> None:
        """bench/skill.py: cross-validation of the deep default and the baselines on three datasets."""
        from bench.skill import parse_args as skill_args, run_skill

        argv = ["--out-dir", str(self.work)] + (["--quick"] if self.args.quick else [])
        self.results["skill"] = run_skill(skill_args(argv), log=self.log)

    def cv_memory(self, paths: Dict[str, Path]) -> None:
        """Peak memory of the baselines' cross-validation on the generated stack (target: < 2 GB)."""
        from core.config import BASELINES

        labels = self.work / "labels.gpkg"
        a = self.args
        background = 20000 if a.height * a.width >= 1_000_000 else 2000  # the full sample where memory matters
        params = {"raster": str(paths["none"]), "labels": str(labels), "models": [], "folds": 5,
                  "background": background,
                  "baselines": list(BASELINES),
                  "out": str(self.work / "cv_memory")}
        self.results["cv_memory"] = self.child("skill_cv", params, "cross-validation of the six baselines")

    def run(self) -> Dict[str, Any]:
        a = self.args
        self.results["meta"] = {
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": machine_info(),
            # Other processes on the machine slow everything down: the load says how busy it was.
            "load_avg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
            "stack": {"bands": a.bands, "height": a.height, "width": a.width, "dtype": "float32",
                      "raw_gib": round(self.raw_bytes / GIB, 3), "tile": [256, 256], "interleave": "pixel"},
        }
        start = time.perf_counter()
        try:
            paths: Dict[str, Path] = {}
            if self.needs_stack():
                self.check_disk()
                paths = self.generate()
            if "pipeline" in a.only or "cv_memory" in a.only:
                from bench.stack import write_point_labels

                write_point_labels(self.work / "labels.gpkg", a.height, a.width)
            if "io" in a.only:
                self.io_floor(paths)
            if "baseline" in a.only:
                self.baseline(paths)
            if "models" in a.only or "pipeline" in a.only:
                self.model_costs()
            if "pipeline" in a.only:
                self.pipeline(paths)
            if "predict" in a.only:
                self.predict(paths)
            if "ensemble" in a.only:
                self.ensemble(paths)
            if "cv_memory" in a.only:
                self.cv_memory(paths)
            if "skill" in a.only:
                self.skill()
        finally:
            if a.keep:
                self.log(f"generated files kept in {self.work}")
            else:
                shutil.rmtree(self.work, ignore_errors=True)
        self.results["meta"]["total_s"] = round(time.perf_counter() - start, 1)
        self.results["meta"]["load_avg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
        self.results["targets"] = evaluate_targets(self.results)
        return self.results


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Runs the benchmarks; prints the report; returns the results (also written as JSON)."""
    args = parse_args(argv)
    bench = Bench(args)
    results = bench.run()
    path = write_results(results, args.results_dir)
    report = render_report(results)
    print(report)
    if args.markdown is not None:
        args.markdown.write_text(f"# Benchmark results\n\n{report}\n")
    print(f"\nresults: {path} (and {args.results_dir / 'latest.json'})")
    return results


if __name__ == "__main__":
    main()
