"""FlexPrefill pattern estimation with Triton profiles (same contract as the reference).

Steps 1-2 of :mod:`tsa_core.sparse.flexprefill.naive` (the only part that touches every
key) run as two Triton passes, GQA-native (query head ``h`` reads KV head ``h // G``):

1. :func:`tsa_core.scoring.kernel.window_softmax_stats` (the TSA scorer's first pass):
   online-softmax max and ``1 / sum`` (base 2) of each of the last ``nq`` query rows.
2. ``_profile_kernel``, grid (Hq, key tiles, B): recomputes one ``[nq, BLOCK_K]`` tile of
   probabilities, writes the vertical profile (column means) and stores the tile *skewed*:
   row ``i`` shifted so that entry ``(i, j)`` lands at column ``u = j - i + nq - 1``, i.e. at
   distance ``o = L - 1 - u`` from the diagonal. A plain sum over the rows then gives the
   slash profile, with no ``[nq, L]`` gather and no atomics.

Steps 3-6 work on block-level tensors and are shared with the reference
(:func:`select_from_profiles`).
"""
from __future__ import annotations

import warnings
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from tsa_core._checks import check_qkv, check_triton_device
from tsa_core._triton_utils import next_pow2, upcast_loads
from tsa_core.scoring.kernel import load_window_queries, window_logits, window_softmax_stats
from tsa_core.sparse.flexprefill.naive import FlexPrefillInfo, FlexPrefillParams, pattern_from
from tsa_core.sparse.pattern import BlockPattern

_LOG2E = 1.4426950408889634


@triton.jit
def _window_probs_tile(
    q_ptr, k_ptr, m_ptr, inv_l_ptr, vert_ptr,
    stride_qb, stride_qh, stride_ql, stride_qd,
    stride_kb, stride_kh, stride_kl, stride_kd,
    L, NQ, D, qk_scale, inv_nq,
    GROUP: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr, IEEE: tl.constexpr,
):
    """The step both profile kernels share: the ``[BLOCK_W, BLOCK_K]`` probabilities of the
    last ``NQ`` queries over this program's key tile (final softmax stats, causal), with the
    tile's vertical profile (column means) stored. Returns ``(p, key_pos, mask_w, mask_k, row)``."""
    pid_h = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    kv_h = pid_h // GROUP
    row = pid_b * tl.num_programs(0) + pid_h             # flattened (b, h)
    offs_w = tl.arange(0, BLOCK_W)
    offs_d = tl.arange(0, BLOCK_D)
    mask_w = offs_w < NQ
    mask_d = offs_d < D
    q, q_pos, _ = load_window_queries(q_ptr, pid_b, pid_h, stride_qb, stride_qh, stride_ql, stride_qd,
                                      L, NQ, D, BLOCK_W, BLOCK_D, UPCAST)   # [BLOCK_W, BLOCK_D]
    m = tl.load(m_ptr + row * NQ + offs_w, mask=mask_w, other=0.0)          # [BLOCK_W]
    inv_l = tl.load(inv_l_ptr + row * NQ + offs_w, mask=mask_w, other=0.0)  # 0 on padded rows
    key_pos = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    mask_k = key_pos < L
    kt = tl.load(k_ptr + pid_b * stride_kb + kv_h * stride_kh + key_pos[None, :].to(tl.int64) * stride_kl
                 + offs_d[:, None] * stride_kd, mask=mask_d[:, None] & mask_k[None, :], other=0.0)  # [BLOCK_D, BLOCK_K]
    if UPCAST:
        kt = kt.to(tl.float32)
    s = window_logits(q, kt, IEEE) * qk_scale
    visible = mask_w[:, None] & mask_k[None, :] & (key_pos[None, :] <= q_pos[:, None])
    p = tl.where(visible, tl.exp2(s - m[:, None]) * inv_l[:, None], 0.0)  # [BLOCK_W, BLOCK_K]
    tl.store(vert_ptr + row * L + key_pos, tl.sum(p, axis=0) * inv_nq, mask=mask_k)
    return p, key_pos, mask_w, mask_k, row


