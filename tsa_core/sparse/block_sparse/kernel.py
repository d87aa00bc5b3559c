"""Triton block-sparse causal attention, same contract as :func:`block_sparse_attention_naive`.

One program per (query head, query tile of ``BLOCK_M`` rows, batch element); the head is the
fastest grid axis so the ``G`` query heads of a KV head run side by side and share K/V in
L2, and query tiles are issued last-first (the causally longest rows start early). A
program reads its row of the pattern (``kv_cnt`` active key blocks listed in ``kv_idx``),
walks those blocks in ``BLOCK_N``-key tiles with an online softmax in base 2 (the softmax
scale is folded into ``qk_scale = scale * log2(e)``): all blocks left of the diagonal in an
unmasked loop, the diagonal block (always the last list entry, if listed) in a masked one. Blocks that are not listed are never loaded. GQA is pointer
arithmetic: query head ``h`` reads KV head ``h // G``.

If the pattern has key *columns* (MInference verticals), a second loop gathers them
``BLOCK_N`` at a time, skipping the ones inside an active block of the row.

Tiles: ``BLOCK_M`` and ``BLOCK_N`` divide the pattern's ``block_size``. On a GPU they are
autotuned (keyed on block size, head dim, group size; never on the length); under the
interpreter one fixed small config is used.
"""
from __future__ import annotations

import functools
import math
from typing import Optional

import torch
import triton
import triton.language as tl

from tsa_core._checks import check_qkv, check_triton_device, interpreter_on
from tsa_core._triton_utils import next_pow2, upcast_loads
from tsa_core.sparse.block_sparse.naive import check_pattern
from tsa_core.sparse.pattern import BlockPattern

_LOG2E = 1.4426950408889634
_NEG_BIG = tl.constexpr(-1.0e30)  # finite running-max start (avoids inf - inf = NaN)


@triton.jit
def _attend_blocks(acc, m_i, l_i, q, k_base, v_base, idx_row, it_lo, it_hi, offs_m, offs_n, offs_d, mask_d,
                   stride_kl, stride_kd, stride_vl, stride_vd, L, qk_scale,
                   BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr,
                   EVEN_D: tl.constexpr, UPCAST: tl.constexpr):
    """Online softmax over listed key tiles ``it_lo..it_hi-1`` (``BLOCK_SIZE // BLOCK_N`` tiles
    per listed block). ``MASKED``: causal + length masks (the diagonal block); otherwise the
    tiles are strictly left of the diagonal, hence full and unmasked."""
    N_SUB: tl.constexpr = BLOCK_SIZE // BLOCK_N
    for it in range(it_lo, it_hi):
        kb = tl.load(idx_row + it // N_SUB)
        offs_k = kb * BLOCK_SIZE + (it % N_SUB) * BLOCK_N + offs_n
        k_ptrs = k_base + offs_k[None, :].to(tl.int64) * stride_kl + offs_d[:, None] * stride_kd
        v_ptrs = v_base + offs_k[:, None].to(tl.int64) * stride_vl + offs_d[None, :] * stride_vd
        if MASKED:
            mask_k = offs_k < L
            kt = tl.load(k_ptrs, mask=mask_d[:, None] & mask_k[None, :], other=0.0)   # [BLOCK_D, BLOCK_N]
            vt = tl.load(v_ptrs, mask=mask_k[:, None] & mask_d[None, :], other=0.0)   # [BLOCK_N, BLOCK_D]
        elif EVEN_D:
            kt = tl.load(k_ptrs)
            vt = tl.load(v_ptrs)
        else:
            kt = tl.load(k_ptrs, mask=mask_d[:, None], other=0.0)
            vt = tl.load(v_ptrs, mask=mask_d[None, :], other=0.0)
        if UPCAST:
            kt = kt.to(tl.float32)
            vt = vt.to(tl.float32)
        s = tl.dot(q, kt)                                                           # [BLOCK_M, BLOCK_N]
        if MASKED:
            s = tl.where(offs_k[None, :] <= offs_m[:, None], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1) * qk_scale)                      # log2 units
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s * qk_scale - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = tl.dot(p.to(vt.dtype), vt, acc * alpha[:, None])
        m_i = m_new
    return acc, m_i, l_i


