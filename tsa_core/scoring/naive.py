"""Reference (plain PyTorch) token scoring.

This is the documented spec of the op; :mod:`tsa_core.scoring.kernel` must match it.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from tsa_core._checks import check_qkv


def check_window(window: int, seq_len: int) -> None:
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be an integer >= 1, got {window!r}")
    if window >= seq_len:
        raise ValueError(f"window ({window}) must be smaller than the sequence length ({seq_len})")


def score_window_naive(q: torch.Tensor, k: torch.Tensor, window: int,
                       scale: Optional[float] = None, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean attention probability of the last ``window`` queries on every prefix key.

    Args:
        q: ``[B, Hq, L, D]`` queries (RoPE already applied).
        k: ``[B, Hkv, L, D]`` keys, ``Hq % Hkv == 0``; query head ``h`` uses KV head
            ``h // (Hq // Hkv)`` (never expanded in memory).
        window: ``W``, the number of most recent queries, ``1 <= W < L``.
        scale: softmax scale, default ``1 / sqrt(D)``.
        out: optional ``[B, Hq, L - W]`` float32 contiguous tensor to write into.

    Returns:
        ``[B, Hq, L - W]`` float32: for prefix key ``j < L - W``,
        ``mean_{i in [L-W, L)} softmax_j'(q_i . k_j' * scale)[j]`` where the softmax runs
        over all keys ``j' <= i`` (causal: window query ``i`` sees keys up to itself).
        Prefix keys are visible to every window query, so no mask applies to them.
    """
    B, Hq, Hkv, L, D = check_qkv(q, k, k)
    check_window(window, L)
    W, P, G = window, L - window, Hq // Hkv
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    qw = q[:, :, P:, :].float().reshape(B, Hkv, G, W, D)
    logits = torch.einsum("bhgwd,bhld->bhgwl", qw, k.float()) * scale
    query_pos = torch.arange(P, L, device=q.device).view(W, 1)
    key_pos = torch.arange(L, device=q.device).view(1, L)
    logits = logits.masked_fill(key_pos > query_pos, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    result = probs[..., :P].mean(dim=3).reshape(B, Hq, P)
    if out is None:
        return result
    check_out(out, (B, Hq, P), q.device)
    return out.copy_(result)


def check_out(out: torch.Tensor, shape, device) -> None:
    if out.shape != shape or out.dtype != torch.float32 or not out.is_contiguous() or out.device != device:
        raise ValueError(f"out must be a contiguous float32 tensor of shape {shape} on {device}, "
                         f"got {out.dtype} {tuple(out.shape)} on {out.device}")
