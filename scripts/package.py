#!/usr/bin/env python3
"""Builds dist/stack_segmenter-<version>.zip for QGIS's "Install from ZIP".

The zip holds one folder, ``stack_segmenter/``, with the files git tracks minus what a
user does not need (tests, CI, set-up, benchmarks, caches, the venv), and LICENSE. Its
README.md is the repository's without the parts marked ``<!-- repository-only -->`` ...
``<!-- /repository-only -->`` (set-up commands, benchmarks, developer docs), so it names
only files the zip ships. Standard library only, so it runs with any Python 3.
"""
from __future__ import annotations

import configparser
import re
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = "stack_segmenter"
EXCLUDED_TOP = {"test", ".ci", "scripts", "bench", ".venv", "dist", "build", "docs", ".github"}
# constraints.txt stays: "Set up worker environment" installs the pins it holds.
EXCLUDED_FILES = {".gitignore", "Makefile", "pytest.ini", "requirements-dev.txt"}
#: README sections that talk about the repository (set-up, tests, benchmarks, developer docs).
REPOSITORY_ONLY = re.compile(r"<!-- repository-only -->.*?<!-- /repository-only -->\n?", re.DOTALL)


def plugin_version() -> str:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "metadata.txt", encoding="utf-8")
    return parser["general"]["version"]


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], check=True, capture_output=True).stdout
    return [p for p in out.decode().split("\0") if p]


def is_packaged(rel: str) -> bool:
    parts = Path(rel).parts
    return not (
        parts[0] in EXCLUDED_TOP
        or rel in EXCLUDED_FILES
        or "__pycache__" in parts
        or rel.endswith((".pyc", ".pyo"))
    )


def user_readme(text: str) -> str:
    """The README for the zip: the repository-only sections removed."""
    return REPOSITORY_ONLY.sub("", text)


def build(dest_dir: Path = ROOT / "dist") -> Path:
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / f"{PLUGIN}-{plugin_version()}.zip"
    tmp = target.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for rel in sorted(filter(is_packaged, tracked_files())):
            if rel == "README.md":
                zf.writestr(f"{PLUGIN}/{rel}", user_readme((ROOT / rel).read_text(encoding="utf-8")))
            else:
                zf.write(ROOT / rel, f"{PLUGIN}/{rel}")
    tmp.replace(target)
    return target


if __name__ == "__main__":
    path = build(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "dist")
    print(f"package: {path}")
