"""Evidence layers -> one raster stack the worker reads: aligned, named, never copied.

Geologists hold many rasters on different grids (geophysics grids, geochemistry
interpolations, distance rasters, lithology codes). Train, Predict and Cross-validate take
them as one multiple-layers parameter; this module turns that list into a single GDAL
raster:

- one multi-band raster on its own grid is used as it is (the one-layer case);
- otherwise every band is aligned to one reference grid (the first layer's, or a chosen
  CRS / pixel size / extent): layers already on that grid are referenced directly, the
  others through a warped VRT (bilinear for continuous bands, nearest for categorical ones),
  and a VRT stacks them: no pixel is copied. Every stack band is Float32 with NaN as nodata
  (the core masks NaN and each band's nodata).
- Bands are named after their layers: a single-band layer by the layer's name, a band of a
  multi-band layer by its description (else "<layer> band <k>"); names are unique, so a
  model trained on them can find them again by name (Predict maps bands by name).

QGIS's own GDAL bindings (osgeo.gdal) do the work; the core is not involved.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple
from xml.sax.saxutils import escape

from osgeo import gdal, osr
from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsRasterLayer,
    QgsRectangle,
)

GeoTransform = Tuple[float, float, float, float, float, float]
#: A band description that says nothing ("Band 1", "band_2"): the layer name is used instead.
_GENERIC_DESCRIPTION = re.compile(r"^\s*band[ _-]?\d+\s*$", re.IGNORECASE)
RESAMPLING = {False: "bilinear", True: "near"}


@dataclass(frozen=True)
class Grid:
    """The reference grid every band is aligned to (``transform`` in GDAL's geotransform order)."""

    wkt: str
    transform: GeoTransform
    width: int
    height: int

    @property
    def bounds(self) -> Tuple[float, float, float, float]:
        """(minx, miny, maxx, maxy) of a north-up grid (GDAL's geotransform order: x0, dx, 0, y0, 0, dy)."""
        x0, dx, _rx, y0, _ry, dy = self.transform
        x1, y1 = x0 + self.width * dx, y0 + self.height * dy
        return (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


@dataclass
class SourceBand:
    """One band of one evidence layer, as GDAL sees it."""

    layer: str
    path: str
    band: int
    name: str = ""
    nodata: Optional[float] = None
    masked: bool = False  # a mask band other than nodata (alpha, .msk): must go through the warper


@dataclass
class EvidenceStack:
    """What the worker reads (``path``), its band names, and which bands are categorical (1-based)."""

    path: str
    band_names: List[str]
    categorical: List[int] = field(default_factory=list)
    built: bool = False  # True when a VRT was written (several layers, or alignment needed)


def _open(path: str) -> "gdal.Dataset":
    ds = gdal.Open(path)
    if ds is None:
        raise QgsProcessingException(f"GDAL cannot open the raster {path} ({gdal.GetLastErrorMsg() or 'unknown'})")
    return ds


def source_bands(layers: Sequence[Tuple[str, str]]) -> List[SourceBand]:
    """Every band of every (layer name, GDAL path), with a unique stack name."""
    bands: List[SourceBand] = []
    for layer, path in layers:
        ds = _open(path)
        count = ds.RasterCount
        for k in range(1, count + 1):
            band = ds.GetRasterBand(k)
            description = (band.GetDescription() or "").strip()
            if count == 1:
                name = layer
            elif description and not _GENERIC_DESCRIPTION.match(description):
                name = description
            else:
                name = f"{layer} band {k}"
            flags = band.GetMaskFlags()
            masked = not flags & (gdal.GMF_ALL_VALID | gdal.GMF_NODATA)
            bands.append(SourceBand(layer, path, k, name, band.GetNoDataValue(), masked))
    _make_unique(bands)
    return bands


def _make_unique(bands: List[SourceBand]) -> None:
    """Duplicate names get their layer's name in front, then a counter."""
    counts: Dict[str, int] = {}
    for b in bands:
        counts[b.name] = counts.get(b.name, 0) + 1
    for b in bands:
        if counts[b.name] > 1 and not b.name.startswith(b.layer):
            b.name = f"{b.layer}: {b.name}"
    seen: Dict[str, int] = {}
    for b in bands:
        if b.name in seen:
            seen[b.name] += 1
            b.name = f"{b.name} ({seen[b.name]})"
        else:
            seen[b.name] = 1


def resolve_bands(text_or_items: Sequence[str] | str, names: Sequence[str], what: str = "Categorical bands"
                  ) -> List[int]:
    """Band names (exact, else case-insensitive) or 1-based numbers -> sorted 1-based numbers.

    Raises QgsProcessingException naming every unknown entry and listing the stack's bands.
    """
    items = split_names(text_or_items) if isinstance(text_or_items, str) else [str(i) for i in text_or_items]
    lower = {}
    for i, n in enumerate(names, start=1):
        lower.setdefault(n.lower(), i)
    found, unknown = set(), []
    for item in items:
        if item in names:
            found.add(list(names).index(item) + 1)
        elif item.lower() in lower:
            found.add(lower[item.lower()])
        elif item.isdigit() and 1 <= int(item) <= len(names):
            found.add(int(item))
        else:
            unknown.append(item)
    if unknown:
        raise QgsProcessingException(
            f"{what}: {', '.join(repr(u) for u in unknown)} is not a band of the evidence stack. Give band names "
            f"(or 1-based numbers) separated by commas; the bands are: {', '.join(names)}")
    return sorted(found)


def split_names(text: str) -> List[str]:
    """'lith, faults;dist' -> ['lith', 'faults', 'dist']: commas, semicolons or new lines separate
    (band names may hold spaces)."""
    return [part.strip() for part in re.split(r"[,;\n]", text or "") if part.strip()]


# ----------------------------------------------------------------------------- the grid


def _same_crs(wkt_a: str, wkt_b: str) -> bool:
    if not wkt_a or not wkt_b:
        return wkt_a == wkt_b
    a, b = osr.SpatialReference(), osr.SpatialReference()
    if a.ImportFromWkt(wkt_a) != 0 or b.ImportFromWkt(wkt_b) != 0:
        return wkt_a == wkt_b
    return bool(a.IsSame(b))


def grid_of(path: str) -> Grid:
    """The grid of a raster file."""
    ds = _open(path)
    return Grid(ds.GetProjection() or "", tuple(float(v) for v in ds.GetGeoTransform()),  # type: ignore[arg-type]
                ds.RasterXSize, ds.RasterYSize)


def on_grid(path: str, grid: Grid) -> bool:
    """True when a raster lies exactly on the grid (same CRS, origin, pixel size, size)."""
    own = grid_of(path)
    if (own.width, own.height) != (grid.width, grid.height) or not _same_crs(own.wkt, grid.wkt):
        return False
    pixel = max(abs(grid.transform[1]), abs(grid.transform[5]), 1e-12)
    return all(math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6 * pixel) for a, b in zip(own.transform, grid.transform))


def reference_grid(first: str, crs: Optional[QgsCoordinateReferenceSystem] = None,
                   resolution: Optional[float] = None, extent: Optional[QgsRectangle] = None) -> Grid:
    """The first layer's grid, or that grid changed to the chosen CRS / pixel size / extent.

    ``extent`` is in ``crs`` (or in the first layer's CRS when no CRS is chosen).
    """
    base = grid_of(first)
    if (crs is None or not crs.isValid()) and not resolution and (extent is None or extent.isNull()):
        return base
    wkt = crs.toWkt(QgsCoordinateReferenceSystem.WKT_PREFERRED_GDAL) if crs is not None and crs.isValid() else base.wkt
    options: Dict[str, object] = {"format": "VRT", "dstSRS": wkt or None}
    if resolution:
        options.update(xRes=float(resolution), yRes=float(resolution))
    if extent is not None and not extent.isNull():
        options["outputBounds"] = (extent.xMinimum(), extent.yMinimum(), extent.xMaximum(), extent.yMaximum())
        if not resolution:
            options.update(xRes=abs(base.transform[1]), yRes=abs(base.transform[5]))
    ds = gdal.Warp("", _open(first), **options)
    if ds is None:
        raise QgsProcessingException(f"Cannot set up the reference grid ({gdal.GetLastErrorMsg()}); check the "
                                     "chosen CRS, pixel size and extent")
    return Grid(ds.GetProjection() or wkt, tuple(float(v) for v in ds.GetGeoTransform()),  # type: ignore[arg-type]
                ds.RasterXSize, ds.RasterYSize)


# ----------------------------------------------------------------------------- building


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:40] or "layer"