@triton.jit
def _profile_kernel(
    q_ptr, k_ptr, m_ptr, inv_l_ptr, vert_ptr, skew_ptr,
    stride_qb, stride_qh, stride_ql, stride_qd,
    stride_kb, stride_kh, stride_kl, stride_kd,
    L, NQ, D, qk_scale, inv_nq,
    GROUP: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr, IEEE: tl.constexpr,
):
    p, key_pos, mask_w, mask_k, row = _window_probs_tile(
        q_ptr, k_ptr, m_ptr, inv_l_ptr, vert_ptr, stride_qb, stride_qh, stride_ql, stride_qd,
        stride_kb, stride_kh, stride_kl, stride_kd, L, NQ, D, qk_scale, inv_nq,
        GROUP, BLOCK_W, BLOCK_K, BLOCK_D, UPCAST, IEEE)
    offs_w = tl.arange(0, BLOCK_W)
    u = key_pos[None, :] - offs_w[:, None] + (NQ - 1)                      # skewed column
    skew = skew_ptr + (row * NQ + offs_w[:, None].to(tl.int64)) * L + u
    tl.store(skew, p, mask=mask_w[:, None] & mask_k[None, :] & (u < L))


@triton.jit
def _profile_parts_kernel(
    q_ptr, k_ptr, m_ptr, inv_l_ptr, vert_ptr, parts_ptr,
    stride_qb, stride_qh, stride_ql, stride_qd,
    stride_kb, stride_kh, stride_kl, stride_kd,
    L, NQ, D, qk_scale, inv_nq, n_tiles,
    GROUP: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
    NPART: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr,
):
    """Like ``_profile_kernel``, but the tile's diagonal sums are reduced in registers:
    entry ``(i, c)`` has local diagonal ``t = i - c + BLOCK_K - 1``; part ``m`` holds
    ``t in [m BLOCK_K, (m+1) BLOCK_K)``, gathered row by row (``tl.gather``) and summed over
    the rows. Output ``parts [B, H, n_tiles, NPART * BLOCK_K]`` (small), overlap-added on
    the host side of the launch."""
    p, key_pos, mask_w, mask_k, row = _window_probs_tile(
        q_ptr, k_ptr, m_ptr, inv_l_ptr, vert_ptr, stride_qb, stride_qh, stride_ql, stride_qd,
        stride_kb, stride_kh, stride_kl, stride_kd, L, NQ, D, qk_scale, inv_nq,
        GROUP, BLOCK_W, BLOCK_K, BLOCK_D, UPCAST, IEEE)
    offs_w = tl.arange(0, BLOCK_W)
    offs_c = tl.arange(0, BLOCK_K)
    out = parts_ptr + (row * n_tiles + tl.program_id(1)) * (NPART * BLOCK_K)
    for part in tl.static_range(NPART):
        col = offs_w[:, None] + (BLOCK_K - 1 - part * BLOCK_K) - offs_c[None, :]   # c for (i, w)
        ok = (col >= 0) & (col < BLOCK_K)
        g = tl.gather(p, tl.where(ok, col, 0), axis=1)                        # [BLOCK_W, BLOCK_K]
        tl.store(out + part * BLOCK_K + offs_c, tl.sum(tl.where(ok, g, 0.0), axis=0))


_GATHER_BROKEN = []   # set once if tl.gather fails to compile on this stack (then: skew buffer)


def gather_kernel_failure() -> Optional[str]:
    """Why the ``tl.gather`` profile kernel failed in this process (the first error's repr), or
    ``None`` if it has not failed. After a failure ``slash_mode="auto"`` uses the skew buffer."""
    return _GATHER_BROKEN[0] if _GATHER_BROKEN else None


