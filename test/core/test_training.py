"""Training end to end on generated rasters (seeded fixtures) and the real shared datasets."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest
import torch

from core.checkpoint import build_model_from_checkpoint, encoder_from_checkpoint, load_checkpoint
from core.config import LabelOptions, TrainConfig
from core.errors import Cancelled, ConfigError, DataError, TrainingError
from core.training import train

TINY = "unet_sc2_layers2_e8"
METRIC_KEYS = {"model", "epoch", "train_loss", "val_loss", "val_iou", "val_accuracy", "val_roc_auc", "val_pr_auc", "lr"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _config(stack: Any, points: Any, out: Path, **kw: Any) -> TrainConfig:
    base: Dict[str, Any] = dict(
        raster_path=str(stack.path), labels=LabelOptions(labels_path=str(points.path)), models=[TINY],
        tile_size=(32, 32), num_epochs=2, batch_size=4, learning_rate=3e-3, output_path=str(out), seed=0,
        device="cpu", patience=0,
    )
    base.update(kw)
    return TrainConfig(**base)


class Recorder:
    """Collects the callbacks of one train() call."""

    def __init__(self) -> None:
        self.progress: List[float] = []
        self.logs: List[str] = []
        self.metrics: List[Dict[str, Any]] = []

    def kwargs(self) -> Dict[str, Any]:
        return {"progress": self.progress.append, "log": self.logs.append, "metric": self.metrics.append}


def test_train_writes_every_output_and_a_loadable_checkpoint(tiny_stack, tiny_points, tmp_path: Path) -> None:
    rec = Recorder()
    result = train(_config(tiny_stack, tiny_points, tmp_path), **rec.kwargs())
    info = result["models"][TINY]
    folder = tmp_path / TINY
    assert info["output_dir"] == str(folder) and info["epochs_run"] == 2
    assert all(math.isfinite(info["metrics"][k]) for k in ("val_loss", "val_iou", "val_accuracy"))
    for rel in ("checkpoint.pt", "config.json", "metrics.json", "train.log", "validation_blocks.gpkg",
                "output_data/metrics.pkl", "figures/curves.png", "figures/validation_0.png",
                "figures/validation_blocks.png", "report.html"):
        assert (folder / rel).is_file(), rel
    # One HTML training report: held-out skill first, then fit, then pixels, with the figures it names.
    assert info["report"] == str(folder / "report.html")
    page = (folder / "report.html").read_text(encoding="utf-8")
    assert page.index("Held-out skill") < page.index("Fit, not skill") < page.index("Pixels")
    for image in re.findall(r'<img src="([^"]+)"', page):
        assert (folder / image).is_file(), image
    assert 'src="figures/validation_blocks.png"' in page and 'src="figures/curves.png"' in page
    assert info["skill"]["val_n_deposits"] > 0  # the tiny split holds deposits out: the capture figure shows them
    assert 'src="figures/capture.png"' in page and f"{info['skill']['val_prediction_rate_auc']:.3f}" in page
    assert f"{info['metrics']['val_roc_auc']:.3f}" in page
    assert (folder / "figures" / "validation_0.png").read_bytes()[:4] == b"\x89PNG"

    ckpt = load_checkpoint(folder / "checkpoint.pt")
    raw = torch.load(folder / "checkpoint.pt", weights_only=True)
    assert raw["epoch"] == 2
    assert ckpt["band_names"] == tiny_stack.band_names and ckpt["band_count"] == 5
    assert ckpt["tile_size"] == [32, 32] and ckpt["seed"] == 0 and ckpt["model_name"] == TINY
    assert len(ckpt["validation_blocks"]) == len(ckpt["validation_blocks_map"]) >= 1
    assert ckpt["nodata"] == [tiny_stack.nodata] * 5 and "torch" in ckpt["versions"]
    assert ckpt["config"]["models"] == [TINY] and ckpt["best"]["epoch"] in (1, 2)
    model = build_model_from_checkpoint(ckpt)
    enc = encoder_from_checkpoint(ckpt)
    x = torch.zeros(1, enc.out_channels, 40, 40)
    assert model(x).shape == (1, 2, 40, 40)

    assert [m["epoch"] for m in rec.metrics] == [1, 2]
    assert all(METRIC_KEYS <= set(m) for m in rec.metrics)
    assert rec.progress == sorted(rec.progress) and rec.progress[-1] == pytest.approx(1.0)
    # The bar moves while labels, valid pixels and band statistics are read, before any epoch.
    from core.training import PREPARATION

    assert len([v for v in rec.progress if 0 < v <= PREPARATION]) >= 3
    epoch_lines = [line for line in rec.logs if line.startswith(f"{TINY} epoch ")]
    assert len(epoch_lines) == 2, epoch_lines  # one line per epoch
    assert "s/epoch, about" in epoch_lines[0] and "left" in epoch_lines[0]
    assert epoch_lines[1].endswith("s/epoch, last epoch")
    log_text = (folder / "train.log").read_text()
    assert "validation split" in log_text and f"{TINY} epoch 2" in log_text

    import geopandas as gpd
    import pandas as pd

    frame = pd.read_pickle(folder / "output_data" / "metrics.pkl")
    assert list(frame.columns) == [TINY]
    for row in ("num_params", "loss mean", "loss std", "mean IoU mean", "mean IoU std", "mean Accuracy mean",
                "mean Accuracy std", "training_time", "roc_auc", "pr_auc"):
        assert row in frame.index
    assert frame.loc["num_params", TINY] > 0
    history = json.loads((folder / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    blocks = gpd.read_file(folder / "validation_blocks.gpkg")
    assert len(blocks) == len(ckpt["validation_blocks"])


def test_rare_positives_are_ranked_above_background(make_tiny_stack_fn, make_points_fn, tmp_path: Path) -> None:
    """12 single-pixel positives in ~20k pixels: the trained model must rank them high (no collapse)."""
    stack = make_tiny_stack_fn(tmp_path, height=128, width=160, n_positive=16, n_negative=8, seed=3)
    points = make_points_fn(stack, tmp_path)
    cfg = _config(stack, points, tmp_path / "out", num_epochs=6, tile_size=(32, 32), learning_rate=5e-3)
    metrics = train(cfg)["models"][TINY]["metrics"]
    ckpt = load_checkpoint(tmp_path / "out" / TINY / "checkpoint.pt")
    summary = ckpt["split_summary"]
    assert summary["val_positive_pixels"] > 0
    assert metrics["val_roc_auc"] > 0.85
    # PR AUC of a collapsed / random model is about the positive share (< 0.5 %); demand far more
    assert metrics["val_pr_auc"] > 0.1


def test_pixel_model_with_pu_loss_band_penalty_and_band_augmentation_finds_the_signal_band(
        make_tiny_stack_fn, make_points_fn, tmp_path: Path) -> None:
    """The sparse-point recipe end to end: the per-pixel model, PU loss, group-lasso band penalty and
    band noise/dropout rank held-out positives high; the log reports the weight of every band."""
    stack = make_tiny_stack_fn(tmp_path, height=128, width=160, n_positive=16, n_negative=8, seed=3)
    points = make_points_fn(stack, tmp_path)
    rec = Recorder()
    cfg = _config(stack, points, tmp_path / "out", models=["pixel_sc1_layers1_e8"], num_epochs=8,
                  learning_rate=1e-2, loss="pu", band_penalty=0.05, augment=True, categorical_bands=[5])
    metrics = train(cfg, **rec.kwargs())["models"]["pixel_sc1_layers1_e8"]["metrics"]
    assert metrics["val_roc_auc"] > 0.85
    bands = [line for line in rec.logs if "band weights" in line]
    assert len(bands) == 1 and all(name in bands[0] for name in stack.band_names)
    screened = [line for line in rec.logs if line.startswith("band screening")]
    signal = re.search(r"signal (\d\.\d\d)", screened[0]) if len(screened) == 1 else None
    assert signal is not None and float(signal.group(1)) < 0.5  # the planted band bears less of the penalty


def test_bands_are_screened_once_and_only_for_a_model_with_a_band_layer(tiny_stack, tiny_points,
                                                                          tmp_path: Path) -> None:
    """Screening is work at start-up: the two members of an ensemble share it; a U-Net never asks for it."""
    pixel, logs = "pixel_sc1_layers1_e8", Recorder()
    train(_config(tiny_stack, tiny_points, tmp_path / "p", models=[pixel], num_epochs=1, ensemble=2), **logs.kwargs())
    assert sum(line.startswith("band screening") for line in logs.logs) == 1
    logs = Recorder()
    train(_config(tiny_stack, tiny_points, tmp_path / "u", num_epochs=1), **logs.kwargs())
    assert not any(line.startswith("band screening") for line in logs.logs)


def _numbered_sample(n_pos: int, n_bg: int, channels: int = 3) -> Any:
    """A PixelSample whose channel 0 holds each pixel's own index (to find it in the batches)."""
    from core.training import PixelSample

    n = n_pos + n_bg
    x = np.zeros((n, channels), np.float32)
    x[:, 0] = np.arange(n)
    y = np.zeros(n, np.int64)
    y[:n_pos] = 1
    return PixelSample(x, y, n_pos)


