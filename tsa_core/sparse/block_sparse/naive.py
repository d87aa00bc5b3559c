"""Reference block-sparse causal attention: dense attention under the pattern's token mask.

This is the spec of :func:`tsa_core.sparse.block_sparse.kernel.block_sparse_attention`:

* ``q [B, Hq, L, D]``, ``k, v [B, Hkv, L, D]``; query head ``h`` reads KV head ``h // G``
  with ``G = Hq // Hkv`` (K/V are never repeated in memory).
* ``pattern``: a :class:`~tsa_core.sparse.pattern.BlockPattern` with ``pattern.heads == Hq``.
  Query ``i`` of head ``h`` attends to key ``j`` iff ``j <= i`` and (the block
  ``(i // bs, j // bs)`` is active, or ``j`` is one of the pattern's columns).
* A query with no visible key (its row holds no active block at or left of its position)
  gets an all-zero output row.
* Softmax in fp32; the output has ``q``'s dtype.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from tsa_core._checks import check_qkv
from tsa_core.sparse.pattern import BlockPattern


def check_pattern(pattern: BlockPattern, B: int, Hq: int, L: int, device) -> None:
    if not isinstance(pattern, BlockPattern):
        raise ValueError(f"pattern must be a BlockPattern, got {type(pattern).__name__}")
    if (pattern.batch, pattern.heads, pattern.seq_len) != (B, Hq, L):
        raise ValueError(f"pattern is for (B, H, L) = {(pattern.batch, pattern.heads, pattern.seq_len)}, "
                         f"the inputs are {(B, Hq, L)}")
    if pattern.kv_idx.device.type != torch.device(device).type:
        raise ValueError(f"pattern is on {pattern.kv_idx.device}, the inputs on {device}")


def block_sparse_attention_naive(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                 pattern: BlockPattern, *, scale: Optional[float] = None,
                                 chunk: int = 1024) -> torch.Tensor:
    """Masked dense attention, ``chunk`` queries at a time (memory ``[G, chunk, L]`` fp32)."""
    B, Hq, Hkv, L, D = check_qkv(q, k, v)
    check_pattern(pattern, B, Hq, L, q.device)
    G = Hq // Hkv
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    out = torch.empty_like(q)
    for b in range(B):
        for h in range(Hq):
            kf, vf = k[b, h // G].float(), v[b, h // G].float()
            for s in range(0, L, chunk):
                e = min(L, s + chunk)
                logits = (q[b, h, s:e].float() @ kf.T) * scale
                allowed = pattern.token_mask(b, h, s, e)
                logits = logits.masked_fill(~allowed, float("-inf"))
                probs = torch.softmax(logits, dim=-1).nan_to_num(0.0)   # empty rows -> 0
                out[b, h, s:e] = (probs @ vf).to(q.dtype)
    return out
