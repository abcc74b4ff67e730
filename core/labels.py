"""Vector labels -> a 0/1 label mask on the raster's grid.

Any OGR vector that geopandas reads (shapefile, GeoPackage layer, GeoJSON) is reprojected
to the raster's CRS when the two differ, then burned with ``rasterio.features.rasterize``:
polygons (and lines) as they are, points and multipoints buffered by ``point_buffer`` AND
burned as points so the pixel that holds a point is always positive.

Only positives burn. Background is 0, so a negative feature (label 0) only documents
"known background" and is never burned; where a negative and a positive overlap the
positive wins, so a rare deposit is never erased by a surrounding negative polygon.

A layer inside a multi-layer file can be named with ``LabelOptions.layer`` or, for the
labels and the mask alike, with QGIS's source syntax ``path|layername=NAME``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .config import LabelOptions, parse_point_buffer
from .errors import DataError
from .events import LogFn
from .raster import RasterInfo, map_to_pixel


DEFAULT_LABEL_COLUMN = "label"
_POINT_TYPES = ("Point", "MultiPoint")
_TRUE_STRINGS = {"1", "true", "yes", "t", "y"}
_FALSE_STRINGS = {"0", "false", "no", "f", "n"}


@dataclass
class LabelRaster:
    """Labels on the raster grid.

    Attributes:
        labels: uint8 (H, W), 1 = positive, 0 = background (negatives and unlabelled).
        study_mask: bool (H, W), True inside the study area; None without ``mask_path``.
        positive_points: float (N, 2) of (row, col) pixel coordinates, one per positive
            feature inside the raster (points: the point, every part of a multipoint;
            polygons: a representative point), for deposit-level metrics.
        summary: counts (features read / without geometry / outside / positive / negative,
            positive pixels, the label column used, ...), JSON-able.
    """

    labels: np.ndarray
    study_mask: Optional[np.ndarray]
    positive_points: np.ndarray
    summary: Dict[str, Any] = field(default_factory=dict)


def _noop(_msg: str) -> None:
    return None


def split_source(path: str, layer: Optional[str] = None) -> Tuple[str, Optional[str]]:
    """Splits QGIS's ``path|layername=NAME`` syntax; an explicit ``layer`` wins."""
    parts = str(path).split("|")
    base, found = parts[0], None
    for part in parts[1:]:
        key, _, value = part.partition("=")
        if key.strip().lower() == "layername" and value:
            found = value
    return base, layer if layer is not None else found


def _list_layers(path: str) -> List[str]:
    import fiona

    try:
        return list(fiona.listlayers(path))
    except Exception:  # noqa: BLE001 - any reason it cannot be listed means "not a vector"
        return []


def read_vector(path: str, layer: Optional[str] = None, what: str = "labels") -> "Any":
    """Reads one vector layer into a GeoDataFrame.

    Raises:
        DataError: missing file, unreadable file, or unknown layer (lists the layers).
    """
    import geopandas as gpd

    base, layer = split_source(path, layer)
    if not Path(base).exists():
        raise DataError(f"{what} file {base!r} does not exist; check the path")
    layers = _list_layers(base)
    if not layers:
        raise DataError(f"cannot read {base!r} as a vector layer; give a shapefile, GeoPackage or GeoJSON")
    if layer is not None and layer not in layers:
        raise DataError(f"layer {layer!r} not found in {base!r}; its layers are: {', '.join(layers)}")
    try:
        return gpd.read_file(base, layer=layer) if layer is not None else gpd.read_file(base)
    except Exception as exc:  # noqa: BLE001 - fiona/GDAL raise many types for a bad file
        raise DataError(f"cannot read {what} {base!r} ({exc}); give a valid shapefile, GeoPackage or GeoJSON") from None


def _raster_crs(info: RasterInfo) -> "Any":
    from pyproj import CRS

    return CRS.from_wkt(info.crs_wkt) if info.crs_wkt else None


def to_raster_crs(gdf: "Any", info: RasterInfo, log: LogFn, what: str = "labels") -> "Any":
    """Reprojects to the raster's CRS when they differ (compared by equivalence, not by name)."""
    target = _raster_crs(info)
    if gdf.crs is None or target is None:
        if (gdf.crs is None) != (target is None):
            log(f"warning: the {what} or the raster has no CRS; assuming both use the raster's coordinates")
        return gdf
    if target.equals(gdf.crs, ignore_axis_order=True):
        return gdf
    log(f"reprojecting {what} from {gdf.crs.name} to the raster CRS {target.name}")
    return gdf.to_crs(target)


