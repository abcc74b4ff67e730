"""Renders the styled probability map with QGIS's own map renderer and checks the picture."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Dict

#: Where a copy of the rendering goes for people to look at (optional).
RENDER_COPY_ENV = "STACK_SEGMENTER_RENDER_COPY"


def render_png(layer: Any, path: Path, size: int = 256) -> Any:
    """Renders one layer to a PNG (sequential job: no threads outliving the test)."""
    from qgis.core import QgsMapRendererSequentialJob, QgsMapSettings
    from qgis.PyQt.QtCore import QSize
    from qgis.PyQt.QtGui import QColor

    settings = QgsMapSettings()
    settings.setLayers([layer])
    settings.setDestinationCrs(layer.crs())
    settings.setExtent(layer.extent())
    settings.setOutputSize(QSize(size, size))
    settings.setBackgroundColor(QColor(0, 0, 0, 0))
    job = QgsMapRendererSequentialJob(settings)
    job.start()
    job.waitForFinished()
    image = job.renderedImage()
    assert image.save(str(path), "PNG")
    return image


def test_styled_probability_map_renders_in_area_classes(predicted: Dict[str, Any], tmp_path: Path) -> None:
    """Top 1 / 5 / 10 / 20 % of the area in their colours, in about those shares of the rendered map."""
    from qgis.core import QgsRasterLayer
    from qgis.PyQt.QtGui import QColor, QImage

    from stack_segmenter.algorithms.styling import CLASS_COLORS, REST_COLOR, apply_probability_style

    layer = QgsRasterLayer(predicted["OUTPUT"], "probability", "gdal")
    assert layer.isValid()
    apply_probability_style(layer, "Probability (test)")
    png = tmp_path / "probability.png"
    render_png(layer, png)
    if os.environ.get(RENDER_COPY_ENV):
        shutil.copy(png, os.environ[RENDER_COPY_ENV])

    image = QImage(str(png))
    assert (image.width(), image.height()) == (256, 256)
    counts: Dict[str, int] = {}
    for y in range(256):
        for x in range(256):
            c = QColor.fromRgba(image.pixel(x, y))
            if c.alpha() > 0:
                counts[c.name()] = counts.get(c.name(), 0) + 1
    opaque = sum(counts.values())
    assert opaque > 0.8 * 256 * 256, "the map is mostly transparent"
    # The nodata corner (top-left 8 x 8 of 128 px -> 16 x 16 of 256 px) stays transparent.
    assert QColor.fromRgba(image.pixel(3, 3)).alpha() == 0
    assert set(counts) <= set(CLASS_COLORS.values()) | {REST_COLOR}, sorted(counts)
    shares = {k: 100.0 * counts.get(colour, 0) / opaque for k, colour in CLASS_COLORS.items()}
    expected = {1: 1.0, 5: 4.0, 10: 5.0, 20: 10.0}
    for k, want in expected.items():
        assert abs(shares[k] - want) < 1.5, (k, shares)
    assert abs(100.0 * counts.get(REST_COLOR, 0) / opaque - 80.0) < 1.5
