"""The Processing tools in real QGIS with the real worker (tiny dataset, tiny runs)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest

from qgis_helpers import SIZE, TinyData, default_model, pixel_xy, train_params

GRID = ["TARGET_CRS", "TARGET_RESOLUTION", "TARGET_EXTENT"]
EXPECTED_PARAMETERS = {
    "stacksegmenter:trainsegmenter": [
        "INPUT", *GRID, "LABELS", "LABEL_FIELD", "POSITIVE_VALUES", "MASK", "ARCHITECTURE", "EPOCHS", "BATCH_SIZE",
        "LEARNING_RATE", "TILE_SIZE", "STRIDE", "VAL_FRACTION", "POINT_BUFFER", "SEED", "DEVICE", "AMP_MODE",
        "MAX_GRAD_NORM", "LABEL_SMOOTHING", "AUGMENT", "LOSS", "PATIENCE", "CATEGORICAL_BANDS", "RESUME",
        "ENSEMBLE", "WEIGHT_DECAY", "BAND_PENALTY", "PU_PRIOR", "OVERWRITE", "OUTPUT_MODEL", "OUTPUT_FOLDER"],
    "stacksegmenter:predictprobabilitymap": [
        "INPUT", *GRID, "MODEL", "MASK", "TILE_SIZE", "OVERLAP", "BATCH_SIZE", "DEVICE", "SPHERICAL", "OUTPUT",
        "UNCERTAINTY"],
    "stacksegmenter:evaluateprobabilitymap": [
        "PROBABILITY_MAP", "LABELS", "LABEL_FIELD", "POSITIVE_VALUES", "MASK", "MODEL", "BAND",
        "OUTPUT_FOLDER"],
    "stacksegmenter:buildevidencestack": ["INPUT", *GRID, "CATEGORICAL_BANDS", "OUTPUT"],
    "stacksegmenter:crossvalidate": [
        "INPUT", "LABELS", "LABEL_FIELD", "POSITIVE_VALUES", "MASK", "MODELS", "BASELINES", "FOLDS", "EPOCHS",
        "BATCH_SIZE", "LEARNING_RATE", "TILE_SIZE", "STRIDE", "VAL_FRACTION", "POINT_BUFFER", "SEED", "DEVICE",
        "AMP_MODE", "MAX_GRAD_NORM", "LABEL_SMOOTHING", "AUGMENT", "LOSS", "PATIENCE", "CATEGORICAL_BANDS",
        "BLOCK_SIZE", "BUFFER", "BACKGROUND", "OUTPUT_FOLDER"],
    "stacksegmenter:checkenvironment": ["OUTPUT_HTML"],
    "stacksegmenter:setupworker": ["TORCH_BUILD", "ENVIRONMENT_FOLDER"],
}
ADVANCED = {
    "stacksegmenter:setupworker": {"ENVIRONMENT_FOLDER"},
    "stacksegmenter:trainsegmenter": {"AMP_MODE", "MAX_GRAD_NORM", "LABEL_SMOOTHING", "AUGMENT", "LOSS", "PATIENCE",
                                      "CATEGORICAL_BANDS", "RESUME", "ENSEMBLE", "WEIGHT_DECAY", "BAND_PENALTY",
                                      "PU_PRIOR", "OVERWRITE", *GRID},
    "stacksegmenter:predictprobabilitymap": {"TILE_SIZE", "OVERLAP", "BATCH_SIZE", "DEVICE", "SPHERICAL", *GRID},
    "stacksegmenter:crossvalidate": {"AMP_MODE", "MAX_GRAD_NORM", "LABEL_SMOOTHING", "AUGMENT", "LOSS", "PATIENCE",
                                     "CATEGORICAL_BANDS", "BLOCK_SIZE", "BUFFER", "BACKGROUND"},
}
REQUIRED = {
    "stacksegmenter:trainsegmenter": {"INPUT", "LABELS"},  # the model and its folder default to a lasting place
    "stacksegmenter:predictprobabilitymap": {"INPUT", "MODEL", "OUTPUT"},
    "stacksegmenter:evaluateprobabilitymap": {"PROBABILITY_MAP", "LABELS", "OUTPUT_FOLDER"},
    "stacksegmenter:buildevidencestack": {"INPUT", "OUTPUT"},
    "stacksegmenter:crossvalidate": {"INPUT", "LABELS"},
    "stacksegmenter:checkenvironment": set(),
    "stacksegmenter:setupworker": set(),
}
TRAIN_OPTIONS = {
    "EPOCHS": "num_epochs", "BATCH_SIZE": "batch_size", "LEARNING_RATE": "learning_rate", "TILE_SIZE": "tile_size",
    "STRIDE": "stride", "VAL_FRACTION": "val_fraction", "SEED": "seed", "DEVICE": "device", "AMP_MODE": "amp_mode",
    "MAX_GRAD_NORM": "max_grad_norm", "LABEL_SMOOTHING": "label_smoothing", "AUGMENT": "augment", "LOSS": "loss",
    "PATIENCE": "patience", "WEIGHT_DECAY": "weight_decay", "BAND_PENALTY": "band_penalty", "PU_PRIOR": "pu_prior",
    "BAND_SCALING": "band_scaling", "FINAL_FIT": "final_fit",
}
#: Parameters that are core options, per tool: (core command, {parameter id: (config, field)}). Their defaults,
#: ranges and choices are the config's (read there, never written here); the table says which is which.
CORE_OPTIONS = {
    "stacksegmenter:trainsegmenter": ("train", {
        **{name: ("TrainConfig", f) for name, f in TRAIN_OPTIONS.items()}, "ENSEMBLE": ("TrainConfig", "ensemble"),
        "RESUME": ("TrainConfig", "resume"), "OVERWRITE": ("TrainConfig", "overwrite"),
        "POINT_BUFFER": ("LabelOptions", "point_buffer")}),
    "stacksegmenter:crossvalidate": ("cv", {
        **{name: ("TrainConfig", f) for name, f in TRAIN_OPTIONS.items()}, "FOLDS": ("CVConfig", "folds"),
        "BLOCK_SIZE": ("CVConfig", "block_size"), "BUFFER": ("CVConfig", "buffer"),
        "BACKGROUND": ("CVConfig", "background"), "POINT_BUFFER": ("LabelOptions", "point_buffer")}),
    "stacksegmenter:predictprobabilitymap": ("predict", {
        "TILE_SIZE": ("PredictConfig", "tile_size"), "OVERLAP": ("PredictConfig", "overlap"),
        "BATCH_SIZE": ("PredictConfig", "batch_size"), "DEVICE": ("PredictConfig", "device"),
        "SPHERICAL": ("PredictConfig", "spherical")}),
    "stacksegmenter:evaluateprobabilitymap": ("evaluate", {"POINT_BUFFER": ("LabelOptions", "point_buffer")}),
}


def algorithm(alg_id: str) -> Any:
    from qgis.core import QgsApplication

    alg = QgsApplication.processingRegistry().algorithmById(alg_id)
    assert alg is not None, alg_id
    return alg


class RecordingFeedback:
    """Builds a QgsProcessingFeedback that records what the worker reported (optionally cancels)."""

    @staticmethod
    def make(cancel_on_metric: bool = False) -> Any:
        from qgis.core import QgsProcessingFeedback

        class Feedback(QgsProcessingFeedback):
            def __init__(self) -> None:
                super().__init__()
                self.infos: List[str] = []
                self.progress_values: List[float] = []
                self.cancelled_at: float = 0.0

            def pushInfo(self, info: str) -> None:  # noqa: N802 (Qt API)
                self.infos.append(info)
                if cancel_on_metric and "val_loss" in info and not self.isCanceled():
                    self.cancelled_at = time.monotonic()
                    self.cancel()
                super().pushInfo(info)

            def pushDebugInfo(self, info: str) -> None:  # noqa: N802 (Qt API) - metric events land here
                self.pushInfo(info)

            def setProgress(self, progress: float) -> None:  # noqa: N802 (Qt API)
                self.progress_values.append(progress)
                super().setProgress(progress)

        return Feedback()


# ----------------------------------------------------------------------------- declarations


@pytest.mark.parametrize("alg_id", sorted(EXPECTED_PARAMETERS))
def test_parameter_ids_are_the_public_interface(plugin: Any, alg_id: str) -> None:
    from qgis.core import QgsProcessingParameterDefinition

    alg = algorithm(alg_id)
    names = [p.name() for p in alg.parameterDefinitions()]
    for expected in EXPECTED_PARAMETERS[alg_id]:
        assert expected in names, f"{alg_id} lacks {expected}"
    advanced = {p.name() for p in alg.parameterDefinitions()
                if p.flags() & QgsProcessingParameterDefinition.Flag.FlagAdvanced}
    assert ADVANCED.get(alg_id, set()) <= advanced
    required = {p.name() for p in alg.parameterDefinitions()  # mandatory = not optional and no default
                if not p.flags() & QgsProcessingParameterDefinition.Flag.FlagOptional and p.defaultValue() is None}
    assert required == REQUIRED[alg_id], f"only the listed ids may be mandatory in {alg_id}"


def _config_accepts(config: str, field_name: str, value: Any) -> bool:
    """Whether the core takes ``value`` for one option (the rest minimal and valid)."""
    from stack_segmenter.core import config as cfg
    from stack_segmenter.core.errors import ConfigError

    labels = cfg.LabelOptions(labels_path="l.shp")
    train = {"raster_path": "r.tif", "labels": labels}
    make = {
        "TrainConfig": lambda **kw: cfg.TrainConfig(**train, **kw),
        "LabelOptions": lambda **kw: cfg.LabelOptions(labels_path="l.shp", **kw),
        "PredictConfig": lambda **kw: cfg.PredictConfig(checkpoint="m.pt", raster_path="r.tif", output_path="o.tif",
                                                        **kw),
        "CVConfig": lambda **kw: cfg.CVConfig(train=cfg.TrainConfig(**train), **kw),
    }[config]
    try:
        make(**{field_name: value})
    except ConfigError:
        return False
    return True


def _probes(param: Any) -> List[float]:
    """The values around the parameter's declared range (its bounds and the next number outside each)."""
    import math

    from qgis.core import QgsProcessingParameterNumber

    integer = param.dataType() == QgsProcessingParameterNumber.Type.Integer
    out = []
    for bound, direction in ((param.minimum(), -math.inf), (param.maximum(), math.inf)):
        if abs(bound) < 1e300:
            out += [bound, bound + (1 if direction > 0 else -1) if integer else math.nextafter(bound, direction)]
    return [int(v) for v in out] if integer else out