@triton.jit
def _bsa_fwd_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, idx_ptr, cnt_ptr, cols_ptr, col_cnt_ptr, bmask_ptr,
    stride_qb, stride_qh, stride_ql, stride_qd,
    stride_kb, stride_kh, stride_kl, stride_kd,
    stride_vb, stride_vh, stride_vl, stride_vd,
    stride_ob, stride_oh, stride_ol, stride_od,
    L, D, n_qb, max_blocks, max_cols, qk_scale,
    GROUP: tl.constexpr, BLOCK_SIZE: tl.constexpr, BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr,
    HAS_COLS: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    N_SUB: tl.constexpr = BLOCK_SIZE // BLOCK_N
    pid_h = tl.program_id(0)
    tile = tl.num_programs(1) - 1 - tl.program_id(1)       # longest rows first
    pid_b = tl.program_id(2)
    H = tl.num_programs(0)
    kv_h = pid_h // GROUP
    q_block = (tile * BLOCK_M) // BLOCK_SIZE
    row = (pid_b * H + pid_h) * n_qb + q_block                # flat pattern row
    start_m = tile * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < L
    mask_d = offs_d < D
    b64 = pid_b.to(tl.int64)
    q_ptrs = (q_ptr + b64 * stride_qb + pid_h * stride_qh
              + offs_m[:, None].to(tl.int64) * stride_ql + offs_d[None, :] * stride_qd)
    q = tl.load(q_ptrs, mask=mask_m[:, None] & mask_d[None, :], other=0.0)     # [BLOCK_M, BLOCK_D]
    if UPCAST:
        q = q.to(tl.float32)
    k_base = k_ptr + b64 * stride_kb + kv_h * stride_kh
    v_base = v_ptr + b64 * stride_vb + kv_h * stride_vh
    m_i = tl.full([BLOCK_M], _NEG_BIG, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

    # The list is ascending and causal (BlockPattern.from_mask drops blocks above the
    # diagonal), so only its last entry can be the diagonal block: every other block is
    # attended without masks, the diagonal one (if listed) in a second, masked loop.
    cnt = tl.load(cnt_ptr + row)
    idx_row = idx_ptr + row.to(tl.int64) * max_blocks
    last = tl.load(idx_row + tl.maximum(cnt - 1, 0))
    n_full = cnt - ((cnt > 0) & (last == q_block)).to(tl.int32)
    acc, m_i, l_i = _attend_blocks(acc, m_i, l_i, q, k_base, v_base, idx_row, 0, n_full * N_SUB,
                                   offs_m, offs_n, offs_d, mask_d, stride_kl, stride_kd, stride_vl, stride_vd,
                                   L, qk_scale, BLOCK_SIZE, BLOCK_N, False, EVEN_D, UPCAST)
    acc, m_i, l_i = _attend_blocks(acc, m_i, l_i, q, k_base, v_base, idx_row, n_full * N_SUB, cnt * N_SUB,
                                   offs_m, offs_n, offs_d, mask_d, stride_kl, stride_kd, stride_vl, stride_vd,
                                   L, qk_scale, BLOCK_SIZE, BLOCK_N, True, EVEN_D, UPCAST)

    if HAS_COLS:
        n_cols = tl.load(col_cnt_ptr + row)
        cols_row = cols_ptr + ((pid_b * H + pid_h) * max_cols).to(tl.int64)
        bmask_row = bmask_ptr + row.to(tl.int64) * n_qb
        for c0 in range(0, n_cols, BLOCK_N):
            offs_c = c0 + offs_n
            mask_c = offs_c < n_cols
            cols = tl.load(cols_row + offs_c, mask=mask_c, other=0)                  # [BLOCK_N]
            in_block = tl.load(bmask_row + cols // BLOCK_SIZE, mask=mask_c, other=1)
            use = mask_c & (in_block == 0)
            kt = tl.load(k_base + cols[None, :].to(tl.int64) * stride_kl + offs_d[:, None] * stride_kd,
                         mask=mask_d[:, None] & use[None, :], other=0.0)          # [BLOCK_D, BLOCK_N]
            vt = tl.load(v_base + cols[:, None].to(tl.int64) * stride_vl + offs_d[None, :] * stride_vd,
                         mask=use[:, None] & mask_d[None, :], other=0.0)          # [BLOCK_N, BLOCK_D]
            if UPCAST:
                kt = kt.to(tl.float32)
                vt = vt.to(tl.float32)
            s = tl.dot(q, kt)
            s = tl.where(use[None, :] & (cols[None, :] <= offs_m[:, None]), s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1) * qk_scale)
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s * qk_scale - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            acc = tl.dot(p.to(vt.dtype), vt, acc * alpha[:, None])
            m_i = m_new

    out = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]          # rows that saw nothing -> 0
    o_ptrs = (o_ptr + b64 * stride_ob + pid_h * stride_oh
              + offs_m[:, None].to(tl.int64) * stride_ol + offs_d[None, :] * stride_od)
    tl.store(o_ptrs, out.to(o_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_d[None, :])


_GPU_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
    for bm, bn, w, s in [(128, 64, 8, 3), (128, 128, 8, 2), (128, 64, 4, 3), (128, 128, 8, 3),
                         (64, 64, 4, 3), (128, 64, 8, 4), (64, 128, 4, 2)]
]


