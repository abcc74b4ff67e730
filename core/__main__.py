"""``python -m core ...`` (run from the plugin folder)."""
import sys

from .cli import main

sys.exit(main())
