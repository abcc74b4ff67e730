"""The final fit (--final_fit whole_area): the saved per-pixel model is retrained on the whole training area."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest
import rasterio
import torch

from core.checkpoint import load_checkpoint
from core.config import EvaluateConfig, LabelOptions, PredictConfig, TrainConfig
from core.errors import Cancelled
from core.evaluate import evaluate
from core.predict import predict
from core.training import train

PIXEL = "pixel_sc1_layers1_e8"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _config(stack: Any, points: Any, out: Path, **kw: Any) -> TrainConfig:
    base: Dict[str, Any] = dict(
        raster_path=str(stack.path), labels=LabelOptions(labels_path=str(points.path)), models=[PIXEL],
        num_epochs=3, learning_rate=1e-2, output_path=str(out), seed=0, device="cpu", patience=0)
    base.update(kw)
    return TrainConfig(**base)


def _equal(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _map(ckpt: Path, stack: Any, out: Path) -> np.ndarray:
    predict(PredictConfig(checkpoint=str(ckpt), raster_path=str(stack.path), output_path=str(out), device="cpu"))
    with rasterio.open(out) as src:
        return src.read(1)


@pytest.fixture(scope="module")
def runs(tiny_stack, tiny_points, tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    """The same seed trained both ways: refit on the whole area (the default) and the validated model only."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out: Dict[str, Any] = {}
    try:
        for final_fit in ("whole_area", "training_blocks"):
            folder = tmp_path_factory.mktemp(final_fit)
            logs: List[str] = []
            result = train(_config(tiny_stack, tiny_points, folder, final_fit=final_fit), log=logs.append)
            out[final_fit] = {"folder": folder, "ckpt": folder / PIXEL / "checkpoint.pt", "logs": logs,
                              "metrics": result["models"][PIXEL]["metrics"],
                              "final_fit_epochs": result["models"][PIXEL]["final_fit_epochs"]}
    finally:
        torch.set_num_threads(threads)
    return out


def test_the_final_fit_learns_from_the_validation_blocks_for_the_epochs_they_chose(runs: Dict[str, Any]) -> None:
    whole = load_checkpoint(runs["whole_area"]["ckpt"])
    held = load_checkpoint(runs["training_blocks"]["ckpt"])
    member, validated = whole["members"][0], held["members"][0]
    assert "final_fit" not in validated and "held_out_state_dict" not in validated
    fit = member["final_fit"]
    assert fit["epochs"] == member["best"]["epoch"] >= 1
    summary = whole["split_summary"]
    assert summary["val_positive_pixels"] > 0  # the fixture's validation blocks hold deposits ...
    assert fit["positive_pixels"] > summary["train_positive_pixels"]  # ... and the final fit learns from them
    # The validated weights are kept (the same seed trains the same model), the saved ones differ.
    assert _equal(member["held_out_state_dict"], validated["state_dict"])
    assert not _equal(member["state_dict"], validated["state_dict"])
    # Calibrated to the whole area's base rate on the ranks of the refit's own logits.
    assert member["calibration"]["base_rate"] != validated["calibration"]["base_rate"]
    assert member["calibration"]["rank_values"] != validated["calibration"]["rank_values"]
    assert member["held_out_calibration"] == validated["calibration"]  # what the final validation scores with
    logs = runs["whole_area"]["logs"]
    assert any("final fit on the whole training area" in line for line in logs)
    assert any("no longer held out" in line for line in logs)
    report = (runs["whole_area"]["folder"] / PIXEL / "report.html").read_text(encoding="utf-8")
    assert "final fit" in report and "final fit" not in (
        runs["training_blocks"]["folder"] / PIXEL / "report.html").read_text(encoding="utf-8")
    assert runs["whole_area"]["final_fit_epochs"] == [fit["epochs"]]
    assert runs["training_blocks"]["final_fit_epochs"] == []