def _format_value(value: Any) -> str:
    """Text form of a label value; 1.0 prints as '1' so positive_values ['1'] matches floats."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def resolve_label_column(columns: Sequence[str], label_column: Optional[str]) -> Optional[str]:
    """The column to read labels from; None means 'every feature is positive'.

    Raises:
        DataError: a column named explicitly does not exist (lists the columns).
    """
    if label_column is None:
        return DEFAULT_LABEL_COLUMN if DEFAULT_LABEL_COLUMN in columns else None
    if label_column in columns:
        return label_column
    raise DataError(
        f"label column {label_column!r} not found; the columns are: {', '.join(columns) or '(none)'}; "
        "pass one of them (--label_column) or leave it out to treat every feature as positive"
    )


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, (float, np.floating)) and math.isnan(value))


def _binary_value(value: Any) -> Optional[int]:
    """0/1 for values that are binary by themselves (numbers 0/1, booleans, '0'/'true'...)."""
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (int, float, np.integer, np.floating)):
        return int(value) if value in (0, 1) else None
    text = str(value).strip().lower()
    if text in _TRUE_STRINGS:
        return 1
    if text in _FALSE_STRINGS:
        return 0
    return None


def label_values(values: Sequence[Any], column: str, positive_values: Optional[List[str]]) -> np.ndarray:
    """Maps a column's values to 0/1; missing values become -1 (feature ignored).

    Raises:
        DataError: values that are not binary and no positive_values to interpret them.
    """
    out = np.full(len(values), -1, dtype=np.int8)
    if positive_values is not None:
        wanted = {str(v) for v in positive_values}
        for i, v in enumerate(values):
            if not _is_missing(v):
                out[i] = 1 if _format_value(v) in wanted or str(v) in wanted else 0
        return out
    bad: List[str] = []
    for i, v in enumerate(values):
        if _is_missing(v):
            continue
        b = _binary_value(v)
        if b is None:
            if _format_value(v) not in bad:
                bad.append(_format_value(v))
        else:
            out[i] = b
    if bad:
        distinct = sorted({_format_value(v) for v in values if not _is_missing(v)})
        shown = ", ".join(distinct[:20]) + (" ..." if len(distinct) > 20 else "")
        raise DataError(
            f"label column {column!r} is not binary 0/1; its values are: {shown}; "
            f"say which values are positive, e.g. --positive_values {distinct[0]}"
        )
    return out


def _feature_labels(gdf: "Any", opts: LabelOptions, log: LogFn) -> Tuple[np.ndarray, Optional[str]]:
    """Per-feature label 1/0 (or -1 = no value) and the column used."""
    columns = [c for c in gdf.columns if c != gdf.geometry.name]
    column = resolve_label_column(columns, opts.label_column)
    if column is None:
        log(f"no label column ('{DEFAULT_LABEL_COLUMN}' absent, none given): every feature is positive")
        return np.ones(len(gdf), dtype=np.int8), None
    values = label_values(list(gdf[column]), column, opts.positive_values)
    missing = int((values < 0).sum())
    if missing:
        log(f"warning: {missing} feature(s) have no value in column {column!r} and are ignored")
    return values, column


def _buffer_radius(point_buffer: str, info: RasterInfo) -> float:
    """The point buffer in map units (pixels are converted with the mean pixel size)."""
    value, unit = parse_point_buffer(point_buffer)
    if unit == "px":
        return value * (info.res[0] + info.res[1]) / 2.0
    return value


def _shapes(geoms: Sequence[Any], radius: float) -> List[Any]:
    """Geometries to burn: polygons/lines as they are; points buffered AND as points."""
    out: List[Any] = []
    for g in geoms:
        if g.geom_type in _POINT_TYPES:
            if radius > 0:
                out.append(g.buffer(radius))
            out.append(g)  # the pixel that contains the point is always burned
        elif g.geom_type == "GeometryCollection":
            out.extend(_shapes(list(g.geoms), radius))
        else:
            out.append(g)
    return out


def _burn(geoms: Sequence[Any], info: RasterInfo, all_touched: bool = False) -> np.ndarray:
    """Burns geometries as 1 into a uint8 (H, W) array on the raster grid."""
    from rasterio.features import rasterize

    if not geoms:
        return np.zeros(info.shape, dtype=np.uint8)
    return rasterize(
        [(g, 1) for g in geoms], out_shape=info.shape, transform=info.affine(), fill=0,
        all_touched=all_touched, dtype="uint8",
    )


def _inside(gdf: "Any", info: RasterInfo) -> np.ndarray:
    """Which features intersect the raster's extent."""
    from shapely.geometry import box

    extent = box(*info.bounds)
    return np.asarray(gdf.geometry.intersects(extent), dtype=bool)


