"""Local-window attention for the query rows TSA drops (``TSAConfig.dropped="local:<w>"``).

The paper writes exact zeros into every (token, head) that was not selected. This variant
gives such a row a cheap approximation instead: query ``i`` attends causally to the original
(ungathered) keys and values at positions ``max(0, i - w + 1) .. i``, kept or not, with the
layer's softmax scale. Only dropped rows are written, so kept rows stay bit-identical to the
``"zero"`` variant.

How: a banded computation in float32. Query positions are cut into blocks of :data:`BLOCK`;
the queries of one block (all heads of a KV group together) meet the ``BLOCK + w - 1`` keys
that any of them can see in one matrix product, a band mask keeps each query's ``w`` keys, and
the results are written where the selection dropped the row. Per (element, query head) that is
``L * (BLOCK + w - 1)`` logits, whatever the number of dropped rows: on a CPU it measured ~7x
faster than gathering ``w`` keys for each dropped row (small batched mat-vecs that copy
``w * D`` elements per row), for the half-dropped rows of a 4K prompt at ``w = 64``. Positions
are processed in chunks of whole blocks so that the temporaries stay within
:data:`CHUNK_BYTES` (see :func:`positions_per_chunk`). Plain PyTorch, no Triton twin.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from tsa_core._checks import check_qkv

BLOCK = 32                 # query positions per band tile
CHUNK_BYTES = 256 << 20    # bound on one chunk's temporaries


def bytes_per_block(window: int, heads: int, kv_heads: int, head_dim: int) -> int:
    """Temporary bytes one block of :data:`BLOCK` positions costs in :func:`local_window_attention`
    (an upper bound): logits and probabilities (float32) and the band mask per query head,
    the float32 queries and results (with their reshape copies), the K and V slabs."""
    T, S = BLOCK, BLOCK + window - 1
    return heads * T * S * (2 * 4 + 1) + heads * T * head_dim * 4 * 6 + kv_heads * S * head_dim * 4 * 4


def positions_per_chunk(window: int, heads: int, kv_heads: int, head_dim: int,
                        budget: Optional[int] = None) -> int:
    """Query positions (a multiple of :data:`BLOCK`, at least one block) per chunk of
    :func:`fill_dropped_local`, so that a chunk's temporaries stay within ``budget`` bytes
    (default :data:`CHUNK_BYTES`)."""
    budget = CHUNK_BYTES if budget is None else budget
    return BLOCK * max(1, budget // bytes_per_block(window, heads, kv_heads, head_dim))


def local_window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, batch: int, start: int,
                           stop: int, window: int, scale: float) -> torch.Tensor:
    """Causal local-window attention of the queries at positions ``start .. stop - 1`` of one
    batch element, every query head.

    Args:
        q: ``[B, Hq, L, D]``; k, v: ``[B, Hkv, L, D]`` (GQA: query head ``h`` reads KV head
            ``h // (Hq // Hkv)``; K/V are never repeated per query head).
        batch: the batch element ``b``.
        start, stop: ``0 <= start < stop <= L``.
        window: ``w >= 1``; query ``i`` attends to keys ``max(0, i - w + 1) .. i``.
        scale: softmax scale.

    Returns:
        ``[Hq, stop - start, D]`` float32: ``softmax_j(scale * q[b, h, i] . k[b, g, j]) @ v[b, g, j]``
        over that band, ``g = h // G``.
    """
    Hq, Hkv, L, D = q.shape[1], k.shape[1], q.shape[2], q.shape[3]
    G, T, S = Hq // Hkv, BLOCK, BLOCK + window - 1
    n = math.ceil((stop - start) / T)                                        # blocks
    lo, hi = start - (window - 1), start + n * T                             # keys any block may see
    pad = (0, 0, max(0, -lo), max(0, hi - L))                                # zero keys outside [0, L)
    ks = F.pad(k[batch, :, max(lo, 0):min(hi, L)].float(), pad)              # [Hkv, n*T + w - 1, D]
    vs = F.pad(v[batch, :, max(lo, 0):min(hi, L)].float(), pad)
    k_slab = ks.unfold(1, S, T)                                              # [Hkv, n, D, S] (a view)
    v_slab = vs.unfold(1, S, T).transpose(-1, -2)                            # [Hkv, n, S, D]
    qs = F.pad(q[batch, :, start:min(hi, L)].float(), (0, 0, 0, max(0, hi - L)))    # [Hq, n*T, D]
    qs = qs.view(Hkv, G, n, T, D).transpose(1, 2).reshape(Hkv, n, G * T, D)  # a KV group's rows together
    logits = torch.matmul(qs, k_slab).mul_(scale)                            # [Hkv, n, G*T, S]
    t = torch.arange(T, device=q.device).repeat(G)[:, None]                  # [G*T, 1] query offset in block
    c = torch.arange(S, device=q.device)[None, :]                            # [1, S]: key lo + j*T + c
    key_pos = (lo + T * torch.arange(n, device=q.device))[:, None, None] + c    # [n, 1, S]
    # [n, G*T, S]: the w keys ending at the query itself (c = t + w - 1), none before position 0
    band = (c >= t) & (c < t + window) & (key_pos >= 0)
    probs = torch.softmax(logits.masked_fill_(~band, float("-inf")), dim=-1)
    out = torch.matmul(probs, v_slab)                                        # [Hkv, n, G*T, D]
    return out.view(Hkv, n, G, T, D).transpose(1, 2).reshape(Hq, n * T, D)[:, : stop - start]


def fill_dropped_local(out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       order: torch.Tensor, n_kept: Sequence[int], window: int, scale: float, *,
                       chunk_len: Optional[int] = None) -> torch.Tensor:
    """Overwrite the dropped rows of a scattered TSA output with local-window attention.

    Args:
        out: ``[B, L, Hq, D]`` output of the scatter, written in place (dropped rows only).
        q: ``[B, Hq, L, D]``; k, v: ``[B, Hkv, L, D]``, the full (ungathered) tensors.
        order: ``[B, Hq, L]`` int32 selection permutation: ``order[b, h, n_kept[b]:]`` are the
            positions that head ``h`` of element ``b`` dropped.
        n_kept: host ints, kept tokens per batch element (``1 <= n_kept[b] <= L``).
        window: ``w >= 1``, see :func:`local_window_attention`.
        scale: softmax scale.
        chunk_len: query positions per chunk, a multiple of :data:`BLOCK`; default
            :func:`positions_per_chunk` (memory-bounded).

    Returns:
        ``out``: ``out[b, i, h]`` for every dropped ``(b, h, i)`` is
        :func:`local_window_attention` cast to ``out``'s dtype; every other element keeps
        its bits.
    """
    B, Hq, Hkv, L, D = check_qkv(q, k, v)
    if out.shape != (B, L, Hq, D):
        raise ValueError(f"out must have shape {(B, L, Hq, D)}, got {tuple(out.shape)}")
    if order.shape != (B, Hq, L) or order.dtype != torch.int32:
        raise ValueError(f"order must be int32 of shape {(B, Hq, L)}, got {order.dtype} {tuple(order.shape)}")
    n_kept = [int(n) for n in n_kept]
    if len(n_kept) != B or not all(1 <= n <= L for n in n_kept):
        raise ValueError(f"n_kept must hold {B} integers in [1, {L}], got {n_kept}")
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be an integer >= 1, got {window!r}")
    step = positions_per_chunk(window, Hq, Hkv, D) if chunk_len is None else chunk_len
    if isinstance(step, bool) or not isinstance(step, int) or step < BLOCK or step % BLOCK:
        raise ValueError(f"chunk_len must be a positive multiple of {BLOCK}, got {chunk_len!r}")
    for b, n in enumerate(n_kept):
        if n == L:
            continue
        dropped = torch.zeros((Hq, L), dtype=torch.bool, device=out.device)
        dropped.scatter_(1, order[b, :, n:].long(), True)
        dropped = dropped.t()                                                # [L, Hq]
        for start in range(0, L, step):
            stop = min(start + step, L)
            rows = out[b, start:stop]                                        # [len, Hq, D], a view
            local = local_window_attention(q, k, v, b, start, stop, window, scale).transpose(0, 1)
            rows.copy_(torch.where(dropped[start:stop, :, None], local.to(out.dtype), rows))
    return out
