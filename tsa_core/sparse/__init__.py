"""Sparse attention methods that compose with TSA: FlexPrefill, XAttention, MInference.

Layout as in :mod:`tsa_core` (``q [B, Hq, L, D]``, ``k, v [B, Hkv, L, D]``, GQA native).
Every method is a pattern estimator producing a :class:`BlockPattern` plus the shared
block-sparse kernel (:mod:`tsa_core.sparse.block_sparse`); :mod:`tsa_core.sparse.methods`
chains them as registry backends. Importing this package imports no Triton.
"""
from tsa_core.sparse.pattern import BlockPattern
from tsa_core.sparse.methods import estimate_pattern, last_stats, run_with_pattern, sparse_attention

__all__ = ["BlockPattern", "estimate_pattern", "last_stats", "run_with_pattern", "sparse_attention"]
