"""Triton token selection, same signatures and semantics as :mod:`tsa_core.selection.naive`.

``pool_scores_triton``: one program per (block of tokens, batch) pools every head and
accumulates the head sum, so the scores are read once.

``select_topk_triton``: an exact per-row radix select of the ``keep[b]``-th largest pooled
score (non-negative float32 compares like its int32 bit pattern; three passes of 11/11/10-bit
digits, each a histogram kernel over all blocks plus a tiny pick kernel), then a two-kernel
stream compaction that writes the kept positions (ascending), the window and the dropped
positions (ascending). No sort, no host synchronisation; ties at the threshold go to the
lowest token indices, as in the reference.
"""
from __future__ import annotations

from typing import Tuple

import torch
import triton
import triton.language as tl

from tsa_core._checks import check_triton_device
from tsa_core._triton_utils import next_pow2
from tsa_core.selection.naive import _check_scores, check_keep, check_pool_kernel

# (shift, digit bits) of the radix passes over the 31 value bits of a non-negative float32
_PASSES = ((21, 11), (10, 11), (0, 10))


@triton.jit
def _pool_kernel(scores_ptr, pooled_ptr, layer_ptr, H, P,
                 KERNEL: tl.constexpr, BLOCK: tl.constexpr):
    pid_t = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    offs = pid_t * BLOCK + tl.arange(0, BLOCK)
    mask = offs < P
    acc_layer = tl.zeros([BLOCK], tl.float32)
    for h in range(0, H):
        row = (pid_b * H + h) * P
        acc = tl.zeros([BLOCK], tl.float32)
        for t in tl.static_range(KERNEL):
            src = offs + (t - KERNEL // 2)
            acc += tl.load(scores_ptr + row + src, mask=mask & (src >= 0) & (src < P), other=0.0)
        acc = acc / KERNEL
        tl.store(pooled_ptr + row + offs, acc, mask=mask)
        acc_layer += acc
    tl.store(layer_ptr + pid_b * P + offs, acc_layer, mask=mask)


def pool_scores_triton(scores: torch.Tensor, kernel: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Triton twin of :func:`tsa_core.selection.naive.pool_scores_naive`."""
    _check_scores(scores)
    check_pool_kernel(kernel)
    check_triton_device(scores, "pool_scores_triton")
    scores = scores.contiguous()
    B, H, P = scores.shape
    pooled = torch.empty_like(scores)
    layer = torch.empty((B, P), device=scores.device, dtype=torch.float32)
    block = min(1024, max(16, next_pow2(P)))
    _pool_kernel[(triton.cdiv(P, block), B)](scores, pooled, layer, H, P, KERNEL=kernel, BLOCK=block)
    return pooled, layer


@triton.jit
def _radix_hist_kernel(pooled_ptr, prefix_ptr, hist_ptr, P, hi_mask, shift,
                       BLOCK: tl.constexpr, RADIX: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)       # flattened (b, h)
    pid_t = tl.program_id(1)
    offs = pid_t * BLOCK + tl.arange(0, BLOCK)
    mask = offs < P
    x = tl.load(pooled_ptr + row * P + offs, mask=mask, other=0.0)             # [BLOCK] f32
    bits = x.to(tl.int32, bitcast=True).to(tl.int64)
    prefix = tl.load(prefix_ptr + row)
    match = mask & ((bits & hi_mask) == prefix)
    digit = ((bits >> shift) & (RADIX - 1)).to(tl.int32)
    counts = tl.histogram(digit, RADIX, mask=match)                              # [RADIX]
    tl.atomic_add(hist_ptr + row * RADIX + tl.arange(0, RADIX), counts)


@triton.jit
def _radix_pick_kernel(hist_ptr, prefix_ptr, need_ptr, keep_ptr, H, shift,
                       RADIX: tl.constexpr, FIRST: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    digits = tl.arange(0, RADIX)
    hist = tl.load(hist_ptr + row * RADIX + digits)                              # [RADIX] i32
    if FIRST:
        need = tl.load(keep_ptr + row // H).to(tl.int32)    # the k of this row's batch element
    else:
        need = tl.load(need_ptr + row)
    # count of elements whose digit is >= d
    ge = tl.sum(hist) - tl.cumsum(hist, axis=0) + hist
    d_star = tl.max(tl.where(ge >= need, digits, 0))
    above = tl.sum(tl.where(digits > d_star, hist, 0))
    prefix = tl.load(prefix_ptr + row)
    tl.store(prefix_ptr + row, prefix | (d_star.to(tl.int64) << shift))
    tl.store(need_ptr + row, need - above)


@triton.jit
def _compact_count_kernel(pooled_ptr, thr_ptr, cnt_gt_ptr, cnt_eq_ptr, P, L, n_blocks,
                          BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    pid_t = tl.program_id(1)
    offs = pid_t * BLOCK + tl.arange(0, BLOCK)
    in_prefix = offs < P
    x = tl.load(pooled_ptr + row * P + offs, mask=in_prefix, other=0.0)
    bits = x.to(tl.int32, bitcast=True).to(tl.int64)
    thr = tl.load(thr_ptr + row)
    gt = ((offs >= P) & (offs < L)) | (in_prefix & (bits > thr))
    eq = in_prefix & (bits == thr)
    tl.store(cnt_gt_ptr + row * n_blocks + pid_t, tl.sum(gt.to(tl.int32)))
    tl.store(cnt_eq_ptr + row * n_blocks + pid_t, tl.sum(eq.to(tl.int32)))


@triton.jit
def _compact_write_kernel(pooled_ptr, thr_ptr, need_ptr, keep_ptr, cnt_gt_ptr, cnt_eq_ptr,
                          order_ptr, H, P, L, W, n_blocks,
                          BLOCK: tl.constexpr, BLOCK_C: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    pid_t = tl.program_id(1)
    b = row // H
    # exclusive prefix over the blocks before this one
    offs_c = tl.arange(0, BLOCK_C)
    before = offs_c < pid_t
    gt_before = tl.sum(tl.load(cnt_gt_ptr + row * n_blocks + offs_c, mask=before, other=0))
    eq_before = tl.sum(tl.load(cnt_eq_ptr + row * n_blocks + offs_c, mask=before, other=0))
    need = tl.load(need_ptr + row)                       # ties to take at the threshold
    n_kept = tl.load(keep_ptr + b) + W                   # compressed length of this row
    kept_before = gt_before + tl.minimum(eq_before, need)
    dropped_before = pid_t * BLOCK - kept_before
    offs = pid_t * BLOCK + tl.arange(0, BLOCK)
    in_prefix = offs < P
    valid = offs < L
    x = tl.load(pooled_ptr + row * P + offs, mask=in_prefix, other=0.0)
    bits = x.to(tl.int32, bitcast=True).to(tl.int64)
    thr = tl.load(thr_ptr + row)
    gt = (valid & (offs >= P)) | (in_prefix & (bits > thr))
    eq = in_prefix & (bits == thr)
    eq_rank = eq_before + tl.cumsum(eq.to(tl.int32), axis=0) - 1
    keep = gt | (eq & (eq_rank < need))
    drop = valid & (keep == 0)
    kept_slot = kept_before + tl.cumsum(keep.to(tl.int32), axis=0) - 1
    drop_slot = n_kept + dropped_before + tl.cumsum(drop.to(tl.int32), axis=0) - 1
    slot = tl.where(keep, kept_slot, drop_slot)
    tl.store(order_ptr + row * L + slot, offs.to(tl.int32), mask=valid)


def select_topk_triton(pooled: torch.Tensor, keep: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Triton twin of :func:`tsa_core.selection.naive.select_topk_naive` (same contract)."""
    check_keep(pooled, keep, seq_len)
    check_triton_device(pooled, "select_topk_triton")
    pooled = pooled.contiguous()
    B, H, P = pooled.shape
    L, W, R = seq_len, seq_len - P, B * H
    dev = pooled.device
    block = min(2048, max(16, next_pow2(P)))
    n_prefix_blocks = triton.cdiv(P, block)
    # radix select: prefix = bit pattern of the k-th largest, need = ties still to take
    keep = keep.contiguous()
    prefix = torch.zeros((R,), dtype=torch.int64, device=dev)
    need = torch.empty((R,), dtype=torch.int32, device=dev)
    hist = torch.zeros((len(_PASSES), R, 1 << max(b for _, b in _PASSES)), dtype=torch.int32, device=dev)
    for p, (shift, bits) in enumerate(_PASSES):
        hi_mask = -(1 << (shift + bits))  # the bits already decided, as an int64 mask
        _radix_hist_kernel[(R, n_prefix_blocks)](pooled, prefix, hist[p], P, hi_mask, shift,
                                                  BLOCK=block, RADIX=1 << bits)
        _radix_pick_kernel[(R,)](hist[p], prefix, need, keep, H, shift, RADIX=1 << bits, FIRST=p == 0)
    # stream compaction over [0, L): kept prefix, then the window, then the dropped prefix
    n_blocks = triton.cdiv(L, block)
    cnt_gt = torch.empty((R, n_blocks), dtype=torch.int32, device=dev)
    cnt_eq = torch.empty((R, n_blocks), dtype=torch.int32, device=dev)
    _compact_count_kernel[(R, n_blocks)](pooled, prefix, cnt_gt, cnt_eq, P, L, n_blocks, BLOCK=block)
    order = torch.empty((B, H, L), dtype=torch.int32, device=dev)
    _compact_write_kernel[(R, n_blocks)](pooled, prefix, need, keep, cnt_gt, cnt_eq, order,
                                         H, P, L, W, n_blocks,
                                         BLOCK=block, BLOCK_C=max(16, next_pow2(n_blocks)))
    return order
