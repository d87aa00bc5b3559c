"""The straightforward PyTorch composition of TSA: the baseline our kernels are measured against.

What a first implementation (and the paper's code, PAPER.md §1.2, §1.5) does: expand K/V to
every query head (``repeat_interleave``), compute the window logits with a matmul into a
``[B, Hq, W, L]`` float32 tensor, softmax, mean, ``avg_pool1d``, a full sort + cumsum for the
budget, ``.item()``, ``topk`` + ``sort`` per head, ``gather`` on the expanded K/V, and a zero
tensor + ``scatter_`` + ``transpose().contiguous()`` for the output. Batch size 1 only (as in
the paper). Same selection rule as :mod:`tsa_core` (ties aside), so the attention stage is the
same work.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

from tsa_core import TSAConfig


def score(q: torch.Tensor, k: torch.Tensor, window: int, scale: float) -> torch.Tensor:
    B, Hq, L, D = q.shape
    k_rep = k.repeat_interleave(Hq // k.shape[1], dim=1)
    logits = torch.matmul(q[:, :, L - window:], k_rep.transpose(-1, -2)).float() * scale
    causal = torch.ones(window, window, dtype=torch.bool, device=q.device).triu(1)
    logits[..., L - window:].masked_fill_(causal, float("-inf"))
    return torch.softmax(logits, dim=-1)[..., : L - window].mean(dim=2)


def select(scores: torch.Tensor, config: TSAConfig, seq_len: int) -> Tuple[torch.Tensor, int]:
    B, H, P = scores.shape
    if B != 1:
        raise ValueError("the PyTorch composition baseline supports batch size 1 only (like the paper)")
    pooled = F.avg_pool1d(scores, config.pool_kernel, stride=1, padding=config.pool_kernel // 2)
    layer = pooled.mean(dim=1)
    layer = layer / layer.sum(dim=-1, keepdim=True)
    cums = torch.sort(layer, dim=-1).values.cumsum(dim=-1)
    if config.keep_ratio is None:
        keep = max(min(config.min_keep, P), P - int((cums < config.tau).sum().item()))
    else:
        keep = min(P, max(config.min_keep, int(round(config.keep_ratio * P))))
    idx = torch.topk(pooled, keep, dim=-1).indices.sort(dim=-1).values
    window = torch.arange(P, seq_len, device=scores.device).expand(B, H, seq_len - P)
    return torch.cat([idx, window], dim=-1), keep


def gather(q, k, v, idx):
    G = q.shape[1] // k.shape[1]
    k_rep = k.repeat_interleave(G, dim=1)
    v_rep = v.repeat_interleave(G, dim=1)
    e = idx.unsqueeze(-1).expand(-1, -1, -1, q.shape[-1])
    return q.gather(2, e), k_rep.gather(2, e), v_rep.gather(2, e)


def scatter(out_c: torch.Tensor, idx: torch.Tensor, seq_len: int) -> torch.Tensor:
    B, H, N, D = out_c.shape
    out = torch.zeros(B, H, seq_len, D, dtype=out_c.dtype, device=out_c.device)
    out.scatter_(2, idx.unsqueeze(-1).expand(-1, -1, -1, D), out_c)
    return out.transpose(1, 2).contiguous()


def tsa_attention_torch(q, k, v, config: TSAConfig, backend, scale: float):
    """The whole composition; returns ``[B, L, Hq, D]``."""
    L = q.shape[2]
    idx, _ = select(score(q, k, config.window, scale), config, L)
    qc, kc, vc = gather(q, k, v, idx)
    return scatter(backend(qc, kc, vc, scale=scale), idx, L)