def _batch_ids(batch: Dict[str, torch.Tensor]) -> np.ndarray:
    return batch["x"][:, 0, 0, 0].numpy().astype(int)


def pixel_batches(sample: Any, seed: int, epoch: int, dist: Any) -> List[Dict[str, torch.Tensor]]:
    from core.training import PixelBatches

    return list(PixelBatches(sample, seed, epoch, dist))


def test_pixel_batches_pass_over_a_large_background_once_an_epoch_with_the_positives_in_every_step() -> None:
    from core.training import PIXEL_BATCH, PIXEL_EPOCH_STEPS, Dist, PixelBatches, pixel_steps

    sample = _numbered_sample(n_pos=7, n_bg=(PIXEL_EPOCH_STEPS + 1) * PIXEL_BATCH + 100)
    batches = pixel_batches(sample, seed=0, epoch=1, dist=Dist())
    steps = PIXEL_EPOCH_STEPS + 2
    assert len(batches) == len(PixelBatches(sample, 0, 1, Dist())) == pixel_steps(sample, Dist()) == steps
    seen: List[int] = []
    for b in batches:
        ids = _batch_ids(b)
        assert b["x"].shape == (ids.size, 3, 1, 1) and b["y"].shape == b["valid"].shape == (ids.size, 1, 1)
        assert bool(b["valid"].all())
        assert list(ids[:7]) == list(range(7))  # every positive in every step (fewer than PIXEL_POSITIVES)
        assert (b["y"][:7] == 1).all() and (b["y"][7:] == 0).all()
        seen += list(ids[7:])
    assert sorted(seen) == list(range(7, sample.y.size))  # each background pixel exactly once


