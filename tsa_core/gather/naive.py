"""Reference (plain PyTorch) compress / decompress.

``order [B, Hq, L]`` is the per-head permutation produced by selection (kept tokens first,
ascending; see :mod:`tsa_core.selection.naive`), and ``n_kept [B]`` the number of kept
tokens per batch element. Compressed tensors have ``N = max(n_kept)`` rows; for a batch
element with fewer kept tokens the rows past ``n_kept[b]`` are padding gathered from dropped
positions. Padding sits *after* every valid row, so under causal attention no valid query
ever attends to it, and the scatter ignores it.
"""
from __future__ import annotations

from typing import Tuple

import torch

from tsa_core._checks import check_qkv


def check_order(order: torch.Tensor, B: int, H: int, L: int, n_max: int) -> None:
    if order.shape != (B, H, L) or order.dtype != torch.int32:
        raise ValueError(f"order must be int32 of shape {(B, H, L)}, got {order.dtype} {tuple(order.shape)}")
    if not (1 <= n_max <= L):
        raise ValueError(f"n_max must be in [1, {L}], got {n_max}")


def compress_qkv_naive(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, order: torch.Tensor,
                       n_max: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gather the first ``n_max`` positions of ``order`` from Q, K and V, per query head.

    Args:
        q: ``[B, Hq, L, D]``; k, v: ``[B, Hkv, L, D]`` (GQA: head ``h`` reads KV head ``h // G``).
        order: ``[B, Hq, L]`` int32 selection permutation.
        n_max: rows to gather (the largest kept count over the batch).

    Returns:
        ``(qc, kc, vc)``, each ``[B, Hq, n_max, D]`` contiguous with ``q``'s dtype:
        ``qc[b, h, i] = q[b, h, order[b, h, i]]``, ``kc[b, h, i] = k[b, h // G, order[b, h, i]]``.
        Full K/V are never repeated: only the gathered rows exist per query head.
    """
    B, Hq, Hkv, L, D = check_qkv(q, k, v)
    check_order(order, B, Hq, L, n_max)
    idx = order[:, :, :n_max].long()
    b_idx = torch.arange(B, device=q.device).view(B, 1, 1)
    hq_idx = torch.arange(Hq, device=q.device).view(1, Hq, 1)
    hkv_idx = hq_idx // (Hq // Hkv)
    return (q[b_idx, hq_idx, idx].contiguous(), k[b_idx, hkv_idx, idx].contiguous(),
            v[b_idx, hkv_idx, idx].contiguous())


def decompress_output_naive(out_c: torch.Tensor, order: torch.Tensor, n_kept: torch.Tensor,
                            seq_len: int) -> torch.Tensor:
    """Scatter compressed attention output back to full length, exact zeros where dropped.

    Args:
        out_c: ``[B, Hq, N, D]`` attention output on the compressed sequence.
        order: ``[B, Hq, L]`` int32 selection permutation.
        n_kept: ``[B]`` int64 valid rows per batch element (``<= N``).
        seq_len: ``L``.

    Returns:
        ``[B, L, Hq, D]`` (the layout the output projection reads), ``out[b, order[b,h,i], h]
        = out_c[b, h, i]`` for ``i < n_kept[b]`` and ``0`` at every other position.
    """
    B, Hq, N, D = out_c.shape
    check_order(order, B, Hq, seq_len, N)
    out = torch.zeros((B, seq_len, Hq, D), dtype=out_c.dtype, device=out_c.device)
    valid = (torch.arange(N, device=out_c.device).view(1, 1, N) < n_kept.view(B, 1, 1)).expand(B, Hq, N)
    b_idx = torch.arange(B, device=out_c.device).view(B, 1, 1).expand(B, Hq, N)
    h_idx = torch.arange(Hq, device=out_c.device).view(1, Hq, 1).expand(B, Hq, N)
    pos = order[:, :, :N].long()
    out[b_idx[valid], pos[valid], h_idx[valid]] = out_c[valid]
    return out