def _warp(path: str, grid: Grid, categorical: bool, target: Path) -> str:
    """A warped VRT of a whole layer on the grid (Float32, NaN nodata); nothing is copied."""
    ds = gdal.Warp(str(target), _open(path), format="VRT", dstSRS=grid.wkt or None, outputBounds=grid.bounds,
                   width=grid.width, height=grid.height, resampleAlg=RESAMPLING[categorical],
                   outputType=gdal.GDT_Float32, dstNodata=float("nan"))
    if ds is None:
        raise QgsProcessingException(f"Cannot align {path} to the reference grid ({gdal.GetLastErrorMsg()})")
    ds = None  # noqa: F841 - closing writes the VRT
    return str(target)


def _band_xml(index: int, name: str, path: str, band: int, nodata: Optional[float], grid: Grid) -> str:
    rect = f'xOff="0" yOff="0" xSize="{grid.width}" ySize="{grid.height}"'
    kind = "ComplexSource" if nodata is not None else "SimpleSource"
    nodata_xml = f"<NODATA>{_number(nodata)}</NODATA>" if nodata is not None else ""
    return (f'  <VRTRasterBand dataType="Float32" band="{index}">\n'
            f"    <Description>{escape(name)}</Description>\n"
            "    <NoDataValue>nan</NoDataValue>\n"
            f'    <{kind}><SourceFilename relativeToVRT="0">{escape(os.path.abspath(path))}</SourceFilename>'
            f"<SourceBand>{band}</SourceBand><SrcRect {rect}/><DstRect {rect}/>{nodata_xml}</{kind}>\n"
            "  </VRTRasterBand>\n")


