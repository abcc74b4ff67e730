"""labels.py: vector labels burned on the raster grid, on generated and real data."""
from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
from shapely.geometry import MultiPoint, MultiPolygon, Point, box

from core.config import LabelOptions
from core.errors import DataError
from core.labels import rasterize_labels, rasterize_mask, split_source
from core.raster import read_info


def _opts(path, **kw) -> LabelOptions:
    return LabelOptions(labels_path=str(path), **kw)


def _gdf(stack, geoms, crs=None, **columns) -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame(columns, geometry=geoms, crs=crs or stack.crs)


def _pbox(stack, r0: int, c0: int, r1: int, c1: int):
    """A polygon covering pixels r0..r1-1, c0..c1-1 exactly (pixel edges)."""
    a, _, c, _, e, f = stack.transform
    return box(c + a * c0, f + e * r1, c + a * c1, f + e * r0)


def test_points_burn_positives_and_leave_negatives_background(tiny_stack, tiny_points):
    info = read_info(tiny_stack.path)
    logs = []
    lr = rasterize_labels(_opts(tiny_points.path), info, logs.append)
    assert lr.labels.dtype == np.uint8 and lr.labels.shape == (96, 128)
    expected = np.zeros((96, 128), dtype=np.uint8)
    for r, c in tiny_stack.positives:
        expected[r, c] = 1
    np.testing.assert_array_equal(lr.labels, expected)  # 0.5 px buffer: exactly the pixel
    assert lr.study_mask is None
    assert sorted(map(tuple, lr.positive_points)) == sorted((r + 0.5, c + 0.5) for r, c in tiny_stack.positives)
    s = lr.summary
    assert (s["positive_features"], s["negative_features"], s["label_column"]) == (24, 12, "label")
    assert any("24 positive / 12 negative" in m for m in logs)


@pytest.mark.parametrize("buffer,side", [("0", 1), ("1.5", 3), ("1.5px", 3), ("15m", 3)])
def test_point_buffer_in_pixels_or_map_units(tiny_stack, tiny_points, buffer, side):
    info = read_info(tiny_stack.path)
    lr = rasterize_labels(_opts(tiny_points.path, point_buffer=buffer), info)
    r, c = tiny_stack.positives[0]
    patch = lr.labels[r - 2:r + 3, c - 2:c + 3]
    half = side // 2
    assert patch[2 - half:3 + half, 2 - half:3 + half].all()  # the pixel itself always burned
    assert int(lr.labels.sum()) == 24 * side * side
    assert patch.sum() == side * side


def test_point_exactly_on_a_pixel_corner_still_burns_a_pixel(tiny_stack, tmp_path):
    info = read_info(tiny_stack.path)
    x, y = info.transform[2] + 10 * 40, info.transform[5] - 10 * 30  # a pixel corner
    path = tmp_path / "corner.geojson"
    _gdf(tiny_stack, [Point(x, y)]).to_file(path, driver="GeoJSON")
    lr = rasterize_labels(_opts(path, point_buffer="0.1"), info)
    assert lr.labels.sum() >= 1


def test_reprojected_labels_give_the_same_mask(tiny_stack, tiny_points, make_points_fn, tmp_path):
    info = read_info(tiny_stack.path)
    logs = []
    wgs = make_points_fn(tiny_stack, tmp_path, crs="EPSG:4326", name="wgs84.shp")
    a = rasterize_labels(_opts(tiny_points.path), info)
    b = rasterize_labels(_opts(wgs.path), info, logs.append)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_allclose(a.positive_points, b.positive_points, atol=1e-3)
    assert any("reprojecting" in m for m in logs)


def test_label_column_resolution(tiny_stack, tiny_points, tmp_path):
    info = read_info(tiny_stack.path)
    # named explicitly but missing -> error listing the columns
    with pytest.raises(DataError, match=r"'lable' not found.*label"):
        rasterize_labels(_opts(tiny_points.path, label_column="lable"), info)
    # no 'label' column and none named -> every feature positive (negatives included)
    path = tmp_path / "nolabel.gpkg"
    sites = tiny_stack.positives + tiny_stack.negatives
    _gdf(tiny_stack, [Point(*tiny_stack.xy(r, c)) for r, c in sites], name=["x"] * len(sites)).to_file(path)
    lr = rasterize_labels(_opts(path), info)
    assert lr.summary["label_column"] is None and int(lr.labels.sum()) == len(sites)


def test_string_classes_need_positive_values(tiny_stack, tiny_polygons):
    info = read_info(tiny_stack.path)
    with pytest.raises(DataError, match=r"land, water.*--positive_values"):
        rasterize_labels(_opts(tiny_polygons.path, label_column="class"), info)
    lr = rasterize_labels(_opts(tiny_polygons.path, label_column="class", positive_values=["water"]), info)
    expected = np.zeros((96, 128), dtype=np.uint8)
    for r0, c0, r1, c1 in tiny_polygons.positive_boxes:
        expected[r0:r1, c0:c1] = 1
    np.testing.assert_array_equal(lr.labels, expected)
    assert lr.summary["negative_features"] == 3 and len(lr.positive_points) == 3


