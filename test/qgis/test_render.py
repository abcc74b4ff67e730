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


def test_styled_probability_map_renders_in_colour(predicted: Dict[str, Any], tmp_path: Path) -> None:
    from qgis.core import QgsRasterLayer
    from qgis.PyQt.QtGui import QColor, QImage

    from stack_segmenter.algorithms.styling import VIRIDIS_HEX, apply_probability_style

    layer = QgsRasterLayer(predicted["OUTPUT"], "probability", "gdal")
    assert layer.isValid()
    apply_probability_style(layer, "Probability (test)")
    png = tmp_path / "probability.png"
    render_png(layer, png)
    if os.environ.get(RENDER_COPY_ENV):
        shutil.copy(png, os.environ[RENDER_COPY_ENV])

    image = QImage(str(png))
    assert (image.width(), image.height()) == (256, 256)
    colours, opaque = set(), 0
    for y in range(0, 256, 2):
        for x in range(0, 256, 2):
            c = QColor.fromRgba(image.pixel(x, y))
            if c.alpha() > 0:
                opaque += 1
                colours.add(c.name())
    assert opaque > 0.8 * 128 * 128, "the map is mostly transparent"
    assert len(colours) >= 8, f"too few colours for a probability ramp: {sorted(colours)[:10]}"
    # The nodata corner (top-left 8 x 8 of 128 px -> 16 x 16 of 256 px) stays transparent.
    assert QColor.fromRgba(image.pixel(3, 3)).alpha() == 0
    # Colours come from the viridis ramp: blue-green-purple-yellow, never grey.
    ramp = [QColor(h) for h in VIRIDIS_HEX]
    for name in list(colours)[:50]:
        c = QColor(name)
        nearest = min(sum((a - b) ** 2 for a, b in zip(c.getRgb()[:3], r.getRgb()[:3])) for r in ramp)
        assert nearest < 60 ** 2, f"{name} is far from every viridis colour"