def _prune(configs, named_args, **kwargs):
    """The tiles that fit the pattern's blocks; for heads wider than 128 (Gemma-3: 256) also a
    small two-stage tile, since the wide ones need more shared memory than a Hopper SM has at
    D = 256 (a config that does not fit is skipped by the autotuner, so one must)."""
    bs = kwargs.get("BLOCK_SIZE", named_args.get("BLOCK_SIZE"))
    block_d = kwargs.get("BLOCK_D", named_args.get("BLOCK_D", 0))
    kept = [c for c in configs if c.kwargs["BLOCK_M"] <= bs and c.kwargs["BLOCK_N"] <= bs]
    if block_d > 128 or not kept:
        kept.append(triton.Config({"BLOCK_M": min(bs, 64), "BLOCK_N": min(bs, 64 if block_d <= 128 else 32)},
                                  num_warps=4, num_stages=2))
    return kept


@functools.lru_cache(maxsize=1)
def _autotuned():
    return triton.autotune(configs=_GPU_CONFIGS, key=["BLOCK_SIZE", "BLOCK_D", "GROUP", "HAS_COLS"],
                           prune_configs_by={"early_config_prune": _prune})(_bsa_fwd_kernel)


def block_sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: BlockPattern,
                           *, scale: Optional[float] = None, out: Optional[torch.Tensor] = None,
                           block_m: Optional[int] = None, block_n: Optional[int] = None,
                           num_warps: Optional[int] = None, num_stages: Optional[int] = None) -> torch.Tensor:
    """Triton twin of :func:`block_sparse_attention_naive` (same contract).

    ``out``: optional preallocated ``[B, Hq, L, D]`` output. ``block_m``/``block_n``/
    ``num_warps``/``num_stages`` pin one tile configuration (all four, or none for the
    autotuner on a GPU; under the interpreter a small fixed config is used).
    """
    B, Hq, Hkv, L, D = check_qkv(q, k, v)
    check_pattern(pattern, B, Hq, L, q.device)
    check_triton_device(q, "block_sparse_attention")
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    bs = pattern.block_size
    if out is None:
        out = torch.empty_like(q)
    has_cols = pattern.cols is not None
    kv_idx, kv_cnt = pattern.kv_idx.contiguous(), pattern.kv_cnt.contiguous()   # flat row indexing
    args = (q, k, v, out, kv_idx, kv_cnt,
            pattern.cols.contiguous() if has_cols else kv_cnt,
            pattern.col_cnt.contiguous() if has_cols else kv_cnt,
            pattern.block_mask.contiguous().view(torch.uint8) if has_cols else kv_cnt,
            *q.stride(), *k.stride(), *v.stride(), *out.stride(),
            L, D, pattern.kv_cnt.shape[-1], pattern.kv_idx.shape[-1],
            pattern.cols.shape[-1] if has_cols else 0, scale * _LOG2E)
    block_d = max(16, next_pow2(D))
    meta = dict(GROUP=Hq // Hkv, BLOCK_SIZE=bs, BLOCK_D=block_d, EVEN_D=block_d == D, HAS_COLS=has_cols,
                UPCAST=upcast_loads(q.dtype))
    if block_m is not None or interpreter_on() or q.device.type != "cuda":
        bm = block_m or min(bs, 32)
        bn = block_n or min(bs, 32)
        if bs % bm or bs % bn:
            raise ValueError(f"block_m ({bm}) and block_n ({bn}) must divide block_size ({bs})")
        grid = (Hq, triton.cdiv(L, bm), B)
        _bsa_fwd_kernel[grid](*args, **meta, BLOCK_M=bm, BLOCK_N=bn,
                              num_warps=num_warps or 4, num_stages=num_stages or 2)
    else:
        grid = lambda m: (Hq, triton.cdiv(L, m["BLOCK_M"]), B)  # noqa: E731
        _autotuned()[grid](*args, **meta)
    return out
