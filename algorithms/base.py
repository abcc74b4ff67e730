"""What every Stack Segmenter algorithm shares: translation, help text, inputs as files, the worker.

Algorithms only declare parameters and map them to the core's command line; this base
turns layers into files the worker can read and runs the worker (see worker.py).
"""
from __future__ import annotations

import html
import re
import sys
import typing
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingParameterCrs,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterExtent,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
    QgsProcessingUtils,
    QgsRasterFileWriter,
    QgsRasterLayer,
    QgsRasterNuller,
    QgsRasterPipe,
    QgsRasterRange,
)
from qgis.PyQt.QtCore import QCoreApplication
from qgis.PyQt.QtGui import QIcon

from ..core.config import declared
from . import evidence, worker, worker_setup
from .worker import WORKER_PYTHON_SETTING, configured_worker_python  # noqa: F401 (the plugin's public names)

PLUGIN_DIR = Path(__file__).resolve().parent.parent
ICONS_DIR = PLUGIN_DIR / "icons"
#: The help the plugin ships (a file URL until the project has a public home).
README = PLUGIN_DIR / "README.md"
#: Words a toolbox search should find every tool by (each tool adds its own TAGS).
COMMON_TAGS = ("prospectivity", "mineral", "mineral exploration", "deep learning", "segmentation", "landslide",
               "machine learning", "raster stack")
#: The value QGIS's raster calculator writes where there is no data (-FLT_MAX).
CALCULATOR_NODATA = -3.4028234663852886e38
VECTOR_FORMATS = ["gpkg", "shp", "geojson", "json", "sqlite", "gml", "fgb"]
Integer = QgsProcessingParameterNumber.Type.Integer
Double = QgsProcessingParameterNumber.Type.Double
#: QGIS's "no limit" for a number parameter's range.
DBL_MAX = sys.float_info.max


def help_url() -> str:
    """A file URL of the README shipped inside the plugin."""
    return README.resolve().as_uri()