def test_a_small_background_is_passed_over_again_until_the_epoch_has_its_steps() -> None:
    """A small study area's epoch holds as many steps (and so deposit views) as a large one's."""
    from core.training import PIXEL_BATCH, PIXEL_EPOCH_STEPS, Dist

    sample = _numbered_sample(n_pos=7, n_bg=2 * PIXEL_BATCH + 100)  # 3 steps a pass
    batches = pixel_batches(sample, seed=0, epoch=1, dist=Dist())
    assert len(batches) == PIXEL_EPOCH_STEPS
    background = [_batch_ids(b)[7:] for b in batches]
    passes = [np.concatenate(background[k:k + 3]) for k in range(0, PIXEL_EPOCH_STEPS - 2, 3)]
    assert len(passes) == PIXEL_EPOCH_STEPS // 3
    for ids in passes:  # every full pass holds each background pixel exactly once
        assert sorted(ids) == list(range(7, sample.y.size))
    assert not np.array_equal(passes[0], passes[1])  # each pass in a new order
    assert all(list(_batch_ids(b)[:7]) == list(range(7)) for b in batches)
    again = pixel_batches(sample, seed=0, epoch=1, dist=Dist())
    assert all(np.array_equal(_batch_ids(a), _batch_ids(b)) for a, b in zip(batches, again))  # resume repeats it
    other = pixel_batches(sample, seed=0, epoch=2, dist=Dist())
    assert not np.array_equal(_batch_ids(batches[0]), _batch_ids(other[0]))  # a new order every epoch


