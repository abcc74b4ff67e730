"""How the maps look: area-percentile classes for the probability map, a ramp for the uncertainty.

A prospectivity map is read by area: "the top 5 % of the area holds 60 % of the deposits".
So the probability map is shown in the classes Evaluate reports, top 1 / 5 / 10 / 20 % of
the area, with a legend that names them and their cut-off values. The cut-offs come from
the map itself: Predict stores them as tags (``top1_cutoff`` ...); a map without them gets
them from a decimated read. Where no cut-off can be had, a continuous viridis ramp on
[0, 1]. The uncertainty map (members' spread) is a continuous ramp from 0 to its 99th
percentile. Built from fixed colour stops (no style database), so it is the same in the
desktop, under qgis_process and on a worker thread. The post-processor styles the layer
QGIS loads when an algorithm finishes; Processing keeps only a raw pointer to it, so every
instance is kept referenced here (QGIS's documentation asks for that).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from qgis.core import (
    QgsColorRampShader,
    QgsFillSymbol,
    QgsGradientColorRamp,
    QgsGradientStop,
    QgsMapLayer,
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProcessingLayerPostProcessorInterface,
    QgsRasterLayer,
    QgsRasterShader,
    QgsSingleBandPseudoColorRenderer,
    QgsSingleSymbolRenderer,
    QgsVectorLayer,
)
from qgis.PyQt.QtGui import QColor

#: Viridis (matplotlib, CC0) sampled at 0, 0.1, ..., 1.
VIRIDIS_HEX = ("#440154", "#482878", "#3e4989", "#31688e", "#26828e", "#1f9e89",
               "#35b779", "#6ece58", "#b5de2b", "#fde725")
PROBABILITY_MIN = 0.0
PROBABILITY_MAX = 1.0
#: The area classes (top k % of the area, as Evaluate reports them) and their colours (viridis).
TOP_PERCENTS: Tuple[int, ...] = (1, 5, 10, 20)
CLASS_COLORS = {1: "#fde725", 5: "#5ec962", 10: "#21918c", 20: "#3b528b"}
REST_COLOR = "#440154"
#: Uncertainty ramp (light: members agree -> dark red: they differ), YlOrRd-like stops.
UNCERTAINTY_HEX = ("#ffffcc", "#fed976", "#fd8d3c", "#e31a1c", "#800026")
#: Most pixels read to estimate cut-offs of a map that carries none (a decimated read).
SAMPLE_PIXELS = 1_000_000


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


def _continuous_renderer(layer: QgsRasterLayer, band: int = 1) -> QgsSingleBandPseudoColorRenderer:
    """Viridis on [0, 1] (a map whose value distribution is unknown)."""
    ramp = viridis_ramp()
    shader_fn = QgsColorRampShader(PROBABILITY_MIN, PROBABILITY_MAX)
    shader_fn.setColorRampType(QgsColorRampShader.Type.Interpolated)
    shader_fn.setSourceColorRamp(ramp.clone())
    shader_fn.setColorRampItemList(_ramp_items(ramp))
    shader_fn.setClip(True)
    return _renderer(layer, band, shader_fn, PROBABILITY_MIN, PROBABILITY_MAX)


def _renderer(layer: QgsRasterLayer, band: int, shader_fn: QgsColorRampShader, lo: float, hi: float
              ) -> QgsSingleBandPseudoColorRenderer:
    shader = QgsRasterShader(lo, hi)
    shader.setRasterShaderFunction(shader_fn)
    renderer = QgsSingleBandPseudoColorRenderer(layer.dataProvider(), band, shader)
    renderer.setClassificationMin(lo)
    renderer.setClassificationMax(hi)
    return renderer


def _tag_cutoffs(path: str) -> Optional[Dict[int, float]]:
    """The cut-offs Predict stored as GeoTIFF tags (None when the map has none)."""
    from osgeo import gdal

    ds = gdal.Open(path)
    if ds is None:
        return None
    tags = ds.GetMetadata() or {}
    try:
        return {k: float(tags[f"top{k}_cutoff"]) for k in TOP_PERCENTS}
    except (KeyError, ValueError):
        return None


def _sample(path: str, most: int = SAMPLE_PIXELS) -> Optional[np.ndarray]:
    """Up to ``most`` valid values of band 1, read decimated (nearest) by GDAL."""
    from osgeo import gdal

    ds = gdal.Open(path)
    if ds is None:
        return None
    band = ds.GetRasterBand(1)
    step = max(1.0, math.sqrt(ds.RasterXSize * ds.RasterYSize / most))
    data = band.ReadAsArray(buf_xsize=max(1, int(ds.RasterXSize / step)), buf_ysize=max(1, int(ds.RasterYSize / step)))
    if data is None:
        return None
    values = np.asarray(data, dtype=np.float64).ravel()
    nodata = band.GetNoDataValue()
    keep = np.isfinite(values) & ((values != nodata) if nodata is not None else True)
    return values[keep]


def area_cutoffs(path: str) -> Optional[Dict[int, float]]:
    """Value at which the top k % of the map's area begins, for k in TOP_PERCENTS.

    From the tags Predict writes, else estimated from a decimated read of the map
    (core.metrics.top_threshold's rule: ties at the cut-off are inside). None when the map
    has no valid value.
    """
    cut = _tag_cutoffs(path)
    if cut is not None:
        return cut
    from ..core.metrics import top_threshold

    values = _sample(path)
    if values is None or values.size == 0:
        return None
    return {k: top_threshold(values, k) for k in TOP_PERCENTS}


def _below(value: float) -> float:
    """The largest float32 below ``value``: a pixel exactly at a cut-off belongs to the class above it."""
    return float(np.nextafter(np.float32(value), np.float32(-np.inf)))


def _fmt(value: float) -> str:
    return f"{value:.3g}"


def area_class_items(cutoffs: Dict[int, float]) -> List[QgsColorRampShader.ColorRampItem]:
    """Discrete classes, lowest first: the rest of the area, top 20, 10, 5 and 1 %.

    QGIS's discrete shader gives a pixel the first class whose value is >= the pixel's, so
    each class ends just below the next cut-off. Classes whose cut-offs coincide (a map
    with large ties) merge into the higher one.
    """
    ks = sorted(TOP_PERCENTS, reverse=True)  # 20, 10, 5, 1
    items = [QgsColorRampShader.ColorRampItem(_below(cutoffs[ks[0]]), QColor(REST_COLOR),
                                              f"Remaining {100 - ks[0]} % of area (< {_fmt(cutoffs[ks[0]])})")]
    for i, k in enumerate(ks):
        upper = _below(cutoffs[ks[i + 1]]) if i + 1 < len(ks) else math.inf
        lower_k = ks[i + 1] if i + 1 < len(ks) else 0
        share = f"Top {k} % of area" if lower_k == 0 else f"Top {lower_k}-{k} % of area"
        items.append(QgsColorRampShader.ColorRampItem(upper, QColor(CLASS_COLORS[k]), f"{share} (>= {_fmt(cutoffs[k])})"))
    out: List[QgsColorRampShader.ColorRampItem] = []
    for item in items:
        if out and item.value <= out[-1].value:  # an empty class: the cut-offs tie
            out[-1] = QgsColorRampShader.ColorRampItem(out[-1].value, item.color, item.label)
            continue
        out.append(item)
    return out


def probability_renderer(layer: QgsRasterLayer, band: int = 1,
                         cutoffs: Optional[Dict[int, float]] = None) -> QgsSingleBandPseudoColorRenderer:
    """The probability map's renderer: area-percentile classes when cut-offs are known, else viridis on [0, 1]."""
    if cutoffs is None:
        cutoffs = area_cutoffs(layer.source())
    if not cutoffs:
        return _continuous_renderer(layer, band)
    shader_fn = QgsColorRampShader(PROBABILITY_MIN, PROBABILITY_MAX)
    shader_fn.setColorRampType(QgsColorRampShader.Type.Discrete)
    shader_fn.setColorRampItemList(area_class_items(cutoffs))
    return _renderer(layer, band, shader_fn, PROBABILITY_MIN, PROBABILITY_MAX)


def apply_probability_style(layer: QgsRasterLayer, name: Optional[str] = None) -> None:
    """Styles a probability layer in place (and renames it when a name is given)."""
    layer.setRenderer(probability_renderer(layer))
    if name:
        layer.setName(name)
    layer.triggerRepaint()


def uncertainty_top(path: str) -> float:
    """The upper end of the uncertainty ramp: the map's 99th percentile (tag ``p99``), else its max."""
    from osgeo import gdal

    ds = gdal.Open(path)
    tags = (ds.GetMetadata() or {}) if ds is not None else {}
    for key in ("p99", "max"):
        try:
            value = float(tags[key])
        except (KeyError, ValueError):
            continue
        if value > 0:
            return value
    values = _sample(path)
    top = float(np.percentile(values, 99)) if values is not None and values.size else 0.0
    return top if top > 0 else 1.0


#: Model file names that say nothing on their own (the CLI's <output>/<model>/checkpoint.pt).
_GENERIC_MODEL_STEMS = {"checkpoint", "model", "best", "last"}


def model_label(model_path: Optional[str]) -> str:
    """A model's short, distinct name: its file name (with its folder when the file name is generic)."""
    if not model_path:
        return ""
    path = Path(model_path)
    if path.stem.lower() in _GENERIC_MODEL_STEMS and path.parent.name:
        return f"{path.parent.name}/{path.stem}"
    return path.stem


def layer_name(model_path: Optional[str], calibrated: bool = True) -> str:
    """The map's layer name says what it is and which model made it: "Prospectivity (copper_v2)", or
    "Prospectivity score (...)" when the values are not calibrated probabilities."""
    kind = "Prospectivity" if calibrated else "Prospectivity score"
    label = model_label(model_path)
    return f"{kind} ({label})" if label else kind


def uncertainty_layer_name(model_path: Optional[str]) -> str:
    """The uncertainty layer's name (the members' spread), after the model file like the map's."""
    label = model_label(model_path)
    return f"Uncertainty ({label})" if label else "Uncertainty"


class BlocksStyler(QgsProcessingLayerPostProcessorInterface):
    """Validation blocks as red outlines (no fill), so the map and the deposits show through."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def postProcessLayer(self, layer: QgsMapLayer, context: QgsProcessingContext,  # noqa: N802 (Qt API)
                         feedback: QgsProcessingFeedback) -> None:
        if isinstance(layer, QgsVectorLayer) and layer.isValid():
            symbol = QgsFillSymbol.createSimple({"color": "0,0,0,0", "outline_color": "#e31a1c",
                                                 "outline_width": "0.6", "outline_style": "dash"})
            layer.setRenderer(QgsSingleSymbolRenderer(symbol))
            layer.setName(self.name)
            layer.triggerRepaint()


def load_validation_blocks(context: QgsProcessingContext, gpkg: str, model: str) -> str:
    """Asks QGIS to load a training run's validation blocks when the tool finishes; returns the layer's name."""
    name = f"Validation blocks ({model})" if model else "Validation blocks"
    uri = f"{gpkg}|layername=validation_blocks"
    details = QgsProcessingContext.LayerDetails(name, context.project(), name)
    details.setPostProcessor(_keep(BlocksStyler(name)))
    context.addLayerToLoadOnCompletion(uri, details)
    return name


def uncertainty_renderer(layer: QgsRasterLayer, band: int = 1) -> QgsSingleBandPseudoColorRenderer:
    """Light (members agree, 0) to dark red (the map's 99th percentile of spread and above)."""
    top = uncertainty_top(layer.source())
    colors = [QColor(h) for h in UNCERTAINTY_HEX]
    n = len(colors) - 1
    ramp = QgsGradientColorRamp(colors[0], colors[-1], False,
                                [QgsGradientStop(i / n, colors[i]) for i in range(1, n)])
    shader_fn = QgsColorRampShader(0.0, top)
    shader_fn.setColorRampType(QgsColorRampShader.Type.Interpolated)
    shader_fn.setSourceColorRamp(ramp.clone())
    labels = {0: "0 (members agree)", n: f"{_fmt(top)} (99th percentile; members differ)"}
    shader_fn.setColorRampItemList([QgsColorRampShader.ColorRampItem(top * i / n, colors[i], labels.get(i, _fmt(top * i / n)))
                                    for i in range(n + 1)])
    shader_fn.setClip(False)
    return _renderer(layer, band, shader_fn, 0.0, top)


def apply_uncertainty_style(layer: QgsRasterLayer, name: Optional[str] = None) -> None:
    """Styles an uncertainty (members' spread) layer in place."""
    layer.setRenderer(uncertainty_renderer(layer))
    if name:
        layer.setName(name)
    layer.triggerRepaint()


STYLES = {"probability": apply_probability_style, "uncertainty": apply_uncertainty_style}


def write_style_sidecar(raster_path: str, kind: str = "probability") -> Optional[str]:
    """Writes <raster>.qml so the map opens styled anywhere (QGIS loads the sidecar as default style)."""
    layer = QgsRasterLayer(raster_path, kind, "gdal")
    if not layer.isValid():
        return None
    STYLES[kind](layer)
    qml = str(Path(raster_path).with_suffix(".qml"))
    _message, ok = layer.saveNamedStyle(qml, categories=QgsMapLayer.StyleCategory.AllStyleCategories)
    return qml if ok else None


class ProbabilityStyler(QgsProcessingLayerPostProcessorInterface):
    """Styles the map layer QGIS loads when the algorithm finishes (``kind``: probability or uncertainty)."""

    def __init__(self, name: str, kind: str = "probability") -> None:
        super().__init__()
        self.name = name
        self.kind = kind

    def postProcessLayer(self, layer: QgsMapLayer, context: QgsProcessingContext,  # noqa: N802 (Qt API)
                         feedback: QgsProcessingFeedback) -> None:
        if isinstance(layer, QgsRasterLayer) and layer.isValid():
            STYLES[self.kind](layer, self.name)


_KEEP_ALIVE: List[QgsProcessingLayerPostProcessorInterface] = []


def _keep(styler: QgsProcessingLayerPostProcessorInterface) -> QgsProcessingLayerPostProcessorInterface:
    """Keeps a post-processor alive after the algorithm call (Processing holds only a pointer)."""
    _KEEP_ALIVE.append(styler)
    del _KEEP_ALIVE[:-64]
    return styler


def make_styler(name: str, kind: str = "probability") -> ProbabilityStyler:
    """A post-processor that styles (and names) the probability or uncertainty layer QGIS loads."""
    return _keep(ProbabilityStyler(name, kind))  # type: ignore[return-value]
