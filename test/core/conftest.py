"""Seeded tiny fixtures for the core tests (every engineer's tests may use them).

Nothing binary is committed: each fixture writes real files (GeoTIFF with rasterio,
shapefile / GeoPackage with geopandas) from seeded code. Names and return types are
stable; extend by adding fields, never by changing existing ones.

Fixtures (session-scoped: treat the files as read-only; use the ``make_*`` factories
for variants):
    tiny_stack      -> TinyStack: 5-band float32 GeoTIFF, 96 rows x 128 cols, EPSG:3067,
                       10 m pixels, nodata -9999 in a corner block (all bands), one NaN
                       pixel and one pixel where only band 2 holds its nodata; band 1
                       carries a planted signal (bumps at the positives); band 5 holds
                       class codes 1..4 (use categorical_bands=[5]).
    tiny_points     -> TinyPoints: shapefile, column ``label`` (1 at the positives, 0 at
                       negatives), all inside the raster and outside the nodata corner.
    tiny_polygons   -> TinyPolygons: GeoPackage layer ``zones``, column ``class``
                       ('water' for positives, 'land' for the others), no ``label``.
    tiny_mask       -> Path: GeoPackage (layer ``study_area``), one polygon covering the
                       left 3/4 of the raster.
    make_tiny_stack_fn -> the TinyStack factory: fn(folder, height=, width=, n_positive=,
                       n_negative=, seed=, crs=, dtype=, nodata=, name=).
    make_points_fn  -> the TinyPoints factory: fn(stack, folder, crs=None,
                       driver="ESRI Shapefile", name="points.shp", label_column="label").
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Tuple

import numpy as np
import pytest

NODATA = -9999.0
CRS = "EPSG:3067"
PIXEL = 10.0
ORIGIN = (500000.0, 7000000.0)  # (left, top) in EPSG:3067 metres


@dataclass
class TinyStack:
    """A generated raster stack and what the tests need to know about it.

    Attributes:
        path: the GeoTIFF.
        height, width, count: rows, columns, bands.
        crs: 'EPSG:3067' unless made otherwise.
        transform: affine transform (a, b, c, d, e, f).
        nodata: nodata value (all bands).
        band_names: band descriptions.
        positives: (row, col) of the positive sites (signal bumps in band 1).
        negatives: (row, col) of the negative sites.
        invalid: bool (H, W) where the stack is invalid (nodata, NaN, per-band nodata).
        categorical_band: 1-based band holding class codes (codes 1..4).
    """

    path: Path
    height: int
    width: int
    count: int
    crs: str
    transform: Tuple[float, float, float, float, float, float]
    nodata: float
    band_names: List[str]
    positives: List[Tuple[int, int]]
    negatives: List[Tuple[int, int]]
    invalid: np.ndarray
    categorical_band: int = 5

    def xy(self, row: float, col: float) -> Tuple[float, float]:
        """Map coordinates of a pixel centre (row, col are integer pixel indices)."""
        a, b, c, d, e, f = self.transform
        return (c + a * (col + 0.5) + b * (row + 0.5), f + d * (col + 0.5) + e * (row + 0.5))


@dataclass
class TinyPoints:
    """A generated point layer: path, label column and the sites it holds."""

    path: Path
    label_column: str
    positives: List[Tuple[int, int]]
    negatives: List[Tuple[int, int]]
    crs: str = CRS
    layer: Optional[str] = None


@dataclass
class TinyPolygons:
    """A generated polygon layer (GeoPackage) and the pixel boxes its polygons cover."""

    path: Path
    layer: str
    class_column: str
    positive_boxes: List[Tuple[int, int, int, int]] = field(default_factory=list)
    negative_boxes: List[Tuple[int, int, int, int]] = field(default_factory=list)


def _sites(rng: np.random.Generator, n: int, height: int, width: int, forbid: np.ndarray,
           taken: List[Tuple[int, int]]) -> List[Tuple[int, int]]:
    """n distinct sites at least 4 px from each other and from invalid pixels/edges."""
    out: List[Tuple[int, int]] = []
    while len(out) < n:
        r, c = int(rng.integers(3, height - 3)), int(rng.integers(3, width - 3))
        if forbid[max(r - 3, 0):r + 4, max(c - 3, 0):c + 4].any():
            continue
        if any(abs(r - a) < 4 and abs(c - b) < 4 for a, b in out + taken):
            continue
        out.append((r, c))
    return out


def make_tiny_stack(folder: Path, height: int = 96, width: int = 128, n_positive: int = 24, n_negative: int = 12,
                    seed: int = 0, crs: str = CRS, dtype: str = "float32", nodata: float = NODATA,
                    name: str = "stack.tif") -> TinyStack:
    """Writes a 5-band GeoTIFF with a nodata corner and a planted signal (see module doc)."""
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(seed)
    invalid = np.zeros((height, width), dtype=bool)
    invalid[: height // 6, width - width // 6:] = True  # nodata corner, top right
    invalid[height // 2, 2] = True  # NaN pixel (float dtypes) / nodata
    invalid[height - 2, width // 2] = True  # only band 2 holds nodata here
    positives = _sites(rng, n_positive, height, width, invalid, [])
    negatives = _sites(rng, n_negative, height, width, invalid, positives)
    rows, cols = np.mgrid[0:height, 0:width]
    signal = np.zeros((height, width))
    for r, c in positives:
        signal += np.exp(-((rows - r) ** 2 + (cols - c) ** 2) / (2 * 1.5 ** 2))
    bands = np.stack([
        signal * 5.0 + rng.normal(0, 0.3, (height, width)),       # band 1: signal
        rng.normal(100.0, 20.0, (height, width)),                  # band 2: noise
        rows / height * 50.0 + rng.normal(0, 1, (height, width)),  # band 3: gradient
        (rng.random((height, width)) < 0.3).astype(float),         # band 4: 0/1 flag
        1 + (cols * 4 // width),                                   # band 5: class codes 1..4
    ]).astype(dtype)
    bands[:, invalid] = nodata
    bands[:, height // 2, 2] = np.nan if np.issubdtype(np.dtype(dtype), np.floating) else nodata
    bands[:, height - 2, width // 2] = 1.0
    bands[1, height - 2, width // 2] = nodata
    transform = from_origin(ORIGIN[0], ORIGIN[1], PIXEL, PIXEL)
    names = ["signal", "noise", "gradient", "flag", "lithology"]
    path = Path(folder) / name
    with rasterio.open(path, "w", driver="GTiff", height=height, width=width, count=5, dtype=dtype, crs=crs,
                       transform=transform, nodata=nodata, tiled=True, blockxsize=32, blockysize=32) as dst:
        dst.write(bands)
        for i, n in enumerate(names, start=1):
            dst.set_band_description(i, n)
    return TinyStack(path=path, height=height, width=width, count=5, crs=crs, transform=tuple(transform)[:6],
                     nodata=nodata, band_names=names, positives=positives, negatives=negatives, invalid=invalid)


def make_points(stack: TinyStack, folder: Path, crs: Optional[str] = None, driver: str = "ESRI Shapefile",
                name: str = "points.shp", label_column: str = "label") -> TinyPoints:
    """Writes the stack's positive (1) and negative (0) sites as points, optionally reprojected."""
    import geopandas as gpd
    from shapely.geometry import Point

    sites = [(s, 1) for s in stack.positives] + [(s, 0) for s in stack.negatives]
    gdf = gpd.GeoDataFrame({label_column: [v for _, v in sites]},
                           geometry=[Point(*stack.xy(r, c)) for (r, c), _ in sites], crs=stack.crs)
    if crs is not None:
        gdf = gdf.to_crs(crs)
    path = Path(folder) / name
    layer = "points" if driver == "GPKG" else None
    gdf.to_file(path, driver=driver, **({"layer": layer} if layer else {}))
    return TinyPoints(path=path, label_column=label_column, positives=list(stack.positives),
                      negatives=list(stack.negatives), crs=crs or stack.crs, layer=layer)


