"""Benchmarks: the Batcher against what a user would run instead, measured in one run.

``python -m benchmarks`` (``--quick`` for a smoke run) writes ``results.json``,
``results.md`` and plots to ``benchmarks/results/`` (or ``--out DIR``).
"""
