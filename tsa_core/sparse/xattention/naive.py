"""XAttention pattern estimation, plain PyTorch reference (arXiv 2503.16428; PEERS.md §2(a)).

Our own implementation from the algorithm description. Per (batch, query head), stride
``S`` (default 16), block size ``bs`` (default 128, a multiple of ``S``):

1. **Antidiagonal scores** at group granularity: tokens form groups of ``S`` consecutive
   positions (the sequence is zero-padded to a multiple of ``S``). For query group ``i``
   and key group ``j``: ``score(i, j) = sum_{s<S} q[i S + S-1-s] . k[j S + s]``, the sum of
   the ``S`` dot products on the anti-diagonal of the ``S x S`` tile. Equivalently the dot
   product of ``Qr[i]`` = the group's queries in reverse order, concatenated, and
   ``Kr[j]`` = the group's keys concatenated (``[L/S, S*D]`` each).
2. **Block scores**: ``score * scale / S``, causal softmax over key groups ``j <= i``, then
   the probabilities summed inside each ``(bs/S) x (bs/S)`` tile: ``A [nb, nb]``; a full
   block row sums to ``bs / S``.
3. **Selection per block row** ``r``: key block 0 (sink) and the diagonal block ``r`` are
   forced; the other causal blocks are sorted by ``A`` descending (stable) and added while
   the mass *before* adding is below ``threshold x`` the row total, the forced blocks'
   mass counted first. So the block that crosses the threshold is kept.

GQA is native (query head ``h`` scores against KV head ``h // G``); the official code
asserts ``Hq == Hkv`` and needs K/V repeated.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from tsa_core.sparse.pattern import BlockPattern, causal_block_grid, check_block_size


@dataclass(frozen=True)
class XAttentionParams:
    """XAttention hyper-parameters; defaults = the TSA paper's setting (S = 16, tau = 0.9)."""

    stride: int = 16
    threshold: float = 0.9
    block_size: int = 128

    def __post_init__(self) -> None:
        if isinstance(self.stride, bool) or not isinstance(self.stride, int) or self.stride < 1:
            raise ValueError(f"stride must be a positive integer, got {self.stride!r}")
        if not (0.0 < float(self.threshold) <= 1.0):
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        check_block_size(self.block_size)
        if self.block_size % self.stride:
            raise ValueError(f"block_size ({self.block_size}) must be a multiple of stride ({self.stride})")


def reshape_groups(q: torch.Tensor, k: torch.Tensor, stride: int):
    """``(Qr [B, Hq, Lg, S*D], Kr [B, Hkv, Lg, S*D])``: queries reversed inside each group."""
    B, Hq, L, D = q.shape
    Lg = -(-L // stride)
    pad = Lg * stride - L
    qp = torch.nn.functional.pad(q, (0, 0, 0, pad))
    kp = torch.nn.functional.pad(k, (0, 0, 0, pad))
    qr = qp.reshape(B, Hq, Lg, stride, D).flip(3).reshape(B, Hq, Lg, stride * D)
    kr = kp.reshape(B, k.shape[1], Lg, stride * D)
    return qr, kr


def block_scores_naive(q: torch.Tensor, k: torch.Tensor, params: XAttentionParams, scale: float) -> torch.Tensor:
    """Steps 1-2: ``A [B, Hq, nb, nb]`` fp32 block scores (one head at a time)."""
    B, Hq, L, D = q.shape
    G = Hq // k.shape[1]
    S, bs = params.stride, params.block_size
    nb = -(-L // bs)
    gpb = bs // S
    qr, kr = reshape_groups(q, k, S)
    Lg = qr.shape[2]
    causal = torch.arange(Lg, device=q.device).view(1, Lg) <= torch.arange(Lg, device=q.device).view(Lg, 1)
    out = torch.empty((B, Hq, nb, nb), device=q.device, dtype=torch.float32)
    for b in range(B):
        for h in range(Hq):
            logits = (qr[b, h].float() @ kr[b, h // G].float().T) * (scale / S)
            probs = torch.softmax(logits.masked_fill(~causal, float("-inf")), dim=-1)
            probs = torch.nn.functional.pad(probs, (0, nb * gpb - Lg, 0, nb * gpb - Lg))
            out[b, h] = probs.view(nb, gpb, nb, gpb).sum(dim=(1, 3))
    return out


def select_blocks(scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """Step 3: bool ``[B, H, nb, nb]`` from block scores (shared with the Triton path)."""
    nb = scores.shape[-1]
    causal = causal_block_grid(nb, nb, scores.device)
    forced = torch.eye(nb, dtype=torch.bool, device=scores.device)
    forced[:, 0] = True
    s = scores.masked_fill(~causal, 0.0)
    total = s.sum(-1, keepdim=True)
    forced_mass = (s * forced).sum(-1, keepdim=True)
    rest = s.masked_fill(forced | ~causal, float("-inf"))
    vals, order = torch.sort(rest, dim=-1, descending=True, stable=True)
    selectable = torch.isfinite(vals)
    vals = torch.where(selectable, vals, torch.zeros_like(vals))
    before = forced_mass + torch.cumsum(vals, dim=-1) - vals
    take = (before < threshold * total) & selectable
    keep = torch.zeros_like(take).scatter(-1, order, take)
    return (keep | forced) & causal


def xattention_pattern_naive(q: torch.Tensor, k: torch.Tensor, params: XAttentionParams = XAttentionParams(),
                             *, scale: Optional[float] = None) -> BlockPattern:
    """Estimate the XAttention block pattern of ``q [B, Hq, L, D]``, ``k [B, Hkv, L, D]``."""
    B, Hq, L, D = q.shape
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    scores = block_scores_naive(q, k, params, scale)
    return BlockPattern.from_mask(select_blocks(scores, params.threshold), params.block_size, L)