def test_bool_and_numeric_columns_map_to_0_1(tiny_stack, tmp_path):
    info = read_info(tiny_stack.path)
    (r1, c1), (r2, c2) = tiny_stack.positives[:2]
    pts = [Point(*tiny_stack.xy(r1, c1)), Point(*tiny_stack.xy(r2, c2))]
    for name, values in (("bool", [True, False]), ("float", [1.0, 0.0])):
        path = tmp_path / f"{name}.gpkg"
        _gdf(tiny_stack, pts, flag=values).to_file(path)
        lr = rasterize_labels(_opts(path, label_column="flag"), info)
        assert lr.labels[r1, c1] == 1 and lr.labels[r2, c2] == 0 and lr.labels.sum() == 1
    path = tmp_path / "three.gpkg"
    _gdf(tiny_stack, pts, flag=[1, 2]).to_file(path)
    with pytest.raises(DataError, match="not binary"):
        rasterize_labels(_opts(path, label_column="flag"), info)
    lr = rasterize_labels(_opts(path, label_column="flag", positive_values=["2"]), info)
    assert lr.labels[r2, c2] == 1 and lr.labels.sum() == 1


def test_mixed_geometry_types_and_positives_win_over_negatives(tiny_stack, tmp_path):
    info = read_info(tiny_stack.path)
    xy = tiny_stack.xy
    geoms = [
        Point(*xy(20, 20)),
        MultiPoint([xy(25, 40), xy(30, 50)]),
        _pbox(tiny_stack, 10, 60, 12, 62),
        MultiPolygon([_pbox(tiny_stack, 40, 80, 41, 81)]),
        _pbox(tiny_stack, 50, 10, 70, 30),  # negative polygon
        Point(*xy(60, 20)),  # positive inside the negative polygon
    ]
    path = tmp_path / "mixed.geojson"
    _gdf(tiny_stack, geoms, label=[1, 1, 1, 1, 0, 1]).to_file(path, driver="GeoJSON")
    lr = rasterize_labels(_opts(path), info)
    for r, c in [(20, 20), (25, 40), (30, 50), (10, 60), (11, 61), (40, 80), (60, 20)]:
        assert lr.labels[r, c] == 1, (r, c)
    assert lr.labels[55:65, 12:18].sum() == 0  # negative polygon burns background
    assert len(lr.positive_points) == 6  # the multipoint gives one per part
    assert set(lr.summary["geometry_types"]) == {"Point", "MultiPoint", "Polygon", "MultiPolygon"}


def test_features_outside_are_reported_and_no_overlap_is_an_error(tiny_stack, tmp_path):
    info = read_info(tiny_stack.path)
    r, c = tiny_stack.positives[0]
    far = Point(0.0, 0.0)
    path = tmp_path / "partly.gpkg"
    _gdf(tiny_stack, [Point(*tiny_stack.xy(r, c)), far], label=[1, 1]).to_file(path)
    logs = []
    lr = rasterize_labels(_opts(path), info, logs.append)
    assert lr.summary["features_outside"] == 1 and lr.labels.sum() == 1
    assert any("outside the raster" in m for m in logs)
    path = tmp_path / "away.gpkg"
    _gdf(tiny_stack, [far], label=[1]).to_file(path)
    with pytest.raises(DataError, match="no label feature overlaps the raster"):
        rasterize_labels(_opts(path), info)


def test_no_positive_inside_is_an_error(tiny_stack, tmp_path):
    info = read_info(tiny_stack.path)
    path = tmp_path / "negatives.gpkg"
    _gdf(tiny_stack, [Point(*tiny_stack.xy(r, c)) for r, c in tiny_stack.negatives],
         label=[0] * len(tiny_stack.negatives)).to_file(path)
    with pytest.raises(DataError, match="no positive label inside the raster"):
        rasterize_labels(_opts(path), info)


def test_missing_file_and_missing_layer(tiny_stack, tiny_polygons, tmp_path):
    info = read_info(tiny_stack.path)
    with pytest.raises(DataError, match="does not exist"):
        rasterize_labels(_opts(tmp_path / "none.shp"), info)
    with pytest.raises(DataError, match="layer 'nope' not found.*zones"):
        rasterize_labels(_opts(tiny_polygons.path, layer="nope"), info)
    bad = tmp_path / "bad.geojson"
    bad.write_text("{broken")
    with pytest.raises(DataError, match="cannot read"):
        rasterize_labels(_opts(bad), info)


def test_layer_by_option_and_by_qgis_source_syntax(tiny_stack, tiny_polygons):
    info = read_info(tiny_stack.path)
    a = rasterize_labels(_opts(tiny_polygons.path, layer="zones", label_column="class", positive_values=["water"]),
                         info)
    b = rasterize_labels(_opts(f"{tiny_polygons.path}|layername=zones", label_column="class",
                               positive_values=["water"]), info)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert split_source("a.gpkg|layername=x") == ("a.gpkg", "x")
    assert split_source("a.gpkg|layername=x", "y") == ("a.gpkg", "y")


