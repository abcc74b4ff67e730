"""Which torch device and autocast a job runs with (shared by training and prediction).

torch is imported inside the functions, so importing this module stays torch-free.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable

from .errors import ConfigError


def resolve_device(name: str) -> Any:
    """auto -> cuda when usable, else cpu; an unusable explicit device is a ConfigError."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for but CUDA is not available here; use --device cpu (or auto)")
    if name == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ConfigError("device 'mps' asked for but it is not available here; use --device cpu (or auto)")
    return torch.device(name)


def autocast_for(amp_mode: str, device: Any) -> Callable[[], Any]:
    """A factory of autocast contexts for the AMP mode; fp16 on CPU is refused."""
    import torch

    if amp_mode == "none":
        return contextlib.nullcontext
    if amp_mode == "fp16" and device.type != "cuda":
        raise ConfigError("amp mode fp16 needs a CUDA GPU; on CPU use --amp_mode bf16 or none")
    dtype = torch.float16 if amp_mode == "fp16" else torch.bfloat16
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)
