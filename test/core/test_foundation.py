"""Foundation: core stays free of QGIS, metadata is complete, the package zip is right,
set-up is idempotent."""
from __future__ import annotations

import ast
import configparser
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

FORBIDDEN = ("qgis", "PyQt5", "PyQt6", "processing", "sip")
METADATA_FIELDS = (
    "name", "qgisMinimumVersion", "description", "about", "version", "author", "email", "repository",
    "tracker", "homepage", "tags", "category", "icon", "experimental", "hasProcessingProvider",
)


def forbidden_imports(source: str) -> list[str]:
    """Top-level module names of qgis/PyQt/processing imports in a Python source."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [n for n in names if n.split(".")[0] in FORBIDDEN]
    return found


def test_forbidden_import_scanner_catches_qgis() -> None:
    assert forbidden_imports("import os\nfrom qgis.core import QgsProject\n") == ["qgis.core"]
    assert forbidden_imports("def f():\n    import PyQt5.QtCore\n") == ["PyQt5.QtCore"]
    assert forbidden_imports("from .processing import x\nimport numpy\n") == []


def test_core_never_imports_qgis(repo_root: Path) -> None:
    offenders = {
        str(p.relative_to(repo_root)): bad
        for p in (repo_root / "core").rglob("*.py")
        if (bad := forbidden_imports(p.read_text(encoding="utf-8")))
    }
    assert offenders == {}, f"core/ must stay free of QGIS: {offenders}"


def test_core_imports_are_relative(repo_root: Path) -> None:
    for p in (repo_root / "core").rglob("*.py"):
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                assert node.module.split(".")[0] not in ("core", "stack_segmenter"), f"{p}: absolute self-import"


def test_metadata_has_every_field(repo_root: Path) -> None:
    text = (repo_root / "metadata.txt").read_text(encoding="utf-8")
    parser = configparser.ConfigParser()
    parser.read_string(text)
    general = parser["general"]
    missing = [f for f in METADATA_FIELDS if f not in general or (f != "email" and not general.get(f))]
    assert missing == []
    # No invented address: empty until the maintainers give a real one (the official repository asks for it).
    assert "example." not in general["email"]
    tags = general["tags"].split(",")
    assert {"prospectivity", "mineral", "deep learning", "segmentation", "landslide"} <= set(tags)
    assert general["qgisMinimumVersion"] == "3.22"
    assert general["hasProcessingProvider"] == "yes"
    assert "torch" in general["about"] and "torch-harmonics" in general["about"]
    assert (repo_root / general["icon"]).is_file()
    for line in text.splitlines():
        if "=" in line and not line.startswith("["):
            key, _ = line.split("=", 1)
            assert key == key.strip() and not line.split("=", 1)[1].startswith(" "), f"spaces around '=': {line}"


def test_package_zip_has_plugin_folder_and_nothing_excluded(repo_root: Path, tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, str(repo_root / "scripts" / "package.py"), str(tmp_path)],
                         check=True, capture_output=True, text=True)
    zips = list(tmp_path.glob("stack_segmenter-*.zip"))
    assert len(zips) == 1, out.stdout
    names = zipfile.ZipFile(zips[0]).namelist()
    assert all(n.startswith("stack_segmenter/") for n in names)
    for needed in ("metadata.txt", "__init__.py", "plugin.py", "provider.py", "core/cli.py", "core/config.py",
                   "constraints.txt"):  # the set-up tool installs the pins it holds
        assert f"stack_segmenter/{needed}" in names
    for bad in ("/test/", "/.venv/", "/.ci/", "__pycache__", ".pyc", "/.qgis-settings/", "/bench/", "Makefile"):
        assert not any(bad in n for n in names), bad
    zf = zipfile.ZipFile(zips[0])
    licence = zf.read("stack_segmenter/LICENSE").decode("utf-8")
    assert "GNU GENERAL PUBLIC LICENSE" in licence and "Version 2, June 1991" in licence


def test_zip_readme_names_only_what_the_zip_ships(repo_root: Path, tmp_path: Path) -> None:
    """The README inside the zip is the plugin's help (helpUrl): it must not send users to files that
    only the repository has (set-up scripts, tests, benchmarks, developer docs)."""
    import re

    subprocess.run([sys.executable, str(repo_root / "scripts" / "package.py"), str(tmp_path)], check=True,
                   capture_output=True)
    zf = zipfile.ZipFile(next(tmp_path.glob("stack_segmenter-*.zip")))
    shipped = {n.split("/", 1)[1] for n in zf.namelist()}
    readme = zf.read("stack_segmenter/README.md").decode("utf-8")
    full = (repo_root / "README.md").read_text(encoding="utf-8")
    assert "repository-only" not in readme and "make test" not in readme and "make demo" not in readme
    assert "make test" in full, "the repository's README keeps the developer commands"
    tracked = set(subprocess.run(["git", "-C", str(repo_root), "ls-files"], check=True, capture_output=True,
                                 text=True).stdout.split())
    folders = {str(Path(f).parent) + "/" for f in tracked}
    named = set(re.findall(r"`([\w./-]+)`", readme))
    repo_only = sorted(n for n in named if (n in tracked or n in folders)
                       and not (n in shipped or any(s.startswith(n) for s in shipped)))
    assert repo_only == [], f"the zip's README names files the zip does not ship: {repo_only}"
    assert "LICENSE" in named


@pytest.mark.setup
def test_setup_is_idempotent_and_quick(repo_root: Path) -> None:
    """A second set-up on a ready machine only checks (the venv stamp matches)."""
    if not (repo_root / ".venv" / "bin" / "python").exists():
        pytest.skip("no venv yet: setup.sh would install it (pip), not only check; run `make setup` first")
    out = subprocess.run(["bash", str(repo_root / "scripts" / "setup.sh")], check=True, capture_output=True,
                         text=True, timeout=120)
    assert "ready" in out.stdout


def test_constraints_pin_torch_cpu_and_numpy_1(repo_root: Path) -> None:
    text = (repo_root / "constraints.txt").read_text()
    assert "torch==2.13.0+cpu" in text and "torch-harmonics==0.9.3" in text and "numpy<2" in text
    pip_calls = [l for l in (repo_root / "scripts" / "setup.sh").read_text().splitlines() if "install" in l
                 and "PIP" in l and not l.strip().startswith("#")]
    assert pip_calls and all("-c constraints.txt" in l for l in pip_calls)