def test_a_multi_layer_file_uses_its_only_fitting_layer_or_is_refused(tiny_stack, tiny_points, tmp_path):
    """Never the first layer by chance: the only layer of points/polygons (logged), else the list of layers."""
    import fiona
    import geopandas as gpd

    info = read_info(tiny_stack.path)
    gpkg = tmp_path / "project.gpkg"
    schema = {"geometry": "None", "properties": {"t": "str"}}
    with fiona.open(gpkg, "w", driver="GPKG", layer="notes", schema=schema) as dst:
        dst.write({"geometry": None, "properties": {"t": "an attribute table comes first"}})
    gpd.read_file(tiny_points.path).to_file(gpkg, layer="deposits", driver="GPKG")
    logs = []
    lr = rasterize_labels(_opts(gpkg), info, logs.append)
    assert lr.summary["positive_features"] == len(tiny_stack.positives)
    assert any("using 'deposits', the only one with points or polygons" in line for line in logs)
    gpd.read_file(tiny_points.path).iloc[:3].to_file(gpkg, layer="prospects", driver="GPKG")
    with pytest.raises(DataError, match=r"several layers \(deposits, prospects, notes\).*--layer"):
        rasterize_labels(_opts(gpkg), info)
    assert rasterize_labels(_opts(gpkg, layer="prospects"), info).summary["features_read"] == 3


def test_study_mask(tiny_stack, tiny_points, tiny_mask):
    info = read_info(tiny_stack.path)
    lr = rasterize_labels(_opts(tiny_points.path, mask_path=str(tiny_mask)), info)
    assert lr.study_mask.dtype == bool
    assert lr.study_mask[:, :96].all() and not lr.study_mask[:, 96:].any()
    outside = sum(1 for _, c in tiny_stack.positives if c >= 96)
    assert lr.summary["positive_pixels_outside_mask"] == outside


def test_mask_errors(tiny_stack, tiny_points, tmp_path):
    info = read_info(tiny_stack.path)
    with pytest.raises(DataError, match="no polygons"):
        rasterize_mask(str(tiny_points.path), info)
    path = tmp_path / "farmask.gpkg"
    _gdf(tiny_stack, [box(0, 0, 10, 10)]).to_file(path)
    with pytest.raises(DataError, match="does not overlap"):
        rasterize_mask(str(path), info)


# ----------------------------------------------------------------------------- real datasets


def test_ecuador_explicit_labels_and_study_mask_layer(shared_data):
    d = shared_data / "ecuador_landslides"
    info = read_info(d / "ecuador_ta_stack.tif")
    lr = rasterize_labels(_opts(d / "landslide_points.shp", mask_path=str(d / "ecuador_landslides.gpkg")), info)
    assert (lr.summary["positive_features"], lr.summary["negative_features"]) == (175, 175)
    assert lr.labels.sum() == 175 and len(lr.positive_points) == 175
    assert 0.3 < lr.study_mask.mean() < 0.9
    explicit = rasterize_mask(f"{d / 'ecuador_landslides.gpkg'}|layername=study_mask", info)
    np.testing.assert_array_equal(lr.study_mask, explicit)
    # the bool column of the all_points layer means the same
    b = rasterize_labels(_opts(d / "ecuador_landslides.gpkg", layer="all_points", label_column="lslpts"), info)
    np.testing.assert_array_equal(b.labels, lr.labels)


def test_cloncurry_no_label_column_and_reprojected(shared_data, tmp_path):
    d = shared_data / "cloncurry_iocg"
    info = read_info(d / "cloncurry_stack.tif")
    lr = rasterize_labels(_opts(d / "cloncurry_iocg.gpkg"), info)
    assert lr.summary["label_column"] is None and lr.summary["positive_features"] == 258
    assert 200 < lr.labels.sum() <= 258  # a few deposits share a 100 m pixel
    path = tmp_path / "iocg_wgs84.gpkg"
    gpd.read_file(d / "cloncurry_iocg.gpkg").to_crs("EPSG:4326").to_file(path)
    re = rasterize_labels(_opts(path), info)
    np.testing.assert_array_equal(re.labels, lr.labels)


def test_landsat_string_classes(shared_data):
    d = shared_data / "landsat_water"
    info = read_info(d / "landsat_tm_stack.tif")
    with pytest.raises(DataError, match="--positive_values"):
        rasterize_labels(_opts(d / "training_polygons.shp", label_column="class"), info)
    lr = rasterize_labels(_opts(d / "training_polygons.shp", label_column="class", positive_values=["water"]), info)
    by_label = rasterize_labels(_opts(d / "training_polygons.shp"), info)
    np.testing.assert_array_equal(lr.labels, by_label.labels)  # 'label' is 1 exactly for water
    assert lr.summary["positive_features"] == 9 and lr.labels.sum() > 100


def test_buildings_polygons_without_label_column(shared_data):
    d = shared_data / "buildings_small"
    info = read_info(d / "sample_geotiff.tif")
    lr = rasterize_labels(_opts(d / "geotiff_labels.geojson"), info)
    assert lr.summary["positive_features"] == 43 and lr.summary["label_column"] is None
    assert 0.01 < lr.labels.mean() < 0.2
