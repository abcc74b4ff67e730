"""Stack Segmenter QGIS plugin: entry point QGIS calls (keep it import-light)."""
from __future__ import annotations

from typing import Any


def classFactory(iface: Any) -> Any:  # noqa: N802 - the name QGIS looks for
    """Creates the plugin; ``iface`` is None under qgis_process."""
    from .plugin import StackSegmenterPlugin

    return StackSegmenterPlugin(iface)