def test_held_out_figures_are_the_validated_models(runs: Dict[str, Any]) -> None:
    """The final validation scores the validated weights: its figures must not credit the refit with
    deposits it trained on."""
    a, b = runs["whole_area"]["metrics"], runs["training_blocks"]["metrics"]
    assert a.keys() == b.keys()
    for key in ("val_roc_auc", "val_pr_auc", "val_loss"):
        assert a[key] == pytest.approx(b[key]), key


def test_predict_maps_the_final_fit(runs: Dict[str, Any], tiny_stack, tmp_path: Path) -> None:
    whole = _map(runs["whole_area"]["ckpt"], tiny_stack, tmp_path / "whole.tif")
    held = _map(runs["training_blocks"]["ckpt"], tiny_stack, tmp_path / "held.tif")
    valid = np.isfinite(whole) & (whole >= 0)
    assert valid.any() and not np.allclose(whole[valid], held[valid])
    rate = load_checkpoint(runs["whole_area"]["ckpt"])["members"][0]["calibration"]["base_rate"]
    assert rate / 2 < float(whole[valid].mean()) < rate * 2  # calibrated to the whole area's base rate


def test_a_cancelled_final_fit_keeps_the_validated_model_and_resume_redoes_it(
        runs: Dict[str, Any], tiny_stack, tiny_points, tmp_path: Path) -> None:
    logs: List[str] = []

    def in_final_fit() -> bool:
        return any("final fit epoch 1/" in line for line in logs)

    with pytest.raises(Cancelled):
        train(_config(tiny_stack, tiny_points, tmp_path), log=logs.append, should_stop=in_final_fit)
    ckpt = tmp_path / PIXEL / "checkpoint.pt"
    cut = load_checkpoint(ckpt)
    assert not cut.get("members") and cut["epoch"] == 3  # trained and saved; the final fit never landed
    _map(ckpt, tiny_stack, tmp_path / "cut.tif")  # the validated model still predicts
    train(_config(tiny_stack, tiny_points, tmp_path, resume=True))
    resumed = load_checkpoint(ckpt)["members"][0]
    full = load_checkpoint(runs["whole_area"]["ckpt"])["members"][0]
    assert resumed["final_fit"] == full["final_fit"]
    assert _equal(resumed["state_dict"], full["state_dict"])


def test_a_window_model_keeps_its_validated_weights_and_says_so(tiny_stack, tiny_points, tmp_path: Path) -> None:
    logs: List[str] = []
    train(_config(tiny_stack, tiny_points, tmp_path, models=["unet_sc2_layers2_e8"], tile_size=(32, 32),
                  num_epochs=1), log=logs.append)
    member = load_checkpoint(tmp_path / "unet_sc2_layers2_e8" / "checkpoint.pt")["members"][0]
    assert "final_fit" not in member
    assert any("keeps its validated weights" in line for line in logs)


def test_evaluate_scores_no_block_as_held_out_from_a_final_fit(runs: Dict[str, Any], tiny_stack, tiny_points,
                                                               tmp_path: Path) -> None:
    """The final fit learnt from the validation blocks: Evaluate must not report them as held-out skill."""
    labels = LabelOptions(labels_path=str(tiny_points.path))
    figures = {}
    for fit in ("whole_area", "training_blocks"):
        ckpt = runs[fit]["ckpt"]
        prob = tmp_path / f"{fit}.tif"
        _map(ckpt, tiny_stack, prob)
        logs: List[str] = []
        figures[fit] = evaluate(EvaluateConfig(probability_map=str(prob), labels=labels, checkpoint=str(ckpt),
                                               output_dir=str(tmp_path / f"eval_{fit}")), log=logs.append)["metrics"]
        figures[fit + "_logs"] = logs
    refit, validated = figures["whole_area"], figures["training_blocks"]
    assert "heldout_prediction_rate_auc" in validated and "validation_blocks_trained_on" not in validated
    assert "heldout_prediction_rate_auc" not in refit and "prediction_rate_auc" not in refit
    assert refit["validation_blocks_trained_on"] is True
    assert any("trained again on its validation blocks" in line for line in figures["whole_area_logs"])
