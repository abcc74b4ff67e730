"""Training an ensemble into one checkpoint, cancelling and resuming it, and the calibrated output."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest
import rasterio
import torch

from core.checkpoint import ensemble_members, load_checkpoint
from core.config import LabelOptions, PredictConfig, TrainConfig
from core.errors import Cancelled, ConfigError
from core.predict import NODATA, predict
from core.training import train

TINY = "unet_sc2_layers2_e8"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _config(stack: Any, points: Any, out: Path, **kw: Any) -> TrainConfig:
    base: Dict[str, Any] = dict(
        raster_path=str(stack.path), labels=LabelOptions(labels_path=str(points.path)), models=[TINY],
        tile_size=(32, 32), num_epochs=2, batch_size=4, learning_rate=3e-3, output_path=str(out), seed=0,
        device="cpu", patience=0, ensemble=2,
    )
    base.update(kw)
    return TrainConfig(**base)


def _equal_states(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def full_run(tiny_stack, tiny_points, tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    """One uninterrupted ensemble of 2 members x 2 epochs (shared by the tests below)."""
    import torch as _torch

    threads = _torch.get_num_threads()
    _torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("full")
        metrics: List[Dict[str, Any]] = []
        result = train(_config(tiny_stack, tiny_points, out), metric=metrics.append)
    finally:
        _torch.set_num_threads(threads)
    return {"out": out, "result": result["models"][TINY], "metrics": metrics,
            "ckpt": out / TINY / "checkpoint.pt"}


def test_ensemble_trains_members_with_their_own_seeds_into_one_file(full_run: Dict[str, Any]) -> None:
    raw = torch.load(full_run["ckpt"], weights_only=True)
    assert raw["ensemble"]["size"] == 2 and raw["ensemble"]["seeds"] == [0, 1]
    members = raw["members"]
    assert [m["seed"] for m in members] == [0, 1] and [m["epoch"] for m in members] == [2, 2]
    assert not _equal_states(members[0]["state_dict"], members[1]["state_dict"])
    assert all(m["calibration"]["logit_offset"] < 0 for m in members)  # weighting inflated the outputs
    assert full_run["result"]["members"] == 2 and full_run["result"]["epochs_run"] == 4
    assert [(m["member"], m["epoch"]) for m in full_run["metrics"]] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    history = json.loads((full_run["out"] / TINY / "metrics.json").read_text())
    assert history["members"] == 2 and [h["member"] for h in history["history"]] == [1, 1, 2, 2]


def test_cancelled_ensemble_keeps_finished_members_and_resume_finishes_it_identically(
        full_run: Dict[str, Any], tiny_stack, tiny_points, tmp_path: Path) -> None:
    seen: List[Dict[str, Any]] = []

    def stop_in_member_2() -> bool:  # after member 2's first epoch
        return any(m.get("member") == 2 for m in seen)

    with pytest.raises(Cancelled):
        train(_config(tiny_stack, tiny_points, tmp_path), should_stop=stop_in_member_2, metric=seen.append)
    path = tmp_path / TINY / "checkpoint.pt"
    cut = load_checkpoint(path)
    full = load_checkpoint(full_run["ckpt"])
    assert len(cut["members"]) == 1 and cut["member_index"] == 1 and cut["epoch"] == 1
    assert _equal_states(cut["members"][0]["state_dict"], full["members"][0]["state_dict"])
    # The unfinished file predicts with its finished member (and says so).
    logs: List[str] = []
    res = predict(PredictConfig(checkpoint=str(path), raster_path=str(tiny_stack.path),
                                output_path=str(tmp_path / "p.tif"), device="cpu"), log=logs.append)
    assert res["members"] == 1 and any("1 of 2 members" in line for line in logs)

    resumed_metrics: List[Dict[str, Any]] = []
    again = train(_config(tiny_stack, tiny_points, tmp_path, resume=True), metric=resumed_metrics.append)
    assert [(m["member"], m["epoch"]) for m in resumed_metrics] == [(2, 2)]
    done = load_checkpoint(path)
    assert len(done["members"]) == 2 and again["models"][TINY]["members"] == 2
    for ours, theirs in zip(done["members"], full["members"]):
        assert _equal_states(ours["state_dict"], theirs["state_dict"])
        assert ours["calibration"]["logit_offset"] == pytest.approx(theirs["calibration"]["logit_offset"], abs=1e-6)
    for key, value in full_run["result"]["metrics"].items():
        assert again["models"][TINY]["metrics"][key] == pytest.approx(value, rel=1e-5, abs=1e-6)


def test_cancel_before_the_second_member_trains_resumes_it_not_the_first(
        full_run: Dict[str, Any], tiny_stack, tiny_points, tmp_path: Path) -> None:
    """Stopped right after member 1 finished: resume trains member 2 from its first epoch."""
    seen: List[Dict[str, Any]] = []
    logs: List[str] = []

    def stop_after_member_1() -> bool:
        return any("member 2/2: seed" in line for line in logs)

    with pytest.raises(Cancelled):
        train(_config(tiny_stack, tiny_points, tmp_path), should_stop=stop_after_member_1, metric=seen.append,
              log=logs.append)
    cut = load_checkpoint(tmp_path / TINY / "checkpoint.pt")
    assert len(cut["members"]) == 1 and cut["member_index"] == 1 and cut["epoch"] == 0
    resumed: List[Dict[str, Any]] = []
    train(_config(tiny_stack, tiny_points, tmp_path, resume=True), metric=resumed.append)
    assert [(m["member"], m["epoch"]) for m in resumed] == [(2, 1), (2, 2)]
    done, full = load_checkpoint(tmp_path / TINY / "checkpoint.pt"), load_checkpoint(full_run["ckpt"])
    assert _equal_states(done["members"][1]["state_dict"], full["members"][1]["state_dict"])


def test_resume_refuses_a_smaller_ensemble(full_run: Dict[str, Any], tiny_stack, tiny_points, tmp_path: Path) -> None:
    import shutil

    (tmp_path / TINY).mkdir()
    shutil.copy(full_run["ckpt"], tmp_path / TINY / "checkpoint.pt")
    with pytest.raises(ConfigError, match="2 finished ensemble members but --ensemble is 1"):
        train(_config(tiny_stack, tiny_points, tmp_path, resume=True, ensemble=1))


def test_trained_ensemble_predicts_the_mean_and_the_spread(full_run: Dict[str, Any], tiny_stack,
                                                          tmp_path: Path) -> None:
    res = predict(PredictConfig(checkpoint=str(full_run["ckpt"]), raster_path=str(tiny_stack.path),
                                output_path=str(tmp_path / "p.tif"), uncertainty_path=str(tmp_path / "u.tif"),
                                device="cpu"))
    with rasterio.open(res["output_path"]) as src:
        m = src.read(1)
    with rasterio.open(res["uncertainty_path"]) as src:
        u = src.read(1)
    valid = m != NODATA
    assert res["members"] == 2 and res["calibrated"] and np.array_equal(valid, u != NODATA)
    assert u[valid].max() > 0 and u[valid].min() >= 0
    assert len(ensemble_members(load_checkpoint(full_run["ckpt"]))) == 2


def test_calibrated_map_mean_is_near_the_base_rate(full_run: Dict[str, Any], tiny_stack, tiny_points,
                                                   tmp_path: Path) -> None:
    """Class weighting inflates the raw output far above the base rate; calibration brings it back."""
    res = predict(PredictConfig(checkpoint=str(full_run["ckpt"]), raster_path=str(tiny_stack.path),
                                output_path=str(tmp_path / "p.tif"), device="cpu"))
    with rasterio.open(res["output_path"]) as src:
        m = src.read(1)
        tags = src.tags()
    valid = m != NODATA
    rate = len(tiny_points.positives) / valid.sum()  # deposits per pixel over the whole area
    mean = float(m[valid].mean())
    assert rate / 2 <= mean <= rate * 2, (mean, rate)
    members = load_checkpoint(full_run["ckpt"])["members"]
    assert all(mb["calibration"]["mean_before"] > 4 * rate for mb in members)  # the raw scores were not
    assert tags["calibrated"] == "yes" and "calibrated" in tags["value"]


def test_members_carry_their_rank_tables_and_prediction_applies_them(full_run: Dict[str, Any], tiny_stack,
                                                                   tmp_path: Path) -> None:
    """Each member is calibrated on the ranks of its own logits over the training area; prediction
    applies table, contrast and offset: a contrast near 0 flattens the map to the offset."""
    from core.calibration import CONTRAST
    from core.checkpoint import save_checkpoint

    ckpt = load_checkpoint(full_run["ckpt"])
    cals = [m["calibration"] for m in ckpt["members"]]
    assert all(c["logit_scale"] == CONTRAST for c in cals)
    assert all(len(c["rank_values"]) == len(c["rank_scores"]) > 100 for c in cals)
    assert cals[0]["rank_values"] != cals[1]["rank_values"]  # each member's own logits
    for m in ckpt["members"]:
        m["calibration"]["logit_scale"] = 1e-6
    save_checkpoint(tmp_path / "flat.pt", ckpt)
    maps = {}
    for name, path in (("trained", full_run["ckpt"]), ("flat", tmp_path / "flat.pt")):
        res = predict(PredictConfig(checkpoint=str(path), raster_path=str(tiny_stack.path),
                                    output_path=str(tmp_path / f"{name}.tif"), device="cpu"))
        with rasterio.open(res["output_path"]) as src:
            maps[name] = src.read(1)
    valid = maps["trained"] != NODATA
    offsets = [m["calibration"]["logit_offset"] for m in ckpt["members"]]
    flat = np.mean([1.0 / (1.0 + np.exp(-o)) for o in offsets])
    assert np.ptp(maps["trained"][valid]) > 10 * np.ptp(maps["flat"][valid])
    assert np.allclose(maps["flat"][valid], flat, rtol=1e-3)


def test_final_validation_ranks_an_ensemble_as_prediction_averages_its_calibrated_members() -> None:
    """Prediction averages calibrated probabilities; the final validation must rank pixels the same way,
    not by the mean of the raw outputs (led by the member whose raw output is highest)."""
    from core.calibration import class1_probability
    from core.training import MemberMean

    torch.manual_seed(0)
    members = [torch.nn.Conv2d(3, 2, 1) for _ in range(2)]
    cals = [{"logit_scale": 0.5, "logit_offset": 4.0}, {"logit_scale": 2.0, "logit_offset": -9.0}]
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        out = MemberMean(members, cals)(x)
        mean = torch.stack([class1_probability(m(x), c["logit_offset"], c["logit_scale"])
                            for m, c in zip(members, cals)]).mean(dim=0).double()
        raw = torch.stack([torch.softmax(m(x), dim=1)[:, 1] for m in members]).mean(dim=0)
    assert out.shape == (4, 2, 8, 8)
    z = (out[:, 1] - out[:, 0]).double() + (4.0 - 9.0) / 2  # the mean offset it shifts back
    assert torch.allclose(z, torch.log(mean) - torch.log1p(-mean), atol=1e-4)
    order = torch.argsort(z.flatten())
    assert torch.equal(order, torch.argsort(mean.flatten()))
    assert not torch.equal(order, torch.argsort(raw.flatten()))  # the raw mean ranks differently here
