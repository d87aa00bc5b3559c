"""Reference (plain PyTorch) token selection: the spec the Triton kernels must match.

The selection of one layer is a permutation ``order`` of ``[0, L)`` per (batch, query head):

* ``order[b, h, :keep[b]]``: the kept prefix tokens, ascending;
* ``order[b, h, keep[b] : keep[b] + W]``: the window ``[L - W, L)``, always kept;
* ``order[b, h, keep[b] + W :]``: the dropped prefix tokens, ascending.

So the first ``n[b] = keep[b] + W`` entries are the sorted kept set, which the gather reads
and the scatter writes back; the rest tell the scatter where to write exact zeros.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

from tsa_core.config import TSAConfig


def _check_scores(scores: torch.Tensor) -> None:
    if not isinstance(scores, torch.Tensor) or scores.dim() != 3:
        raise ValueError(f"scores must be a [B, H, P] tensor, got {getattr(scores, 'shape', scores)}")
    if scores.dtype != torch.float32:
        raise ValueError(f"scores must be float32, got {scores.dtype}")


def check_pool_kernel(kernel: int) -> None:
    if isinstance(kernel, bool) or not isinstance(kernel, int) or kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"pool kernel must be a positive odd integer, got {kernel!r}")


def pool_scores_naive(scores: torch.Tensor, kernel: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Average-pool every head's scores along tokens, and sum the pooled scores over heads.

    Args:
        scores: ``[B, H, P]`` float32 prefix-token scores.
        kernel: odd pooling width; zero padding of ``kernel // 2`` on both sides and the
            divisor is always ``kernel`` (``F.avg_pool1d`` with ``count_include_pad=True``).

    Returns:
        ``pooled [B, H, P]`` float32 and ``layer [B, P]`` float32, the sum over heads of
        ``pooled`` (unnormalised; :func:`layer_budget` normalises it).
    """
    _check_scores(scores)
    check_pool_kernel(kernel)
    B, H, P = scores.shape
    pooled = F.avg_pool1d(scores.reshape(B * H, 1, P), kernel, stride=1, padding=kernel // 2,
                          count_include_pad=True).reshape(B, H, P)
    return pooled, pooled.sum(dim=1)


def layer_budget(layer: torch.Tensor, config: TSAConfig) -> Tuple[torch.Tensor, torch.Tensor]:
    """Dynamic Token Coverage: how many prefix tokens each batch element keeps.

    ``layer [B, P]`` is normalised to a distribution and sorted ascending; the dropped tail
    is the longest run of smallest entries whose cumulative mass stays strictly below
    ``tau`` (dropping one more token would reach ``tau``). At least ``min(min_keep, P)``
    tokens are kept. With ``config.keep_ratio`` set the count is
    ``clamp(max(min_keep, round(keep_ratio * P)), max=P)`` instead.

    Note: the paper's code drops one token more (``n + 1`` where ``n`` counts the entries
    with cumulative mass below ``tau``) whenever ``n > 0``; we follow the stated rule, so that
    the pruned mass is always below ``tau``.

    Returns:
        ``keep [B]`` int64 and ``pruned_mass [B]`` float32 (mass of the dropped tokens in the
        normalised layer distribution), both on the input's device: no host sync here.
    """
    if layer.dim() != 2:
        raise ValueError(f"layer must be [B, P], got shape {tuple(layer.shape)}")
    B, P = layer.shape
    dist = layer / layer.sum(dim=-1, keepdim=True)
    cums = torch.sort(dist, dim=-1).values.cumsum(dim=-1)
    floor = min(config.min_keep, P)
    if config.keep_ratio is None:
        n_drop = (cums < config.tau).sum(dim=-1)
        keep = (P - n_drop).clamp(min=floor)
    else:
        want = min(P, max(floor, int(round(config.keep_ratio * P))))
        keep = torch.full((B,), want, dtype=torch.int64, device=layer.device)
    n_drop = P - keep
    pruned = cums.gather(1, (n_drop - 1).clamp(min=0).unsqueeze(1)).squeeze(1)
    pruned = torch.where(n_drop > 0, pruned, torch.zeros_like(pruned))
    return keep, pruned


def check_keep(pooled: torch.Tensor, keep: torch.Tensor, seq_len: int) -> None:
    _check_scores(pooled)
    B, _, P = pooled.shape
    if seq_len <= P:
        raise ValueError(f"seq_len ({seq_len}) must exceed the number of prefix tokens ({P})")
    if keep.shape != (B,) or keep.dtype != torch.int64:
        raise ValueError(f"keep must be an int64 tensor of shape ({B},), got {keep.dtype} {tuple(keep.shape)}")


def select_topk_naive(pooled: torch.Tensor, keep: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Per-head top-``keep[b]`` prefix tokens, plus the window, as a permutation of ``[0, L)``.

    Args:
        pooled: ``[B, H, P]`` float32 pooled scores (non-negative), ``P = L - W``.
        keep: ``[B]`` int64, prefix tokens to keep per batch element (``1 <= keep <= P``);
            every head of a batch element keeps the same number.
        seq_len: ``L``.

    Returns:
        ``order [B, H, L]`` int32 as described in the module docstring. Ties are broken
        towards the lower token index, so the selection is deterministic.
    """
    check_keep(pooled, keep, seq_len)
    B, H, P = pooled.shape
    L = seq_len
    order = torch.empty((B, H, L), dtype=torch.int32, device=pooled.device)
    window = torch.arange(P, L, device=pooled.device, dtype=torch.int64).expand(H, L - P)
    for b, kb in enumerate(keep.tolist()):
        ranked = torch.sort(pooled[b], dim=-1, descending=True, stable=True).indices
        kept = ranked[:, :kb].sort(dim=-1).values
        dropped = ranked[:, kb:].sort(dim=-1).values
        order[b] = torch.cat([kept, window, dropped], dim=-1).to(torch.int32)
    return order
