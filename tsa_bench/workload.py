"""Synthetic Q/K/V with realistic attention structure, for benchmarks and demos.

Random Q/K give near-uniform attention (every token matters a little), so a coverage rule
prunes almost nothing. Real long-context layers look different: a few *sink* tokens take a
large share, recent tokens get more mass than old ones, and the rest is heavy-tailed, with a
small set of salient tokens standing out. This generator builds that directly in logit
space. For KV head ``g`` with unit direction ``u_g``:

* each key ``j`` gets a logit bonus ``b_j = tail_L * (rho * z_j + sqrt(1 - rho^2) * z_gj)`` with
  ``z ~ N(0, 1)`` shared by all KV heads (``z_j``) or their own (``z_gj``); so its weight is
  ~ ``exp(b_j)``, a log-normal tail. ``tail_L = tail + tail_growth * log2(L / 8192)`` is the
  knob (0 gives uniform attention); it grows with the length because long contexts are
  sparser (PAPER.md Table 3); ``rho = shared`` says how much the heads agree on which tokens
  matter (0: independent heads, whose average is far less peaked than any one head);
  plus ``sink_logit`` on the first ``sinks`` tokens, plus ``local * exp(-(L-1-j)/local_span)``
  for recency;
* ``k_j = xi_j + (b_j * sqrt(D) / beta) u_g`` and every query of the group
  ``q_i = xi_i + beta * u_g``, so ``q_i . k_j / sqrt(D) ~ b_j + N(0, 1) + small cross terms``.

Query heads of a group differ through their own noise; values are plain Gaussian.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Tuple

import torch


@dataclass(frozen=True)
class Workload:
    """Parameters of the synthetic workload (recorded in every result row)."""

    tail: float = 3.4
    tail_growth: float = 0.35
    shared: float = 0.8
    sinks: int = 4
    sink_logit: float = 8.0
    local: float = 3.0
    local_span: int = 256
    beta: float = 4.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.tail < 0:
            raise ValueError(f"tail must be >= 0, got {self.tail}")
        if not 0.0 <= self.shared <= 1.0:
            raise ValueError(f"shared must be in [0, 1], got {self.shared}")
        if self.sinks < 0 or self.local_span < 1 or self.beta <= 0:
            raise ValueError("sinks must be >= 0, local_span >= 1 and beta > 0")

    def as_dict(self):
        return asdict(self)


def synthetic_qkv(batch: int, heads: int, kv_heads: int, seq_len: int, head_dim: int, *,
                  workload: Workload = Workload(), device="cpu",
                  dtype=torch.float32) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return ``q [B, Hq, L, D]``, ``k, v [B, Hkv, L, D]`` following :class:`Workload`."""
    if heads % kv_heads != 0:
        raise ValueError(f"heads ({heads}) must be a multiple of kv_heads ({kv_heads})")
    device = torch.device(device)
    gen = torch.Generator(device=device).manual_seed(workload.seed)
    B, Hq, Hkv, L, D, G = batch, heads, kv_heads, seq_len, head_dim, heads // kv_heads
    f32 = dict(device=device, dtype=torch.float32, generator=gen)
    u = torch.randn(B, Hkv, 1, D, **f32)
    u = u / u.norm(dim=-1, keepdim=True)
    tail = max(0.0, workload.tail + workload.tail_growth * math.log2(L / 8192))
    rho = workload.shared
    bonus = tail * (rho * torch.randn(B, 1, L, **f32) + math.sqrt(1 - rho * rho) * torch.randn(B, Hkv, L, **f32))
    pos = torch.arange(L, device=device, dtype=torch.float32)
    bonus = bonus + workload.local * torch.exp(-(L - 1 - pos) / workload.local_span)
    bonus[..., : workload.sinks] += workload.sink_logit
    k = torch.randn(B, Hkv, L, D, **f32).add_((bonus * (math.sqrt(D) / workload.beta)).unsqueeze(-1) * u)
    k = k.to(dtype)
    del bonus
    q = torch.empty(B, Hq, L, D, device=device, dtype=dtype)
    for h in range(Hq):   # one head at a time keeps the fp32 peak at one head
        q[:, h] = (torch.randn(B, L, D, **f32) + workload.beta * u[:, h // G]).to(dtype)
    v = torch.randn(B, Hkv, L, D, **f32).to(dtype)
    return q, k, v