def profiles_triton(q: torch.Tensor, k: torch.Tensor, nq: int, scale: float,
                    slash_mode: str = "auto") -> Tuple[torch.Tensor, torch.Tensor]:
    """Triton twin of :func:`profiles_naive`: ``(vertical, slash)``, each ``[B, Hq, L]`` fp32.

    ``slash_mode``: ``"gather"`` reduces each tile's diagonals in registers (small output;
    the default), ``"skew"`` writes the skewed ``[nq, L]`` probabilities and sums them
    (more memory traffic; the fallback if ``tl.gather`` does not compile)."""
    B, Hq, Hkv, L, D = check_qkv(q, k, k)
    check_triton_device(q, "flexprefill profiles_triton")
    if not (1 <= nq <= L):
        raise ValueError(f"nq must be in [1, {L}], got {nq}")
    block_w = max(16, next_pow2(nq))
    block_d = max(16, next_pow2(D))
    block_k = 64 if block_w * block_d <= 128 * 128 else 32
    num_warps = 8 if block_w >= 128 else 4
    upcast = upcast_loads(q.dtype)
    qk_scale = scale * _LOG2E
    n_tiles = triton.cdiv(L, block_k)
    f32 = dict(device=q.device, dtype=torch.float32)
    m, inv_l = window_softmax_stats(q, k, nq, scale)      # pass 1, shared with the TSA scorer
    vertical = torch.empty((B, Hq, L), **f32)
    common = (q, k, m, inv_l, vertical)
    strides = (*q.stride(), *k.stride())
    meta = dict(GROUP=Hq // Hkv, BLOCK_W=block_w, BLOCK_K=block_k, BLOCK_D=block_d, UPCAST=upcast,
                IEEE=q.dtype == torch.float32, num_warps=num_warps)
    if slash_mode == "auto":
        slash_mode = "skew" if _GATHER_BROKEN else "gather"
    if slash_mode == "gather":
        npart = triton.cdiv(block_w + block_k - 1, block_k)
        parts = torch.empty((B, Hq, n_tiles, npart, block_k), **f32)
        try:
            _profile_parts_kernel[(Hq, n_tiles, B)](*common, parts, *strides, L, nq, D, qk_scale, 1.0 / nq,
                                                    n_tiles, NPART=npart, **meta)
        except Exception as e:  # noqa: BLE001 - a compiler without tl.gather support: fall back
            if q.device.type != "cuda":
                raise
            warnings.warn(f"tl.gather kernel failed ({type(e).__name__}); using the skew-buffer profile kernel")
            _GATHER_BROKEN.append(repr(e))
            return profiles_triton(q, k, nq, scale, slash_mode="skew")
        # overlap-add: tile `t`, part `m`, lane `w` is distance z - z0 with z = (n_tiles-1-t+m) BLOCK_K + w
        parts = parts.flip(2)
        slash_z = torch.zeros((B, Hq, (n_tiles + npart - 1) * block_k), **f32)
        for mpart in range(npart):
            slash_z[..., mpart * block_k:(mpart + n_tiles) * block_k] += parts[:, :, :, mpart].reshape(B, Hq, -1)
        z0 = n_tiles * block_k + nq - L - 1
        return vertical, slash_z[..., z0:z0 + L].div_(nq)
    if slash_mode != "skew":
        raise ValueError(f"slash_mode must be 'auto', 'gather' or 'skew', got {slash_mode!r}")
    skew = torch.empty((B, Hq, nq, L), **f32)
    if nq > 1:
        skew[..., : nq - 1].zero_()          # distances beyond each row's position: never written
    _profile_kernel[(Hq, n_tiles, B)](*common, skew, *strides, L, nq, D, qk_scale, 1.0 / nq, **meta)
    slash = skew.sum(dim=2).flip(-1).div_(nq)        # index u -> distance o = L - 1 - u
    return vertical, slash


def flexprefill_pattern_triton(q: torch.Tensor, k: torch.Tensor, params: FlexPrefillParams = FlexPrefillParams(),
                               *, scale: Optional[float] = None) -> Tuple[BlockPattern, FlexPrefillInfo]:
    """Triton twin of :func:`flexprefill_pattern_naive` (same contract)."""
    return pattern_from(profiles_triton, q, k, params, scale)
