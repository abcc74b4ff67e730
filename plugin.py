"""The plugin object QGIS creates: registers the Processing provider, nothing else.

Works without a GUI (qgis_process passes no iface and calls only initProcessing()).
"""
from __future__ import annotations

from typing import Any, Optional

from qgis.core import QgsApplication

from .provider import StackSegmenterProvider


class StackSegmenterPlugin:
    """Adds the Stack Segmenter provider to QGIS Processing."""

    def __init__(self, iface: Any = None) -> None:
        self.iface = iface
        self.provider: Optional[StackSegmenterProvider] = None

    def initProcessing(self) -> None:  # noqa: N802 (QGIS API)
        """Registers the provider once (QGIS calls this, and initGui calls it again in the desktop)."""
        if self.provider is None:
            self.provider = StackSegmenterProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self) -> None:  # noqa: N802 (QGIS API)
        """The tools live in the Processing Toolbox; no menus or toolbars of our own."""
        self.initProcessing()

    def unload(self) -> None:
        """Removes the provider (and its settings) when the plugin is unloaded."""
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
