"""core/files.py: atomic, verified writes with normal permissions; stale temporary files; path checks.

Write failures are real: a file size limit (RLIMIT_FSIZE, no root needed) in a child process
makes the operating system refuse the bytes; the full-disk cases (a real tmpfs) live in
test_reliability.py.
"""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from core.errors import DataError, ResourceError
from core.files import (
    check_output_location,
    check_outputs_not_inputs,
    file_sha256,
    remove_stale_temps,
    same_file,
    stale_temps,
    temp_path,
    write_atomic,
    write_text_atomic,
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_atomic_write_uses_the_umask_not_0600(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        target = write_text_atomic(tmp_path / "a.json", "{}\n")
        assert _mode(target) == 0o644
        os.umask(0o027)
        other = write_text_atomic(tmp_path / "b.json", "{}\n")
        assert _mode(other) == 0o640
    finally:
        os.umask(old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.json"]


def test_replacing_keeps_the_mode_of_the_file_it_replaces(tmp_path: Path) -> None:
    target = tmp_path / "shared.json"
    target.write_text("old")
    os.chmod(target, 0o664)
    write_text_atomic(target, "new")
    assert target.read_text() == "new" and _mode(target) == 0o664


def test_a_failing_writer_leaves_the_folder_exactly_as_it_was(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    target.write_text("good")
    before = {p.name: file_sha256(p) for p in tmp_path.iterdir()}

    def half_then_fail(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError(5, "Input/output error")

    with pytest.raises(DataError, match=r"cannot write .*metrics\.json.*Input/output error"):
        write_atomic(target, half_then_fail)
    assert {p.name: file_sha256(p) for p in tmp_path.iterdir()} == before


def test_a_failed_verification_replaces_nothing(tmp_path: Path) -> None:
    from core.files import WriteFailed

    target = tmp_path / "x.bin"
    target.write_bytes(b"good")

    def refuse(_tmp: Path) -> None:
        raise WriteFailed("read back differs")

    with pytest.raises(DataError, match="read back differs"):
        write_atomic(target, lambda tmp: tmp.write_bytes(b"bad"), verify=refuse)
    assert target.read_bytes() == b"good" and [p.name for p in tmp_path.iterdir()] == ["x.bin"]


def test_errors_that_are_not_about_writing_pass_through_and_clean_up(tmp_path: Path) -> None:
    def bug(tmp: Path) -> None:
        tmp.write_text("x")
        raise KeyError("not a write error")

    with pytest.raises(KeyError):
        write_atomic(tmp_path / "y.txt", bug)
    assert list(tmp_path.iterdir()) == []


def test_stale_temporary_files_of_a_dead_run_are_removed_and_nothing_else(tmp_path: Path) -> None:
    target = tmp_path / "checkpoint.pt"
    dead = _dead_pid()
    ours_dead = tmp_path / f".checkpoint.pt.{dead}-0123abcd.partial.pt"
    ours_alive = temp_path(target)  # this process: alive, kept
    legacy = tmp_path / ".checkpoint.pt.k2j4_x9a.tmp"  # mkstemp name of earlier versions
    user = [tmp_path / ".checkpoint.pt.notes", tmp_path / "checkpoint.pt.bak",
            tmp_path / f".other.pt.{dead}-0123abcd.partial.pt"]
    for p in [ours_dead, ours_alive, legacy, *user]:
        p.write_bytes(b"x")
    assert stale_temps(target) == sorted([ours_dead, legacy])
    logs = []
    removed = remove_stale_temps(target, logs.append)
    assert sorted(removed) == sorted([ours_dead, legacy]) and "interrupted run" in logs[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in [ours_alive, *user])


def test_writing_a_target_cleans_its_leftovers(tmp_path: Path) -> None:
    dead = _dead_pid()
    left = tmp_path / f".map.tif.{dead}-deadbeef.partial.tif"
    left.write_bytes(b"torn")
    (tmp_path / f".map.tif.{dead}-deadbeef.partial.tif.aux.xml").write_text("<x/>")
    write_text_atomic(tmp_path / "map.tif", "new")
    assert [p.name for p in tmp_path.iterdir()] == ["map.tif"]


def test_same_file_resolves_links_and_refuses_outputs_over_inputs(tmp_path: Path) -> None:
    raster = tmp_path / "stack.tif"
    raster.write_bytes(b"data")
    link = tmp_path / "link.tif"
    link.symlink_to(raster)
    hard = tmp_path / "hard.tif"
    os.link(raster, hard)
    assert same_file(link, raster) and same_file(hard, raster)
    assert same_file(tmp_path / "sub" / ".." / "stack.tif", raster)
    assert not same_file(tmp_path / "other.tif", raster)
    with pytest.raises(DataError, match="is the input raster"):
        check_outputs_not_inputs([("--checkpoint_path", link)], [("input raster", raster)])
    shp = tmp_path / "deposits.shp"
    with pytest.raises(DataError, match="is the labels"):
        check_outputs_not_inputs([("--checkpoint_path", tmp_path / "deposits.dbf")], [("labels", f"{shp}|layername=x")])


def test_output_locations_are_checked_without_creating_anything(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(DataError, match="is a file, not a folder"):
        check_output_location(blocker / "sub" / "model.pt", "the model")
    with pytest.raises(DataError, match="is a folder"):
        check_output_location(tmp_path, "the model")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if not os.access(locked, os.W_OK):  # root may write anywhere: then there is nothing to refuse
            with pytest.raises(DataError, match="not writable"):
                check_output_location(locked / "m.pt", "the model")
    finally:
        locked.chmod(0o700)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "locked"]


def _failing_write(script: str, repo_root: Path, target: Path, earlier: bytes) -> dict:
    """Runs ``script`` (which writes ``target`` under a file-size limit) in a child; returns its error.

    Checks that the earlier file at ``target`` and the rest of the folder are unchanged.
    """
    target.write_bytes(earlier)
    before = {p.name: file_sha256(p) for p in target.parent.iterdir()}
    res = subprocess.run([sys.executable, "-c", script, str(repo_root), str(target)], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert {p.name: file_sha256(p) for p in target.parent.iterdir()} == before
    return json.loads(res.stdout.strip().splitlines()[-1])


SIZE_LIMITED = textwrap.dedent("""
    import json, resource, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    from core.errors import CoreError
    from core.files import write_bytes_atomic
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))  # the OS refuses bytes past 4 kB
    try:
        write_bytes_atomic(Path(sys.argv[2]), b"x" * 20000)
    except CoreError as exc:
        print(json.dumps({"type": type(exc).__name__, "message": str(exc)}))
""")


def test_an_os_write_error_is_reported_with_path_and_cause(repo_root: Path, tmp_path: Path) -> None:
    """A real refused write (file size limit): the message names the path and the cause; nothing changes."""
    target = tmp_path / "checkpoint.pt"
    err = _failing_write(SIZE_LIMITED, repo_root, target, b"the good model")
    assert err["type"] == "DataError" and str(target) in err["message"] and "File too large" in err["message"]


GEOTIFF_SIZE_LIMITED = textwrap.dedent("""
    import json, resource, sys
    from pathlib import Path
    import numpy as np, rasterio
    from rasterio.transform import from_origin
    sys.path.insert(0, sys.argv[1])
    from core.errors import CoreError
    from core.files import atomic_path, gdal_errors, verify_raster
    target = Path(sys.argv[2])
    profile = dict(driver="GTiff", width=512, height=512, count=1, dtype="float32", tiled=True,
                   blockxsize=256, blockysize=256, transform=from_origin(0, 0, 1, 1), crs="EPSG:3067")
    data = np.random.default_rng(0).random((1, 512, 512), dtype=np.float32)
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
    try:
        with gdal_errors() as messages, atomic_path(
                target, verify=lambda t: verify_raster(t, messages, (1, 512, 512))) as tmp:
            with rasterio.open(tmp, "w", **profile) as dst:
                dst.write(data)
        print(json.dumps({"type": "none"}))
    except CoreError as exc:
        print(json.dumps({"type": type(exc).__name__, "message": str(exc)}))
""")


def test_a_geotiff_that_gdal_failed_to_flush_replaces_nothing(repo_root: Path, tmp_path: Path) -> None:
    """GDAL reports a failed block write at close only through its error handler: it must still fail."""
    target = tmp_path / "map.tif"
    err = _failing_write(GEOTIFF_SIZE_LIMITED, repo_root, target, b"an earlier good map")
    assert err["type"] in ("DataError", "ResourceError"), err
    assert str(target) in err["message"] and "GDAL" in err["message"]


def test_file_sha256_matches_hashlib(tmp_path: Path) -> None:
    import hashlib

    data = np.random.default_rng(1).bytes(3_000_000)
    (tmp_path / "f").write_bytes(data)
    assert file_sha256(tmp_path / "f") == hashlib.sha256(data).hexdigest()
