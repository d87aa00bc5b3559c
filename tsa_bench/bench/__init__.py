"""Benchmark building blocks: timing, model shapes, baselines."""
