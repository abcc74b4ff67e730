"""DDP: a real 2-process CPU run (gloo) through torchrun and the command line."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.checkpoint import build_model_from_checkpoint, load_checkpoint
from core.training import MIN_EPOCH_STEPS, Dist, epoch_draws, epoch_indices

TINY = "unet_sc2_layers2_e8"


def test_epoch_indices_give_every_rank_an_equal_share_of_the_same_draw() -> None:
    weights = [0.1] * 7 + [0.3]
    one = epoch_indices(weights, seed=0, epoch=1, dist=Dist())
    r0 = epoch_indices(weights, seed=0, epoch=1, dist=Dist(True, 0, 2, 0))
    r1 = epoch_indices(weights, seed=0, epoch=1, dist=Dist(True, 1, 2, 0))
    assert len(one) == 8 and len(r0) == len(r1) == 4
    assert sorted(r0 + r1) == sorted(one)
    assert epoch_indices(weights, seed=0, epoch=2, dist=Dist()) != one


def test_a_small_raster_still_gets_enough_steps_an_epoch() -> None:
    """Few windows: at least MIN_EPOCH_STEPS batches an epoch, drawn by weight; many windows: each once on average."""
    assert epoch_draws(12, batch_size=8) == MIN_EPOCH_STEPS * 8
    assert epoch_draws(5000, batch_size=8) == 5000
    assert epoch_draws(1, batch_size=8, whole_globe=True) == 1  # the globe is one sample
    weights = [0.05] * 10 + [0.5]
    drawn = epoch_indices(weights, seed=0, epoch=1, dist=Dist(), draws=epoch_draws(11, 8))
    assert len(drawn) == MIN_EPOCH_STEPS * 8 and set(drawn) <= set(range(11))
    assert drawn.count(10) > 0.3 * len(drawn)  # the positive window keeps its share


def test_two_process_cpu_ddp_run_writes_one_loadable_checkpoint(tiny_stack, tiny_points, tmp_path: Path,
                                                                repo_root: Path) -> None:
    out = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "core", "train",
        "--raster_path", str(tiny_stack.path), "--shapefile_path", str(tiny_points.path),
        "--models", TINY, "--tile_size", "32", "32", "--num_epochs", "2", "--batch_size", "2",
        "--learning_rate", "0.003", "--device", "cpu", "--enable_ddp", "--output_path", str(out),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(repo_root))
    proc = subprocess.run(cmd, cwd=repo_root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (out / TINY / "train.log").read_text()
    assert "DDP x2" in log
    assert log.count(f"{TINY} epoch 2:") == 1  # only rank 0 writes
    ckpt = load_checkpoint(out / TINY / "checkpoint.pt")  # single process, no DDP 'module.' prefix
    assert ckpt["epoch"] == 2 and not any(k.startswith("module.") for k in ckpt["state_dict"])
    build_model_from_checkpoint(ckpt)
    assert sorted(p.name for p in (out / TINY).iterdir() if p.name.startswith(".")) == []  # no temp files left