class StackSegmenterAlgorithm(QgsProcessingAlgorithm):
    """Base class: tr(), createInstance(), group, help built from each parameter's help text."""

    #: Shown first in the help panel (subclasses set it, already in English; tr() applies).
    SUMMARY = ""
    #: File name of the tool's icon in icons/.
    ICON = "stack_segmenter.svg"
    #: Search words of this tool, beside COMMON_TAGS.
    TAGS: Tuple[str, ...] = ()
    #: Ids of the evidence-layer parameters (add_evidence_parameters).
    INPUT = "INPUT"
    TARGET_CRS = "TARGET_CRS"
    TARGET_RESOLUTION = "TARGET_RESOLUTION"
    TARGET_EXTENT = "TARGET_EXTENT"
    #: Command-line flags of the core -> this tool's parameter ids, so a core message that names a
    #: flag ("e.g. --positive_values water") also names the field the user sees in the dialog.
    FLAGS: Dict[str, str] = {}

    def tr(self, text: str) -> str:  # noqa: D401 - Qt convention
        """Translates user-visible text (context: the plugin)."""
        return QCoreApplication.translate("StackSegmenter", text)

    def createInstance(self) -> "StackSegmenterAlgorithm":  # noqa: N802 (Qt API)
        return type(self)()

    def group(self) -> str:
        return self.tr("Deep learning")

    def groupId(self) -> str:  # noqa: N802 (Qt API)
        return "deeplearning"

    def icon(self) -> QIcon:
        return QIcon(self.svgIconPath())

    def svgIconPath(self) -> str:  # noqa: N802 (Qt API)
        return str(ICONS_DIR / self.ICON)

    def tags(self) -> List[str]:
        """What the toolbox search matches besides the name (e.g. "prospectivity", "landslide")."""
        return [self.tr(tag) for tag in COMMON_TAGS + self.TAGS]

    def helpUrl(self) -> str:  # noqa: N802 (Qt API)
        """The README shipped inside the plugin (each tool's full help is its shortHelpString)."""
        return help_url()

    def shortHelpString(self) -> str:  # noqa: N802 (Qt API)
        """The summary, then every parameter with its help text (QGIS 3.22 shows no per-parameter help)."""
        rows = []
        for p in self.parameterDefinitions():
            if p.flags() & QgsProcessingParameterDefinition.Flag.FlagHidden:
                continue
            rows.append(f"<dt><b>{html.escape(p.description())}</b> ({p.name()})</dt><dd>{html.escape(p.help())}</dd>")
        outputs = [f"<dt><b>{html.escape(o.description())}</b> ({o.name()})</dt>" for o in self.outputDefinitions()]
        text = f"<p>{self.tr(self.SUMMARY)}</p>"
        if rows:
            text += f"<h3>{self.tr('Parameters')}</h3><dl>{''.join(rows)}</dl>"
        if outputs:
            text += f"<h3>{self.tr('Outputs')}</h3><dl>{''.join(outputs)}</dl>"
        return text

    # ------------------------------------------------------------------ declaring

    def add(self, param: QgsProcessingParameterDefinition, help_text: str, advanced: bool = False) -> None:
        """Adds a parameter with its help text; advanced ones go under "Advanced parameters"."""
        param.setHelp(self.tr(help_text))
        if advanced:
            param.setFlags(param.flags() | QgsProcessingParameterDefinition.Flag.FlagAdvanced)
        self.addParameter(param)

    def add_option(self, name: str, label: str, config: type, field_name: str, advanced: bool = False,
                   extra_help: str = "") -> QgsProcessingParameterDefinition:
        """A parameter for a config field, as the core declares it (config.Option): default, range, choices, help.

        A field whose None means "automatic" shows its ``unset`` number (0 or -1) in the dialog.
        """
        opt, default, kind = declared(config, field_name)
        param: QgsProcessingParameterDefinition
        if kind is bool:
            param = QgsProcessingParameterBoolean(name, self.tr(label), defaultValue=default)
        elif opt.choices:
            param = QgsProcessingParameterEnum(name, self.tr(label), options=list(opt.choices),
                                               defaultValue=opt.choices.index(default))
        elif kind in (int, float) or typing.get_origin(kind) is tuple:
            low, high = opt.closed_range()
            if opt.unset is not None:
                low = opt.unset if low is None else min(low, opt.unset)
            number = Double if kind is float else Integer
            param = QgsProcessingParameterNumber(name, self.tr(label), number,
                                                 opt.unset if default is None else default, optional=False,
                                                 minValue=-DBL_MAX if low is None else low,
                                                 maxValue=DBL_MAX if high is None else high)
        else:
            param = QgsProcessingParameterString(name, self.tr(label), defaultValue=default,
                                                 optional=default is None)
        self.add(param, self.help_of(config, field_name, extra_help), advanced=advanced)
        return param

    @staticmethod
    def help_of(config: type, field_name: str, extra: str = "") -> str:
        """A config field's declared help as a dialog sentence (plus ``extra``)."""
        text = declared(config, field_name)[0].help
        return text[:1].upper() + text[1:] + "." + (" " + extra if extra else "")

    def option_args(self, parameters: Dict[str, Any], context: QgsProcessingContext, config: type,
                    options: Sequence[Tuple[str, str]]) -> List[str]:
        """The core's flags for parameters declared by ``add_option``: (parameter id, config field) pairs.

        A number at its ``unset`` value and an empty text give no flag (the core's default applies).
        """
        args: List[str] = []
        for name, field_name in options:
            if self.parameterDefinition(name) is None:  # a tool built on another may drop some of its parameters
                continue
            opt, _default, kind = declared(config, field_name)
            flag = opt.flag(field_name)
            if kind is bool:
                args += [flag] if self.parameterAsBoolean(parameters, name, context) else []
            elif opt.choices:
                args += [flag, opt.choices[self.parameterAsEnum(parameters, name, context)]]
            elif kind is float:
                args += [flag, repr(self.parameterAsDouble(parameters, name, context))]
            elif kind is int or typing.get_origin(kind) is tuple:
                value = self.parameterAsInt(parameters, name, context)
                args += [] if value == opt.unset else [flag, str(value)]
            else:
                text = self.parameterAsString(parameters, name, context).strip()
                args += [f"{flag}={text}"] if text else []
        return args

    # ------------------------------------------------------------------ inputs as files

    # ------------------------------------------------------------------ evidence layers

    def add_evidence_parameters(self, help_text: str, grid_advanced: bool = True) -> None:
        """INPUT (one or more rasters) and the optional reference grid: TARGET_CRS, TARGET_RESOLUTION,
        TARGET_EXTENT (Train, Predict, Cross-validate and Build evidence stack declare the same)."""
        self.add(QgsProcessingParameterMultipleLayers(self.INPUT, self.tr("Evidence layers"),
                                                      QgsProcessing.SourceType.TypeRaster),
                 help_text + " One multi-band raster, or several rasters (any grids): several are aligned to "
                 "the first one's grid and stacked, bands named after their layers.")
        self.add(QgsProcessingParameterCrs(self.TARGET_CRS, self.tr("Reference grid: CRS"), optional=True),
                 "CRS the evidence layers are aligned to; empty: the first layer's.", advanced=grid_advanced)
        self.add(QgsProcessingParameterNumber(self.TARGET_RESOLUTION, self.tr("Reference grid: pixel size"),
                                              QgsProcessingParameterNumber.Type.Double, optional=True,
                                              minValue=0.0),
                 "Pixel size in the reference CRS's units; empty or 0: the first layer's.",
                 advanced=grid_advanced)
        self.add(QgsProcessingParameterExtent(self.TARGET_EXTENT, self.tr("Reference grid: extent"), optional=True),
                 "Area of the stack; empty: the first layer's extent.", advanced=grid_advanced)

    def evidence_plan(self, parameters: Dict[str, Any], context: QgsProcessingContext,
                      feedback: QgsProcessingFeedback, always_vrt: bool = False) -> evidence.StackPlan:
        """The evidence layers (INPUT) and reference grid, worked out; ``plan.write(vrt, ...)`` makes the
        raster the worker reads (see evidence.py)."""
        layers = [lyr for lyr in self.parameterAsLayerList(parameters, self.INPUT, context)
                  if isinstance(lyr, QgsRasterLayer)]
        if not layers:
            raise QgsProcessingException(self.tr("No evidence raster given (INPUT): choose one or more raster layers"))
        sources = [(evidence.layer_label(lyr), self.layer_file(lyr, context, feedback)) for lyr in layers]
        crs: Optional[QgsCoordinateReferenceSystem] = self.parameterAsCrs(parameters, self.TARGET_CRS, context)
        if crs is not None and not crs.isValid():
            crs = None
        resolution = self.parameterAsDouble(parameters, self.TARGET_RESOLUTION, context) or None
        extent = None
        if parameters.get(self.TARGET_EXTENT) not in (None, ""):
            extent = self.parameterAsExtent(parameters, self.TARGET_EXTENT, context, crs or layers[0].crs())
        return evidence.plan_stack(sources, crs=crs, resolution=resolution, extent=extent, always_vrt=always_vrt)

    def raster_file(self, parameters: Dict[str, Any], name: str, context: QgsProcessingContext,
                    feedback: QgsProcessingFeedback) -> str:
        """A path GDAL/rasterio can open: the layer's own file, or a temporary GeoTIFF copy."""
        layer = self.parameterAsRasterLayer(parameters, name, context)
        if layer is None or not layer.isValid():
            raise QgsProcessingException(self.invalidRasterError(parameters, name))
        return self.layer_file(layer, context, feedback)

    def layer_file(self, layer: QgsRasterLayer, context: QgsProcessingContext, feedback: QgsProcessingFeedback) -> str:
        """The raster layer's own file, or a temporary GeoTIFF copy when it has none (virtual rasters, WMS)."""
        if not layer.isValid():
            raise QgsProcessingException(self.tr("The raster layer {} is not valid").format(layer.name()))
        if layer.providerType() == "gdal" and layer.source():
            return layer.source()
        feedback.pushInfo(self.tr("Writing {} to a temporary GeoTIFF for the worker").format(layer.name()))
        return self._write_raster_copy(layer, context, feedback)

    def _write_raster_copy(self, layer: QgsRasterLayer, context: QgsProcessingContext,
                           feedback: QgsProcessingFeedback) -> str:
        path = QgsProcessingUtils.generateTempFilename("input_raster.tif")
        provider = layer.dataProvider()
        pipe = QgsRasterPipe()
        if not pipe.set(provider.clone()):
            raise QgsProcessingException(self.tr("Cannot read the raster layer {}").format(layer.name()))
        undeclared = [b for b in range(1, provider.bandCount() + 1) if not provider.sourceHasNoDataValue(b)]
        if undeclared:
            # Providers without a declared nodata (e.g. QGIS's virtual raster calculator) fill it with
            # -FLT_MAX; declare that as nodata in the copy so the worker masks it.
            nuller = QgsRasterNuller()
            for band in undeclared:
                nuller.setNoData(band, [QgsRasterRange(CALCULATOR_NODATA, CALCULATOR_NODATA)])
            pipe.insert(1, nuller)
        writer = QgsRasterFileWriter(path)
        writer.setOutputFormat("GTiff")
        error = writer.writeRaster(pipe, provider.xSize(), provider.ySize(), provider.extent(), provider.crs(),
                                   context.transformContext())
        if error != QgsRasterFileWriter.WriterError.NoError:
            raise QgsProcessingException(
                self.tr("Could not write {} to a temporary GeoTIFF (error {}); save it as a GeoTIFF and use that")
                .format(layer.name(), int(error)))
        return path

    def vector_file(self, parameters: Dict[str, Any], name: str, context: QgsProcessingContext,
                    feedback: QgsProcessingFeedback) -> Optional[Tuple[str, str]]:
        """(path, layer name) of a vector input the worker can read; None when an optional one is empty.

        Memory layers, selected features only and non-file sources are written to a
        temporary GeoPackage first.
        """
        if parameters.get(name) in (None, ""):
            return None
        if self.parameterAsSource(parameters, name, context) is None:
            raise QgsProcessingException(self.invalidSourceError(parameters, name))
        path, layer_name = self.parameterAsCompatibleSourceLayerPathAndLayerName(
            parameters, name, context, VECTOR_FORMATS, "gpkg", feedback)
        if not path:
            raise QgsProcessingException(self.invalidSourceError(parameters, name))
        return path, layer_name or ""

    @staticmethod
    def vector_uri(source: Tuple[str, str]) -> str:
        """QGIS's ``path|layername=NAME`` form, which the core reads for masks."""
        path, layer = source
        return f"{path}|layername={layer}" if layer else path

    def output_folder(self, parameters: Dict[str, Any], name: str, context: QgsProcessingContext) -> str:
        """The folder destination (a temporary folder when left empty), checked; the core creates it.

        Creating it here would leave an empty folder behind when the core refuses the run.
        """
        folder = self.parameterAsFileOutput(parameters, name, context)
        if not folder or folder == QgsProcessing.TEMPORARY_OUTPUT:
            folder = QgsProcessingUtils.generateTempFilename(name.lower())
        return self.check_output(folder, name, folder=True)

    def check_output(self, path: str, name: str, folder: bool = False) -> str:
        """Refuses, before the worker starts, an output path that cannot be written.

        A parent that is a file, a folder given for a file (or the reverse), a folder we may
        not write into: one clear message naming the parameter, never a traceback.
        """
        from ..core.errors import CoreError
        from ..core.files import check_output_location

        param = self.parameterDefinition(name)
        what = self.tr('"{}" ({})').format(param.description(), name) if param is not None else name
        try:
            check_output_location(path, what, folder=folder)
        except CoreError as exc:
            raise QgsProcessingException(str(exc)) from None
        return path

    @staticmethod
    def split_values(text: str) -> List[str]:
        """'a, b c' -> ['a', 'b', 'c'] (commas or spaces)."""
        return [v for v in text.replace(",", " ").split() if v]

    # ------------------------------------------------------------------ the worker

    def worker_python(self, require_torch: bool = True) -> str:
        """The worker's Python; with require_torch, fails early (with the fix) when torch is missing."""
        python = worker.resolve_python(configured_worker_python())
        if require_torch:
            worker_setup.ensure_torch(python)
        return python

    def run_core(self, command: str, args: Sequence[str], feedback: Optional[QgsProcessingFeedback],
                 python: Optional[str] = None,
                 on_metric: Optional[Callable[[Dict[str, Any]], None]] = None) -> Dict[str, Any]:
        """Runs the core's command in the worker process; returns its result."""
        feedback = feedback or QgsProcessingFeedback()
        python = python or self.worker_python()
        feedback.pushInfo(self.tr("Worker Python: {}").format(python))
        try:
            return worker.run_worker(python, command, args, feedback, on_metric)
        except QgsProcessingException as exc:
            hint = self.parameter_hint(str(exc))
            if not hint:
                raise
            raise QgsProcessingException(f"{exc}\n{hint}") from None

    def label(self, name: str) -> str:
        """A parameter's label as the dialog shows it, without its explanation in brackets."""
        return self.parameterDefinition(name).description().split(" (")[0]

    def parameter_hint(self, message: str) -> str:
        """'--positive_values is the parameter "Positive values" (POSITIVE_VALUES)' for flags in a message."""
        hints = []
        for flag, name in self.FLAGS.items():
            param = self.parameterDefinition(name)
            if param is not None and re.search(re.escape(flag) + r"\b", message):
                hints.append(self.tr('{} is the parameter "{}" ({})').format(flag, param.description(), name))
        return "; ".join(hints)
