"""Shared helpers of the benchmarks: subprocess runner, peak memory, disk checks, results.

Every measurement runs in its own Python process so that peak resident memory (VmHWM of
/proc/self/status, i.e. the whole process, torch and GDAL included) is independent of
what ran before. The parent watches the child's memory and time, and reports
'out of memory' or 'timeout' instead of crashing (the machine is shared).
"""
from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULT_PREFIX = "BENCH_RESULT "
GIB = 1024 ** 3
MIB = 1024 ** 2


# ----------------------------------------------------------------------------- child side


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (VmHWM; ru_maxrss where /proc is absent)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def child_main(run: Callable[[Dict[str, Any]], Dict[str, Any]]) -> None:
    """Entry point of a benchmark subprocess: params as JSON in argv[1], one result line out."""
    params = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    result = run(params)
    result.setdefault("peak_rss_mb", round(peak_rss_mb(), 1))
    sys.stdout.write(RESULT_PREFIX + json.dumps(result) + "\n")
    sys.stdout.flush()


def evict_from_page_cache(path: Path) -> None:
    """Drops one file's pages from the OS page cache so a read is measured cold.

    posix_fadvise(DONTNEED) touches only this file, unlike drop_caches, so it is safe on a
    shared machine. Where unsupported it does nothing (the read is then warm).
    """
    if not hasattr(os, "posix_fadvise"):
        return
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when available, else 'cpu' (imports torch)."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {device} asked for, but torch sees no CUDA GPU; use --device cpu")
    return device


def sync_device(device: str) -> None:
    """Waits for queued GPU work so wall times are real (no-op on CPU)."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def gpu_peak_mb(device: str) -> Optional[float]:
    """Peak GPU memory torch allocated in this process (None on CPU)."""
    if not device.startswith("cuda"):
        return None
    import torch

    return round(torch.cuda.max_memory_allocated() / MIB, 1)


# ----------------------------------------------------------------------------- parent side


@dataclass
class ChildLimits:
    """Limits a benchmark subprocess runs under."""

    timeout_s: float = 1800.0
    mem_limit_mb: float = 16 * 1024.0


def _rss_mb_of(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError):
        pass
    return 0.0


def _watch_memory(proc: subprocess.Popen, limit_mb: float, flag: Dict[str, bool]) -> None:
    """Kills the child when its resident memory passes the limit (reported as out of memory)."""
    while proc.poll() is None:
        if _rss_mb_of(proc.pid) > limit_mb:
            flag["oom"] = True
            proc.kill()
            return
        time.sleep(0.2)


def _looks_like_oom(stderr: str, returncode: int) -> bool:
    text = stderr.lower()
    return returncode in (-9, 137) or any(
        s in text for s in ("memoryerror", "out of memory", "can't allocate memory", "cannot allocate memory")
    )


def run_child(module: str, params: Dict[str, Any], limits: ChildLimits) -> Dict[str, Any]:
    """Runs ``python -m bench.<module> <params-json>`` and returns its result dict.

    The dict always has ``status``: 'ok', 'timeout', 'out of memory' or 'error' (with the
    last lines of stderr under ``error``), plus ``wall_s`` of the whole subprocess.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", f"bench.{module}", json.dumps(params)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=str(REPO_ROOT), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    flag = {"oom": False}
    watcher = threading.Thread(target=_watch_memory, args=(proc, limits.mem_limit_mb, flag), daemon=True)
    watcher.start()
    try:
        stdout, stderr = proc.communicate(timeout=limits.timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return {"status": "timeout", "limit_s": limits.timeout_s, "wall_s": round(time.perf_counter() - start, 2)}
    wall = round(time.perf_counter() - start, 2)
    if flag["oom"]:
        return {"status": "out of memory", "limit_mb": limits.mem_limit_mb, "wall_s": wall}
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            result = json.loads(line[len(RESULT_PREFIX):])
            result.setdefault("status", "ok")
            result["process_wall_s"] = wall
            return result
    status = "out of memory" if _looks_like_oom(stderr, proc.returncode) else "error"
    tail = "\n".join(stderr.strip().splitlines()[-8:])
    return {"status": status, "returncode": proc.returncode, "error": tail, "wall_s": wall}


def check_disk_space(directory: Path, need_bytes: int, what: str) -> None:
    """Stops with a clear message when ``directory`` has less than ``need_bytes`` free."""
    directory.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(directory).free
    if free < need_bytes:
        raise SystemExit(
            f"not enough disk space for {what}: need {need_bytes / GIB:.1f} GiB free in {directory}, "
            f"only {free / GIB:.1f} GiB are; pass --out-dir on a larger disk, a smaller size "
            f"(--bands/--height/--width), or --quick"
        )


def machine_info() -> Dict[str, Any]:
    """What the numbers were measured on (CPU, memory, OS, library versions)."""
    info: Dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [ln.split(":", 1)[1].strip() for ln in cpuinfo.read_text().splitlines() if ln.startswith("model name")]
        info["cpu_model"] = names[0] if names else None
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        total = next((ln for ln in meminfo.read_text().splitlines() if ln.startswith("MemTotal:")), None)
        if total:
            info["mem_total_gb"] = round(int(total.split()[1]) / 1024 ** 2, 1)
    os_release = Path("/etc/os-release")
    if os_release.exists():
        pretty = [ln for ln in os_release.read_text().splitlines() if ln.startswith("PRETTY_NAME=")]
        if pretty:
            info["os"] = pretty[0].split("=", 1)[1].strip('"')
    for mod in ("numpy", "rasterio", "torch", "torch_harmonics"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - a missing library is reported, not fatal
            info[mod] = None
    try:
        import rasterio

        info["gdal"] = rasterio.__gdal_version__
    except Exception:  # noqa: BLE001
        pass
    return info


def write_results(results: Dict[str, Any], results_dir: Path) -> Path:
    """Writes results/<timestamp>.json and results/latest.json; returns the first."""
    results_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = results_dir / f"{stamp}.json"
    text = json.dumps(results, indent=2, sort_keys=False)
    path.write_text(text)
    (results_dir / "latest.json").write_text(text)
    return path


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table (readable in a terminal and pastable into the README)."""
    cells = [[str(c) for c in header]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def fmt(value: Any, digits: int = 2) -> str:
    """Numbers rounded for tables; None as '-'."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)
