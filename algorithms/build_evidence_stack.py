"""Processing algorithm "Build evidence stack": evidence layers -> one aligned, named GeoTIFF.

The same stack Train, Predict and Cross-validate build on the fly (algorithms/evidence.py),
written to a file once, for reuse or to look at. Runs in QGIS with GDAL (no worker, no torch).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional

from osgeo import gdal
from qgis.core import (
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputString,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterString,
    QgsProcessingUtils,
)

from . import evidence
from .base import StackSegmenterAlgorithm

CREATION_OPTIONS = ["TILED=YES", "COMPRESS=DEFLATE", "PREDICTOR=3", "BIGTIFF=IF_SAFER"]


class BuildEvidenceStackAlgorithm(StackSegmenterAlgorithm):
    """Aligns evidence rasters to one grid and writes them as one multi-band GeoTIFF."""

    CATEGORICAL_BANDS = "CATEGORICAL_BANDS"
    OUTPUT = "OUTPUT"
    BAND_NAMES = "BAND_NAMES"

    ICON = "stack_segmenter.svg"
    TAGS = ("stack", "align", "resample", "evidence layers", "multi-band", "combine", "unify")

    SUMMARY = (
        "Aligns evidence rasters on different grids (geophysics, geochemistry, distance rasters, lithology "
        "codes) to one reference grid and writes them as one multi-band float32 GeoTIFF, bands named after their "
        "layers. Continuous bands are resampled bilinearly, categorical ones by nearest neighbour. Train, Predict "
        "and Cross-validate build the same stack on the fly from their evidence layers; this tool writes it once "
        "for reuse."
    )

    def name(self) -> str:
        return "buildevidencestack"

    def displayName(self) -> str:  # noqa: N802 (Qt API)
        return self.tr("Build evidence stack")

    def group(self) -> str:
        return self.tr("Utilities")

    def groupId(self) -> str:  # noqa: N802 (Qt API)
        return "utilities"

    def initAlgorithm(self, config: Optional[Dict[str, Any]] = None) -> None:  # noqa: N802 (Qt API)
        self.add_evidence_parameters("The rasters to stack, the first one giving the grid.", grid_advanced=False)
        self.add(QgsProcessingParameterString(self.CATEGORICAL_BANDS, self.tr("Categorical bands"), optional=True),
                 "Bands holding class codes (e.g. lithology), resampled by nearest neighbour: band names (a "
                 "single-band layer's name) or 1-based numbers, separated by commas.")
        self.add(QgsProcessingParameterRasterDestination(self.OUTPUT, self.tr("Evidence stack")),
                 "The multi-band GeoTIFF (float32, NaN = nodata, band descriptions = the band names).")
        self.addOutput(QgsProcessingOutputString(self.BAND_NAMES, self.tr("Band names")))

    def processAlgorithm(self, parameters: Dict[str, Any], context: QgsProcessingContext,  # noqa: N802
                         feedback: QgsProcessingFeedback) -> Dict[str, Any]:
        output = self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
        text = self.parameterAsString(parameters, self.CATEGORICAL_BANDS, context)
        vrt = Path(QgsProcessingUtils.generateTempFilename("evidence_stack.vrt"))
        sources = {os.path.realpath(lyr.source()) for lyr in self.parameterAsLayerList(parameters, self.INPUT, context)}
        if os.path.realpath(output) in sources:
            raise QgsProcessingException(self.tr("The output {} is one of the evidence layers; choose another file")
                                         .format(output))
        plan = self.evidence_plan(parameters, context, feedback, always_vrt=True)
        stack = plan.write(vrt, evidence.resolve_bands(text, plan.names), feedback)
        self._write(stack.path, output, stack.band_names, feedback)
        if context.willLoadLayerOnCompletion(output):
            context.layerToLoadOnCompletionDetails(output).name = self.tr("Evidence stack")
        return {self.OUTPUT: output, self.BAND_NAMES: ", ".join(stack.band_names)}

    def _write(self, source: str, output: str, names: List[str], feedback: QgsProcessingFeedback) -> None:
        """GeoTIFF through a temporary file beside the target, renamed when GDAL finished without error."""
        target = Path(output)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.stem}.partial.tif")

        def progress(fraction: float, _message: Any, _data: Any) -> int:
            feedback.setProgress(100.0 * fraction)
            return 0 if feedback.isCanceled() else 1

        gdal.ErrorReset()
        ds = gdal.Translate(str(partial), source, format="GTiff", outputType=gdal.GDT_Float32,
                            creationOptions=CREATION_OPTIONS, callback=progress)
        ok = ds is not None
        if ds is not None:
            for k, name in enumerate(names, start=1):
                band = ds.GetRasterBand(k)
                band.SetDescription(name)
                band.SetNoDataValue(float("nan"))
            ds.FlushCache()
            ds = None  # closes the file; GDAL reports write errors here
            ok = gdal.GetLastErrorType() < gdal.CE_Failure
        if not ok or feedback.isCanceled():
            partial.unlink(missing_ok=True)
            if feedback.isCanceled():
                raise QgsProcessingException(self.tr("Cancelled: no stack was written."))
            raise QgsProcessingException(self.tr("Could not write {}: {}").format(
                output, gdal.GetLastErrorMsg() or self.tr("GDAL failed")))
        os.replace(partial, target)
