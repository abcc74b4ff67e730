"""How a probability map looks: single-band pseudocolour on [0, 1], viridis, nodata transparent.

Built from fixed viridis stops (no style database), so it is the same in the desktop,
under qgis_process and on a worker thread. The post-processor styles the layer QGIS loads
when an algorithm finishes; Processing keeps only a raw pointer to it, so every instance is
kept referenced here (QGIS's documentation asks for that).
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

from qgis.core import (
    QgsColorRampShader,
    QgsGradientColorRamp,
    QgsGradientStop,
    QgsMapLayer,
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProcessingLayerPostProcessorInterface,
    QgsRasterLayer,
    QgsRasterShader,
    QgsSingleBandPseudoColorRenderer,
)
from qgis.PyQt.QtGui import QColor

#: Viridis (matplotlib, CC0) sampled at 0, 0.1, ..., 1.
VIRIDIS_HEX = ("#440154", "#482878", "#3e4989", "#31688e", "#26828e", "#1f9e89",
               "#35b779", "#6ece58", "#b5de2b", "#fde725")
PROBABILITY_MIN = 0.0
PROBABILITY_MAX = 1.0


def viridis_ramp() -> QgsGradientColorRamp:
    """A perceptually uniform ramp from dark purple (low) to yellow (high)."""
    colors = [QColor(h) for h in VIRIDIS_HEX]
    n = len(colors) - 1
    stops = [QgsGradientStop(i / n, colors[i]) for i in range(1, n)]
    return QgsGradientColorRamp(colors[0], colors[-1], False, stops)


def _ramp_items(ramp: QgsGradientColorRamp, classes: int = 11) -> List[QgsColorRampShader.ColorRampItem]:
    span = PROBABILITY_MAX - PROBABILITY_MIN
    items = []
    for i in range(classes):
        t = i / (classes - 1)
        items.append(QgsColorRampShader.ColorRampItem(PROBABILITY_MIN + t * span, ramp.color(t), f"{t:.1f}"))
    return items


def probability_renderer(layer: QgsRasterLayer, band: int = 1) -> QgsSingleBandPseudoColorRenderer:
    """The pseudocolour renderer of a probability band, fixed to [0, 1]."""
    ramp = viridis_ramp()
    shader_fn = QgsColorRampShader(PROBABILITY_MIN, PROBABILITY_MAX)
    shader_fn.setColorRampType(QgsColorRampShader.Type.Interpolated)
    shader_fn.setSourceColorRamp(ramp.clone())
    shader_fn.setColorRampItemList(_ramp_items(ramp))
    shader_fn.setClip(True)
    shader = QgsRasterShader(PROBABILITY_MIN, PROBABILITY_MAX)
    shader.setRasterShaderFunction(shader_fn)
    renderer = QgsSingleBandPseudoColorRenderer(layer.dataProvider(), band, shader)
    renderer.setClassificationMin(PROBABILITY_MIN)
    renderer.setClassificationMax(PROBABILITY_MAX)
    return renderer


def apply_probability_style(layer: QgsRasterLayer, name: Optional[str] = None) -> None:
    """Styles a probability layer in place (and renames it when a name is given)."""
    layer.setRenderer(probability_renderer(layer))
    if name:
        layer.setName(name)
    layer.triggerRepaint()


def layer_name(model_name: Optional[str]) -> str:
    """The layer name says which model made the map."""
    return f"Probability ({model_name})" if model_name else "Probability"


def write_style_sidecar(raster_path: str) -> Optional[str]:
    """Writes <raster>.qml so the map opens styled anywhere (QGIS loads the sidecar as default style)."""
    layer = QgsRasterLayer(raster_path, "probability", "gdal")
    if not layer.isValid():
        return None
    apply_probability_style(layer)
    qml = str(Path(raster_path).with_suffix(".qml"))
    _message, ok = layer.saveNamedStyle(qml, categories=QgsMapLayer.StyleCategory.AllStyleCategories)
    return qml if ok else None


class ProbabilityStyler(QgsProcessingLayerPostProcessorInterface):
    """Styles the probability layer QGIS loads when the algorithm finishes."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def postProcessLayer(self, layer: QgsMapLayer, context: QgsProcessingContext,  # noqa: N802 (Qt API)
                         feedback: QgsProcessingFeedback) -> None:
        if isinstance(layer, QgsRasterLayer) and layer.isValid():
            apply_probability_style(layer, self.name)


_KEEP_ALIVE: List[ProbabilityStyler] = []


def make_styler(name: str) -> ProbabilityStyler:
    """A post-processor that outlives the algorithm call (Processing holds only a pointer)."""
    styler = ProbabilityStyler(name)
    _KEEP_ALIVE.append(styler)
    del _KEEP_ALIVE[:-64]
    return styler