@pytest.mark.parametrize("alg_id", sorted(CORE_OPTIONS))
def test_dialog_command_line_and_config_agree_on_defaults_and_ranges(plugin: Any, alg_id: str) -> None:
    """Each option is declared once (config field metadata): the QGIS parameter and the CLI flag take the
    same default and accept exactly the values the config accepts, at both ends of the range."""
    import typing

    from stack_segmenter.core import config as cfg
    from stack_segmenter.core.cli import build_parser

    command, options = CORE_OPTIONS[alg_id]
    alg = algorithm(alg_id)
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices[command]
    flags = {flag: action for action in sub._actions for flag in action.option_strings}
    for name, (config, field_name) in options.items():
        param = alg.parameterDefinition(name)
        opt, default, kind = cfg.declared(getattr(cfg, config), field_name)
        assert param is not None, f"{alg_id} lacks {name}"
        assert flags[opt.flag(field_name)].default == default, f"{command} {opt.flag(field_name)}"
        assert opt.help[1:] in param.help(), f"{name}: the help is the core's"
        if opt.choices:
            assert param.options() == list(opt.choices) and param.options()[param.defaultValue()] == default, name
            continue
        if kind in (bool, str):
            assert param.defaultValue() == default, name
            continue
        expected = opt.unset if default is None else default
        assert param.defaultValue() == pytest.approx(expected), name
        if typing.get_origin(kind) is tuple:  # tile sizes: the model sets the smallest (checked per model)
            assert param.minimum() == opt.unset and opt.minimum == 1, name
            continue
        for value in _probes(param):
            unset = opt.unset is not None and value == opt.unset
            dialog = param.checkValueIsAcceptable(value)
            assert dialog == (unset or _config_accepts(config, field_name, value)), (name, value, dialog)


