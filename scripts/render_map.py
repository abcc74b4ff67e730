#!/usr/bin/env python3
"""Renders a probability GeoTIFF, styled as the plugin styles it, to a PNG (QGIS map renderer).

Usage: render_map.py PROBABILITY.tif OUT.png [WIDTH_PX]. Used by `make demo`; needs PyQGIS
and the plugin importable as `stack_segmenter` (QGIS_PLUGINPATH names the folder holding it).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path


def render(raster: str, png: str, width: int = 1200) -> None:
    from qgis.core import QgsApplication, QgsMapRendererSequentialJob, QgsMapSettings, QgsRasterLayer
    from qgis.PyQt.QtCore import QSize
    from qgis.PyQt.QtGui import QColor

    app = QgsApplication([], False)
    app.initQgis()
    try:
        from stack_segmenter.algorithms.styling import apply_probability_style

        layer = QgsRasterLayer(raster, "probability", "gdal")
        if not layer.isValid():
            sys.exit(f"render_map: cannot open {raster}")
        apply_probability_style(layer)
        extent = layer.extent()
        height = max(1, round(width * extent.height() / max(extent.width(), 1e-9)))
        settings = QgsMapSettings()
        settings.setLayers([layer])
        settings.setDestinationCrs(layer.crs())
        settings.setExtent(extent)
        settings.setOutputSize(QSize(width, height))
        settings.setBackgroundColor(QColor("white"))
        job = QgsMapRendererSequentialJob(settings)
        job.start()
        job.waitForFinished()
        tmp = str(Path(png).with_suffix(".tmp.png"))
        if not job.renderedImage().save(tmp, "PNG"):
            sys.exit(f"render_map: cannot write {png}")
        os.replace(tmp, png)
        del job, layer  # layers must not outlive exitQgis()
    finally:
        app.exitQgis()
    print(f"render_map: wrote {png}")


if __name__ == "__main__":
    plugins = os.environ.get("QGIS_PLUGINPATH")
    if plugins:
        sys.path.insert(0, plugins)
    render(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 1200)
