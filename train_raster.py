"""The original tool's training command line, kept working: ``python train_raster.py --raster_path ...``.

A thin shim over ``python -m core train`` (also under ``torchrun ... train_raster.py --enable_ddp``).
"""
import os
import sys

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from core.cli import main

    sys.exit(main(["train", *sys.argv[1:]]))