@pytest.mark.parametrize("command", ["train", "cv", "predict", "evaluate"])
def test_every_flag_is_a_config_field(command: str) -> None:
    """The command line offers exactly the configs' declared fields (nothing added or copied by hand)."""
    from stack_segmenter.core.cli import CONFIG_COMMANDS, build_parser
    from stack_segmenter.core.config import declared_options

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices[command]
    dests = {a.dest for a in sub._actions} - {"help", "events"}
    assert dests == {path[-1] for path, _f, _k in declared_options(CONFIG_COMMANDS[command][0])}


@pytest.mark.parametrize("alg_id", sorted(EXPECTED_PARAMETERS))
def test_every_parameter_has_help_and_the_tool_a_help_string(plugin: Any, alg_id: str) -> None:
    alg = algorithm(alg_id)
    for p in alg.parameterDefinitions():
        assert len(p.help()) > 15, f"{alg_id}:{p.name()} has no help text"
        assert p.name() in alg.shortHelpString()
    assert alg.displayName() and alg.group()
    help_file = Path(alg.helpUrl().replace("file://", "", 1))  # the README shipped inside the plugin
    assert alg.helpUrl().startswith("file:///") and help_file.name == "README.md" and help_file.is_file()
    assert alg.name() == alg.name().lower() and alg.name() in alg_id
    assert alg.createInstance() is not alg and type(alg.createInstance()) is type(alg)
    assert Path(alg.svgIconPath()).is_file() and not alg.icon().isNull()


def toolbox_search(text: str) -> List[str]:
    """Algorithm ids the Processing Toolbox shows for a search (its own filter model)."""
    from qgis.core import QgsApplication
    from qgis.gui import QgsProcessingToolboxModel, QgsProcessingToolboxProxyModel

    model = QgsProcessingToolboxModel(None, QgsApplication.processingRegistry())
    proxy = QgsProcessingToolboxProxyModel(None, QgsApplication.processingRegistry())
    proxy.setFilterString(text)
    found, stack = [], [proxy.index(r, 0) for r in range(proxy.rowCount())]
    while stack:
        index = stack.pop()
        alg = proxy.data(index, QgsProcessingToolboxModel.RoleAlgorithmId)
        if alg:
            found.append(alg)
        stack += [proxy.index(r, 0, index) for r in range(proxy.rowCount(index))]
    del model
    return found


@pytest.mark.parametrize("word", ["prospectivity", "mineral", "deep learning", "segmentation", "landslide"])
def test_a_toolbox_search_finds_every_tool(plugin: Any, word: str) -> None:
    """The toolbox filter matches tags: a geologist's words, a landslide mapper's words."""
    from qgis.core import QgsApplication

    ours = {a.id() for a in QgsApplication.processingRegistry().providerById("stacksegmenter").algorithms()}
    assert ours <= set(toolbox_search(word)), f"a search for {word!r} misses {ours - set(toolbox_search(word))}"
    assert not ours & set(toolbox_search(word + " qqqzzz")), "the filter must actually filter"


def test_train_outputs_declared(plugin: Any) -> None:
    alg = algorithm("stacksegmenter:trainsegmenter")
    outputs = {o.name(): o.type() for o in alg.outputDefinitions()}
    for name in ("VAL_LOSS", "VAL_IOU", "VAL_ACCURACY", "VAL_ROC_AUC", "VAL_PR_AUC"):
        assert outputs[name] == "outputNumber"
    evaluate = {o.name(): o.type() for o in algorithm("stacksegmenter:evaluateprobabilitymap").outputDefinitions()}
    assert evaluate["OUTPUT_HTML"] == "outputHtml"
    for name in ("ROC_AUC", "PR_AUC", "SUCCESS_RATE_AUC", "TOP1", "TOP5", "TOP10", "TOP20", "N_DEPOSITS"):
        assert evaluate[name] == "outputNumber"


def test_architecture_choices_come_from_the_catalog(plugin: Any) -> None:
    from stack_segmenter.core.config import CVConfig, TrainConfig
    from stack_segmenter.core.models.catalog import PRESET_MODELS

    param = algorithm("stacksegmenter:trainsegmenter").parameterDefinition("ARCHITECTURE")
    assert param.options() == list(PRESET_MODELS)
    assert param.options()[param.defaultValue()] == TrainConfig.defaults()["models"][0]
    param = algorithm("stacksegmenter:crossvalidate").parameterDefinition("MODELS")
    assert [param.options()[i] for i in param.defaultValue()] == CVConfig.defaults()["models"]


