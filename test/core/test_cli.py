"""The command line: original flags, validation before any data is read, JSON events, exit codes."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from core.cli import build_parser, config_from_args, main
from core.config import EvaluateConfig, LabelOptions, PredictConfig, TrainConfig, parse_point_buffer
from core.errors import ConfigError

ORIGINAL_TRAIN_FLAGS = (
    "--raster_path", "--shapefile_path", "--label_column", "--tile_size", "--stride", "--models", "--num_epochs",
    "--batch_size", "--learning_rate", "--max_grad_norm", "--label_smoothing_factor", "--amp_mode",
    "--enable_data_augmentation", "--enable_ddp", "--resume", "--output_path",
)
NEW_TRAIN_FLAGS = ("--seed", "--device", "--val_fraction", "--point_buffer", "--mask_path", "--loss", "--patience",
                   "--num_workers", "--categorical_bands", "--positive_values", "--layer", "--events",
                   "--ensemble", "--overwrite", "--weight_decay", "--band_penalty", "--pu_prior", "--band_scaling",
                   "--final_fit")
PREDICT_FLAGS = ("--checkpoint", "--model_name", "--raster_path", "--output_path", "--in_channels",
                 "--num_classes", "--spherical", "--tile_size", "--overlap", "--batch_size", "--device",
                 "--amp_mode", "--mask_path", "--events", "--uncertainty_path")


def run_cli(repo_root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=repo_root, capture_output=True, text=True,
                          timeout=120)


def test_help_documents_every_flag(repo_root: Path) -> None:
    train_help = run_cli(repo_root, "train", "--help").stdout
    for flag in ORIGINAL_TRAIN_FLAGS + NEW_TRAIN_FLAGS:
        assert flag in train_help, flag
    predict_help = subprocess.run([sys.executable, "predict_raster.py", "--help"], cwd=repo_root,
                                  capture_output=True, text=True).stdout
    for flag in PREDICT_FLAGS:
        assert flag in predict_help, flag


def test_original_flags_map_to_config() -> None:
    args = build_parser().parse_args([
        "train", "--raster_path", "r.tif", "--shapefile_path", "l.shp", "--tile_size", "64", "128",
        "--models", "unet_sc2_layers2_e8", "--num_epochs", "3", "--label_smoothing_factor", "0.1",
        "--amp_mode", "bf16", "--enable_data_augmentation", "--positive_values", "water,wet", "--categorical_bands",
        "3", "1",
    ])
    cfg = config_from_args(TrainConfig, args)
    assert cfg.tile_size == (64, 128) and cfg.stride is None
    assert cfg.models == ["unet_sc2_layers2_e8"] and cfg.num_epochs == 3
    assert cfg.label_smoothing == 0.1 and cfg.amp_mode == "bf16" and cfg.augment
    assert cfg.labels.positive_values == ["water", "wet"] and cfg.labels.label_column is None
    assert cfg.categorical_bands == [1, 3]
    assert TrainConfig.from_json(cfg.to_json()) == cfg
    named = config_from_args(TrainConfig, build_parser().parse_args([
        "train", "--raster_path", "r.tif", "--shapefile_path", "l.shp", "--categorical_bands", "lith_code", "4"]))
    assert named.categorical_bands == [4, "lith_code"]


def test_train_defaults_are_the_config_defaults() -> None:
    """The command line without options trains exactly what TrainConfig() describes (one source)."""
    args = build_parser().parse_args(["train", "--raster_path", "r.tif", "--shapefile_path", "l.shp"])
    cfg = config_from_args(TrainConfig, args)
    defaults = TrainConfig(raster_path="r.tif", labels=cfg.labels)
    assert cfg == defaults


def test_unknown_model_fails_before_reading_data(repo_root: Path, tmp_path: Path) -> None:
    """The raster does not exist: the error must still be about the model name (checked first)."""
    res = run_cli(repo_root, "train", "--raster_path", str(tmp_path / "missing.tif"), "--shapefile_path",
                  str(tmp_path / "missing.shp"), "--models", "unet_sc2_layers4_e32", "resnet50", "--events", "jsonl")
    assert res.returncode == 1
    events = [json.loads(l) for l in res.stdout.splitlines()]
    assert events[-1]["event"] == "error" and events[-1]["type"] == "ConfigError"
    assert "resnet50" in events[-1]["message"] and "unet_sc2_layers4_e32" in events[-1]["message"]
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--stride", "0"], "stride must be positive"),
        (["--tile_size", "1", "2", "3"], "one or two integers"),
        (["--amp_mode", "fp8"], "invalid choice"),
        (["--point_buffer", "ten"], "point buffer"),
        (["--device", "tpu"], "device"),
        (["--val_fraction", "0"], "val_fraction"),
    ],
)
def test_bad_arguments_exit_1_with_a_clear_message(repo_root: Path, extra: list, needle: str) -> None:
    res = run_cli(repo_root, "train", "--raster_path", "r.tif", "--shapefile_path", "l.shp", *extra)
    assert res.returncode == 1
    assert needle in res.stderr and "Traceback" not in res.stderr


def test_point_buffer_units() -> None:
    assert parse_point_buffer("0.5") == (0.5, "px")
    assert parse_point_buffer("1.5px") == (1.5, "px")
    assert parse_point_buffer("250m") == (250.0, "map")
    assert parse_point_buffer("2km") == (2000.0, "map")
    with pytest.raises(ConfigError):
        parse_point_buffer("-1")


def test_configs_refuse_bad_values_and_round_trip() -> None:
    with pytest.raises(ConfigError, match="checkpoint_path"):
        TrainConfig(raster_path="r", labels=LabelOptions(labels_path="l"), models=["unet_sc2_layers2_e8",
                    "unet_sc2_layers3_e8"], checkpoint_path="m.pt")
    with pytest.raises(ConfigError, match="overlap"):
        PredictConfig(checkpoint="c", raster_path="r", output_path="o", overlap=1.0)
    ev = EvaluateConfig(probability_map="p.tif", labels=LabelOptions(labels_path="l.shp"), output_dir="d")
    assert EvaluateConfig.from_json(ev.to_json()) == ev
    with pytest.raises(ConfigError, match="unknown configuration keys"):
        TrainConfig.from_dict({"raster_path": "r", "bogus": 1})


def test_list_models_and_check_env_run_without_data(repo_root: Path) -> None:
    res = run_cli(repo_root, "list-models", "--events", "jsonl")
    result = json.loads(res.stdout.splitlines()[-1])["value"]
    assert [m["name"] for m in result["models"]][:2] == ["unet_sc2_layers4_e32", "transformer_sc2_layers4_e128"]
    res = run_cli(repo_root, "check-env", "--events", "jsonl")
    report = json.loads(res.stdout.splitlines()[-1])["value"]
    assert report["packages"]["torch"] and report["packages"]["rasterio"] and report["problems"] == []
    assert report["missing"] == [] and report["torch_build"] == "CPU" and report["cuda_available"] is False
    assert report["venv"] is True and report["externally_managed"] is False and report["pip"]


def test_check_env_without_torch_reports_it(repo_root: Path) -> None:
    from core.environment import WORKER_PACKAGES

    """/usr/bin/python3 has Debian's geo stack but no torch: the report must say so, not crash."""
    res = subprocess.run(["/usr/bin/python3", "-m", "core", "check-env", "--events", "jsonl"], cwd=repo_root,
                         capture_output=True, text=True, timeout=120)
    report = json.loads(res.stdout.splitlines()[-1])["value"]
    assert report["packages"]["torch"] is None
    assert any("torch" in p for p in report["problems"])
    # Every package the worker imports is listed; here only the three pip must add are missing.
    assert set(report["packages"]) == {m for m, _ in WORKER_PACKAGES}
    assert report["missing"] == ["torch", "torch-harmonics", "elapid"] and report["torch_build"] is None
    # Debian's system Python: PEP 668 refuses pip there, so the fix must be a venv (it can make one).
    assert report["venv"] is False and report["externally_managed"] is True and report["ensurepip"] is True


