"""Where the repository and its results live: path constants with no dependencies.

A leaf module so that any layer (``tsa_bench.hf``, the commands, provenance) can name the
results tree without importing the bench layer that records provenance.
"""
from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "results"
