"""Hugging Face transformers integration of TSA.

* :func:`register_tsa_attention` registers ``attn_implementation="tsa"`` (idempotent).
* :func:`load_model` builds or loads a causal LM with it (preset, local path or HF id;
  pretrained or random weights); :func:`configure_tsa` switches a loaded model's method,
  TSA hyper-parameters and sparse layers without reloading.
* :func:`last_stats` reads the per-layer :class:`tsa_core.TSAStats` of the last prefill.
* :mod:`tsa_bench.hf.layers` chooses sparse layers by inter-layer drift (PAPER.md §1.4).

Importing this package imports neither transformers nor CUDA; the functions do.
"""
from tsa_bench.hf.attention import (ATTN_NAME, TSAPlan, attention_times, clear_stats, last_stats,
                                    register_tsa_attention, set_attention_timing, set_decode_attention,
                                    summarize_stats,
                                    tsa_attention_forward)
from tsa_bench.hf.loading import configure_tsa, load_model, resolve_sparse_layers, tsa_plan
from tsa_bench.hf.presets import Preset, find_preset, presets

__all__ = [
    "ATTN_NAME",
    "TSAPlan",
    "attention_times",
    "clear_stats",
    "configure_tsa",
    "find_preset",
    "last_stats",
    "load_model",
    "Preset",
    "presets",
    "register_tsa_attention",
    "resolve_sparse_layers",
    "set_attention_timing",
    "set_decode_attention",
    "summarize_stats",
    "tsa_attention_forward",
    "tsa_plan",
]