@pytest.mark.parametrize("alg_id", sorted(EXPECTED_PARAMETERS))
def test_dialogs_open_offscreen(plugin: Any, qgis_iface: Any, alg_id: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from processing.gui.AlgorithmDialog import AlgorithmDialog
    from qgis.gui import QgsBrowserGuiModel

    browser = QgsBrowserGuiModel()  # pytest-qgis's stub iface has no real browser model; the dialog needs one
    monkeypatch.setattr(qgis_iface, "browserModel", lambda: browser, raising=False)

    dialog = AlgorithmDialog(algorithm(alg_id).create(), parent=None)
    try:
        wrappers = dialog.mainWidget().wrappers
        for name in EXPECTED_PARAMETERS[alg_id]:
            if name not in ("OUTPUT", "OUTPUT_MODEL", "OUTPUT_FOLDER", "UNCERTAINTY"):
                assert name in wrappers, f"{alg_id}: no widget for {name}"
        assert dialog.windowTitle()
    finally:
        dialog.deleteLater()


# ----------------------------------------------------------------------------- running


def test_train_writes_model_and_scores(trained: Dict[str, Any]) -> None:
    model = Path(trained["OUTPUT_MODEL"])
    assert model.is_file() and model.suffix == ".pt" and model.stat().st_size > 10_000
    folder = Path(trained["OUTPUT_FOLDER"])
    assert (folder / default_model() / "metrics.json").is_file()
    assert trained["EPOCHS_RUN"] == 1
    for key in ("VAL_LOSS", "VAL_IOU", "VAL_ACCURACY"):
        assert isinstance(trained[key], float) and trained[key] == trained[key], key  # finite, not None/NaN
    assert 0.0 <= trained["VAL_ACCURACY"] <= 1.0


def test_predict_writes_the_probability_map_with_its_style(predicted: Dict[str, Any]) -> None:
    from qgis.core import QgsRasterLayer

    path = Path(predicted["OUTPUT"])
    layer = QgsRasterLayer(str(path), "p", "gdal")  # picks up the .qml written beside the map
    assert layer.isValid()
    assert (layer.width(), layer.height(), layer.bandCount()) == (SIZE, SIZE, 1)
    stats = layer.dataProvider().bandStatistics(1)
    assert 0.0 <= stats.minimumValue <= stats.maximumValue <= 1.0
    assert layer.dataProvider().sourceHasNoDataValue(1)
    assert path.with_suffix(".qml").is_file()
    assert_probability_renderer(layer)


def assert_probability_renderer(layer: Any) -> None:
    """Area-percentile classes (top 1/5/10/20 % of the map and the rest), viridis colours, named in the legend."""
    from qgis.core import QgsColorRampShader, QgsSingleBandPseudoColorRenderer

    renderer = layer.renderer()
    assert isinstance(renderer, QgsSingleBandPseudoColorRenderer), type(renderer)
    shader = renderer.shader().rasterShaderFunction()
    assert shader.colorRampType() == QgsColorRampShader.Type.Discrete
    items = shader.colorRampItemList()
    labels = [item.label for item in items]
    assert labels[0].startswith("Remaining 80 % of area") and labels[-1].startswith("Top 1 % of area"), labels
    assert [lbl.split(" (")[0] for lbl in labels[1:-1]] == ["Top 10-20 % of area", "Top 5-10 % of area",
                                                             "Top 1-5 % of area"]
    assert items[0].color.name() == "#440154" and items[-1].color.name() == "#fde725"
    with rasterio_open(layer.source()) as src:
        tags = src.tags()
    # Each class ends just below the next class's cut-off, which Predict stored in the map.
    assert items[0].value < float(tags["top20_cutoff"]) and items[-2].value < float(tags["top1_cutoff"])


def rasterio_open(path: str) -> Any:
    import rasterio

    return rasterio.open(path)


def test_run_and_load_results_styles_and_names_the_layer(plugin: Any, qgis_iface: Any, trained: Dict[str, Any],
                                                       tiny_data: TinyData, tmp_path: Path) -> None:
    import processing
    from qgis.core import QgsProject

    out = tmp_path / "loaded.tif"
    result = processing.runAndLoadResults("stacksegmenter:predictprobabilitymap", {
        "INPUT": str(tiny_data.raster), "MODEL": trained["OUTPUT_MODEL"], "OUTPUT": str(out)})
    try:
        layers = [lyr for lyr in QgsProject.instance().mapLayers().values()
                  if Path(lyr.source()).resolve() == out.resolve()]
        assert len(layers) == 1, result
        layer = layers[0]
        assert layer.name() == f"Prospectivity ({Path(trained['OUTPUT_MODEL']).parent.name}/model)"
        assert_probability_renderer(layer)
    finally:
        QgsProject.instance().removeAllMapLayers()


def test_predict_with_uncertainty_writes_two_styled_maps(trained_ensemble: Dict[str, Any], tiny_data: TinyData,
                                                        tmp_path: Path) -> None:
    import processing
    from qgis.core import QgsColorRampShader, QgsRasterLayer, QgsSingleBandPseudoColorRenderer

    result = processing.run("stacksegmenter:predictprobabilitymap", {
        "INPUT": str(tiny_data.raster), "MODEL": trained_ensemble["OUTPUT_MODEL"],
        "OUTPUT": str(tmp_path / "probability.tif"), "UNCERTAINTY": str(tmp_path / "uncertainty.tif")})
    assert Path(result["UNCERTAINTY"]) == tmp_path / "uncertainty.tif"
    with rasterio_open(result["OUTPUT"]) as src:
        mean = src.read(1, masked=True)
        assert src.tags()["members"] == "2" and src.tags()["calibrated"] == "yes"
    with rasterio_open(result["UNCERTAINTY"]) as src:
        spread = src.read(1, masked=True)
    assert (spread.mask == mean.mask).all() and spread.mask[:8, :8].all()
    assert float(spread.min()) >= 0.0 and float(spread.max()) > 0.0  # two seeds never agree everywhere
    for path in (result["OUTPUT"], result["UNCERTAINTY"]):
        assert Path(path).with_suffix(".qml").is_file()
    assert_probability_renderer(QgsRasterLayer(result["OUTPUT"], "p", "gdal"))
    layer = QgsRasterLayer(result["UNCERTAINTY"], "u", "gdal")  # picks up its own .qml
    renderer = layer.renderer()
    assert isinstance(renderer, QgsSingleBandPseudoColorRenderer)
    shader = renderer.shader().rasterShaderFunction()
    assert shader.colorRampType() == QgsColorRampShader.Type.Interpolated
    items = shader.colorRampItemList()
    assert items[0].value == 0.0 and items[0].label == "0 (members agree)" and items[-1].value > 0


def test_the_mixed_architecture_trains_two_networks_whose_spread_is_the_uncertainty(
        plugin: Any, tiny_data: TinyData, tmp_path: Path) -> None:
    """The mixed preset (a per-pixel network + a small CNN) is an ensemble without 'Ensemble members':
    one member of each, so Predict can map their spread."""
    import processing

    from stack_segmenter.core.models.catalog import MIX, PRESET_MODELS

    index = next(i for i, name in enumerate(PRESET_MODELS) if MIX in name)
    trained = processing.run("stacksegmenter:trainsegmenter", train_params(tiny_data, tmp_path, ARCHITECTURE=index))
    result = processing.run("stacksegmenter:predictprobabilitymap", {
        "INPUT": str(tiny_data.raster), "MODEL": trained["OUTPUT_MODEL"],
        "OUTPUT": str(tmp_path / "probability.tif"), "UNCERTAINTY": str(tmp_path / "uncertainty.tif")})
    with rasterio_open(result["OUTPUT"]) as src:
        assert src.tags()["members"] == "2" and PRESET_MODELS[index] in src.descriptions[0]
    with rasterio_open(result["UNCERTAINTY"]) as src:
        assert float(src.read(1, masked=True).max()) > 0.0  # two different networks never agree everywhere


def test_run_and_load_results_loads_the_uncertainty_layer_too(plugin: Any, qgis_iface: Any,
                                                              trained_ensemble: Dict[str, Any],
                                                              tiny_data: TinyData, tmp_path: Path) -> None:
    import processing
    from qgis.core import QgsProject

    processing.runAndLoadResults("stacksegmenter:predictprobabilitymap", {
        "INPUT": str(tiny_data.raster), "MODEL": trained_ensemble["OUTPUT_MODEL"],
        "OUTPUT": str(tmp_path / "p.tif"), "UNCERTAINTY": str(tmp_path / "u.tif")})
    try:
        names = sorted(layer.name() for layer in QgsProject.instance().mapLayers().values())
        label = f"{Path(trained_ensemble['OUTPUT_MODEL']).parent.name}/model"  # the model file (model.pt)
        assert names == [f"Prospectivity ({label})", f"Uncertainty ({label})"]
    finally:
        QgsProject.instance().removeAllMapLayers()


def test_uncertainty_of_a_single_model_is_refused_with_the_fix(plugin: Any, trained: Dict[str, Any],
                                                               tiny_data: TinyData, tmp_path: Path) -> None:
    import processing
    from qgis.core import QgsProcessingException

    with pytest.raises(QgsProcessingException) as info:
        processing.run("stacksegmenter:predictprobabilitymap", {
            "INPUT": str(tiny_data.raster), "MODEL": trained["OUTPUT_MODEL"], "OUTPUT": str(tmp_path / "p.tif"),
            "UNCERTAINTY": str(tmp_path / "u.tif")})
    assert "needs an ensemble" in str(info.value) and "Ensemble members" in str(info.value)
    assert not (tmp_path / "p.tif").exists() and not (tmp_path / "u.tif").exists()


def test_evaluate_returns_scores_and_an_html_summary(plugin: Any, trained: Dict[str, Any],
                                                      predicted: Dict[str, Any], tiny_data: TinyData,
                                                      tmp_path: Path) -> None:
    import processing

    feedback = RecordingFeedback.make()
    result = processing.run("stacksegmenter:evaluateprobabilitymap", {
        "PROBABILITY_MAP": predicted["OUTPUT"], "LABELS": str(tiny_data.labels_gpkg), "LABEL_FIELD": "label",
        "MASK": str(tiny_data.mask), "MODEL": trained["OUTPUT_MODEL"], "OUTPUT_FOLDER": str(tmp_path / "eval"),
    }, feedback=feedback)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())["metrics"]
    assert result["ROC_AUC"] == pytest.approx(metrics["roc_auc"])
    assert result["N_DEPOSITS"] == metrics["n_deposits"] > 0
    assert 0.0 <= result["SUCCESS_RATE_AUC"] <= 1.0
    assert result["PREDICTION_RATE_AUC"] is None or 0.0 <= result["PREDICTION_RATE_AUC"] <= 1.0
    page = Path(result["OUTPUT_HTML"])
    text = page.read_text(encoding="utf-8")
    assert "<table" in text and "ROC AUC" in text and f"{metrics['roc_auc']:.3f}" in text
    for png in ("success_rate.png", "roc_pr.png"):
        assert f'src="{png}"' in text and (page.parent / png).is_file()
    assert max(feedback.progress_values) == pytest.approx(100.0)
    assert any("ROC AUC" in line for line in feedback.infos)