def test_pixel_batches_draw_the_positives_when_many_and_share_the_steps_over_ranks() -> None:
    from core.training import PIXEL_BATCH, PIXEL_EPOCH_STEPS, PIXEL_POSITIVES, Dist

    sample = _numbered_sample(n_pos=3 * PIXEL_POSITIVES, n_bg=3 * PIXEL_BATCH)
    batch = pixel_batches(sample, seed=1, epoch=1, dist=Dist())[0]
    ids = _batch_ids(batch)
    assert ids.size == PIXEL_POSITIVES + PIXEL_BATCH
    assert (ids[:PIXEL_POSITIVES] < 3 * PIXEL_POSITIVES).all() and int(batch["y"].sum()) == PIXEL_POSITIVES
    ranks = [pixel_batches(sample, seed=1, epoch=1, dist=Dist(enabled=True, rank=r, world=2)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == math.ceil(PIXEL_EPOCH_STEPS / 2)  # DDP ranks: equal shares
    background = [set(_batch_ids(b)[PIXEL_POSITIVES:]) for r in ranks for b in r]
    assert set().union(*background) == set(range(3 * PIXEL_POSITIVES, sample.y.size))


def test_a_per_pixel_model_with_the_pu_loss_trains_on_pixels_and_other_models_on_windows(
        tiny_stack, tiny_points, tmp_path: Path) -> None:
    """The pixel sample is drawn once (screening and training share it); a U-Net, or another loss, keeps windows."""
    pixel = "pixel_sc1_layers1_e8"
    rec = Recorder()
    result = train(_config(tiny_stack, tiny_points, tmp_path / "p", models=[pixel], num_epochs=2), **rec.kwargs())
    lines = [line for line in rec.logs if " trains on pixels, not windows: " in line]
    assert len(lines) == 1 and re.search(r"(\d+) positive and (\d+) background pixel", lines[0])
    n_pos = int(re.search(r"(\d+) positive and", lines[0]).group(1))
    summary = load_checkpoint(tmp_path / "p" / pixel / "checkpoint.pt")["split_summary"]
    assert n_pos == summary["train_positive_pixels"] > 0
    assert math.isfinite(result["models"][pixel]["metrics"]["val_loss"])
    for kw in ({"models": [TINY]}, {"models": [pixel], "loss": "weighted_ce"}):
        rec = Recorder()
        train(_config(tiny_stack, tiny_points, tmp_path / str(len(kw)), num_epochs=1, **kw), **rec.kwargs())
        assert not any(" trains on pixels" in line for line in rec.logs), kw


def test_a_context_model_trains_on_pixel_patches_is_refit_on_them_and_maps_on_windows(
        tiny_stack, tiny_points, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The small CNN trains on each sampled pixel's square of neighbours (its loss on the centre pixel),
    its final fit too, and predicts on windows; a raster too large to keep in memory keeps windows."""
    import rasterio

    from core.config import PredictConfig
    from core.dataset import EncodedRaster
    from core.predict import predict

    cnn = "cnn_sc1_layers1_e4"
    rec = Recorder()
    train(_config(tiny_stack, tiny_points, tmp_path / "c", models=[cnn], num_epochs=2), **rec.kwargs())
    lines = [line for line in rec.logs if f"{cnn} trains on 3 x 3-pixel patches" in line]
    assert len(lines) == 1 and re.search(r"(\d+) positive and (\d+) background pixel", lines[0])
    member = load_checkpoint(tmp_path / "c" / cnn / "checkpoint.pt")["members"][0]
    assert member["final_fit"]["epochs"] >= 1 and member["final_fit"]["positive_pixels"] > 0
    assert any(not torch.equal(member["state_dict"][k], member["held_out_state_dict"][k]) for k in member["state_dict"])
    out = tmp_path / "map.tif"
    predict(PredictConfig(checkpoint=str(tmp_path / "c" / cnn / "checkpoint.pt"), raster_path=str(tiny_stack.path),
                          output_path=str(out), device="cpu"))
    with rasterio.open(out) as src:
        values = src.read(1, masked=True).compressed()
    assert values.size and np.isfinite(values).all() and 0 <= values.min() < values.max() <= 1
    monkeypatch.setattr(EncodedRaster, "fits", classmethod(lambda cls, *args, **kwargs: False))
    rec = Recorder()
    train(_config(tiny_stack, tiny_points, tmp_path / "w", models=[cnn], num_epochs=1), **rec.kwargs())
    assert any(line.startswith(f"note: {cnn} trains on windows") for line in rec.logs)
    assert not any(" trains on 3 x 3-pixel patches" in line for line in rec.logs)


def test_patch_batches_centre_each_sampled_pixel(tiny_stack, tiny_points) -> None:
    """A context model's batch holds each sampled pixel's square with that pixel in the middle."""
    from functools import partial

    from core.dataset import EncodedRaster
    from core.encoding import fit_encoder
    from core.labels import rasterize_labels
    from core.raster import read_info
    from core.training import Dist, PixelBatches, draw_pixel_sample

    info = read_info(str(tiny_stack.path))
    labels = rasterize_labels(LabelOptions(labels_path=str(tiny_points.path)), info, lambda _m: None).labels
    encoder = fit_encoder(str(tiny_stack.path), [(0, 0, *info.shape)])
    memory = EncodedRaster(str(tiny_stack.path), encoder)
    sample = draw_pixel_sample(str(tiny_stack.path), memory, labels, memory.valid, encoder, seed=0)
    assert sample is not None and sample.flat is not None and 0 < sample.n_pos
    batch = next(iter(PixelBatches(sample, 0, 1, Dist(), partial(memory.patches, radius=2))))
    n = batch["y"].shape[0]
    assert batch["x"].shape == (n, encoder.out_channels, 5, 5) and batch["y"].shape == batch["valid"].shape == (n, 1, 1)
    assert torch.equal(batch["x"][:sample.n_pos, :, 2, 2], torch.from_numpy(sample.x[:sample.n_pos]))
    assert (batch["y"][:sample.n_pos] == 1).all()
    centres = {tuple(row) for row in sample.x.round(5).tolist()}
    assert all(tuple(row) in centres for row in batch["x"][:, :, 2, 2].numpy().round(5).tolist())
    turned = next(iter(PixelBatches(sample, 0, 1, Dist(), partial(memory.patches, radius=2), flips=True)))
    assert torch.equal(turned["x"][:sample.n_pos, :, 2, 2], batch["x"][:sample.n_pos, :, 2, 2])  # same pixels
    assert not torch.equal(turned["x"][:sample.n_pos], batch["x"][:sample.n_pos])  # turned around them


def test_same_seed_gives_the_same_metrics(tiny_stack, tiny_points, tmp_path: Path) -> None:
    a = train(_config(tiny_stack, tiny_points, tmp_path / "a", augment=True))["models"][TINY]["metrics"]
    b = train(_config(tiny_stack, tiny_points, tmp_path / "b", augment=True))["models"][TINY]["metrics"]
    assert a == b
    c = train(_config(tiny_stack, tiny_points, tmp_path / "c", augment=True, seed=1))["models"][TINY]["metrics"]
    assert c != a


@pytest.mark.parametrize("model", [TINY, "pixel_sc1_layers2_e8", "cnn_sc1_layers1_e4"])  # a tile-wide buffer; a
# local model's masked split; a context model's pixel patches (flipped: augmentation on)
def test_interrupted_run_resumes_to_the_same_result(model: str, tiny_stack, tiny_points, tmp_path: Path) -> None:
    """Stop in epoch 3 of 4, resume: the result equals an uninterrupted 4-epoch run."""
    extra = {"augment": True} if model.startswith("cnn") else {}
    full = train(_config(tiny_stack, tiny_points, tmp_path / "full", num_epochs=4, models=[model],
                         **extra))["models"][model]

    out = tmp_path / "cut"
    epochs_done: List[int] = []

    def stop_in_epoch_3() -> bool:
        return len(epochs_done) >= 2

    with pytest.raises(Cancelled):
        train(_config(tiny_stack, tiny_points, out, num_epochs=4, models=[model], **extra), should_stop=stop_in_epoch_3,
              metric=lambda m: epochs_done.append(m["epoch"]))
    assert load_checkpoint(out / model / "checkpoint.pt")["epoch"] == 2

    rec = Recorder()
    resumed = train(_config(tiny_stack, tiny_points, out, num_epochs=4, resume=True, models=[model], **extra),
                    **rec.kwargs())["models"][model]
    assert [m["epoch"] for m in rec.metrics] == [3, 4]
    assert resumed["epochs_run"] == 2 and resumed["epoch"] == 4
    ckpt = load_checkpoint(out / model / "checkpoint.pt")
    assert ckpt["split_summary"]["masked"] is (model != TINY)
    assert [h["epoch"] for h in ckpt["history"]] == [1, 2, 3, 4]
    assert ckpt["optimizer"]["state"], "optimiser moments must be carried over"
    for key in full["metrics"]:
        assert resumed["metrics"][key] == pytest.approx(full["metrics"][key], rel=1e-5, abs=1e-6)


def test_a_local_model_trained_with_the_tile_wide_buffer_resumes_on_that_split(
        tiny_stack, tiny_points, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Checkpoints from before the masked split (no ``masked`` in the summary) keep their split on resume."""
    from core.models.catalog import ModelSpec

    model = "pixel_sc1_layers2_e8"
    with monkeypatch.context() as m:
        m.setattr(ModelSpec, "split_buffer", property(lambda self: None))  # what earlier versions did
        train(_config(tiny_stack, tiny_points, tmp_path, num_epochs=1, models=[model]))
    ckpt = load_checkpoint(tmp_path / model / "checkpoint.pt")
    del ckpt["split_summary"]["masked"]  # earlier versions did not write it
    torch.save(ckpt, tmp_path / model / "checkpoint.pt")
    rec = Recorder()
    train(_config(tiny_stack, tiny_points, tmp_path, num_epochs=2, models=[model], resume=True), **rec.kwargs())
    assert [m["epoch"] for m in rec.metrics] == [2]
    assert not load_checkpoint(tmp_path / model / "checkpoint.pt")["split_summary"]["masked"]


def test_zero_epochs_with_resume_only_validates_the_checkpoint(tiny_stack, tiny_points, tmp_path: Path) -> None:
    first = train(_config(tiny_stack, tiny_points, tmp_path, num_epochs=1))["models"][TINY]
    path = tmp_path / TINY / "checkpoint.pt"
    before = path.read_bytes()
    rec = Recorder()
    again = train(_config(tiny_stack, tiny_points, tmp_path, num_epochs=0, resume=True), **rec.kwargs())["models"][TINY]
    assert again["epochs_run"] == 0 and rec.metrics == []
    assert path.read_bytes() == before
    assert again["metrics"]["val_loss"] == pytest.approx(first["metrics"]["val_loss"], rel=1e-6)


def test_zero_epochs_without_checkpoint_validates_an_untrained_model(tiny_stack, tiny_points, tmp_path: Path) -> None:
    rec = Recorder()
    res = train(_config(tiny_stack, tiny_points, tmp_path, num_epochs=0), **rec.kwargs())["models"][TINY]
    assert res["epochs_run"] == 0 and math.isfinite(res["metrics"]["val_loss"])
    assert any("untrained" in line for line in rec.logs)
    assert load_checkpoint(tmp_path / TINY / "checkpoint.pt")["epoch"] == 0


def test_cancel_before_any_epoch_raises_cancelled_and_writes_no_checkpoint(tiny_stack, tiny_points, tmp_path) -> None:
    with pytest.raises(Cancelled):
        train(_config(tiny_stack, tiny_points, tmp_path), should_stop=lambda: True)
    assert not (tmp_path / TINY / "checkpoint.pt").exists()


def test_fp16_on_cpu_is_a_config_error_before_data_is_read(tmp_path: Path) -> None:
    cfg = TrainConfig(raster_path=str(tmp_path / "missing.tif"), labels=LabelOptions(labels_path="x.shp"),
                      models=[TINY], amp_mode="fp16", device="cpu", output_path=str(tmp_path))
    with pytest.raises(ConfigError, match="bf16"):
        train(cfg)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_cuda_is_a_config_error(tmp_path: Path) -> None:
    cfg = TrainConfig(raster_path=str(tmp_path / "missing.tif"), labels=LabelOptions(labels_path="x.shp"),
                      models=[TINY], device="cuda", output_path=str(tmp_path))
    with pytest.raises(ConfigError, match="CUDA"):
        train(cfg)


def test_missing_raster_is_a_data_error(tmp_path: Path) -> None:
    cfg = TrainConfig(raster_path=str(tmp_path / "missing.tif"), labels=LabelOptions(labels_path="x.shp"),
                      models=[TINY], device="cpu", output_path=str(tmp_path))
    with pytest.raises(DataError, match="does not exist"):
        train(cfg)


def test_tile_larger_than_raster_is_a_data_error(tiny_stack, tiny_points, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="larger than the raster"):
        train(_config(tiny_stack, tiny_points, tmp_path, tile_size=(512, 512)))


def test_exploding_loss_is_a_training_error(tiny_stack, tiny_points, tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="learning_rate"):
        train(_config(tiny_stack, tiny_points, tmp_path, learning_rate=1e30, max_grad_norm=1e30, num_epochs=3))


def test_early_stopping_stops_when_nothing_improves(tiny_stack, tiny_points, tmp_path: Path) -> None:
    res = train(_config(tiny_stack, tiny_points, tmp_path, num_epochs=8, patience=1, learning_rate=1e-12))
    assert res["models"][TINY]["epochs_run"] < 8


def _stale_counts(history: List[Dict[str, Any]]) -> List[int]:
    """The patience counter after each epoch, recomputed from the history (as the loop counts it)."""
    from core.training import monitor_score

    best, stale, out = None, 0, []
    for row in history:
        name, score = monitor_score({k: (float("nan") if v is None else v) for k, v in row.items()})
        if best is None or best[0] != name or score > best[1]:
            best, stale = (name, score), 0
        else:
            stale += 1
        out.append(stale)
    return out


def test_a_stopped_and_resumed_run_equals_an_uninterrupted_one_with_early_stopping(
        tiny_stack, tiny_points, tmp_path: Path) -> None:
    """The patience counter is part of the saved loop state: resuming does not restart it."""
    kw = dict(num_epochs=12, patience=3, learning_rate=2e-3)
    full = train(_config(tiny_stack, tiny_points, tmp_path / "full", **kw))["models"][TINY]
    history = load_checkpoint(tmp_path / "full" / TINY / "checkpoint.pt")["history"]
    stale = _stale_counts(history)
    assert full["epoch"] < 12 and stale[-1] == 3, "the uninterrupted run must stop early for this test to mean anything"
    cut = max(i + 1 for i, s in enumerate(stale[:-1]) if s > 0)  # stop after an epoch that did not improve
    done: List[int] = []
    with pytest.raises(Cancelled):
        train(_config(tiny_stack, tiny_points, tmp_path / "cut", **kw), should_stop=lambda: len(done) >= cut,
              metric=lambda m: done.append(m["epoch"]))
    saved = load_checkpoint(tmp_path / "cut" / TINY / "checkpoint.pt")
    assert saved["epoch"] == cut and saved["patience_counter"] == stale[cut - 1] > 0
    rec = Recorder()
    resumed = train(_config(tiny_stack, tiny_points, tmp_path / "cut", resume=True, **kw),
                    **rec.kwargs())["models"][TINY]
    assert resumed["epoch"] == full["epoch"], "the resumed run must stop early at the same epoch"
    assert [m["epoch"] for m in rec.metrics] == list(range(cut + 1, full["epoch"] + 1))
    again = load_checkpoint(tmp_path / "cut" / TINY / "checkpoint.pt")
    assert again["history"] == history and again["best"]["epoch"] == load_checkpoint(
        tmp_path / "full" / TINY / "checkpoint.pt")["best"]["epoch"]
    for key in full["metrics"]:
        assert resumed["metrics"][key] == pytest.approx(full["metrics"][key], rel=1e-5, abs=1e-6)
    # Resuming a run that already stopped early trains nothing more.
    rec = Recorder()
    train(_config(tiny_stack, tiny_points, tmp_path / "full", resume=True, **kw), **rec.kwargs())
    assert rec.metrics == [] and any("stopped early" in line for line in rec.logs)


def test_loop_state_round_trips_through_the_checkpoint(tmp_path: Path) -> None:
    from core.checkpoint import save_checkpoint
    from core.training import LoopState

    model = torch.nn.Linear(3, 2)
    state = LoopState()
    for epoch, auc in enumerate([0.6, 0.7, 0.65, 0.64], start=1):
        state.record({"model": TINY, "epoch": epoch, "val_roc_auc": auc, "val_loss": 1.0 - auc}, model)
    assert (state.epoch, state.stale, state.best["epoch"]) == (4, 2, 2)
    save_checkpoint(tmp_path / "c.pt", {"model_name": TINY, "model_kwargs": {}, "state_dict": {},
                                        **state.to_checkpoint()})
    back = LoopState.from_checkpoint(load_checkpoint(tmp_path / "c.pt"))
    assert (back.epoch, back.stale, back.history) == (state.epoch, state.stale, state.history)
    assert back.best["epoch"] == 2 and back.best["score"] == pytest.approx(0.7)
    assert all(torch.equal(back.best["state_dict"][k], v) for k, v in state.best["state_dict"].items())
    legacy = {k: v for k, v in state.to_checkpoint().items() if k != "patience_counter"}
    assert LoopState.from_checkpoint(legacy).stale == 2  # older checkpoints: epochs since the best one


def test_bf16_autocast_trains_on_cpu(tiny_stack, tiny_points, tmp_path: Path) -> None:
    res = train(_config(tiny_stack, tiny_points, tmp_path, amp_mode="bf16", num_epochs=1))["models"][TINY]
    assert math.isfinite(res["metrics"]["val_loss"])


def test_two_models_in_one_run_share_metrics_pkl_columns(tiny_stack, tiny_points, tmp_path: Path) -> None:
    import pandas as pd

    models = [TINY, "transformer_sc2_layers1_e16"]
    res = train(_config(tiny_stack, tiny_points, tmp_path, models=models, num_epochs=1))
    assert set(res["models"]) == set(models)
    frame = pd.read_pickle(tmp_path / models[1] / "output_data" / "metrics.pkl")
    assert list(frame.columns) == models


def test_spherical_model_on_a_local_raster_warns_and_trains(tiny_stack, tiny_points, tmp_path: Path) -> None:
    rec = Recorder()
    name = "s2unet_sc2_layers2_e8"
    res = train(_config(tiny_stack, tiny_points, tmp_path, models=[name], num_epochs=1), **rec.kwargs())
    assert math.isfinite(res["models"][name]["metrics"]["val_loss"])
    assert any("geometry is approximate" in line for line in rec.logs)
    ckpt = load_checkpoint(tmp_path / name / "checkpoint.pt")
    assert ckpt["model_kwargs"]["img_size"] == [32, 32]


def _global_stack(folder: Path) -> tuple:
    """A whole-globe EPSG:4326 raster (32 x 64) with a planted signal and point labels."""
    import geopandas as gpd
    import rasterio
    from rasterio.transform import from_origin
    from shapely.geometry import Point

    rng = np.random.default_rng(7)
    h, w = 32, 64
    sites = [(int(r), int(c)) for r, c in zip(rng.integers(4, h - 4, 24), rng.integers(0, w, 24))]
    bands = rng.normal(0, 0.3, (3, h, w)).astype("float32")
    for r, c in sites:
        bands[0, r, c] += 4.0
    path = folder / "globe.tif"
    with rasterio.open(path, "w", driver="GTiff", height=h, width=w, count=3, dtype="float32", crs="EPSG:4326",
                       transform=from_origin(-180, 90, 360 / w, 180 / h), nodata=-9999) as dst:
        dst.write(bands)
    pts = gpd.GeoDataFrame({"label": [1] * len(sites)},
                           geometry=[Point(-180 + (c + 0.5) * 360 / w, 90 - (r + 0.5) * 180 / h) for r, c in sites],
                           crs="EPSG:4326")
    pts.to_file(folder / "globe_points.gpkg", driver="GPKG")
    return path, folder / "globe_points.gpkg"


def test_spherical_model_on_a_global_raster_takes_the_whole_globe(tmp_path: Path) -> None:
    raster, labels = _global_stack(tmp_path)
    name = "s2unet_sc2_layers2_e8"
    rec = Recorder()
    cfg = TrainConfig(raster_path=str(raster), labels=LabelOptions(labels_path=str(labels)), models=[name],
                      tile_size=(8, 8), num_epochs=2, batch_size=1, learning_rate=3e-3, output_path=str(tmp_path / "o"),
                      device="cpu", augment=True, patience=0)
    res = train(cfg, **rec.kwargs())["models"][name]
    assert math.isfinite(res["metrics"]["val_loss"])
    assert not any("geometry is approximate" in line for line in rec.logs)
    ckpt = load_checkpoint(tmp_path / "o" / name / "checkpoint.pt")
    assert ckpt["whole_globe"] is True and ckpt["tile_size"] == [32, 64]
    assert ckpt["model_kwargs"]["img_size"] == [32, 64] and ckpt["validation_blocks"]


def test_whole_globe_training_pixels_keep_the_buffer_across_the_antimeridian(tmp_path: Path) -> None:
    """No training pixel lies within the buffer of a validation pixel, measured around the globe."""
    from core.sampling import make_split, resolve_tile
    from core.training import globe_masks, prepare_raster

    raster, labels = _global_stack(tmp_path)
    cfg = TrainConfig(raster_path=str(raster), labels=LabelOptions(labels_path=str(labels)),
                      models=["s2unet_sc2_layers2_e8"], device="cpu")
    data = prepare_raster(cfg, lambda _m: None)
    h, w = data.info.shape
    split = make_split(data.labels.labels, data.usable, resolve_tile(None, h, w), val_fraction=0.2, seed=0,
                       positive_points=data.labels.positive_points)
    train, val = globe_masks(data.usable, split)
    br, bc = split.buffer
    assert train.any() and val.any() and not (train & val).any()
    for r, c in zip(*np.nonzero(val)):
        assert not train[max(r - br, 0):r + br + 1][:, np.arange(c - bc, c + bc + 1) % w].any(), (r, c)
    # the case the wrap is for: a validation block within a buffer of the east or west edge
    r0, c0, r1, c1 = split.val_blocks[0]
    moved = [(r0, w - (c1 - c0), r1, w)]  # the first block, shifted to the east edge
    split.val_blocks = moved
    train, val = globe_masks(data.usable, split)
    rows = slice(moved[0][0], moved[0][2])
    assert val[rows, -1].any() and not train[rows, :bc].any(), "the buffer must reach across the antimeridian"


# ----------------------------------------------------------------------------- real data


def _real(shared_data: Path, tmp_path: Path, raster: str, labels: LabelOptions, **kw: Any) -> Dict[str, Any]:
    cfg = TrainConfig(raster_path=str(shared_data / raster), labels=labels, models=[TINY], tile_size=(64, 64),
                      num_epochs=1, batch_size=4, learning_rate=3e-3, output_path=str(tmp_path), device="cpu",
                      patience=0, **kw)
    res = train(cfg)["models"][TINY]
    ckpt = load_checkpoint(tmp_path / TINY / "checkpoint.pt")
    assert ckpt["epoch"] == 1 and (tmp_path / TINY / "output_data" / "metrics.pkl").is_file()
    assert math.isfinite(res["metrics"]["val_loss"]) and math.isfinite(res["metrics"]["val_accuracy"])
    return ckpt


def test_real_ecuador_landslides_with_study_mask(shared_data: Path, tmp_path: Path) -> None:
    folder = shared_data / "ecuador_landslides"
    ckpt = _real(shared_data, tmp_path, "ecuador_landslides/ecuador_ta_stack.tif",
                 LabelOptions(labels_path=str(folder / "landslide_points.shp"), label_column="label",
                              mask_path=f"{folder / 'ecuador_landslides.gpkg'}|layername=study_mask"))
    assert ckpt["band_count"] == 5 and ckpt["split_summary"]["train_positive_pixels"] > 0


def test_a_local_model_trains_on_more_deposits_and_never_on_a_validation_pixel(shared_data: Path,
                                                                             tmp_path: Path) -> None:
    """The per-pixel model's windows reach into the narrow buffer; block and buffer pixels never train."""
    from core.models.catalog import parse_model_name
    from core.sampling import buffer_mask
    from core.training import prepare_raster, tiles_for_model

    folder = shared_data / "ecuador_landslides"
    pixel = "pixel_sc1_layers2_e8"
    labels = LabelOptions(labels_path=str(folder / "landslide_points.shp"), label_column="label",
                          mask_path=f"{folder / 'ecuador_landslides.gpkg'}|layername=study_mask")
    cfg = TrainConfig(raster_path=str(folder / "ecuador_ta_stack.tif"), labels=labels, models=[pixel, TINY],
                      tile_size=(64, 64), num_epochs=1, batch_size=4, output_path=str(tmp_path), device="cpu",
                      patience=0)
    data = prepare_raster(cfg, lambda _m: None)
    td = tiles_for_model(cfg, parse_model_name(pixel), data, {}, None, lambda _m: None)
    blocks = buffer_mask(data.info.shape, td.split.val_blocks, (0, 0))
    kept_out = buffer_mask(data.info.shape, td.split.val_blocks, td.split.buffer)
    reaches_in = False
    for i, (r0, c0, r1, c1) in enumerate(td.train_set.windows):
        valid = td.train_set[i]["valid"].numpy()
        assert not (valid & kept_out[r0:r1, c0:c1]).any(), "a validation or buffer pixel would train"
        reaches_in |= bool(blocks[r0:r1, c0:c1].any())
    assert reaches_in and td.split.buffer == (4, 4)

    train(cfg)
    local, wide = (load_checkpoint(tmp_path / m / "checkpoint.pt")["split_summary"] for m in (pixel, TINY))
    assert local["masked"] and not wide["masked"] and tuple(wide["buffer"]) == (64, 64)
    assert local["train_positive_points"] > wide["train_positive_points"]
    log = (tmp_path / pixel / "train.log").read_text()
    assert "training windows reach into it, its pixels and the blocks masked out" in log


def test_real_cloncurry_without_label_column_and_reprojected(shared_data: Path, tmp_path: Path) -> None:
    import geopandas as gpd

    folder = shared_data / "cloncurry_iocg"
    gdf = gpd.read_file(folder / "cloncurry_iocg.gpkg", layer="iocg_deposits").to_crs("EPSG:4326")
    reproj = tmp_path / "deposits_4326.gpkg"
    gdf[["geometry"]].to_file(reproj, driver="GPKG")
    ckpt = _real(shared_data, tmp_path / "run", "cloncurry_iocg/cloncurry_stack.tif",
                 LabelOptions(labels_path=str(reproj)), categorical_bands=[2])
    assert ckpt["split_summary"]["train_positive_points"] + ckpt["split_summary"]["val_positive_points"] > 200
    assert "2" in ckpt["encoder"]["categories"]


def test_real_landsat_water_string_classes(shared_data: Path, tmp_path: Path) -> None:
    folder = shared_data / "landsat_water"
    ckpt = _real(shared_data, tmp_path, "landsat_water/landsat_tm_stack.tif",
                 LabelOptions(labels_path=str(folder / "training_polygons.shp"), label_column="class",
                              positive_values=["water"]))
    assert ckpt["band_count"] == 7


def test_out_of_memory_is_a_resource_error_suggesting_smaller_work(tiny_stack, tiny_points, tmp_path: Path) -> None:
    """A model far larger than the machine (terabytes of weights) fails with advice, not a traceback."""
    from core.errors import ResourceError

    with pytest.raises(ResourceError, match="smaller --tile_size or --batch_size"):
        train(_config(tiny_stack, tiny_points, tmp_path, models=["unet_sc1_layers1_e2000000"], num_epochs=1))


def test_checkpoint_path_overrides_the_default_location(tiny_stack, tiny_points, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere" / "model.pt"
    res = train(_config(tiny_stack, tiny_points, tmp_path / "out", num_epochs=1, checkpoint_path=str(target)))
    assert res["models"][TINY]["checkpoint"] == str(target)
    assert load_checkpoint(target)["epoch"] == 1
    assert not (tmp_path / "out" / TINY / "checkpoint.pt").exists()
    assert (tmp_path / "out" / TINY / "metrics.json").is_file()


@pytest.mark.parametrize("bands", [1, 5, 99])
def test_band_penalty_grows_with_the_log_of_the_band_count(bands: int) -> None:
    """--band_penalty x sqrt(ln bands): 99 bands get 0.014 -> 0.030, 5 bands 0.018, a single band none."""
    from core.encoding import BandEncoder
    from core.losses import band_group_penalty
    from core.models.registry import build_model
    from core.training import band_penalty_fn

    torch.manual_seed(0)
    enc = BandEncoder(band_names=[f"b{i}" for i in range(bands)], mean=[0.0] * bands, std=[1.0] * bands)
    model = build_model("pixel_sc1_layers1_e8", in_channels=bands)
    logs: List[str] = []
    fn = band_penalty_fn(model, enc, 0.014, logs.append)
    if bands == 1:
        assert fn is None and "single band" in logs[0]
        return
    assert fn is not None
    with torch.no_grad():
        expected = 0.014 * math.sqrt(math.log(bands)) * float(band_group_penalty(model.band_layer.weight,
                                                                                 enc.channel_groups()))
        assert float(fn()) == pytest.approx(expected, rel=1e-6)
    assert f"= {0.014 * math.sqrt(math.log(bands)):.3g}" in logs[0]