def test_main_returns_exit_code_for_core_errors(tmp_path: Path) -> None:
    code = main(["predict", "--checkpoint", str(tmp_path / "none.pt"), "--raster_path", "r.tif",
                 "--output_path", str(tmp_path / "o.tif"), "--overlap", "2", "--events", "jsonl"])
    assert code == 1


def test_public_api_survives_submodule_imports_and_needs_no_torch(repo_root: Path) -> None:
    """`core.predict(cfg)` must stay the function after core.predict (the module) is imported,
    and importing the core (as QGIS does for the model list) must not import torch."""
    code = ("import sys, core, core.predict, core.evaluate, core.models.catalog;"
            "assert callable(core.predict) and callable(core.evaluate) and callable(core.train);"
            "assert 'torch' not in sys.modules, 'core imported torch'")
    res = subprocess.run([sys.executable, "-c", code], cwd=repo_root, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_ctrl_c_stops_training_cleanly_and_keeps_the_checkpoint(repo_root: Path, tiny_stack, tiny_points,
                                                                  tmp_path: Path) -> None:
    """SIGINT after the first epoch: exit 130, a cancelled event, the last good checkpoint on disk
    (and loadable), no traceback; then --resume continues from that epoch."""
    import signal

    from core.checkpoint import load_checkpoint

    out = tmp_path / "runs"
    args = [sys.executable, "-m", "core", "train", "--raster_path", str(tiny_stack.path), "--shapefile_path",
            str(tiny_points.path), "--models", "unet_sc2_layers2_e8", "--tile_size", "32", "32",
            "--num_epochs", "500", "--output_path", str(out), "--events", "jsonl"]
    proc = subprocess.Popen(args, cwd=repo_root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    events = []
    assert proc.stdout is not None
    for line in proc.stdout:
        events.append(json.loads(line))
        if events[-1]["event"] == "metric":
            proc.send_signal(signal.SIGINT)
            break
    rest, err = proc.communicate(timeout=120)
    events += [json.loads(l) for l in rest.splitlines()]
    assert proc.returncode == 130, err
    assert events[-1]["event"] == "error" and events[-1]["type"] == "Cancelled"
    assert "Traceback" not in err
    ckpt = load_checkpoint(out / "unet_sc2_layers2_e8" / "checkpoint.pt")
    done = int(ckpt["epoch"])
    assert 1 <= done < 500

    res = subprocess.run(args[:args.index("--num_epochs")] + ["--num_epochs", str(done + 1), "--resume",
                         "--output_path", str(out), "--events", "jsonl"], cwd=repo_root, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    epochs = [json.loads(l)["values"]["epoch"] for l in res.stdout.splitlines()
              if json.loads(l)["event"] == "metric"]
    assert epochs == [done + 1]
