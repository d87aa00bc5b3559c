"""Triton compaction of a block mask into the index lists of a :class:`BlockPattern`.

The kernel twin of :func:`tsa_core.sparse.pattern.mask_to_lists_torch`, owned by
:mod:`tsa_core.sparse.pattern` (which dispatches to it on CUDA and under the interpreter).
It imports nothing from the pattern module, so the two do not import each other.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from tsa_core._checks import check_triton_device
from tsa_core._triton_utils import next_pow2


@triton.jit
def _compact_kernel(mask_ptr, idx_ptr, cnt_ptr, n_kb, CHUNK: tl.constexpr):
    """One block-mask row -> its ascending active-block list (cumsum positions) and count."""
    row = tl.program_id(0).to(tl.int64)
    base = tl.full([], 0, tl.int32)
    for c0 in range(0, n_kb, CHUNK):
        offs = c0 + tl.arange(0, CHUNK)
        m = tl.load(mask_ptr + row * n_kb + offs, mask=offs < n_kb, other=0).to(tl.int32)   # [CHUNK]
        pos = base + tl.cumsum(m, axis=0) - 1
        tl.store(idx_ptr + row * n_kb + pos, offs, mask=m > 0)
        base += tl.sum(m, axis=0)
    tl.store(cnt_ptr + row, base)


def compact_mask_triton(mask: torch.Tensor):
    """Triton twin of :func:`tsa_core.sparse.pattern.mask_to_lists` (one pass, no int64 temps).

    ``mask`` bool ``[B, H, n_qb, n_kb]`` on CUDA (or under the interpreter) -> ``(kv_idx int32
    [B, H, n_qb, n_kb], kv_cnt int32 [B, H, n_qb])``: active key blocks ascending, rest zero."""
    check_triton_device(mask, "compact_mask_triton")
    B, H, n_qb, n_kb = mask.shape
    m8 = mask.contiguous().view(torch.uint8)
    idx = torch.zeros((B, H, n_qb, n_kb), device=mask.device, dtype=torch.int32)
    cnt = torch.empty((B, H, n_qb), device=mask.device, dtype=torch.int32)
    rows = B * H * n_qb
    if rows:
        chunk = min(1024, max(16, next_pow2(n_kb)))
        _compact_kernel[(rows,)](m8, idx, cnt, n_kb, CHUNK=chunk, num_warps=4)
    return idx, cnt
