"""The plugin in the real QGIS desktop (under Xvfb): it loads from the plugins folder with a real
iface, and a probability map predicted from the toolbox's algorithm loads named and styled."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any, Dict

import pytest

from qgis_helpers import QGIS_PROCESS, TinyData, qgis_process_env

STARTUP_SCRIPT = '''
import json, os, traceback
from qgis.PyQt.QtCore import QTimer
from qgis.core import QgsApplication, QgsProject
from qgis.utils import iface, plugins

report = {}


def check():
    try:
        report["plugin_loaded"] = "stack_segmenter" in plugins
        report["provider"] = QgsApplication.processingRegistry().providerById("stacksegmenter") is not None
        import processing
        report["result"] = processing.runAndLoadResults("stacksegmenter:predictprobabilitymap", PARAMS)
        report["layers"] = [(layer.name(), layer.renderer().type())
                            for layer in QgsProject.instance().mapLayers().values()]
        iface.mapCanvas().zoomToFullExtent()
    except Exception:
        report["error"] = traceback.format_exc()
    QTimer.singleShot(1500, finish)


def finish():
    iface.mainWindow().grab().save(SCREENSHOT)
    with open(REPORT, "w") as f:
        json.dump(report, f, default=str)
    # Leave at once: a modified project would ask "save?" and wait forever on the virtual screen.
    os._exit(0)


QTimer.singleShot(2000, check)
'''


@pytest.mark.slow
@pytest.mark.skipif(not (shutil.which("xvfb-run") and shutil.which("qgis")), reason="needs xvfb-run and qgis")
def test_desktop_loads_plugin_and_styles_the_prediction(plugins_dir: Path, trained: Dict[str, Any],
                                                        tiny_data: TinyData, tmp_path: Path) -> None:
    env = qgis_process_env(plugins_dir, tmp_path / "profile")
    env.pop("QT_QPA_PLATFORM")  # the desktop draws on Xvfb's screen
    enable = subprocess.run([QGIS_PROCESS, "plugins", "enable", "stack_segmenter"],
                            env={**env, "QT_QPA_PLATFORM": "offscreen"}, capture_output=True, text=True, timeout=120)
    assert enable.returncode == 0, enable.stderr[-2000:]
    report_path, screenshot = tmp_path / "report.json", tmp_path / "desktop.png"
    params = {"INPUT": str(tiny_data.raster), "MODEL": trained["OUTPUT_MODEL"],
              "OUTPUT": str(tmp_path / "probability.tif")}
    script = tmp_path / "startup.py"
    script.write_text(f"PARAMS = {params!r}\nREPORT = {str(report_path)!r}\nSCREENSHOT = {str(screenshot)!r}\n"
                      + STARTUP_SCRIPT, encoding="utf-8")
    cmd = ["xvfb-run", "-a", "-s", "-screen 0 1280x800x24", "qgis", "--nologo", "--noversioncheck", "--code",
           str(script)]
    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as proc:
        try:
            _out, err = proc.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # our own session: xvfb-run, Xvfb and QGIS
            _out, err = proc.communicate()
    assert report_path.is_file(), f"QGIS exited {proc.returncode} without a report:\n{err[-3000:]}"
    report = json.loads(report_path.read_text())
    assert "error" not in report, report["error"]
    assert report["plugin_loaded"] and report["provider"]
    model = Path(trained["OUTPUT_MODEL"])
    assert report["layers"] == [[f"Prospectivity ({model.parent.name}/{model.stem})", "singlebandpseudocolor"]]
    assert screenshot.is_file() and screenshot.stat().st_size > 10_000
