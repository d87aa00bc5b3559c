"""Triton compress / decompress, same signatures and semantics as :mod:`tsa_core.gather.naive`.

Both are pure data movement. ``_compress_kernel``: grid (row blocks, Hq, B); each program
reads ``BLOCK_N`` indices and copies those rows of Q (its own head) and K, V (KV head
``h // G``, read in place: no repeated K/V) into the compact tensors. ``_decompress_kernel``:
grid (position blocks, Hq, B) over the whole permutation, so every output row is written
exactly once, either with its attention row or with zeros: no separate memset pass.
"""
from __future__ import annotations

from typing import Tuple

import torch
import triton
import triton.language as tl

from tsa_core._checks import check_qkv, check_triton_device
from tsa_core._triton_utils import next_pow2
from tsa_core.gather.naive import check_order


@triton.jit
def _compress_kernel(q_ptr, k_ptr, v_ptr, order_ptr, qc_ptr, kc_ptr, vc_ptr,
                     stride_qb, stride_qh, stride_ql, stride_qd,
                     stride_kb, stride_kh, stride_kl, stride_kd,
                     stride_vb, stride_vh, stride_vl, stride_vd,
                     L, N, D, GROUP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_h = tl.program_id(0)          # heads fastest: a KV head's G readers run together (L2 reuse)
    pid_n = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    kv_h = pid_h // GROUP
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_n = offs_n < N
    mask = mask_n[:, None] & (offs_d[None, :] < D)
    row = pid_b * tl.num_programs(0) + pid_h
    pos = tl.load(order_ptr + row * L + offs_n, mask=mask_n, other=0).to(tl.int64)   # [BLOCK_N]
    dst = (row * N + offs_n[:, None]) * D + offs_d[None, :]
    q_src = q_ptr + pid_b * stride_qb + pid_h * stride_qh + pos[:, None] * stride_ql + offs_d[None, :] * stride_qd
    tl.store(qc_ptr + dst, tl.load(q_src, mask=mask), mask=mask)
    k_src = k_ptr + pid_b * stride_kb + kv_h * stride_kh + pos[:, None] * stride_kl + offs_d[None, :] * stride_kd
    tl.store(kc_ptr + dst, tl.load(k_src, mask=mask), mask=mask)
    v_src = v_ptr + pid_b * stride_vb + kv_h * stride_vh + pos[:, None] * stride_vl + offs_d[None, :] * stride_vd
    tl.store(vc_ptr + dst, tl.load(v_src, mask=mask), mask=mask)


def _block_rows(D: int) -> int:
    return max(16, 8192 // max(16, next_pow2(D)))


def compress_qkv_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, order: torch.Tensor,
                        n_max: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton twin of :func:`tsa_core.gather.naive.compress_qkv_naive`."""
    B, Hq, Hkv, L, D = check_qkv(q, k, v)
    check_order(order, B, Hq, L, n_max)
    check_triton_device(q, "compress_qkv_triton")
    order = order.contiguous()
    qc = torch.empty((B, Hq, n_max, D), dtype=q.dtype, device=q.device)
    kc = torch.empty_like(qc)
    vc = torch.empty_like(qc)
    block_n = _block_rows(D)
    _compress_kernel[(Hq, triton.cdiv(n_max, block_n), B)](
        q, k, v, order, qc, kc, vc, *q.stride(), *k.stride(), *v.stride(),
        L, n_max, D, GROUP=Hq // Hkv, BLOCK_N=block_n, BLOCK_D=max(16, next_pow2(D)))
    return qc, kc, vc


@triton.jit
def _decompress_kernel(oc_ptr, order_ptr, n_kept_ptr, out_ptr,
                       stride_ob, stride_oh, stride_on, stride_od,
                       L, N, D, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_h = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    H = tl.num_programs(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)            # slots of the permutation
    offs_d = tl.arange(0, BLOCK_D)
    mask_n = offs_n < L
    mask_d = offs_d[None, :] < D
    n_kept = tl.load(n_kept_ptr + pid_b)
    pos = tl.load(order_ptr + (pid_b * H + pid_h) * L + offs_n, mask=mask_n, other=0).to(tl.int64)
    is_kept = mask_n & (offs_n < n_kept)
    src = (oc_ptr + pid_b * stride_ob + pid_h * stride_oh + offs_n[:, None].to(tl.int64) * stride_on
           + offs_d[None, :] * stride_od)
    vals = tl.load(src, mask=is_kept[:, None] & mask_d, other=0.0)         # zeros where dropped
    dst = out_ptr + ((pid_b * L + pos[:, None]) * H + pid_h) * D + offs_d[None, :]
    tl.store(dst, vals, mask=mask_n[:, None] & mask_d)


def decompress_output_triton(out_c: torch.Tensor, order: torch.Tensor, n_kept: torch.Tensor,
                             seq_len: int) -> torch.Tensor:
    """Triton twin of :func:`tsa_core.gather.naive.decompress_output_naive`."""
    B, Hq, N, D = out_c.shape
    check_order(order, B, Hq, seq_len, N)
    check_triton_device(out_c, "decompress_output_triton")
    order = order.contiguous()
    out = torch.empty((B, seq_len, Hq, D), dtype=out_c.dtype, device=out_c.device)
    block_n = _block_rows(D)
    _decompress_kernel[(triton.cdiv(seq_len, block_n), Hq, B)](
        out_c, order, n_kept.contiguous(), out, *out_c.stride(), seq_len, N, D,
        BLOCK_N=block_n, BLOCK_D=max(16, next_pow2(D)))
    return out