def _representative_points(geoms: Sequence[Any], info: RasterInfo) -> np.ndarray:
    """(row, col) per positive feature (every part of a multipoint) inside the raster."""
    xs: List[float] = []
    ys: List[float] = []
    for g in geoms:
        if g.geom_type == "Point":
            parts = [g]
        elif g.geom_type == "MultiPoint":
            parts = list(g.geoms)
        else:
            parts = [g.representative_point()]
        for p in parts:
            xs.append(p.x)
            ys.append(p.y)
    if not xs:
        return np.zeros((0, 2), dtype=float)
    rows, cols = map_to_pixel(info, np.array(xs), np.array(ys))
    pts = np.stack([rows, cols], axis=1)
    keep = (rows >= 0) & (rows < info.height) & (cols >= 0) & (cols < info.width)
    return pts[keep]


def _clean(gdf: "Any", what: str, log: LogFn) -> Tuple["Any", int]:
    """Drops features without geometry (counted and logged)."""
    empty = gdf.geometry.isna() | gdf.geometry.is_empty
    n = int(empty.sum())
    if n:
        log(f"warning: {n} {what} feature(s) have no geometry and are ignored")
    return gdf[~empty], n


_LABEL_GEOMETRIES = ("Point", "Polygon", "LineString", "Unknown", "GeometryCollection", "Any")
_MASK_GEOMETRIES = ("Polygon", "Unknown", "GeometryCollection", "Any")


def _layers_with_geometry(path: str, kinds: Sequence[str]) -> List[str]:
    """Layers whose declared geometry type is one of ``kinds`` (MultiPoint counts as Point, 3D as 2D)."""
    import fiona

    out = []
    for name in _list_layers(path):
        with fiona.open(path, layer=name) as src:
            geometry = str(src.schema.get("geometry") or "")
        if geometry and any(kind in geometry for kind in kinds):
            out.append(name)
    return out


def choose_layer(path: str, layer: Optional[str], kinds: Sequence[str], what: str, flag: str,
                 log: LogFn = _noop) -> Optional[str]:
    """The layer to read from a (possibly multi-layer) vector file, never the first one by chance.

    A named layer wins (QGIS's ``path|layername=NAME`` too). A file with several layers and
    no name: its only layer of the right geometry (logged), else a DataError listing them.
    """
    base, named = split_source(path, layer)
    if named is not None or not Path(base).exists():
        return named
    layers = _list_layers(base)
    if len(layers) < 2:
        return None
    fitting = _layers_with_geometry(base, kinds)
    if len(fitting) == 1:
        log(f"{what}: {base!r} has {len(layers)} layers; using {fitting[0]!r}, the only one with "
            f"{'polygons' if kinds == _MASK_GEOMETRIES else 'points or polygons'}")
        return fitting[0]
    raise DataError(
        f"the {what} file {base!r} has several layers ({', '.join(layers)}); name the one to use with {flag} "
        "(QGIS: pick the layer itself as the input)"
    )


def mask_source(mask_path: str, log: LogFn = _noop) -> str:
    """The mask as ``path|layername=NAME`` when a multi-layer file needs its layer named (see choose_layer)."""
    base, layer = split_source(mask_path)
    chosen = choose_layer(mask_path, None, _MASK_GEOMETRIES, "study-area mask", f"{base}|layername=NAME", log)
    return f"{base}|layername={chosen}" if chosen is not None and layer is None else mask_path




def rasterize_mask(mask_path: str, info: RasterInfo, log: LogFn = _noop) -> np.ndarray:
    """Study-area polygons -> bool (H, W), True inside.

    Raises:
        DataError: unreadable file, no polygons, or no overlap with the raster.
    """
    gdf = read_vector(mask_source(mask_path, log), what="study-area mask")
    gdf, _ = _clean(gdf, "mask", log)
    gdf = gdf[gdf.geometry.geom_type.isin(["Polygon", "MultiPolygon"])]
    if len(gdf) == 0:
        raise DataError(f"the study-area mask {mask_path!r} holds no polygons; give a polygon layer (--mask_path)")
    gdf = to_raster_crs(gdf, info, log, "study-area mask")
    mask = _burn(list(gdf.geometry), info).astype(bool)
    if not mask.any():
        raise DataError(
            f"the study-area mask {mask_path!r} does not overlap the raster (raster bounds {info.bounds}); "
            "check that the mask covers the raster and its CRS is set"
        )
    log(f"study area: {int(mask.sum())} of {mask.size} pixels ({100.0 * mask.mean():.1f}%)")
    return mask


