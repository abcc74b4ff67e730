#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian 12 machine (run as root), following DESIGN.md section 6:
# QGIS 3.22 and the geo Python packages from Debian, then .venv (with system site packages)
# holding the pinned CPU torch, torch-harmonics (no deps) and the test tools.
# Re-running on a ready machine only checks and takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV="$ROOT/.venv"
STAMP="$VENV/.setup-stamp"

APT_PACKAGES=(qgis python3-qgis qgis-providers python3-rasterio python3-geopandas proj-bin
  python3-venv python3-matplotlib python3-sklearn python3-scipy python3-pandas python3-tqdm python3-pytest
  xvfb zip python3-pip)
# python3-pip: a test makes an environment the way "Set up worker environment" does on a Debian
# without python3-venv's ensurepip, with the pip of QGIS's Python.

missing_apt=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing_apt+=("$p")
done
if [ ${#missing_apt[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing_apt[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing_apt[@]}"
fi

# The stamp records the inputs of the venv; when they change the pip step runs again.
want="$(cat constraints.txt requirements-dev.txt | sha256sum | cut -c1-16)"
if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  echo "setup: ready (.venv up to date)"
  exit 0
fi

[ -x "$VENV/bin/python" ] || /usr/bin/python3 -m venv --system-site-packages "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
"${PIP[@]}" install -c constraints.txt -r requirements-dev.txt
# torch-harmonics declares torch>=2.14; installed without deps it runs correctly on 2.13.
"${PIP[@]}" install -c constraints.txt --no-deps torch-harmonics==0.9.3
# elapid (MaxEnt, the cv baseline): 1.0.4+ needs numpy>=2; 1.0.1 runs on Debian's numpy 1.x. Its
# dependencies come from Debian (geopandas, rasterio, scikit-learn, ...); --no-deps keeps pip from
# fetching wheels that bundle their own GDAL/GEOS (rtree, descartes are not needed for MaxentModel).
"${PIP[@]}" install -c constraints.txt --no-deps elapid==1.0.1
"$VENV/bin/python" - <<'PY'
import numpy, torch, torch_harmonics, rasterio, geopandas, elapid
assert numpy.__version__.startswith("1."), numpy.__version__
assert "+cpu" in torch.__version__ or not torch.cuda.is_available(), torch.__version__
print(f"setup: torch {torch.__version__}, torch-harmonics {torch_harmonics.__version__}, "
      f"numpy {numpy.__version__}, rasterio {rasterio.__version__}, geopandas {geopandas.__version__}")
PY
echo "$want" > "$STAMP"