def test_cross_validate_ranks_baselines_and_loads_the_best_map_styled(plugin: Any, qgis_iface: Any,
                                                                      tiny_data: TinyData, tmp_path: Path) -> None:
    import processing
    from qgis.core import QgsProject

    from stack_segmenter.core.config import BASELINES

    chosen = ["logistic", "best_band", "weights_of_evidence"]
    feedback = RecordingFeedback.make()
    result = processing.runAndLoadResults("stacksegmenter:crossvalidate", {
        "INPUT": str(tiny_data.raster), "LABELS": str(tiny_data.labels_gpkg), "LABEL_FIELD": "label",
        "MODELS": [], "BASELINES": [BASELINES.index(b) for b in chosen], "FOLDS": 3, "BACKGROUND": 500,
        "OUTPUT_FOLDER": str(tmp_path / "cv")}, feedback=feedback)
    try:
        assert result["BEST_CANDIDATE"] in chosen and 0.5 < result["BEST_AUC"] <= 1.0
        summary = json.loads((tmp_path / "cv" / "cv_summary.json").read_text())
        assert summary["ranking"][0]["candidate"] == result["BEST_CANDIDATE"]
        assert set(summary["candidates"]) == set(chosen)
        page = Path(result["OUTPUT_HTML"]).read_text(encoding="utf-8")
        assert page.index("Ranking") < page.index("Every fold") and 'src="cv_comparison.png"' in page
        assert summary["best_baseline"] == result["BEST_CANDIDATE"] and "against the best baseline" in page
        best = Path(result["BEST_MAP"])
        assert best.name == f"oof_{result['BEST_CANDIDATE']}.tif" and best.with_suffix(".qml").is_file()
        layers = [lyr for lyr in QgsProject.instance().mapLayers().values()
                  if Path(lyr.source()).resolve() == best.resolve()]
        assert len(layers) == 1 and layers[0].name() == f"Out-of-fold ({result['BEST_CANDIDATE']})"
        assert_probability_renderer(layers[0])
        assert any("pooled prediction-rate AUC" in line for line in feedback.infos)
    finally:
        QgsProject.instance().removeAllMapLayers()


