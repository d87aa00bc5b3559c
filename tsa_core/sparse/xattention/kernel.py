"""XAttention block scores in Triton (same contract as :func:`block_scores_naive`).

Grid (Hq, query-group tiles, B); each program owns ``BLOCK_G`` query groups (a whole
number of blocks) and walks the causal key-group tiles twice:

1. online softmax statistics (base 2) of its group rows;
2. recompute, normalise, and sum the probabilities of every ``(bs/S) x (bs/S)`` tile into
   the block score ``A[qb, kb]``.

The antidiagonal score of a ``[BLOCK_G, BLOCK_G]`` group tile is ``S`` small GEMMs:
``sum_s Q_s K_s^T`` with ``Q_s`` the rows ``i S + S-1-s`` and ``K_s`` the rows ``j S + s``
(strided loads, no reshaped copy of Q or K). Recomputing instead of storing the ``[L/S,
L/S]`` logits trades 2x the (small) GEMM work for no O(L^2 / S^2) memory. GQA-native.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import triton
import triton.language as tl

from tsa_core._checks import check_qkv, check_triton_device, interpreter_on
from tsa_core._triton_utils import next_pow2, upcast_loads
from tsa_core.sparse.pattern import BlockPattern
from tsa_core.sparse.xattention.naive import XAttentionParams, select_blocks

_LOG2E = 1.4426950408889634
_NEG_BIG = tl.constexpr(-1.0e30)


@triton.jit
def _group_logits(q_base, k_base, offs_i, offs_j, offs_d, mask_d, stride_ql, stride_kl, L,
                  S: tl.constexpr, BLOCK_G: tl.constexpr, UPCAST: tl.constexpr):
    acc = tl.zeros([BLOCK_G, BLOCK_G], tl.float32)
    for s in range(0, S):
        q_pos = offs_i * S + (S - 1 - s)
        k_pos = offs_j * S + s
        qs = tl.load(q_base + q_pos[:, None].to(tl.int64) * stride_ql + offs_d[None, :],
                     mask=(q_pos[:, None] < L) & mask_d[None, :], other=0.0)       # [BLOCK_G, BLOCK_D]
        ks = tl.load(k_base + k_pos[None, :].to(tl.int64) * stride_kl + offs_d[:, None],
                     mask=(k_pos[None, :] < L) & mask_d[:, None], other=0.0)       # [BLOCK_D, BLOCK_G]
        if UPCAST:
            qs = qs.to(tl.float32)
            ks = ks.to(tl.float32)
        acc += tl.dot(qs, ks)
    return acc


@triton.jit
def _xattn_block_kernel(
    q_ptr, k_ptr, a_ptr,
    stride_qb, stride_qh, stride_ql,
    stride_kb, stride_kh, stride_kl,
    L, Lg, D, nb, qk_scale,
    GROUP: tl.constexpr, S: tl.constexpr, GPB: tl.constexpr, BLOCK_G: tl.constexpr,
    BLOCK_D: tl.constexpr, UPCAST: tl.constexpr,
):
    NBT: tl.constexpr = BLOCK_G // GPB                   # blocks per tile edge
    pid_h = tl.program_id(0)
    pid_t = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    kv_h = pid_h // GROUP
    offs_i = pid_t * BLOCK_G + tl.arange(0, BLOCK_G)   # query groups
    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    q_base = q_ptr + pid_b * stride_qb + pid_h * stride_qh
    k_base = k_ptr + pid_b * stride_kb + kv_h * stride_kh
    m_i = tl.full([BLOCK_G], _NEG_BIG, tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    for jt in range(0, pid_t + 1):                       # causal key-group tiles
        offs_j = jt * BLOCK_G + offs_g
        s = _group_logits(q_base, k_base, offs_i, offs_j, offs_d, mask_d, stride_ql, stride_kl, L,
                          S, BLOCK_G, UPCAST) * qk_scale
        s = tl.where((offs_j[None, :] <= offs_i[:, None]) & (offs_j[None, :] < Lg), s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        l_i = l_i * tl.exp2(m_i - m_new) + tl.sum(tl.exp2(s - m_new[:, None]), axis=1)
        m_i = m_new
    inv_l = tl.where(offs_i < Lg, 1.0 / l_i, 0.0)
    offs_qb = pid_t * NBT + tl.arange(0, NBT)
    a_row = a_ptr + ((pid_b * tl.num_programs(0) + pid_h) * nb + offs_qb[:, None].to(tl.int64)) * nb
    for jt in range(0, pid_t + 1):
        offs_j = jt * BLOCK_G + offs_g
        s = _group_logits(q_base, k_base, offs_i, offs_j, offs_d, mask_d, stride_ql, stride_kl, L,
                          S, BLOCK_G, UPCAST) * qk_scale
        visible = (offs_j[None, :] <= offs_i[:, None]) & (offs_j[None, :] < Lg)
        p = tl.where(visible, tl.exp2(s - m_i[:, None]) * inv_l[:, None], 0.0)   # [BLOCK_G, BLOCK_G]
        blk = tl.sum(tl.sum(tl.reshape(p, (NBT, GPB, NBT, GPB)), axis=3), axis=1)  # [NBT, NBT]
        offs_kb = jt * NBT + tl.arange(0, NBT)
        tl.store(a_row + offs_kb[None, :], blk, mask=(offs_qb[:, None] < nb) & (offs_kb[None, :] < nb))


def block_scores_triton(q: torch.Tensor, k: torch.Tensor, params: XAttentionParams, scale: float,
                        block_g: Optional[int] = None) -> torch.Tensor:
    """Triton twin of :func:`block_scores_naive`: ``A [B, Hq, nb, nb]`` fp32."""
    B, Hq, Hkv, L, D = check_qkv(q, k, k)
    check_triton_device(q, "xattention block_scores_triton")
    if q.stride(-1) != 1 or k.stride(-1) != 1:
        raise ValueError("block_scores_triton needs q and k contiguous in the head dim")
    S, bs = params.stride, params.block_size
    gpb = bs // S
    nb = triton.cdiv(L, bs)
    Lg = triton.cdiv(L, S)
    if block_g is None:
        block_g = 32 if interpreter_on() else 64
    block_g = max(block_g, gpb, 16)
    a = torch.zeros((B, Hq, nb, nb), device=q.device, dtype=torch.float32)
    grid = (Hq, triton.cdiv(Lg, block_g), B)
    _xattn_block_kernel[grid](
        q, k, a, q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        L, Lg, D, nb, scale / S * _LOG2E,
        GROUP=Hq // Hkv, S=S, GPB=gpb, BLOCK_G=block_g, BLOCK_D=max(16, next_pow2(D)),
        UPCAST=upcast_loads(q.dtype), num_warps=4, num_stages=2)
    return a


def xattention_pattern_triton(q: torch.Tensor, k: torch.Tensor, params: XAttentionParams = XAttentionParams(),
                              *, scale: Optional[float] = None) -> BlockPattern:
    """Triton twin of :func:`xattention_pattern_naive` (same contract)."""
    B, Hq, L, D = q.shape
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    scores = block_scores_triton(q, k, params, scale)
    return BlockPattern.from_mask(select_blocks(scores, params.threshold), params.block_size, L)
