"""--epoch_choice: whether the validation blocks or the schedule decide how long a model trains."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

import pytest
import torch

from core.checkpoint import load_checkpoint
from core.config import LabelOptions, TrainConfig
from core.training import MIN_DEPOSITS_PER_BAND, train

PIXEL = "pixel_sc1_layers1_e8"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _train(stack: Any, points: Any, out: Path, **kw: Any) -> Dict[str, Any]:
    base: Dict[str, Any] = dict(
        raster_path=str(stack.path), labels=LabelOptions(labels_path=str(points.path)), models=[PIXEL],
        num_epochs=4, learning_rate=1e-2, output_path=str(out), seed=0, device="cpu", patience=1)
    base.update(kw)
    logs: List[str] = []
    result = train(TrainConfig(**base), log=logs.append)
    ckpt = load_checkpoint(out / PIXEL / "checkpoint.pt")
    return {"logs": logs, "ckpt": ckpt, "result": result["models"][PIXEL]}


def _choice_line(logs: List[str]) -> str:
    return next(line for line in logs if f"{PIXEL} epochs: " in line)


def test_schedule_trains_every_epoch_and_keeps_the_last(tiny_stack, tiny_points, tmp_path: Path) -> None:
    # At this learning rate the validation AUC stops rising after epoch 6: patience 1 ends a
    # validation-chosen run there, and a scheduled run goes on to epoch 8 and keeps epoch 8.
    kw = dict(num_epochs=8, learning_rate=3e-2, final_fit="training_blocks")
    validated = _train(tiny_stack, tiny_points, tmp_path / "v", epoch_choice="validation", **kw)["ckpt"]
    assert len(validated["history"]) < 8 and validated["members"][0]["best"]["epoch"] < len(validated["history"])
    run = _train(tiny_stack, tiny_points, tmp_path / "s", epoch_choice="schedule", **kw)
    ckpt = run["ckpt"]
    assert [row["epoch"] for row in ckpt["history"]] == list(range(1, 9))
    member = ckpt["members"][0]
    assert member["best"]["epoch"] == 8
    last = ckpt["state_dict"]  # the last epoch's weights (what --resume continues)
    assert all(torch.equal(member["state_dict"][k], last[k]) for k in last)
    line = _choice_line(run["logs"])
    assert "all 8, the validation blocks measure the last" in line and "--epoch_choice schedule" in line
    assert not any("early stopping" in line for line in run["logs"])


def test_schedule_final_fit_trains_the_whole_schedule(tiny_stack, tiny_points, tmp_path: Path) -> None:
    run = _train(tiny_stack, tiny_points, tmp_path / "s", epoch_choice="schedule", num_epochs=8, learning_rate=3e-2)
    member = run["ckpt"]["members"][0]
    assert member["final_fit"]["epochs"] == 8 and run["result"]["final_fit_epochs"] == [8]  # validation: 6


def test_validation_keeps_the_best_epoch(tiny_stack, tiny_points, tmp_path: Path) -> None:
    run = _train(tiny_stack, tiny_points, tmp_path / "v", epoch_choice="validation", final_fit="training_blocks")
    ckpt = run["ckpt"]
    scores = [row["val_roc_auc"] for row in ckpt["history"]]
    best = ckpt["members"][0]["best"]["epoch"]
    assert scores[best - 1] == max(scores)  # the best validation epoch, not the last one trained
    assert "until the validation blocks' best epoch (patience 1)" in _choice_line(run["logs"])


def test_auto_asks_the_validation_blocks_only_with_few_deposits_per_band(
        make_tiny_stack_fn, make_points_fn, tmp_path: Path) -> None:
    # 5 bands: 24 deposits (about 19 in training) are under 10 a band, 90 (about 70) are over.
    for n_positive, by_validation in ((24, True), (90, False)):
        folder = tmp_path / str(n_positive)
        folder.mkdir()
        stack = make_tiny_stack_fn(folder, n_positive=n_positive)
        points = make_points_fn(stack, folder)
        run = _train(stack, points, folder / "out", num_epochs=2, final_fit="training_blocks")
        line = _choice_line(run["logs"])
        assert ("until the validation blocks' best epoch" in line) is by_validation, line
        assert "for 5 band(s)" in line
        per_band = float(line.split(" per band")[0].split(", ")[-1])
        assert (per_band < MIN_DEPOSITS_PER_BAND) is by_validation


def test_auto_counts_each_value_of_a_context_models_patch(make_tiny_stack_fn, make_points_fn, tmp_path: Path) -> None:
    """90 deposits (about 70 in training) are over 10 a band for a per-pixel model (above) but under 10 a
    band value for the small CNN's 3 x 3 patch of 5 bands: its validation blocks stop it at their best
    epoch (a square of neighbours gives every deposit a fingerprint to learn)."""
    stack = make_tiny_stack_fn(tmp_path, n_positive=90)
    points = make_points_fn(stack, tmp_path)
    logs: List[str] = []
    train(TrainConfig(raster_path=str(stack.path), labels=LabelOptions(labels_path=str(points.path)),
                      models=["cnn_sc1_layers1_e8"], num_epochs=1, output_path=str(tmp_path / "out"), seed=0,
                      device="cpu", final_fit="training_blocks"), log=logs.append)
    line = next(line for line in logs if "cnn_sc1_layers1_e8 epochs: " in line)
    assert "until the validation blocks' best epoch" in line, line
    assert "for 45 band value(s) in each 3 x 3-pixel patch (5 band(s))" in line and " per band value, under 10" in line


def test_auto_keeps_validation_for_models_trained_on_windows(tiny_stack, tiny_points, tmp_path: Path) -> None:
    logs: List[str] = []
    train(TrainConfig(raster_path=str(tiny_stack.path), labels=LabelOptions(labels_path=str(tiny_points.path)),
                      models=["cnn_sc1_layers1_e8"], num_epochs=1, output_path=str(tmp_path), seed=0, device="cpu",
                      loss="weighted_ce"), log=logs.append)
    line = next(line for line in logs if "cnn_sc1_layers1_e8 epochs: " in line)
    assert "the model trains on windows, not pixels" in line