def rasterize_labels(opts: LabelOptions, info: RasterInfo, log: Optional[LogFn] = None) -> LabelRaster:
    """Burns the label layer (and the optional study-area mask) onto the raster's grid.

    Raises:
        DataError: missing/unreadable file or layer, label column named but missing,
            non-binary values without positive_values, no overlap with the raster, no
            positive feature inside it.
    """
    log = log or _noop
    gdf = read_vector(opts.labels_path, choose_layer(opts.labels_path, opts.layer, _LABEL_GEOMETRIES, "labels",
                                                     "--layer NAME", log))
    n_read = len(gdf)
    values, column = _feature_labels(gdf, opts, log)
    gdf = gdf.assign(_label=values)
    gdf, n_empty = _clean(gdf, "label", log)
    gdf = gdf[gdf["_label"] >= 0]
    if len(gdf) == 0:
        raise DataError(f"{opts.labels_path!r} holds no feature with a geometry and a label; check the file")
    gdf = to_raster_crs(gdf, info, log)
    inside = _inside(gdf, info)
    n_outside = int((~inside).sum())
    if n_outside:
        log(f"{n_outside} of {len(gdf)} label feature(s) lie outside the raster and are ignored")
    if not inside.any():
        raise DataError(
            f"no label feature overlaps the raster: labels cover {tuple(round(v, 3) for v in gdf.total_bounds)}, "
            f"the raster {tuple(round(v, 3) for v in info.bounds)}; check that both have the right CRS"
        )
    gdf = gdf[inside]
    pos = gdf[gdf["_label"] == 1]
    radius = _buffer_radius(opts.point_buffer, info)
    labels = _burn(_shapes(list(pos.geometry), radius), info)
    n_pos_px = int(labels.sum())
    if n_pos_px == 0:
        raise DataError(
            f"no positive label inside the raster ({len(pos)} positive and {len(gdf) - len(pos)} negative "
            "feature(s) overlap it); check --label_column / --positive_values"
        )
    points = _representative_points(list(pos.geometry), info)
    study_mask = rasterize_mask(opts.mask_path, info, log) if opts.mask_path else None
    summary: Dict[str, Any] = {
        "features_read": n_read,
        "features_without_geometry": n_empty,
        "features_without_label": int((values < 0).sum()),
        "features_outside": n_outside,
        "positive_features": int(len(pos)),
        "negative_features": int(len(gdf) - len(pos)),
        "positive_pixels": n_pos_px,
        "label_column": column,
        "point_buffer_map_units": float(radius),
        "geometry_types": sorted({str(t) for t in gdf.geometry.geom_type}),
    }
    if study_mask is not None:
        n_out = int((labels.astype(bool) & ~study_mask).sum())
        summary["positive_pixels_outside_mask"] = n_out
        if n_out:
            log(f"{n_out} positive pixel(s) lie outside the study area and are ignored")
    log(
        f"labels: {summary['positive_features']} positive / {summary['negative_features']} negative feature(s) "
        f"inside the raster, {n_pos_px} positive pixel(s)"
    )
    return LabelRaster(labels=labels, study_mask=study_mask, positive_points=points, summary=summary)


class StudyArea:
    """Study-area polygons, rasterized one block of rows at a time (never the whole grid)."""

    def __init__(self, shapes: List[Any], transform: Sequence[float], width: int) -> None:
        self.shapes = shapes
        self.transform = transform
        self.width = width

    @classmethod
    def load(cls, path: str, info: Any, log: LogFn) -> "StudyArea":
        """Reads the polygons, reprojected to the raster's CRS."""
        from shapely.geometry import box

        gdf = read_vector(mask_source(path, log), what="study-area mask")
        gdf = gdf[gdf.geometry.notna() & gdf.geom_type.isin(["Polygon", "MultiPolygon"])]
        if gdf.empty:
            raise DataError(f"the mask {path} holds no polygons; --mask_path needs study-area polygons")
        gdf = to_raster_crs(gdf, info, log, "study-area mask")
        if not gdf.geometry.intersects(box(*info.bounds)).any():
            raise DataError(f"the mask {path} does not overlap the raster {info.path}; check its CRS and extent")
        return cls(list(gdf.geometry), info.transform, info.width)

    def rows(self, row0: int, n: int) -> np.ndarray:
        """Inside-mask flags of rows ``row0 .. row0 + n`` (bool, n x width)."""
        from affine import Affine
        from rasterio.features import geometry_mask

        t = Affine(*self.transform[:6]) * Affine.translation(0, row0)
        return geometry_mask(self.shapes, out_shape=(n, self.width), transform=t, invert=True)
