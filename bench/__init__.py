"""Benchmarks of Stack Segmenter (``make bench``); not part of the plugin package.

Each benchmark is one module with a ``run(params) -> dict`` function that
``bench/run_all.py`` calls in a fresh subprocess (``python -m bench.<module>``), so the
peak memory it reports is that of a whole, independent process.
"""
