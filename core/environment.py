"""What the worker's Python has and lacks: the report of ``python -m core check-env``.

It runs in the Python that will run the worker (never needs torch), so the QGIS side can
tell the user exactly what is missing there, which torch build it is, whether a GPU is
usable, and whether that Python can make a virtual environment (Debian ships ``ensurepip``
separately, in python3-venv) or install into itself (PEP 668 "externally managed").
"""
from __future__ import annotations

import platform
import shutil
import sys
import sysconfig
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

#: Every package the worker imports: (module, pip distribution). All are needed by some tool.
WORKER_PACKAGES: Tuple[Tuple[str, str], ...] = (
    ("torch", "torch"),
    ("torch_harmonics", "torch-harmonics"),
    ("rasterio", "rasterio"),
    ("geopandas", "geopandas"),
    ("fiona", "fiona"),  # core/labels.py lists layers with it; geopandas >= 1 no longer brings it
    ("numpy", "numpy"),
    ("scipy", "scipy"),
    ("sklearn", "scikit-learn"),
    ("matplotlib", "matplotlib"),
    ("pandas", "pandas"),
    ("elapid", "elapid"),  # MaxEnt, the cross-validation baseline (installed without its dependencies)
)


def _package_version(name: str) -> Optional[str]:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _import_version(module: str, dist: str) -> Optional[str]:
    """The version of an importable module, None when importing it fails for any reason."""
    try:
        mod = __import__(module)
    except Exception:  # noqa: BLE001 - a broken install is reported, not raised
        return None
    return str(getattr(mod, "__version__", None) or _package_version(dist) or "installed")


def _importable(module: str) -> bool:
    try:
        __import__(module)
    except Exception:  # noqa: BLE001
        return False
    return True


def in_venv() -> bool:
    """True inside a virtual environment (venv or virtualenv)."""
    return sys.prefix != getattr(sys, "base_prefix", sys.prefix)


def externally_managed() -> bool:
    """PEP 668: the system Python refuses ``pip install`` (Debian 12's /usr/bin/python3 does)."""
    return not in_venv() and (Path(sysconfig.get_path("stdlib")) / "EXTERNALLY-MANAGED").is_file()


def nvidia_driver_found() -> bool:
    """An NVIDIA driver is installed (what a CUDA build of torch needs)."""
    return bool(shutil.which("nvidia-smi")) or Path("/proc/driver/nvidia/version").is_file()


def _torch_facts() -> Dict[str, Any]:
    """Build (CPU / CUDA x / ROCm x), whether a GPU is usable and which; torch must be importable."""
    import torch

    cuda_version = getattr(torch.version, "cuda", None)
    hip_version = getattr(torch.version, "hip", None)
    build = f"CUDA {cuda_version}" if cuda_version else f"ROCm {hip_version}" if hip_version else "CPU"
    usable = bool(torch.cuda.is_available())
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if usable else []
    return {"torch_build": build, "cuda_available": usable, "gpus": gpus}


def check_environment() -> Dict[str, Any]:
    """Versions of what the worker needs, the torch build, GPUs, and how this Python can be extended."""
    # pip and ensurepip first: imported after the scientific stack, setuptools' distutils shim warns.
    pip_version, has_ensurepip = _import_version("pip", "pip"), _importable("ensurepip")
    packages: Dict[str, Optional[str]] = {module: _import_version(module, dist) for module, dist in WORKER_PACKAGES}
    missing: List[str] = [dist for module, dist in WORKER_PACKAGES if packages[module] is None]
    facts: Dict[str, Any] = {"torch_build": None, "cuda_available": False, "gpus": []}
    if packages["torch"]:
        facts = _torch_facts()
    problems = [f"{module} is not importable by {sys.executable}" for module, _ in WORKER_PACKAGES
                if packages[module] is None]
    driver = nvidia_driver_found()
    if driver and facts["torch_build"] == "CPU":
        problems.append("an NVIDIA driver is installed but torch is a CPU build: the GPU is not used "
                        "(the tool 'Set up worker environment' with the CUDA build fixes it)")
    return {
        "python": sys.executable,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "os": sys.platform,
        "prefix": sys.prefix,
        "base_prefix": getattr(sys, "base_prefix", sys.prefix),
        "venv": in_venv(),
        "externally_managed": externally_managed(),
        "pip": pip_version,
        "ensurepip": has_ensurepip,
        "packages": packages,
        "missing": missing,
        "nvidia_driver": driver,
        **facts,
        "problems": problems,
    }
