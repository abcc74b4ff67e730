"""Ensemble checkpoints and their prediction: the mean of the members, their spread, the file format.

Real tiny models (freshly initialised, different seeds) saved as real checkpoints, real
GeoTIFFs; each member is also predicted on its own so the ensemble can be checked against
the mean of the members' maps.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict

import numpy as np
import pytest
import rasterio
import torch

from core.checkpoint import FORMAT, ensemble_members, load_checkpoint, save_checkpoint, save_ensemble
from core.config import PredictConfig
from core.encoding import fit_encoder
from core.errors import ConfigError, DataError
from core.predict import NODATA, predict

from test_predict import make_checkpoint, write_globe, write_stack


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    d = tmp_path_factory.mktemp("ensemble")
    raster = write_stack(d / "stack.tif")
    return {"dir": d, "raster": raster, "a": make_checkpoint(raster, d / "a.pt", seed=1),
            "b": make_checkpoint(raster, d / "b.pt", seed=2)}


def run(models: Dict[str, Path], ckpt: Path, out: Path, progress=None, **kw) -> Dict:
    return predict(PredictConfig(checkpoint=str(ckpt), raster_path=str(models["raster"]), output_path=str(out),
                                 device="cpu", **kw), progress=progress)


def read(path: str | Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def test_ensemble_file_loads_with_weights_only_and_old_files_still_load(models: Dict[str, Path],
                                                                        tmp_path: Path) -> None:
    path = save_ensemble(tmp_path / "ens.pt", [models["a"], models["b"]])
    raw = torch.load(path, weights_only=True)  # tensors and JSON-able primitives only
    assert raw["format"] == FORMAT and len(raw["members"]) == 2 and raw["ensemble"]["size"] == 2
    views = ensemble_members(load_checkpoint(path))
    a = load_checkpoint(models["a"])["state_dict"]
    key = next(iter(a))
    assert torch.equal(views[0]["state_dict"][key], a[key])
    assert not torch.equal(views[1]["state_dict"][key], a[key])
    # A format-1 file (written before ensembles existed) is one member: its weights.
    old = torch.load(models["a"], weights_only=True)
    old["format"] = "stack_segmenter.checkpoint/1"
    old_path = tmp_path / "old.pt"
    torch.save(old, old_path)
    assert len(ensemble_members(load_checkpoint(old_path))) == 1
    assert read(run(models, old_path, tmp_path / "old.tif")["output_path"]).shape == (70, 90)


def test_ensemble_prediction_is_the_mean_of_its_members(models: Dict[str, Path], tmp_path: Path) -> None:
    a = read(run(models, models["a"], tmp_path / "a.tif")["output_path"])
    b = read(run(models, models["b"], tmp_path / "b.tif")["output_path"])
    ens = save_ensemble(tmp_path / "ens.pt", [models["a"], models["b"]])
    res = run(models, ens, tmp_path / "ens.tif")
    m = read(res["output_path"])
    valid = a != NODATA
    assert res["members"] == 2 and np.array_equal(valid, m != NODATA)
    assert np.abs(a[valid] - b[valid]).max() > 1e-3  # the members really differ
    np.testing.assert_allclose(m[valid], (a[valid] + b[valid]) / 2, atol=1e-6)
    with rasterio.open(res["output_path"]) as src:
        assert src.tags()["members"] == "2" and "mean of 2 members" in src.descriptions[0]


def test_uncertainty_is_zero_where_members_agree_and_their_spread_where_they_differ(
        models: Dict[str, Path], tmp_path: Path) -> None:
    a = read(run(models, models["a"], tmp_path / "a.tif")["output_path"])
    b = read(run(models, models["b"], tmp_path / "b.tif")["output_path"])
    pair = save_ensemble(tmp_path / "pair.pt", [models["a"], models["b"]])
    res = run(models, pair, tmp_path / "m.tif", uncertainty_path=str(tmp_path / "u.tif"))
    m, u = read(res["output_path"]), read(res["uncertainty_path"])
    valid = a != NODATA
    assert np.array_equal(valid, u != NODATA)
    # Two members: the population standard deviation is half their difference, pixel by pixel.
    np.testing.assert_allclose(u[valid], np.abs(a[valid] - b[valid]) / 2, atol=1e-6)
    assert (u[valid] > 0).mean() > 0.99
    np.testing.assert_allclose(m[valid], (a[valid] + b[valid]) / 2, atol=1e-6)  # the same mean as without
    with rasterio.open(res["uncertainty_path"]) as src:
        assert "standard deviation" in src.tags()["value"] and float(src.tags()["max"]) > 0
    # Members that agree (the same model twice): zero spread everywhere.
    same = save_ensemble(tmp_path / "same.pt", [models["a"], models["a"]])
    u0 = read(run(models, same, tmp_path / "m0.tif", uncertainty_path=str(tmp_path / "u0.tif"))["uncertainty_path"])
    assert np.all(u0[valid] == 0)


def test_uncertainty_of_a_single_model_is_refused_before_any_work(models: Dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs an ensemble.*--ensemble"):
        run(models, models["a"], tmp_path / "m.tif", uncertainty_path=str(tmp_path / "u.tif"),
            progress=lambda _v: pytest.fail("work started"))
    assert list(tmp_path.iterdir()) == []
    pair = save_ensemble(tmp_path / "pair.pt", [models["a"], models["b"]])
    with pytest.raises(ConfigError, match="same file"):
        run(models, pair, tmp_path / "m.tif", uncertainty_path=str(tmp_path / "m.tif"))


def test_members_with_their_own_band_statistics(models: Dict[str, Path], tmp_path: Path) -> None:
    """Cross-validation folds fit their encoders on different areas: each member keeps its own."""
    fold = torch.load(models["b"], weights_only=True)
    fold["encoder"] = fit_encoder(models["raster"], [(30, 40, 70, 90)]).to_dict()
    fold_path = save_checkpoint(tmp_path / "fold.pt", fold)
    a = read(run(models, models["a"], tmp_path / "a.tif")["output_path"])
    b = read(run(models, fold_path, tmp_path / "b.tif")["output_path"])
    ens = save_ensemble(tmp_path / "ens.pt", [models["a"], fold_path])
    members = load_checkpoint(ens)["members"]
    assert "encoder" not in members[0] and members[1]["encoder"] == fold["encoder"]
    m = read(run(models, ens, tmp_path / "m.tif")["output_path"])
    valid = a != NODATA
    np.testing.assert_allclose(m[valid], (a[valid] + b[valid]) / 2, atol=1e-6)


def test_save_ensemble_refuses_models_that_cannot_be_averaged(models: Dict[str, Path], tmp_path: Path) -> None:
    other = make_checkpoint(models["raster"], tmp_path / "other.pt", model_name="unet_sc2_layers3_e8")
    with pytest.raises(DataError, match="model_name.*same kind"):
        save_ensemble(tmp_path / "x.pt", [models["a"], other])
    assert not (tmp_path / "x.pt").exists()


def test_area_percentile_cutoffs_are_stored_in_the_map(models: Dict[str, Path], tmp_path: Path) -> None:
    res = run(models, models["a"], tmp_path / "a.tif")
    a = read(res["output_path"])
    values = a[a != NODATA]
    cut = res["area_cutoffs"]
    assert cut["top1"] >= cut["top5"] >= cut["top10"] >= cut["top20"]
    for k in (1, 5, 10, 20):
        share = 100.0 * np.mean(values >= cut[f"top{k}"])
        assert k <= share < k + 1.0, (k, share)
    with rasterio.open(res["output_path"]) as src:
        assert float(src.tags()["top5_cutoff"]) == pytest.approx(cut["top5"])


@pytest.mark.parametrize("model_name, img_size", [("s2unet_sc2_layers2_e8", (8, 16)), ("unet_sc2_layers2_e8", None)])
def test_whole_globe_ensemble_is_the_mean_of_its_members(tmp_path: Path, model_name: str, img_size) -> None:
    """The globe path makes each group's input (resampled to a spherical model's grid, or wrapped in
    longitude for a planar one) once and runs every member on it: the same maps as one by one."""
    globe = write_globe(tmp_path / "globe.tif")
    paths = [make_checkpoint(globe, tmp_path / f"{s}.pt", model_name=model_name, img_size=img_size, seed=s)
             for s in (1, 2)]

    def on_globe(ckpt: Path, name: str, **kw) -> Dict:
        return predict(PredictConfig(checkpoint=str(ckpt), raster_path=str(globe), output_path=str(tmp_path / name),
                                     spherical=True, device="cpu", **kw))

    a, b = (read(on_globe(p, f"{p.stem}.tif")["output_path"]) for p in paths)
    res = on_globe(save_ensemble(tmp_path / "ens.pt", paths), "m.tif", uncertainty_path=str(tmp_path / "u.tif"))
    m, u = read(res["output_path"]), read(res["uncertainty_path"])
    assert res["members"] == 2 and np.abs(a - b).max() > 1e-3  # the members really differ
    np.testing.assert_allclose(m, (a + b) / 2, atol=1e-6)
    np.testing.assert_allclose(u, np.abs(a - b) / 2, atol=1e-6)
