"""Attention shapes of the models users care about (presets as data)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict


@dataclass(frozen=True)
class AttnShape:
    heads: int
    kv_heads: int
    head_dim: int
    layers: int


SHAPES: Dict[str, AttnShape] = {
    "llama-3.1-8b": AttnShape(heads=32, kv_heads=8, head_dim=128, layers=32),
    "mistral-nemo-12b": AttnShape(heads=32, kv_heads=8, head_dim=128, layers=40),
    "qwen2.5-7b": AttnShape(heads=28, kv_heads=4, head_dim=128, layers=28),
    "qwen3-8b": AttnShape(heads=32, kv_heads=8, head_dim=128, layers=36),
}
