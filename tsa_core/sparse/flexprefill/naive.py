"""FlexPrefill pattern estimation, plain PyTorch reference (arXiv 2502.20766; PEERS.md §1(a)).

Our own implementation from the algorithm description. Per (batch, query head), with
block size ``bs`` (default 128), ``nb = ceil(L / bs)`` blocks:

1. **Representative attention** ``A [nq, L]``: the last ``nq = min(bs, L)`` queries against
   all keys, causal inside the last corner, softmax in fp32.
2. **Profiles**: vertical ``v[j] = mean_i A[i, j]``; slash ``s[o] = (1/nq) sum_i A[i, p_i - o]``
   (``p_i`` = position of query ``i``, ``o`` = distance to the diagonal). Both sum to 1.
3. **Budgets**: per profile, sort descending, ``count = #{cumsum <= gamma} + 1`` tokens,
   ``count // bs + 1`` blocks, clamped to ``[ceil(min_budget / bs), ceil(max_budget / bs)]``.
4. **Pattern decision** (Jensen-Shannon): ``a_hat`` = the vertical profile sum-pooled to
   blocks; ``a_bar`` = softmax over key blocks of ``mean(last queries) . mean_pool(K)`` times
   the softmax scale. ``D = sqrt(JSD(a_bar, a_hat))`` (natural log). ``D < tau``: the head is
   *query-aware* and both budgets drop to the minimum; otherwise *vertical-slash*.
5. **Vertical-slash blocks**: sum-pool both profiles to blocks (the slash profile over
   distance blocks ``o // bs``), force key block 0 (sink) and distance block 0 (diagonal),
   keep the top ``n_v`` vertical and top ``n_s`` slash blocks; vertical block ``c`` is active
   in every row ``r >= c``, slash block ``t`` activates ``(r, r - t)``.
6. **Query-aware heads** additionally keep the smallest set of blocks, by descending score,
   whose block attention mass reaches ``gamma`` of the total: block attention is the causal
   row softmax of ``mean_pool(Q) . mean_pool(K)`` times the scale over the full block grid,
   each row summing to 1 (total ``nb``). (FlexPrefill keeps blocks while the cumulative sum
   is ``<= gamma * nb``; we include the block that crosses, so coverage >= gamma holds.)

Sequences with ``L <= max(2 bs, ceil(min_budget / bs) * bs)`` run dense (every causal
block), as FlexPrefill does. The sink block and the diagonal block of every row are always
active. Ties are broken by the lower index (stable sorts), so the pattern is deterministic.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from tsa_core.sparse.pattern import BlockPattern, causal_block_grid, check_block_size


@dataclass(frozen=True)
class FlexPrefillParams:
    """FlexPrefill hyper-parameters; defaults = the TSA paper's setting (PAPER.md §2.3)."""

    gamma: float = 0.95
    tau: float = 0.1
    block_size: int = 128
    min_budget: int = 1024
    max_budget: Optional[int] = None

    def __post_init__(self) -> None:
        if not (0.0 < float(self.gamma) <= 1.0):
            raise ValueError(f"gamma must be in (0, 1], got {self.gamma}")
        if not (0.0 <= float(self.tau) <= 1.0):
            raise ValueError(f"tau (the JS-divergence threshold) must be in [0, 1], got {self.tau}")
        check_block_size(self.block_size)
        if isinstance(self.min_budget, bool) or not isinstance(self.min_budget, int) or self.min_budget < 1:
            raise ValueError(f"min_budget must be an integer >= 1 (tokens), got {self.min_budget!r}")
        if self.max_budget is not None and (not isinstance(self.max_budget, int) or self.max_budget < self.min_budget):
            raise ValueError(f"max_budget must be None or an integer >= min_budget, got {self.max_budget!r}")

    def runs_dense(self, seq_len: int) -> bool:
        bs = self.block_size
        return seq_len <= max(2 * bs, -(-self.min_budget // bs) * bs)


@dataclass(frozen=True)
class FlexPrefillInfo:
    """Per-head decisions of one estimation (``[B, H]`` tensors; ``None`` when dense)."""

    query_aware: Optional[torch.Tensor]
    js_distance: Optional[torch.Tensor]
    vertical_blocks: Optional[torch.Tensor]
    slash_blocks: Optional[torch.Tensor]


def last_block_attention(q: torch.Tensor, k: torch.Tensor, nq: int, scale: float) -> torch.Tensor:
    """``[B, Hq, nq, L]`` fp32 softmax of the last ``nq`` queries over all keys (causal)."""
    B, Hq, L, D = q.shape
    G = Hq // k.shape[1]
    ql = q[:, :, L - nq:].float().reshape(B, k.shape[1], G, nq, D)
    logits = torch.einsum("bhgqd,bhkd->bhgqk", ql, k.float()).reshape(B, Hq, nq, L) * scale
    q_pos = torch.arange(L - nq, L, device=q.device).view(nq, 1)
    logits = logits.masked_fill(torch.arange(L, device=q.device).view(1, L) > q_pos, float("-inf"))
    return torch.softmax(logits, dim=-1)


def profiles_naive(q: torch.Tensor, k: torch.Tensor, nq: int, scale: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Steps 1-2: ``(vertical [B, H, L], slash [B, H, L])`` fp32, slash indexed by distance."""
    A = last_block_attention(q, k, nq, scale)
    L = q.shape[2]
    vertical = A.mean(dim=2)
    q_pos = torch.arange(L - nq, L, device=q.device).view(nq, 1)
    j = q_pos - torch.arange(L, device=q.device).view(1, L)            # [nq, L]: key at distance o
    gathered = A.gather(-1, j.clamp(min=0).expand(*A.shape[:2], nq, L)) * (j >= 0)
    return vertical, gathered.sum(dim=2) / nq


def _budget_blocks(profile: torch.Tensor, gamma: float, bs: int, lo: int, hi: int) -> torch.Tensor:
    sorted_p = torch.sort(profile, dim=-1, descending=True).values
    count = (torch.cumsum(sorted_p, dim=-1) <= gamma).sum(-1) + 1
    return torch.clamp(count // bs + 1, min=lo, max=hi)


def _pool_blocks(x: torch.Tensor, bs: int, nb: int) -> torch.Tensor:
    """Sum-pool the last dim (length L) into ``nb`` blocks of ``bs``."""
    pad = nb * bs - x.shape[-1]
    return torch.nn.functional.pad(x, (0, pad)).view(*x.shape[:-1], nb, bs).sum(-1)


def _mean_pool_tokens(x: torch.Tensor, bs: int, nb: int) -> torch.Tensor:
    """``[B, H, L, D]`` -> ``[B, H, nb, D]`` fp32 block means (partial last block: its own
    count). Sums in fp32 straight from ``x``'s dtype (no fp32 copy of ``x``)."""
    B, H, L, D = x.shape
    n_full = L // bs
    parts = []
    if n_full:
        parts.append(x[:, :, :n_full * bs].reshape(B, H, n_full, bs, D).sum(3, dtype=torch.float32) / bs)
    if L > n_full * bs:
        parts.append(x[:, :, n_full * bs:].sum(2, keepdim=True, dtype=torch.float32) / (L - n_full * bs))
    return torch.cat(parts, dim=2) if len(parts) > 1 else parts[0]


def _top_blocks(score: torch.Tensor, n: torch.Tensor, forced: int) -> torch.Tensor:
    """Bool ``[B, H, nb]``: the top ``n[b, h]`` blocks of ``score``, block ``forced`` first."""
    nb = score.shape[-1]
    score = score.clone()
    score[..., forced] = float("inf")
    order = torch.sort(score, dim=-1, descending=True, stable=True).indices
    take = torch.arange(nb, device=score.device).view(1, 1, nb) < n.unsqueeze(-1)
    return torch.zeros_like(take).scatter(-1, order, take)


def js_distance(p: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """sqrt of the Jensen-Shannon divergence (natural log) along the last dim."""
    m = 0.5 * (p + r)

    def kl(a, b):
        return torch.where(a > 0, a * (torch.log(a.clamp_min(1e-30)) - torch.log(b.clamp_min(1e-30))),
                           torch.zeros_like(a)).sum(-1)

    return torch.sqrt(torch.clamp(0.5 * kl(p, m) + 0.5 * kl(r, m), min=0.0))


def coverage_blocks(block_probs: torch.Tensor, gamma: float) -> torch.Tensor:
    """Bool mask of the smallest set of entries (by descending value, stable) of each
    ``[..., n, n]`` matrix whose sum reaches ``gamma`` of the matrix total."""
    shape = block_probs.shape
    flat = block_probs.reshape(*shape[:-2], -1)
    vals, order = torch.sort(flat, dim=-1, descending=True, stable=True)
    csum = torch.cumsum(vals, dim=-1)
    need = gamma * csum[..., -1:]
    take = (csum - vals) < need            # mass before this entry still short of the target
    keep = torch.zeros_like(take).scatter(-1, order, take)
    return keep.view(shape)


def select_from_profiles(q: torch.Tensor, k: torch.Tensor, vertical: torch.Tensor, slash: torch.Tensor,
                         params: FlexPrefillParams, scale: float) -> Tuple[BlockPattern, FlexPrefillInfo]:
    """Steps 3-6 from the two profiles (shared by the reference and the Triton path)."""
    B, Hq, L, D = q.shape
    Hkv = k.shape[1]
    G = Hq // Hkv
    bs = params.block_size
    nb = -(-L // bs)
    nq = min(bs, L)
    lo = -(-params.min_budget // bs)
    hi = nb if params.max_budget is None else max(lo, -(-params.max_budget // bs))
    lo = min(lo, hi)
    n_v = _budget_blocks(vertical, params.gamma, bs, lo, hi)
    n_s = _budget_blocks(slash, params.gamma, bs, lo, hi)

    kpool = _mean_pool_tokens(k, bs, nb)                                    # [B, Hkv, nb, D]
    kpool_q = kpool.repeat_interleave(G, dim=1)                             # [B, Hq, nb, D] (small)
    q_last = q[:, :, L - nq:].float().mean(dim=2)                           # [B, Hq, D]
    a_bar = torch.softmax(torch.einsum("bhd,bhnd->bhn", q_last, kpool_q) * scale, dim=-1)
    a_hat = _pool_blocks(vertical, bs, nb)
    dist = js_distance(a_bar, a_hat)
    query_aware = dist < params.tau
    n_v = torch.where(query_aware, torch.full_like(n_v, lo), n_v)
    n_s = torch.where(query_aware, torch.full_like(n_s, lo), n_s)

    vsel = _top_blocks(a_hat, n_v, forced=0)                                # [B, H, nb] key blocks
    ssel = _top_blocks(_pool_blocks(slash, bs, nb), n_s, forced=0)          # [B, H, nb] distance blocks
    causal = causal_block_grid(nb, nb, q.device)
    diff = (torch.arange(nb, device=q.device).view(nb, 1) - torch.arange(nb, device=q.device).view(1, nb))
    mask = vsel.unsqueeze(-2) | ssel.gather(-1, diff.clamp(min=0).reshape(1, 1, -1).expand(B, Hq, -1)).view(B, Hq, nb, nb)
    mask = mask & causal

    if bool(query_aware.any()):
        bidx, hidx = torch.nonzero(query_aware, as_tuple=True)
        qpool = _mean_pool_tokens(q, bs, nb)[bidx, hidx]                     # [n_qa, nb, D]
        logits = torch.einsum("nrd,ncd->nrc", qpool, kpool[bidx, hidx // G]) * scale
        probs = torch.softmax(logits.masked_fill(~causal, float("-inf")), dim=-1)
        mask[bidx, hidx] |= coverage_blocks(probs, params.gamma) & causal
    mask[..., :, 0] = True
    mask |= torch.eye(nb, dtype=torch.bool, device=q.device)
    info = FlexPrefillInfo(query_aware, dist, n_v, n_s)
    return BlockPattern.from_mask(mask, bs, L), info


def flexprefill_pattern_naive(q: torch.Tensor, k: torch.Tensor, params: FlexPrefillParams = FlexPrefillParams(),
                              *, scale: Optional[float] = None) -> Tuple[BlockPattern, FlexPrefillInfo]:
    """Estimate the FlexPrefill block pattern of ``q [B, Hq, L, D]``, ``k [B, Hkv, L, D]``.

    Returns ``(pattern, info)``: a :class:`BlockPattern` with one row list per query head,
    and the per-head decisions (:class:`FlexPrefillInfo`).
    """
    return pattern_from(profiles_naive, q, k, params, scale)


def pattern_from(profiles, q: torch.Tensor, k: torch.Tensor, params: FlexPrefillParams,
                 scale: Optional[float]) -> Tuple[BlockPattern, FlexPrefillInfo]:
    """The whole estimation with ``profiles`` (:func:`profiles_naive` or its Triton twin) for
    steps 1-2: the dense shortcut for short inputs, the profiles of the last block of queries,
    then the shared block selection."""
    B, Hq, L, D = q.shape
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    if params.runs_dense(L):
        return BlockPattern.dense(B, Hq, L, params.block_size, q.device), FlexPrefillInfo(None, None, None, None)
    vertical, slash = profiles(q, k, min(params.block_size, L), scale)
    return select_from_profiles(q, k, vertical, slash, params, scale)