def _number(value: float) -> str:
    return "nan" if math.isnan(value) else repr(float(value))


def write_stack_vrt(bands: Sequence[SourceBand], categorical: Sequence[int], grid: Grid, vrt: Path,
                    feedback: Optional[QgsProcessingFeedback] = None) -> None:
    """Writes the stack VRT (and a warped VRT per layer and resampling that needs one, beside it)."""
    vrt.parent.mkdir(parents=True, exist_ok=True)
    parts = vrt.parent / (vrt.stem + "_layers")
    warped: Dict[Tuple[str, bool], str] = {}
    lines = []
    for i, b in enumerate(bands, start=1):
        is_cat = i in categorical
        path, nodata = b.path, b.nodata
        if b.masked or not on_grid(b.path, grid):
            key = (b.path, is_cat)
            if key not in warped:
                parts.mkdir(exist_ok=True)
                target = parts / f"{len(warped) + 1:02d}_{_safe(b.layer)}_{RESAMPLING[is_cat]}.vrt"
                if feedback is not None:
                    feedback.pushInfo(f"Aligning {b.layer} to the reference grid ({RESAMPLING[is_cat]})")
                warped[key] = _warp(b.path, grid, is_cat, target)
            path, nodata = warped[key], None  # NaN already marks nodata there
        lines.append(_band_xml(i, b.name, path, b.band, nodata, grid))
    srs = f"  <SRS>{escape(grid.wkt)}</SRS>\n" if grid.wkt else ""
    text = (f'<VRTDataset rasterXSize="{grid.width}" rasterYSize="{grid.height}">\n{srs}'
            f"  <GeoTransform>{', '.join(repr(float(v)) for v in grid.transform)}</GeoTransform>\n"
            + "".join(lines) + "</VRTDataset>\n")
    tmp = vrt.with_name(f".{vrt.name}.partial")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, vrt)


@dataclass
class StackPlan:
    """The stack of some evidence layers, worked out without writing anything.

    ``as_is`` is the one-layer case (a multi-band raster on its own grid, used as it is);
    otherwise ``write`` makes the VRT. ``aligning`` says whether some band must be resampled
    (only then do the categorical bands matter for the stack).
    """

    bands: List[SourceBand]
    grid: Grid
    names: List[str]
    as_is: Optional[str] = None

    @property
    def aligning(self) -> bool:
        return self.as_is is None and any(b.masked or not on_grid(b.path, self.grid) for b in self.bands)

    def write(self, vrt: Path, categorical: Sequence[int] = (),
              feedback: Optional[QgsProcessingFeedback] = None) -> EvidenceStack:
        """The raster the worker reads: the layer itself (as_is), or ``vrt`` written now."""
        if self.as_is is not None:
            return EvidenceStack(self.as_is, list(self.names), list(categorical), built=False)
        write_stack_vrt(self.bands, categorical, self.grid, vrt, feedback)
        if feedback is not None:
            feedback.pushInfo(f"Evidence stack: {len(self.bands)} band(s) from "
                              f"{len({b.path for b in self.bands})} layer(s) on a {self.grid.width} x "
                              f"{self.grid.height} px grid: {', '.join(self.names)}")
        return EvidenceStack(str(vrt), list(self.names), list(categorical), built=True)


def plan_stack(layers: Sequence[Tuple[str, str]], *, crs: Optional[QgsCoordinateReferenceSystem] = None,
               resolution: Optional[float] = None, extent: Optional[QgsRectangle] = None,
               always_vrt: bool = False) -> StackPlan:
    """The stack of ``layers`` ((name, GDAL path); the first gives the reference grid).

    One multi-band layer needing no alignment is used as it is (its band descriptions, or
    ``band_N``, are its names), unless ``always_vrt``.
    """
    if not layers:
        raise QgsProcessingException("No evidence layer given: choose at least one raster (INPUT)")
    bands = source_bands(layers)
    grid = reference_grid(layers[0][1], crs, resolution, extent)
    single = len(layers) == 1 and len(bands) > 1 and not any(b.masked for b in bands)
    if single and not always_vrt and grid == grid_of(layers[0][1]):
        ds = _open(layers[0][1])
        names = [ds.GetRasterBand(k).GetDescription() or f"band_{k}" for k in range(1, ds.RasterCount + 1)]
        return StackPlan(bands, grid, names, as_is=layers[0][1])
    return StackPlan(bands, grid, [b.name for b in bands])


def layer_label(layer: QgsRasterLayer) -> str:
    """The name a layer gives its band(s)."""
    return layer.name().strip() or Path(layer.source()).stem