def _pixel_box(stack: TinyStack, box: Tuple[int, int, int, int]):  # -> shapely Polygon
    from shapely.geometry import box as sbox

    r0, c0, r1, c1 = box
    a, _, c, _, e, f = stack.transform
    return sbox(c + a * c0, f + e * r1, c + a * c1, f + e * r0)


def make_polygons(stack: TinyStack, folder: Path) -> TinyPolygons:
    """Writes square polygons: 'water' boxes around 3 positives, 'land' boxes at 3 negatives."""
    import geopandas as gpd

    pos = [(r - 2, c - 2, r + 3, c + 3) for r, c in stack.positives[:3]]
    neg = [(r - 2, c - 2, r + 3, c + 3) for r, c in stack.negatives[:3]]
    gdf = gpd.GeoDataFrame({"class": ["water"] * len(pos) + ["land"] * len(neg)},
                           geometry=[_pixel_box(stack, b) for b in pos + neg], crs=stack.crs)
    path = Path(folder) / "polygons.gpkg"
    gdf.to_file(path, driver="GPKG", layer="zones")
    return TinyPolygons(path=path, layer="zones", class_column="class", positive_boxes=pos, negative_boxes=neg)


def make_mask(stack: TinyStack, folder: Path) -> Path:
    """Writes a study-area polygon over the left 3/4 of the raster (layer ``study_area``)."""
    import geopandas as gpd

    gdf = gpd.GeoDataFrame({"name": ["study"]},
                           geometry=[_pixel_box(stack, (0, 0, stack.height, stack.width * 3 // 4))], crs=stack.crs)
    path = Path(folder) / "mask.gpkg"
    gdf.to_file(path, driver="GPKG", layer="study_area")
    return path


@pytest.fixture(scope="session")
def _tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny")


@pytest.fixture(scope="session")
def tiny_stack(_tiny_dir: Path) -> TinyStack:
    """The 5-band 96 x 128 stack (read-only; see the module doc)."""
    return make_tiny_stack(_tiny_dir)


@pytest.fixture(scope="session")
def tiny_points(tiny_stack: TinyStack, _tiny_dir: Path) -> TinyPoints:
    """Points with a ``label`` column over ``tiny_stack`` (shapefile)."""
    return make_points(tiny_stack, _tiny_dir)


@pytest.fixture(scope="session")
def tiny_polygons(tiny_stack: TinyStack, _tiny_dir: Path) -> TinyPolygons:
    """Polygons with a string ``class`` column over ``tiny_stack`` (GeoPackage layer ``zones``)."""
    return make_polygons(tiny_stack, _tiny_dir)


@pytest.fixture(scope="session")
def tiny_mask(tiny_stack: TinyStack, _tiny_dir: Path) -> Path:
    """Study-area polygon (left 3/4) over ``tiny_stack``."""
    return make_mask(tiny_stack, _tiny_dir)


@pytest.fixture(scope="session")
def make_tiny_stack_fn() -> Callable[..., TinyStack]:
    """The ``make_tiny_stack`` factory, for variants (size, dtype, CRS, seed)."""
    return make_tiny_stack


@pytest.fixture(scope="session")
def make_points_fn() -> Callable[..., TinyPoints]:
    """The ``make_points`` factory, for variants (CRS, driver, column name)."""
    return make_points


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Tiny models gain nothing from intra-op threads, and parallel test runs share 2 cores (20x slower)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def ecuador_usable(shared_data: Path) -> Tuple[Any, Any, np.ndarray]:
    """The real Ecuador landslide stack: (RasterInfo, LabelRaster of the points in the study mask, usable pixels)."""
    from core.config import LabelOptions
    from core.labels import rasterize_labels
    from core.raster import read_info, read_valid_mask

    d = shared_data / "ecuador_landslides"
    info = read_info(d / "ecuador_ta_stack.tif")
    lr = rasterize_labels(LabelOptions(labels_path=str(d / "landslide_points.shp"),
                                       mask_path=str(d / "ecuador_landslides.gpkg")), info)
    return info, lr, read_valid_mask(info.path) & lr.study_mask
