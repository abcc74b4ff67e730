"""Where a training run keeps what it makes, when the user names no place.

A trained model is hours of work: it must outlive QGIS, so it never goes to a temporary
folder. Each run gets a new folder, named by model and time, under a lasting place: the
project's folder when the project is saved (``<project folder>/stack_segmenter_runs``),
else ``~/StackSegmenter/runs``. A second run never collides with the first.
"""
from __future__ import annotations

import datetime as _dt
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Tuple

from qgis.core import QgsProcessing, QgsProcessingOutputLayerDefinition, QgsProject

PROJECT_RUNS = "stack_segmenter_runs"
HOME_RUNS = Path("StackSegmenter") / "runs"


def unset_destination(value: Any) -> bool:
    """True when a destination parameter was left empty or set to a temporary output."""
    if isinstance(value, QgsProcessingOutputLayerDefinition):
        value = value.sink.staticValue()
    return value in (None, "") or str(value) == QgsProcessing.TEMPORARY_OUTPUT


def runs_home(project: Optional[QgsProject]) -> Path:
    """The lasting place for new runs: beside the saved project, else in the user's home."""
    if project is not None and project.fileName():
        return Path(project.absolutePath()) / PROJECT_RUNS
    return Path.home() / HOME_RUNS


def new_run_folder(home: Path, prefix: str, now: Optional[_dt.datetime] = None) -> Path:
    """Creates ``home/<prefix>_<YYYY-MM-DD_HHMMSS>`` (``_2``, ``_3``... when taken) and returns it."""
    stamp = (now or _dt.datetime.now()).strftime("%Y-%m-%d_%H%M%S")
    home.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        folder = home / (f"{prefix}_{stamp}" + (f"_{n}" if n > 1 else ""))
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        return folder
    raise FileExistsError(f"no free run folder name under {home}")


def _highest_missing(path: Path) -> Optional[Path]:
    """The highest folder of ``path`` (itself included) that does not exist yet: what creating it adds."""
    missing = None
    for folder in [path, *path.parents]:
        if folder.exists():
            break
        missing = folder
    return missing


def _stamp(path: Path) -> Optional[Tuple[int, int]]:
    """(mtime in ns, size) of a file, None when there is none: tells whether a run wrote it."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


@dataclass
class RunFolder:
    """A training run's folder and model file, and the highest folder this run created (if any)."""

    folder: Path
    model: Path
    created_root: Optional[Path] = None
    model_before: Optional[Tuple[int, int]] = None
    """(mtime ns, size) of a model file that was already there: a refused run must not keep folders for it."""

    @classmethod
    def make(cls, folder: Optional[Path], model: Optional[Path], project: Optional[QgsProject],
             prefix: str) -> "RunFolder":
        """The given folder (created when missing), or a new one under ``runs_home``; the model defaults
        to ``<folder>/<folder name>.pt``, so its file name tells runs apart."""
        if folder is None:
            home = runs_home(project)
            root = _highest_missing(home)
            folder = new_run_folder(home, prefix)
            root = root or folder
        else:
            root = _highest_missing(folder)
            folder.mkdir(parents=True, exist_ok=True)
        model = model or folder / f"{folder.name}.pt"
        return cls(folder, model, root, _stamp(model))

    def discard(self) -> bool:
        """Removes what this run created when it wrote no model (nothing worth keeping, no empty folder).

        A model that was already at the model path (a refused run: no --resume / --overwrite) is
        not this run's: the folders this run made for it go.
        """
        written = self.model.is_file() and _stamp(self.model) != self.model_before
        if self.created_root is None or written or not self.folder.is_dir():
            return False
        shutil.rmtree(self.folder, ignore_errors=True)
        for parent in self.folder.parents:
            if parent != self.created_root and not parent.is_relative_to(self.created_root):
                break
            try:
                parent.rmdir()  # only when empty
            except OSError:
                break
        return True
