"""Checkpoint: atomic writes, safe loading, clear errors, model rebuilt with the right weights."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core import checkpoint as ck
from core.errors import DataError
from core.models.registry import build_model, model_kwargs


def _ckpt(seed: int = 0) -> dict:
    torch.manual_seed(seed)
    model = build_model("unet_sc2_layers2_e8", 3)
    return {
        "model_name": "unet_sc2_layers2_e8",
        "model_kwargs": model_kwargs("unet_sc2_layers2_e8", 3),
        "state_dict": model.state_dict(),
        "epoch": seed,
        "rng": {"numpy": ["MT19937", [1, 2, 3], 0, 0, 0.0], "python": [3, [1, 2], None], "torch": torch.get_rng_state()},
    }


def test_round_trip_with_weights_only(tmp_path: Path) -> None:
    path = ck.save_checkpoint(tmp_path / "m" / "checkpoint.pt", _ckpt(1))
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == ck.FORMAT and raw["epoch"] == 1
    loaded = ck.load_checkpoint(path)
    model = ck.build_model_from_checkpoint(loaded)
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded["state_dict"][k])


def test_best_weights_are_used_for_prediction_when_present(tmp_path: Path) -> None:
    data = _ckpt(0)
    best = _ckpt(5)["state_dict"]
    data["best"] = {"epoch": 5, "score": 0.9, "metric": "val_roc_auc", "state_dict": best}
    loaded = ck.load_checkpoint(ck.save_checkpoint(tmp_path / "c.pt", data))
    model = ck.build_model_from_checkpoint(loaded)
    key = next(iter(best))
    assert torch.equal(model.state_dict()[key], best[key])
    last = ck.build_model_from_checkpoint(loaded, which="last")
    assert torch.equal(last.state_dict()[key], data["state_dict"][key])


def test_crash_during_write_keeps_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = ck.save_checkpoint(tmp_path / "checkpoint.pt", _ckpt(1))
    before = path.read_bytes()
    real_save = torch.save

    def half_then_crash(obj, fh, *a, **k):  # writes part of the file, then "the machine dies"
        real_save(obj, fh, *a, **k)
        fh.truncate(100)
        raise OSError("simulated crash in the middle of the write")

    monkeypatch.setattr(ck.torch, "save", half_then_crash)
    with pytest.raises(OSError, match="simulated"):
        ck.save_checkpoint(path, _ckpt(2))
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert ck.load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temp file left behind


def test_missing_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        ck.load_checkpoint(tmp_path / "nope.pt")


def test_truncated_file_is_a_data_error(tmp_path: Path) -> None:
    path = ck.save_checkpoint(tmp_path / "c.pt", _ckpt())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated|corrupt"):
        ck.load_checkpoint(path)


def test_garbage_file_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    path.write_bytes(b"this is not a checkpoint")
    with pytest.raises(DataError, match="cannot be read"):
        ck.load_checkpoint(path)


def test_foreign_state_dict_is_a_data_error_with_a_hint(tmp_path: Path) -> None:
    path = tmp_path / "orig.pt"
    torch.save(build_model("unet_sc2_layers2_e8", 3).state_dict(), path)
    with pytest.raises(DataError, match="bare state dict"):
        ck.load_checkpoint(path)


def test_pickled_object_is_refused_not_executed(tmp_path: Path) -> None:
    """A file that needs unpickling of arbitrary classes must not load (weights_only)."""
    path = tmp_path / "evil.pt"
    torch.save({"format": ck.FORMAT, "payload": Path("/etc/passwd")}, path)
    with pytest.raises(DataError, match="cannot be read"):
        ck.load_checkpoint(path)


def test_weights_that_do_not_fit_the_model_are_a_data_error(tmp_path: Path) -> None:
    data = _ckpt()
    data["model_kwargs"] = model_kwargs("unet_sc2_layers3_e8", 3)
    data["model_name"] = "unet_sc2_layers3_e8"
    with pytest.raises(DataError, match="do not fit"):
        ck.build_model_from_checkpoint(ck.load_checkpoint(ck.save_checkpoint(tmp_path / "c.pt", data)))


def test_model_info_names_bands_and_categorical_ones(repo_root: Path, tmp_path: Path) -> None:
    """`python -m core model-info`: what QGIS asks before it stacks evidence layers for a model."""
    import json
    import subprocess
    import sys

    data = _ckpt(0) | {"band_names": ["mag", "grav", "lith"], "encoder": {"categories": {"3": [1, 2]}},
                       "tile_size": [32, 32]}
    path = ck.save_checkpoint(tmp_path / "m.pt", data)
    info = ck.describe_checkpoint(path)
    assert info["band_names"] == ["mag", "grav", "lith"] and info["categorical_bands"] == ["lith"]
    proc = subprocess.run([sys.executable, "-m", "core", "model-info", "--checkpoint", str(path), "--events", "jsonl"],
                          cwd=repo_root, capture_output=True, text=True, timeout=120)
    result = [json.loads(line) for line in proc.stdout.splitlines() if '"result"' in line][0]["value"]
    assert proc.returncode == 0 and result["categorical_bands"] == ["lith"] and result["tile_size"] == [32, 32]
