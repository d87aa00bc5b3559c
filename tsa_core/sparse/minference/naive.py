"""MInference vertical-slash pattern estimation, plain PyTorch reference (arXiv 2407.02490).

Our own implementation of the online vertical-slash estimate as the TSA paper configured it
(PAPER.md §2.3, PEERS.md §3(a)): every head is vertical-slash with an *adaptive* budget of
``budget x L`` keys per query (``L`` = the sequence the method sees, i.e. the compressed
length under TSA), ``vertical_share`` of it vertical and the rest slash.

1. The last ``nq = min(last_q, L)`` queries (default 64) attend to all keys, causal inside
   the corner, softmax in fp32 (shared with FlexPrefill: the same two profiles).
2. Vertical score = column sums; the first ``sink_columns`` (30) columns are forced; keep the
   top ``V = min(L, max(30, round(budget L vertical_share)))`` columns.
3. Slash score = sums along each diagonal distance ``o``; the ``local_diagonals`` (100) most
   recent distances are forced; keep the top ``S = min(L, max(50, round(budget L (1 -
   vertical_share))))`` distances.
4. Execution pattern: the slash lines are covered by whole ``block_size`` tiles (a line at
   distance ``o = t bs + u`` crosses the key blocks ``r - t`` and, if ``u > 0``, ``r - t - 1``
   of query block ``r``), as MInference's kernel covers them with 64-wide tiles; the
   vertical columns are attended one by one (the pattern's ``cols``) where no active block
   already covers them. The sink columns and the diagonal block are therefore always in.

Ties are broken by the lower index (stable sorts).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from tsa_core.sparse.flexprefill.naive import profiles_naive
from tsa_core.sparse.pattern import BlockPattern, check_block_size


@dataclass(frozen=True)
class MInferenceParams:
    """Vertical-slash parameters; defaults = the TSA paper's adaptive 0.1 budget, 20/80."""

    budget: float = 0.1
    vertical_share: float = 0.2
    last_q: int = 64
    block_size: int = 64
    sink_columns: int = 30
    local_diagonals: int = 100
    min_vertical: int = 30
    min_slash: int = 50

    def __post_init__(self) -> None:
        if not (0.0 < float(self.budget) <= 1.0):
            raise ValueError(f"budget must be in (0, 1] (a fraction of the length), got {self.budget}")
        if not (0.0 <= float(self.vertical_share) <= 1.0):
            raise ValueError(f"vertical_share must be in [0, 1], got {self.vertical_share}")
        check_block_size(self.block_size)
        for name in ("last_q", "sink_columns", "local_diagonals", "min_vertical", "min_slash"):
            val = getattr(self, name)
            if isinstance(val, bool) or not isinstance(val, int) or val < (1 if name == "last_q" else 0):
                raise ValueError(f"{name} must be an integer >= {1 if name == 'last_q' else 0}, got {val!r}")

    def sizes(self, seq_len: int):
        """``(V, S)``: vertical columns and slash distances kept at length ``seq_len``."""
        v = round(self.budget * seq_len * self.vertical_share)
        s = round(self.budget * seq_len * (1.0 - self.vertical_share))
        return min(seq_len, max(self.min_vertical, v)), min(seq_len, max(self.min_slash, s))


def _top_forced(score: torch.Tensor, n: int, n_forced: int) -> torch.Tensor:
    """Indices ``[B, H, n]`` of the top ``n`` entries, the first ``n_forced`` positions first."""
    score = score.clone()
    score[..., :n_forced] = float("inf")
    return torch.sort(score, dim=-1, descending=True, stable=True).indices[..., :n]


def vertical_slash_indices(vertical: torch.Tensor, slash: torch.Tensor, params: MInferenceParams):
    """Steps 2-3: ``(cols [B, H, V], dist [B, H, S])`` int64, the kept columns and distances."""
    L = vertical.shape[-1]
    n_v, n_s = params.sizes(L)
    cols = _top_forced(vertical, n_v, min(params.sink_columns, L))
    dist = _top_forced(slash, n_s, min(params.local_diagonals, L))
    return cols, dist


def select_vertical_slash(vertical: torch.Tensor, slash: torch.Tensor, params: MInferenceParams) -> BlockPattern:
    """Steps 2-4 from the two profiles (any positive scaling of them gives the same pattern)."""
    B, H, L = vertical.shape
    bs = params.block_size
    nb = -(-L // bs)
    cols, dist = vertical_slash_indices(vertical, slash, params)
    hit = torch.zeros((B, H, nb + 1), dtype=torch.bool, device=vertical.device)
    hit.scatter_(-1, dist // bs, True)
    hit.scatter_(-1, torch.where(dist % bs > 0, dist // bs + 1, dist // bs), True)
    r = torch.arange(nb, device=vertical.device)
    diff = (r.view(nb, 1) - r.view(1, nb)).clamp(min=0)
    mask = hit[..., :nb].gather(-1, diff.reshape(1, 1, -1).expand(B, H, -1)).view(B, H, nb, nb)
    return BlockPattern.from_mask(mask, bs, L, cols=cols)


def minference_pattern_naive(q: torch.Tensor, k: torch.Tensor, params: MInferenceParams = MInferenceParams(),
                             *, scale: Optional[float] = None) -> BlockPattern:
    """Estimate the vertical-slash pattern of ``q [B, Hq, L, D]``, ``k [B, Hkv, L, D]``."""
    B, Hq, L, D = q.shape
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    vertical, slash = profiles_naive(q, k, min(params.last_q, L), scale)
    return select_vertical_slash(vertical, slash, params)