def test_core_errors_become_processing_exceptions(plugin: Any, tiny_data: TinyData, tmp_path: Path) -> None:
    import processing
    from qgis.core import QgsProcessingException

    params = train_params(tiny_data, tmp_path, LABELS=str(tiny_data.labels_gpkg), LABEL_FIELD="kind")
    with pytest.raises(QgsProcessingException) as info:
        processing.run("stacksegmenter:trainsegmenter", params)
    message = str(info.value)
    assert "positive" in message.lower() and "kind" in message
    assert '"Positive values" (POSITIVE_VALUES)' in message  # the core's flag, named as the dialog shows it
    assert "Traceback" not in message


def test_worker_exit_without_error_event_shows_stderr(plugin: Any) -> None:
    from qgis.core import QgsProcessingException, QgsProcessingFeedback

    from stack_segmenter.algorithms.worker import run_worker

    with pytest.raises(QgsProcessingException) as info:
        run_worker(sys.executable, "no-such-command", [], QgsProcessingFeedback())
    assert "exit code 1" in str(info.value) and "invalid choice" in str(info.value)


def test_worker_ends_when_a_grandchild_keeps_stdout_open(plugin: Any, tmp_path: Path) -> None:
    """A process the worker left behind (e.g. a data loader) must not keep the tool waiting."""
    from qgis.core import QgsProcessingFeedback

    from stack_segmenter.algorithms.worker import ORPHAN_PIPE_SECONDS, run_worker

    python = tmp_path / "python_with_a_straggler"
    python.write_text(f'#!/bin/sh\nsleep 20 &\nexec "{sys.executable}" "$@"\n', encoding="utf-8")
    python.chmod(0o755)
    started = time.monotonic()
    result = run_worker(str(python), "list-models", [], QgsProcessingFeedback())  # imports no torch: quick
    assert result["models"]
    assert time.monotonic() - started < ORPHAN_PIPE_SECONDS + 10


def test_cancel_stops_training_keeps_the_checkpoint_and_resume_continues(plugin: Any, tiny_data: TinyData, tmp_path: Path) -> None:
    import processing
    from qgis.core import QgsProcessingException

    feedback = RecordingFeedback.make(cancel_on_metric=True)
    params = train_params(tiny_data, tmp_path, EPOCHS=200, PATIENCE=0)
    started = time.monotonic()
    with pytest.raises(QgsProcessingException) as info:
        processing.run("stacksegmenter:trainsegmenter", params, feedback=feedback)
    stopped = time.monotonic()
    assert feedback.cancelled_at > 0, "no epoch finished before the run ended"
    epoch_1 = [line for line in feedback.infos if re.search(r"\bepoch 1\b", line)]
    assert len(epoch_1) == 1 and epoch_1[0].startswith(f"{default_model()} epoch 1: train_loss"), epoch_1
    assert 0 < max(feedback.progress_values) < 100  # the bar moved, the run did not finish
    assert stopped - feedback.cancelled_at < 12.0, "the worker did not stop within a few seconds"
    message = str(info.value)
    model = params["OUTPUT_MODEL"]
    assert message.startswith(f"Cancelled. Kept: the model after epoch ") and f" at {model}" in message
    # How to continue, with the parameters named as the dialog shows them.
    assert f'"Trained model" = {model}' in message
    assert 'under Advanced parameters, "Resume from the output model" ticked' in message
    assert Path(model).is_file(), "the last good checkpoint must stay"
    assert stopped - started < 120

    # RESUME continues from that checkpoint up to EPOCHS in all.
    feedback = RecordingFeedback.make()
    result = processing.run("stacksegmenter:trainsegmenter", {**params, "EPOCHS": 3, "RESUME": True},
                            feedback=feedback)
    resumed = [re.search(r"after epoch (\d+)", line) for line in feedback.infos if line.startswith("resuming")]
    assert resumed and resumed[0], feedback.infos[:6]
    saved_epoch = int(resumed[0].group(1))
    assert 1 <= saved_epoch < 3 and result["EPOCHS_RUN"] == 3 - saved_epoch


