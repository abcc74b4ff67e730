"""The one home for writing and hashing files: nothing the core writes can be lost or torn.

Why: a full disk, a killed process or a typo in a path must never cost a user a file. Every
file the core writes goes through ``write_atomic`` (or ``atomic_path``):

1. stale temporary files of an earlier, killed run for the same target are removed (only
   names of our own pattern, and only when the process that made them is gone);
2. the content is written to a temporary file beside the target, named
   ``.<target name>.<pid>-<8 hex>.partial<suffix>``;
3. it is flushed and fsynced, then verified (``verify``: e.g. a GeoTIFF is reopened and read
   back, and GDAL errors signalled while writing are collected, because GDAL reports a
   failed write at flush/close only through its error handler);
4. it gets the permissions any new file gets under the umask (mkstemp's 0600 would hide
   checkpoints and reports from the other users of a shared project folder), or those of
   the file it replaces;
5. it is renamed over the target (``os.replace``: readers see the old file or the new one,
   never a mix) and the folder is fsynced.

On any failure the temporary file is deleted, so the folder is left exactly as it was, and
the error names the path, the cause ("No space left on device") and, when known, the space
needed. This module imports no torch and no QGIS, so the QGIS tools use its path checks too.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import secrets
import shutil
import sys
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from .errors import CoreError, DataError, ResourceError
from .events import LogFn

PathLike = Union[str, "os.PathLike[str]"]

TEMP_MARK = "partial"
"""Our temporary files are ``.<target name>.<pid>-<8 hex>.partial<target suffix>``."""
_TEMP_RE = re.compile(r"^\.(?P<target>.+)\.(?P<pid>\d+)-[0-9a-f]{8}\.partial(?P<rest>.*)$")
_SIDECARS = ("", ".aux.xml", "-journal", "-wal", "-shm")
"""What GDAL / SQLite may leave beside a temporary file (statistics, GeoPackage journals)."""
LOW_SPACE_BYTES = 1 << 20
"""Free space below this after a failed write means the disk is full, whatever the library said."""


class WriteFailed(Exception):
    """A write or its verification failed; ``atomic_path`` turns it into a CoreError naming the path."""


# ----------------------------------------------------------------------------- sizes, space


def human_bytes(n: Optional[float]) -> str:
    """'12.3 MB' (decimal units, as file managers show them)."""
    if n is None:
        return "unknown"
    value = float(n)
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1000.0
    return f"{value:.1f} TB"


def free_bytes(folder: PathLike) -> Optional[int]:
    """Free space available to us in ``folder`` (its nearest existing ancestor); None when unknown."""
    p = Path(folder)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return int(shutil.disk_usage(p).free)
    except OSError:
        return None


def check_free_space(folder: PathLike, needed: int, what: str) -> None:
    """Refuses to start a write that cannot fit: ResourceError saying "No space left on device".

    Args:
        folder: where the file will be written.
        needed: bytes the file will take (an upper bound is fine).
        what: the file, as the user knows it (e.g. "the probability map out.tif").
    """
    free = free_bytes(folder)
    if free is not None and free < needed:
        raise ResourceError(
            f"No space left on device for {what}: it needs up to {human_bytes(needed)} and {folder} has "
            f"{human_bytes(free)} free; free some space or choose a folder on another disk. Nothing was replaced: "
            "any earlier file at that path is intact"
        )


# ----------------------------------------------------------------------------- permissions, hashing


def current_umask() -> int:
    """The process umask (read from /proc where possible: os.umask alone must set it to read it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def give_default_permissions(path: PathLike, like: Optional[PathLike] = None) -> None:
    """The mode a new file gets under the umask (0644 under 022), or the mode of ``like`` when it exists."""
    mode = None
    if like is not None:
        try:
            mode = os.stat(like).st_mode & 0o7777
        except OSError:
            mode = None
    if mode is None:
        mode = 0o666 & ~current_umask()
    os.chmod(path, mode)


def file_sha256(path: PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MB pieces (checkpoint digests, tests' before/after checks)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------------- same file, paths


def plain_path(source: PathLike) -> str:
    """The file part of a source: QGIS's ``path|layername=NAME`` -> ``path``."""
    return str(source).split("|", 1)[0]


def same_file(a: PathLike, b: PathLike) -> bool:
    """Whether two paths name the same file, links and hard links resolved.

    When either does not exist yet, the fully resolved paths are compared (case-insensitively
    where the file system is, e.g. Windows).
    """
    pa, pb = Path(plain_path(a)).expanduser(), Path(plain_path(b)).expanduser()
    try:
        if pa.exists() and pb.exists():
            return os.path.samefile(pa, pb)
    except OSError:
        pass
    return os.path.normcase(os.path.realpath(pa)) == os.path.normcase(os.path.realpath(pb))


def _companions(path: Path) -> List[Path]:
    """A shapefile is several files: an output over its .dbf or .shx destroys it as surely."""
    if path.suffix.lower() != ".shp":
        return [path]
    return [path] + [path.with_suffix(ext) for ext in (".shx", ".dbf", ".prj", ".cpg")]


def check_outputs_not_inputs(outputs: Sequence[Tuple[str, PathLike]], inputs: Sequence[Tuple[str, PathLike]]) -> None:
    """Refuses (before any work) an output that would overwrite an input.

    Args:
        outputs: (what, path) of every file the run will write.
        inputs: (what, path) of every file the run reads (raster, labels, mask, checkpoint).

    Raises:
        DataError: naming both roles and the fix.
    """
    for out_what, out_path in outputs:
        for in_what, in_path in inputs:
            if not in_path:
                continue
            for part in _companions(Path(plain_path(in_path))):
                if same_file(out_path, part):
                    raise DataError(
                        f"{out_what} {str(out_path)!r} is the {in_what} {str(in_path)!r}: writing it would destroy "
                        "that input; choose another output path. Nothing was written"
                    )


def check_output_location(path: PathLike, what: str, *, folder: bool = False) -> Path:
    """Checks, without creating anything, that ``path`` can be written: a clear DataError if not.

    Refuses a file target that is an existing folder, a folder target that is a file, a
    parent that is a regular file, and a nearest existing folder we cannot write into.
    """
    p = Path(path).expanduser()
    if folder and p.exists() and not p.is_dir():
        raise DataError(f"{what} {str(p)!r} is a file, not a folder; choose a folder path")
    if not folder and p.is_dir():
        raise DataError(f"{what} {str(p)!r} is a folder; give a file name inside it, e.g. {str(p / 'output')!r}")
    parent = p if folder and p.exists() else p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise DataError(
            f"cannot write {what} {str(p)!r}: {str(parent)!r} is a file, not a folder; choose another path"
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DataError(
            f"cannot write {what} {str(p)!r}: the folder {str(parent)!r} is not writable (permission denied); "
            "choose a folder you can write to"
        )
    return p


def prepare_folder(path: PathLike, what: str) -> Path:
    """Creates a folder (and its parents) for outputs; a DataError naming the cause when impossible."""
    p = check_output_location(path, what, folder=True)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create {what} {str(p)!r} ({exc.strerror or exc}); choose another folder") from None
    return p


# ----------------------------------------------------------------------------- temporary files


def temp_path(target: PathLike) -> Path:
    """A fresh temporary name beside ``target``: ``.<name>.<pid>-<8 hex>.partial<suffix>``."""
    t = Path(target)
    return t.with_name(f".{t.name}.{os.getpid()}-{secrets.token_hex(4)}.{TEMP_MARK}{t.suffix}")


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (True when it cannot be told)."""
    if pid == os.getpid():
        return True
    if pid <= 0:
        return False
    if sys.platform.startswith("win"):
        return _windows_pid_alive(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # e.g. EPERM: it exists but belongs to someone else
    return True


def _windows_pid_alive(pid: int) -> bool:
    import ctypes

    kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
    handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return ctypes.get_last_error() == 5  # access denied: it exists
    try:
        code = ctypes.c_ulong()
        if not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)):
            return True
        return code.value == 259  # STILL_ACTIVE
    finally:
        kernel32.CloseHandle(handle)


def _legacy_temp(name: str, target: Path) -> bool:
    """Temporary names of earlier versions (mkstemp's 8 random characters), removed as well."""
    stem, suffix = re.escape(target.stem), re.escape(target.suffix)
    rnd = r"[a-z0-9_]{8}"
    patterns = (
        rf"^\.{re.escape(target.name)}\.{rnd}\.tmp$",          # checkpoint.py
        rf"^\.{stem}\.{rnd}\.partial\.tif(\.aux\.xml)?$",      # predict.py
        rf"^\.{stem}\.{rnd}{suffix}$" if suffix else r"^$",    # reports.py, evaluate.py
        rf"^\.{stem}\.\d+\.tmp\.gpkg(-journal|-wal|-shm)?$",   # sampling.py
    )
    return any(re.match(p, name) for p in patterns)


def stale_temps(target: PathLike) -> List[Path]:
    """Temporary files (or folders) of ``target`` left by a run that no longer exists."""
    t = Path(target)
    try:
        entries = list(t.parent.iterdir())
    except OSError:
        return []
    out = []
    for entry in entries:
        m = _TEMP_RE.match(entry.name)
        if m and m.group("target") == t.name and m.group("rest") in {t.suffix + s for s in _SIDECARS}:
            if not pid_alive(int(m.group("pid"))):
                out.append(entry)
        elif _legacy_temp(entry.name, t):
            out.append(entry)
    return sorted(out)


def remove_stale_temps(target: PathLike, log: Optional[LogFn] = None) -> List[Path]:
    """Deletes what ``stale_temps`` finds (only our own pattern) and says so."""
    removed = []
    for path in stale_temps(target):
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path)
        except OSError:
            continue
    if removed and log is not None:
        log(f"removed {len(removed)} temporary file(s) left by an interrupted run: "
            + ", ".join(p.name for p in removed))
    return removed


def discard(tmp: Path) -> None:
    """Deletes a temporary file (or folder) and the sidecars GDAL / SQLite may have made beside it."""
    for extra in _SIDECARS:
        p = Path(str(tmp) + extra)
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            elif p.exists() or p.is_symlink():
                p.unlink()
        except OSError:
            pass


def _fsync_file(path: Path) -> None:
    if path.is_dir():
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(folder: PathLike) -> None:
    """Makes a rename durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- errors


def write_error(target: Union[PathLike, Sequence[PathLike]], exc: BaseException, needed: Optional[int] = None,
                free: Optional[int] = None) -> CoreError:
    """The error a user sees when writing ``target`` (a path, or a list of them) failed.

    It names the path(s), the cause and, when known, the space needed and free.
    """
    paths = list(target) if isinstance(target, (list, tuple)) else [target]
    name = " and ".join(repr(str(p)) for p in paths)
    cause = _cause(exc)
    space = (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1))) \
        or "no space left" in cause.lower() or "disk is full" in cause.lower() \
        or (free is not None and (free < LOW_SPACE_BYTES or (needed is not None and free < needed)))
    if space:
        sizes = f"; about {human_bytes(needed)} needed" if needed else ""
        if free is not None:
            sizes += f", {human_bytes(free)} free" if needed else f"; {human_bytes(free)} free"
        detail = "" if "no space left" in cause.lower() else f" ({cause})"
        return ResourceError(
            f"cannot write {name}: No space left on device{detail}{sizes}; free some space or choose a "
            "folder on another disk. Nothing was replaced: any earlier file at that path is intact"
        )
    return DataError(
        f"cannot write {name}: {cause}; check the folder (permissions, disk) or choose another path. "
        "Nothing was replaced: any earlier file at that path is intact"
    )


def _cause(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = " ".join(str(exc).split())
    return text[:300] or type(exc).__name__


# ----------------------------------------------------------------------------- atomic writing


def _device(path: Path) -> Optional[int]:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return os.stat(p).st_dev
    except OSError:
        return None


@contextlib.contextmanager
def atomic_paths(targets: Sequence[PathLike], *, verify: Optional[Callable[[Path], None]] = None,
                 needed: Optional[Sequence[Optional[int]]] = None, log: Optional[LogFn] = None,
                 keep_mode: bool = True) -> Iterator[List[Path]]:
    """Yields temporary paths beside ``targets``; on success they replace the targets, verified.

    The body writes the temporary paths. Every file is fsynced and verified before any
    target is replaced, so outputs that belong together (a map and its uncertainty map) are
    replaced together or not at all. Errors raised by the body that are not about writing
    (cancel, bad data, bugs) pass through unchanged, after the temporary files are deleted;
    ``OSError`` and ``WriteFailed`` become a CoreError naming the path and the cause.
    ``needed`` (bytes per target, when known) is checked against the free space first.
    """
    outs = [Path(t) for t in targets]
    sizes = list(needed) if needed is not None else [None] * len(outs)
    for out in outs:
        prepare_folder(out.parent, "the output folder")
        remove_stale_temps(out, log)
    by_disk: Dict[Optional[int], List[int]] = {}
    for i, out in enumerate(outs):
        by_disk.setdefault(_device(out.parent), []).append(i)
    for group in by_disk.values():  # files on one disk share its free space
        total = sum(sizes[i] or 0 for i in group)
        if total:
            check_free_space(outs[group[0]].parent, total, " and ".join(repr(str(outs[i])) for i in group))
    tmps = [temp_path(out) for out in outs]
    failed: List[Path] = list(outs)
    failed_size: Optional[int] = sum(s or 0 for s in sizes) or None
    try:
        yield tmps
        for tmp, out, size in zip(tmps, outs, sizes):
            failed, failed_size = [out], size
            _fsync_file(tmp)
            if verify is not None:
                verify(tmp)
        for tmp, out, size in zip(tmps, outs, sizes):
            failed, failed_size = [out], size
            give_default_permissions(tmp, like=out if keep_mode else None)
            os.replace(tmp, out)
    except (OSError, WriteFailed) as exc:
        free = free_bytes(outs[0].parent)  # before the temporary files give their space back
        for tmp in tmps:
            discard(tmp)
        raise write_error(failed, exc, failed_size, free) from None
    except BaseException:
        for tmp in tmps:
            discard(tmp)
        raise
    for tmp in tmps:
        discard(tmp)  # sidecars GDAL may have left beside the temporary names
    for folder in {out.parent for out in outs}:
        fsync_dir(folder)


@contextlib.contextmanager
def atomic_path(target: PathLike, *, verify: Optional[Callable[[Path], None]] = None, needed: Optional[int] = None,
                log: Optional[LogFn] = None, keep_mode: bool = True) -> Iterator[Path]:
    """``atomic_paths`` for one target: yields its temporary path."""
    with atomic_paths([target], verify=verify, needed=[needed], log=log, keep_mode=keep_mode) as tmps:
        yield tmps[0]


def write_atomic(target: PathLike, write: Callable[[Path], None], *, verify: Optional[Callable[[Path], None]] = None,
                 needed: Optional[int] = None, log: Optional[LogFn] = None) -> Path:
    """Writes ``target`` through ``write(tmp)`` (see ``atomic_path``); returns the target."""
    with atomic_path(target, verify=verify, needed=needed, log=log) as tmp:
        write(tmp)
    return Path(target)


def write_bytes_atomic(target: PathLike, data: bytes, log: Optional[LogFn] = None) -> Path:
    """Writes bytes; the copy on disk is read back and compared before it replaces anything."""
    digest = hashlib.sha256(data).hexdigest()

    def verify(tmp: Path) -> None:
        if file_sha256(tmp) != digest:
            raise WriteFailed("the written file differs from the data (the disk returned other bytes)")

    return write_atomic(target, lambda tmp: tmp.write_bytes(data), verify=verify, needed=len(data), log=log)


def write_text_atomic(target: PathLike, text: str, log: Optional[LogFn] = None) -> Path:
    """Writes UTF-8 text atomically (see ``write_bytes_atomic``)."""
    return write_bytes_atomic(target, text.encode("utf-8"), log=log)


def append_text(path: PathLike, text: str) -> None:
    """Appends to a log file; a failure is a clear CoreError (a full disk must not look like a bug)."""
    try:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(text)
    except OSError as exc:
        raise write_error(path, exc, None, free_bytes(Path(path).parent)) from None


# ----------------------------------------------------------------------------- GDAL


@contextlib.contextmanager
def gdal_errors() -> Iterator[List[str]]:
    """Collects the errors GDAL signals without raising while the block runs.

    rasterio raises for failures of the calls it checks, but a block GDAL flushes at close
    (where a full disk shows up) fails only through GDAL's error handler, which rasterio
    logs on its ``rasterio._env`` logger while a ``rasterio.Env`` is active (outside one GDAL
    only prints them). Yields the list of messages, filled as they come.
    """
    import rasterio

    messages: List[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if str(record.msg).startswith("GDAL signalled an error"):
                args = record.args if isinstance(record.args, tuple) else ()
                messages.append(str(args[-1]) if args else record.getMessage())

    logger = logging.getLogger("rasterio._env")
    handler = _Collect(level=logging.INFO)
    old_level = logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        with rasterio.Env():
            yield messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def verify_raster(path: PathLike, errors: Sequence[str] = (), shape: Optional[Tuple[int, int, int]] = None) -> None:
    """Raises WriteFailed unless the raster GDAL just wrote is whole.

    Whole: GDAL signalled no error while writing it, it has the expected shape, every
    GeoTIFF block has an offset and a size inside the file (GDAL reads a block that was never
    written as zeros, so reading alone cannot tell), and every block reads back.

    Args:
        path: the (temporary) file.
        errors: messages collected by ``gdal_errors`` while it was written.
        shape: (bands, height, width) it must have.
    """
    import rasterio

    if errors:
        space = [m for m in errors if "no space left" in m.lower()]
        raise WriteFailed(f"GDAL: {(space or list(errors))[0]}")
    try:
        size = os.path.getsize(path)
        with rasterio.open(path) as src:
            if shape is not None and (src.count, src.height, src.width) != tuple(shape):
                raise WriteFailed(f"the file holds {src.count} x {src.height} x {src.width} instead of "
                                  f"{shape[0]} x {shape[1]} x {shape[2]} (bands x rows x columns)")
            blocks = list(src.block_windows(1))
            if src.driver == "GTiff":
                for band in range(1, src.count + 1):
                    for (row, col), _window in blocks:
                        offset = src.get_tag_item(f"BLOCK_OFFSET_{col}_{row}", "TIFF", bidx=band)
                        length = src.get_tag_item(f"BLOCK_SIZE_{col}_{row}", "TIFF", bidx=band)
                        if not offset or not length or int(offset) + int(length) > size:
                            raise WriteFailed(f"block {row}, {col} of band {band} was not written completely")
            for _ij, window in blocks:
                src.read(window=window)
    except WriteFailed:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure to read it back means it is not whole
        raise WriteFailed(f"the written raster cannot be read back ({' '.join(str(exc).split())[:300]})") from None
