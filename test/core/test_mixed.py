"""Mixed models (``a+b``): one ensemble whose members are different local networks.

Real training on the tiny generated stack (the pu loss on pixels and patches), real
checkpoints and real GeoTIFFs: each member is also predicted on its own, so the mixed map
can be checked against the mean of its parts' maps.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest
import rasterio
import torch

from core.checkpoint import ensemble_members, load_checkpoint, save_checkpoint
from core.config import LabelOptions, PredictConfig, TrainConfig
from core.errors import Cancelled, ConfigError
from core.models.catalog import parse_model_name
from core.models.registry import build_model
from core.predict import NODATA, predict
from core.training import train

PIXEL, CNN = "pixel_sc1_layers1_e8", "cnn_sc1_layers1_e8"
MIXED = f"{PIXEL}+{CNN}"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _config(stack: Any, points: Any, out: Path, **kw: Any) -> TrainConfig:
    base: Dict[str, Any] = dict(raster_path=str(stack.path), labels=LabelOptions(labels_path=str(points.path)),
                                models=[MIXED], num_epochs=2, output_path=str(out), seed=0, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def _read(path: str | Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def _equal_states(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def mixed_run(tiny_stack, tiny_points, tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    """One uninterrupted mixed model: a per-pixel network and a small CNN, 2 epochs each."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("mixed")
        logs: List[str] = []
        metrics: List[Dict[str, Any]] = []
        result = train(_config(tiny_stack, tiny_points, out), log=logs.append, metric=metrics.append)
    finally:
        torch.set_num_threads(threads)
    return {"out": out, "result": result["models"][MIXED], "logs": logs, "metrics": metrics,
            "ckpt": out / MIXED / "checkpoint.pt"}


def test_a_mixed_name_takes_the_widest_geometry_of_its_parts() -> None:
    spec = parse_model_name(f"{PIXEL} + cnn_sc2_layers1_e8")
    assert spec.name == f"{PIXEL}+cnn_sc2_layers1_e8" and spec.part_count == 2
    assert [spec.part(k).name for k in range(4)] == [PIXEL, "cnn_sc2_layers1_e8"] * 2
    assert spec.context == 2 and spec.split_buffer == parse_model_name("cnn_sc2_layers1_e8").split_buffer
    assert spec.pixel_sampled and not spec.spherical and spec.multiple == 1
    assert spec.auto_tile == parse_model_name(PIXEL).auto_tile
    assert parse_model_name(PIXEL).part(3).name == PIXEL and parse_model_name(PIXEL).part_count == 1


def test_only_local_models_mix_and_a_mixed_name_is_no_single_network() -> None:
    with pytest.raises(ConfigError, match="unet_sc2_layers2_e8 cannot be mixed; a mixed model joins local models"):
        parse_model_name(f"{PIXEL}+unet_sc2_layers2_e8")
    with pytest.raises(ConfigError, match="unknown model name 'nope'"):
        parse_model_name(f"{PIXEL}+nope")
    with pytest.raises(ConfigError, match="is a mixed ensemble, not one network; build its parts"):
        build_model(MIXED, in_channels=3)


def test_a_mixed_model_trains_each_part_as_its_own_member_into_one_file(mixed_run: Dict[str, Any]) -> None:
    raw = torch.load(mixed_run["ckpt"], weights_only=True)
    assert raw["model_name"] == MIXED and raw["ensemble"]["size"] == 2
    members = raw["members"]
    assert [m["model_kwargs"]["name"] for m in members] == [PIXEL, CNN]
    assert [m["seed"] for m in members] == [0, 1] and all(m["calibration"] for m in members)
    assert all(m.get("final_fit") for m in members)  # both local models: refit on the whole area
    assert mixed_run["result"]["members"] == 2
    logs = mixed_run["logs"]
    assert any(line.startswith(f"{PIXEL} epochs: ") for line in logs)  # each part has its own epoch choice
    assert any(line.startswith(f"{CNN} epochs: ") and "band value(s) in each 3 x 3-pixel patch" in line
               for line in logs)
    assert any(f"{CNN} trains on 3 x 3-pixel patches" in line for line in logs)
    assert any(f"{PIXEL} trains on pixels, not windows" in line for line in logs)
    assert any(f"{MIXED} member 2/2: seed 1, {CNN}" in line for line in logs)
    views = ensemble_members(load_checkpoint(mixed_run["ckpt"]))
    assert [v["model_kwargs"]["name"] for v in views] == [PIXEL, CNN]