def test_worker_python_without_torch_gives_the_fix(plugin: Any, tiny_data: TinyData, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Debian's /usr/bin/python3 refuses pip (PEP 668): the fix is the set-up tool or a venv, in one command."""
    import processing
    from qgis.core import QgsProcessingException

    from stack_segmenter.algorithms import worker_setup

    bare = "/usr/bin/python3"
    if subprocess.run([bare, "-c", "import torch"], capture_output=True).returncode == 0:
        pytest.skip(f"{bare} has torch; this test needs a Python without it")
    monkeypatch.setenv("STACK_SEGMENTER_PYTHON", bare)
    with pytest.raises(QgsProcessingException) as info:
        processing.run("stacksegmenter:trainsegmenter", train_params(tiny_data, tmp_path))
    message = str(info.value)
    assert "torch is not installed" in message and bare in message
    assert "Missing in the worker Python /usr/bin/python3: torch, torch-harmonics, elapid." in message
    assert "Set up worker environment" in message
    env_python = worker_setup.venv_python(worker_setup.MANUAL_ENV)
    one_command = (f"{bare} -m venv --system-site-packages {worker_setup.MANUAL_ENV} && {env_python} -m pip install "
                   "--extra-index-url https://download.pytorch.org/whl/cpu torch==2.13.0+cpu 'numpy<2' && "
                   f"{env_python} -m pip install --no-deps torch-harmonics==0.9.3 && "
                   f"{env_python} -m pip install --no-deps elapid==1.0.1")
    assert one_command in message
    assert "pip install --user" not in message and "OSGeo4W" not in message  # not this platform's fix
    assert not (tmp_path / "model.pt").exists()

    report = processing.run("stacksegmenter:checkenvironment", {"OUTPUT_HTML": str(tmp_path / "env.html")})
    assert report["PYTHON"] == bare or Path(report["PYTHON"]).resolve() == Path(bare).resolve()
    assert report["TORCH_VERSION"] == "" and report["TORCH_BUILD"] == "" and report["PROBLEMS"] >= 2
    assert report["MISSING"] == "torch, torch-harmonics, elapid"
    assert report["INSTALL_COMMAND"] == one_command
    assert report["CHOSEN_BY"] == "the variable STACK_SEGMENTER_PYTHON"
    html = (tmp_path / "env.html").read_text(encoding="utf-8")
    assert "MISSING" in html and "Set up worker environment" in html
    assert "chosen by the variable STACK_SEGMENTER_PYTHON" in html


def test_check_environment_reports_the_venv(plugin: Any, tmp_path: Path) -> None:
    from importlib import metadata

    import processing

    report = processing.run("stacksegmenter:checkenvironment", {"OUTPUT_HTML": str(tmp_path / "env.html")})
    assert Path(report["PYTHON"]).parent == Path(sys.executable).parent
    assert report["CHOSEN_BY"] == f"the environment QGIS's own Python runs in ({sys.prefix})"
    assert report["TORCH_VERSION"] == metadata.version("torch")
    assert report["TORCH_HARMONICS_VERSION"]
    assert report["TORCH_BUILD"] == "CPU" and report["CUDA_AVAILABLE"] is False
    assert report["PROBLEMS"] == 0 and report["MISSING"] == "" and report["INSTALL_COMMAND"] == ""
    html = (tmp_path / "env.html").read_text(encoding="utf-8")
    assert "torch build: CPU; GPU: none usable" in html


def test_worker_python_resolution_order(plugin: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from processing.core.ProcessingConfig import ProcessingConfig
    from qgis.core import QgsProcessingException

    from stack_segmenter.algorithms import worker
    from stack_segmenter.algorithms.base import WORKER_PYTHON_SETTING, configured_worker_python

    monkeypatch.delenv(worker.ENV_VAR, raising=False)
    # The environment QGIS's own Python runs in (here the venv, as under `make test`).
    assert worker.choose_python(None) == (str(Path(sys.prefix) / "bin" / "python3"),
                                          f"the environment QGIS's own Python runs in ({sys.prefix})")
    monkeypatch.setenv(worker.ENV_VAR, "/usr/bin/python3")
    assert worker.choose_python(None) == ("/usr/bin/python3", "the variable STACK_SEGMENTER_PYTHON")
    assert worker.choose_python(sys.executable) == (sys.executable, "the setting 'Worker Python'")  # the setting wins
    with pytest.raises(QgsProcessingException, match="Worker Python"):
        worker.resolve_python(str(tmp_path / "no_python"))
    old = ProcessingConfig.getSetting(WORKER_PYTHON_SETTING)
    ProcessingConfig.setSettingValue(WORKER_PYTHON_SETTING, sys.executable)
    try:
        assert configured_worker_python() == sys.executable
    finally:
        ProcessingConfig.setSettingValue(WORKER_PYTHON_SETTING, old or "")


def test_python_first_on_path_is_never_chosen(plugin: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A pyenv shim or another env's python3 first on PATH: the worker still runs in QGIS's own environment."""
    from stack_segmenter.algorithms import worker

    shims = tmp_path / "shims"
    shims.mkdir()
    ran = tmp_path / "shim_ran"
    (shims / "python3").write_text(f'#!/bin/sh\ntouch "{ran}"\nexec /usr/bin/python3 "$@"\n', encoding="utf-8")
    (shims / "python3").chmod(0o755)
    monkeypatch.setenv("PATH", f"{shims}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv(worker.ENV_VAR, raising=False)
    python, source = worker.choose_python(None)
    assert python == str(Path(sys.prefix) / "bin" / "python3") and "QGIS's own Python" in source
    assert not ran.exists()


def test_worker_env_drops_qgis_python_paths_for_another_python(plugin: Any,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from stack_segmenter.algorithms import worker

    monkeypatch.setenv("PYTHONHOME", "/qgis/apps/Python39")
    monkeypatch.setenv("PYTHONPATH", "/qgis/python")
    own = worker.qgis_python()
    assert own is not None
    for qgis_own in (own, worker.qgis_base_python()):  # QGIS's environment and the interpreter it is built on
        kept = worker.worker_env(qgis_own)
        assert kept["PYTHONHOME"] == "/qgis/apps/Python39" and kept["PYTHONUNBUFFERED"] == "1"
    other = worker.worker_env("/opt/conda/envs/torch/bin/python")
    assert "PYTHONHOME" not in other and "PYTHONPATH" not in other


def test_memory_layer_with_selected_features(plugin: Any, tiny_data: TinyData, tmp_path: Path) -> None:
    import processing
    from qgis.core import (QgsFeature, QgsField, QgsGeometry, QgsPointXY, QgsProcessingFeatureSourceDefinition,
                           QgsProject, QgsVectorLayer)
    from qgis.PyQt.QtCore import QVariant



    layer = QgsVectorLayer("Point?crs=EPSG:32633", "memory deposits", "memory")
    layer.dataProvider().addAttributes([QgsField("label", QVariant.Int)])
    layer.updateFields()
    features = []
    for value, sites in ((1, tiny_data.positives), (0, tiny_data.negatives)):
        for r, c in sites:
            f = QgsFeature(layer.fields())
            f.setGeometry(QgsGeometry.fromPointXY(QgsPointXY(*pixel_xy(r, c))))
            f.setAttribute("label", value)
            features.append(f)
    assert layer.dataProvider().addFeatures(features)[0]
    QgsProject.instance().addMapLayer(layer)
    try:
        layer.selectByIds([f.id() for f in layer.getFeatures() if f["label"] == 1][:8]
                          + [f.id() for f in layer.getFeatures() if f["label"] == 0])
        feedback = RecordingFeedback.make()
        source = QgsProcessingFeatureSourceDefinition(layer.id(), selectedFeaturesOnly=True)
        result = processing.run("stacksegmenter:trainsegmenter",
                                train_params(tiny_data, tmp_path, LABELS=source), feedback=feedback)
    finally:
        QgsProject.instance().removeMapLayer(layer.id())
    assert Path(result["OUTPUT_MODEL"]).is_file()
    assert any("8 positive / 12 negative" in line for line in feedback.infos), feedback.infos[:5]


def test_non_gdal_raster_is_copied_for_the_worker(plugin: Any, predicted: Dict[str, Any], tiny_data: TinyData,
                                                  tmp_path: Path) -> None:
    """A virtual raster (QGIS's on-the-fly raster calculator) reaches the worker as a GeoTIFF copy."""
    import processing
    from qgis.core import QgsRasterDataProvider, QgsRasterLayer

    source = QgsRasterLayer(predicted["OUTPUT"], "p", "gdal")
    params = QgsRasterDataProvider.VirtualRasterParameters()
    params.crs, params.extent, params.width, params.height = source.crs(), source.extent(), SIZE, SIZE
    params.formula = '"p@1"'
    layer_input = QgsRasterDataProvider.VirtualRasterInputLayers()
    layer_input.name, layer_input.provider, layer_input.uri = "p", "gdal", source.source()
    params.rInputLayers = [layer_input]
    virtual = QgsRasterLayer(QgsRasterDataProvider.encodeVirtualRasterProviderUri(params), "virtual", "virtualraster")
    assert virtual.isValid() and virtual.providerType() == "virtualraster"

    def evaluate(probability_map: Any, folder: str) -> Any:
        feedback = RecordingFeedback.make()
        result = processing.run("stacksegmenter:evaluateprobabilitymap", {
            "PROBABILITY_MAP": probability_map, "LABELS": str(tiny_data.labels_shp), "LABEL_FIELD": "label",
            "OUTPUT_FOLDER": str(tmp_path / folder)}, feedback=feedback)
        return result, feedback

    from_virtual, feedback = evaluate(virtual, "virtual")
    from_file, _ = evaluate(predicted["OUTPUT"], "file")
    assert any("temporary GeoTIFF" in line for line in feedback.infos)
    assert from_virtual["ROC_AUC"] == pytest.approx(from_file["ROC_AUC"], abs=1e-6)
    assert from_virtual["SUCCESS_RATE_AUC"] == pytest.approx(from_file["SUCCESS_RATE_AUC"], abs=1e-6)


def test_positive_values_select_the_positive_class(plugin: Any, predicted: Dict[str, Any], tiny_data: TinyData,
                                                   tmp_path: Path) -> None:
    """A class field with POSITIVE_VALUES scores the same deposits as the 0/1 field."""
    import processing

    def evaluate(folder: str, **labels: Any) -> Dict[str, Any]:
        return processing.run("stacksegmenter:evaluateprobabilitymap", {
            "PROBABILITY_MAP": predicted["OUTPUT"], "LABELS": str(tiny_data.labels_gpkg),
            "OUTPUT_FOLDER": str(tmp_path / folder), **labels})

    by_class = evaluate("by_class", LABEL_FIELD="kind", POSITIVE_VALUES="deposit")
    by_flag = evaluate("by_flag", LABEL_FIELD="label")
    assert by_class["N_DEPOSITS"] == by_flag["N_DEPOSITS"] == len(tiny_data.positives)
    assert by_class["ROC_AUC"] == pytest.approx(by_flag["ROC_AUC"])


def test_bad_categorical_bands_are_refused_before_the_worker(plugin: Any, tiny_data: TinyData,
                                                              tmp_path: Path) -> None:
    import processing
    from qgis.core import QgsProcessingException

    with pytest.raises(QgsProcessingException, match="'geology' is not a band.*signal, noise_fine"):
        processing.run("stacksegmenter:trainsegmenter",
                       train_params(tiny_data, tmp_path, CATEGORICAL_BANDS="geology, 3"))
    assert not (tmp_path / "training").exists()
