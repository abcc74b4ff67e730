"""The original tool's prediction command line, kept working: ``python predict_raster.py --checkpoint ...``.

A thin shim over ``python -m core predict``.
"""
import os
import sys

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from core.cli import main

    sys.exit(main(["predict", *sys.argv[1:]]))