def _single(ckpt: Dict[str, Any], index: int, path: Path) -> Path:
    """Member ``index`` of a mixed checkpoint as a checkpoint of its own."""
    member = ckpt["members"][index]
    kwargs = member["model_kwargs"]
    one = {k: v for k, v in ckpt.items() if k not in ("members", "ensemble", "member_index")}
    one.update(model_name=kwargs["name"], model_kwargs=kwargs, members=[member], ensemble={"size": 1})
    save_checkpoint(path, one)
    return path


def test_a_mixed_map_is_the_mean_of_its_parts_maps_and_its_spread_is_mapped(
        mixed_run: Dict[str, Any], tiny_stack, tmp_path: Path) -> None:
    ckpt = load_checkpoint(mixed_run["ckpt"])

    def run(path: Path, out: str, **kw: Any) -> Dict[str, Any]:
        return predict(PredictConfig(checkpoint=str(path), raster_path=str(tiny_stack.path),
                                     output_path=str(tmp_path / out), device="cpu", **kw))

    a = _read(run(_single(ckpt, 0, tmp_path / "a.pt"), "a.tif")["output_path"])
    b = _read(run(_single(ckpt, 1, tmp_path / "b.pt"), "b.tif")["output_path"])
    res = run(mixed_run["ckpt"], "m.tif", uncertainty_path=str(tmp_path / "u.tif"))
    m, u = _read(res["output_path"]), _read(res["uncertainty_path"])
    valid = a != NODATA
    assert res["members"] == 2 and res["calibrated"] and np.array_equal(valid, m != NODATA)
    assert np.abs(a[valid] - b[valid]).max() > 1e-4  # the two networks really differ
    np.testing.assert_allclose(m[valid], (a[valid] + b[valid]) / 2, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(u[valid], np.abs(a[valid] - b[valid]) / 2, rtol=1e-4, atol=1e-7)


def test_a_cancelled_mixed_model_resumes_its_second_part_and_ends_as_an_uninterrupted_run(
        mixed_run: Dict[str, Any], tiny_stack, tiny_points, tmp_path: Path) -> None:
    seen: List[Dict[str, Any]] = []

    def stop_in_member_2() -> bool:  # after the CNN's first epoch
        return any(m.get("member") == 2 for m in seen)

    with pytest.raises(Cancelled):
        train(_config(tiny_stack, tiny_points, tmp_path), should_stop=stop_in_member_2, metric=seen.append)
    path = tmp_path / MIXED / "checkpoint.pt"
    cut = load_checkpoint(path)
    assert len(cut["members"]) == 1 and cut["member_index"] == 1 and cut["epoch"] == 1
    assert cut["model_kwargs"]["name"] == CNN  # the training state is the CNN's
    again: List[Dict[str, Any]] = []
    train(_config(tiny_stack, tiny_points, tmp_path, resume=True), metric=again.append)
    assert [(m["member"], m["epoch"]) for m in again] == [(2, 2)]
    done, full = load_checkpoint(path), load_checkpoint(mixed_run["ckpt"])
    for ours, theirs in zip(done["members"], full["members"]):
        assert ours["model_kwargs"] == theirs["model_kwargs"]
        assert _equal_states(ours["state_dict"], theirs["state_dict"])


def test_resume_refuses_fewer_members_than_a_mixed_model_holds(mixed_run: Dict[str, Any], tiny_stack, tiny_points,
                                                               tmp_path: Path) -> None:
    import shutil

    (tmp_path / MIXED).mkdir()
    shutil.copy(mixed_run["ckpt"], tmp_path / MIXED / "checkpoint.pt")
    raw = torch.load(tmp_path / MIXED / "checkpoint.pt", weights_only=True)
    raw["members"] = raw["members"] * 2  # as if trained with --ensemble 2
    torch.save(raw, tmp_path / MIXED / "checkpoint.pt")
    with pytest.raises(ConfigError, match=r"4 finished ensemble members but --ensemble is 1 \(2 members: 1 of each "
                                          r"of 2 parts\); give --ensemble 2 or more"):
        train(_config(tiny_stack, tiny_points, tmp_path, resume=True))
