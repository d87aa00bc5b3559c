"""Triton token scoring, same signature and semantics as :func:`score_window_naive`.

Two passes over the keys, both GQA-native (query head ``h`` reads KV head ``h // G``) and
both split into chunks of keys so that every program keeps its ``[W, D]`` query window in
registers while it streams many key tiles (flash-attention style: K tiles loaded row-major,
``dot(q, trans(k))``, base-2 exponentials with the scale folded in):

1. ``_stats_kernel``: grid (Hq, chunks, B), online-softmax max ``m`` and sum ``l`` of every
   window row over one chunk of all ``L`` keys (causal inside the window); partial stats go to
   ``[B, Hq, chunks, W]`` and ``_combine_kernel`` reduces them to ``m`` and ``1/l``.
2. ``_probs_kernel``: grid (Hq, chunks, B) over the prefix keys: recompute the logits of each
   key tile, turn them into probabilities with the final stats, write their mean over the window.

The head index is the fastest grid axis, so the G query heads that share a KV head read the
same key tiles at about the same time and all but the first hit L2. On a GPU both passes are
autotuned (tile width, warps, pipeline depth) per power-of-two length bucket; under the
interpreter a fixed configuration runs.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import triton
import triton.language as tl

from tsa_core._checks import check_qkv, check_triton_device, interpreter_on
from tsa_core._triton_utils import next_pow2, shared_memory_per_block, sm_count, upcast_loads
from tsa_core.scoring.naive import check_out, check_window

_LOG2E = 1.4426950408889634
_NEG_BIG = tl.constexpr(-1.0e30)  # finite "minus infinity" for running maxima (avoids inf - inf = NaN)
_CHUNK_ALIGN = 256                # chunks are whole numbers of every tile width below


@triton.jit
def load_window_queries(q_ptr, pid_b, pid_h, stride_qb, stride_qh, stride_ql, stride_qd, L, W, D,
                        BLOCK_W: tl.constexpr, BLOCK_D: tl.constexpr, UPCAST: tl.constexpr):
    """The last ``W`` query rows of (batch ``pid_b``, head ``pid_h``): the ``[BLOCK_W, BLOCK_D]``
    tile (rows past ``W`` and columns past ``D`` are zero), the rows' absolute positions and
    their mask. Shared by the scorer's passes and FlexPrefill's profiles."""
    offs_w = tl.arange(0, BLOCK_W)
    offs_d = tl.arange(0, BLOCK_D)
    mask_w = offs_w < W
    q_pos = L - W + offs_w                             # absolute position of each window query
    q_ptrs = (q_ptr + pid_b * stride_qb + pid_h * stride_qh
              + q_pos[:, None].to(tl.int64) * stride_ql + offs_d[None, :] * stride_qd)
    q = tl.load(q_ptrs, mask=mask_w[:, None] & (offs_d < D)[None, :], other=0.0)   # [BLOCK_W, BLOCK_D]
    if UPCAST:
        q = q.to(tl.float32)
    return q, q_pos, mask_w


@triton.jit
def window_logits(q, kt, IEEE: tl.constexpr):
    """``q @ kt`` of a window tile ``[BLOCK_W, BLOCK_D]`` and a transposed key tile
    ``[BLOCK_D, BLOCK_K]``, shared by the scorer's passes and FlexPrefill's profiles (whose
    probabilities divide by the scorer's statistics, so both must multiply alike). fp32 inputs
    multiply in full fp32 (``IEEE``): by default Triton rounds fp32 operands to TF32 on tensor
    cores, which on an H200 put the fp32 scores 1.6e-4 (relative RMS) from the fp32 reference;
    the fp32 mode is the reference TSA is checked against, so it must be fp32."""
    if IEEE:
        s = tl.dot(q, kt, input_precision="ieee")
    else:
        s = tl.dot(q, kt)
    return s


@triton.jit
def _stats_kernel(
    q_ptr, k_ptr, m_part_ptr, l_part_ptr,
    stride_qb, stride_qh, stride_ql, stride_qd,
    stride_kb, stride_kh, stride_kl, stride_kd,
    L, W, D, qk_scale, chunk_len, n_chunks, L_BUCKET,
    GROUP: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr,
    UPCAST: tl.constexpr, IEEE: tl.constexpr,
):
    pid_h = tl.program_id(0)
    pid_c = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    kv_h = pid_h // GROUP
    offs_w = tl.arange(0, BLOCK_W)                     # window rows
    offs_d = tl.arange(0, BLOCK_D)
    offs_k = tl.arange(0, BLOCK_K)
    mask_d = offs_d < D
    q, q_pos, mask_w = load_window_queries(q_ptr, pid_b, pid_h, stride_qb, stride_qh, stride_ql, stride_qd,
                                           L, W, D, BLOCK_W, BLOCK_D, UPCAST)
    k_base = k_ptr + pid_b * stride_kb + kv_h * stride_kh
    m_i = tl.full([BLOCK_W], _NEG_BIG, tl.float32)
    l_i = tl.zeros([BLOCK_W], tl.float32)
    start = pid_c * chunk_len
    for it in range(0, chunk_len // BLOCK_K):          # chunk_len is a multiple of BLOCK_K
        key_pos = start + it * BLOCK_K + offs_k
        mask_k = key_pos < L
        k_ptrs = k_base + key_pos[:, None].to(tl.int64) * stride_kl + offs_d[None, :] * stride_kd
        k = tl.load(k_ptrs, mask=mask_k[:, None] & mask_d[None, :], other=0.0)    # [BLOCK_K, BLOCK_D]
        if UPCAST:
            k = k.to(tl.float32)
        s = window_logits(q, tl.trans(k), IEEE) * qk_scale          # [BLOCK_W, BLOCK_K], log2 units
        visible = mask_k[None, :] & (key_pos[None, :] <= q_pos[:, None])
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        l_i = l_i * tl.exp2(m_i - m_new) + tl.sum(tl.exp2(s - m_new[:, None]), axis=1)
        m_i = m_new
    part = ((pid_b * tl.num_programs(0) + pid_h) * n_chunks + pid_c) * W
    tl.store(m_part_ptr + part + offs_w, m_i, mask=mask_w)
    tl.store(l_part_ptr + part + offs_w, l_i, mask=mask_w)


@triton.jit
def _combine_kernel(m_part_ptr, l_part_ptr, m_ptr, inv_l_ptr, W, n_chunks,
                    BLOCK_W: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)                # flattened (b, h)
    offs_w = tl.arange(0, BLOCK_W)
    mask_w = offs_w < W
    m = tl.full([BLOCK_W], _NEG_BIG, tl.float32)
    l = tl.zeros([BLOCK_W], tl.float32)
    for c in range(0, n_chunks):
        base = (row * n_chunks + c) * W
        m_c = tl.load(m_part_ptr + base + offs_w, mask=mask_w, other=_NEG_BIG)
        l_c = tl.load(l_part_ptr + base + offs_w, mask=mask_w, other=0.0)
        m_new = tl.maximum(m, m_c)
        l = l * tl.exp2(m - m_new) + l_c * tl.exp2(m_c - m_new)
        m = m_new
    tl.store(m_ptr + row * W + offs_w, m, mask=mask_w)
    tl.store(inv_l_ptr + row * W + offs_w, 1.0 / tl.where(mask_w, l, 1.0), mask=mask_w)


@triton.jit
def _probs_kernel(
    q_ptr, k_ptr, m_ptr, inv_l_ptr, out_ptr,
    stride_qb, stride_qh, stride_ql, stride_qd,
    stride_kb, stride_kh, stride_kl, stride_kd,
    L, W, P, D, qk_scale, inv_w, chunk_len, L_BUCKET,
    GROUP: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr,
    UPCAST: tl.constexpr, IEEE: tl.constexpr,
):
    pid_h = tl.program_id(0)
    pid_c = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    kv_h = pid_h // GROUP
    row = pid_b * tl.num_programs(0) + pid_h
    offs_w = tl.arange(0, BLOCK_W)
    offs_d = tl.arange(0, BLOCK_D)
    offs_k = tl.arange(0, BLOCK_K)
    mask_d = offs_d < D
    q, q_pos, mask_w = load_window_queries(q_ptr, pid_b, pid_h, stride_qb, stride_qh, stride_ql, stride_qd,
                                           L, W, D, BLOCK_W, BLOCK_D, UPCAST)
    m = tl.load(m_ptr + row * W + offs_w, mask=mask_w, other=0.0)            # [BLOCK_W]
    inv_l = tl.load(inv_l_ptr + row * W + offs_w, mask=mask_w, other=0.0) * inv_w   # 0 on padded rows
    k_base = k_ptr + pid_b * stride_kb + kv_h * stride_kh
    start = pid_c * chunk_len
    for it in range(0, chunk_len // BLOCK_K):
        key_pos = start + it * BLOCK_K + offs_k
        mask_k = key_pos < P
        k_ptrs = k_base + key_pos[:, None].to(tl.int64) * stride_kl + offs_d[None, :] * stride_kd
        k = tl.load(k_ptrs, mask=mask_k[:, None] & mask_d[None, :], other=0.0)    # [BLOCK_K, BLOCK_D]
        if UPCAST:
            k = k.to(tl.float32)
        s = window_logits(q, tl.trans(k), IEEE) * qk_scale
        p = tl.exp2(s - m[:, None]) * inv_l[:, None]               # prefix keys: no causal mask
        tl.store(out_ptr + row * P + key_pos, tl.sum(p, axis=0), mask=mask_k)


def _configs():
    return [triton.Config({"BLOCK_K": bk}, num_warps=nw, num_stages=ns)
            for bk in (64, 128) for nw in (4, 8) for ns in (2, 3)]


# narrow key tiles, for a query window too large for the tiles above (fp32 at D = 256)
_SMALL_CONFIGS = [triton.Config({"BLOCK_K": bk}, num_warps=4, num_stages=ns) for bk in (32, 16) for ns in (2, 1)]


def shared_bytes(block_w: int, block_d: int, block_k: int, stages: int, elem: int) -> int:
    """Shared memory a scoring program needs: its ``[BLOCK_W, BLOCK_D]`` query window plus
    ``stages`` buffered ``[BLOCK_K, BLOCK_D]`` key tiles, in the inputs' element size. Triton
    asked for exactly this (262,144 bytes) for fp32, W = 128, D = 256, BLOCK_K = 64, 2 stages on
    an H200, whose limit is 232,448."""
    return (block_w * block_d + stages * block_k * block_d) * elem


def _prune(configs, named_args, **kwargs):
    """The standard tiles, unchanged, when one of them fits the GPU's shared memory (the
    autotuner skips those that do not); when none does (a 128-query window at D = 256 in fp32:
    the window alone is 128 KiB), the narrow tiles that fit, else the narrowest: the autotuner
    raises when every config it tried was out of resources."""
    q = named_args["q_ptr"]
    block_w = kwargs.get("BLOCK_W", named_args.get("BLOCK_W"))
    block_d = kwargs.get("BLOCK_D", named_args.get("BLOCK_D"))
    limit = shared_memory_per_block(q.device)

    def fits(c):
        return shared_bytes(block_w, block_d, c.kwargs["BLOCK_K"], c.num_stages, q.element_size()) <= limit
    if any(fits(c) for c in configs):
        return list(configs)
    small = [c for c in _SMALL_CONFIGS if fits(c)]
    return small or [_SMALL_CONFIGS[-1]]


_KEY = ["L_BUCKET", "D", "W", "GROUP"]
_PRUNE = {"early_config_prune": _prune}
_stats_tuned = triton.autotune(configs=_configs(), key=_KEY, prune_configs_by=_PRUNE)(_stats_kernel)
_probs_tuned = triton.autotune(configs=_configs(), key=_KEY, prune_configs_by=_PRUNE)(_probs_kernel)


_CHOSEN: dict = {}   # (kernel name, tuning key) -> launch options picked by the autotuner


def best_configs() -> dict:
    """The autotuner's choices so far (for perf notes)."""
    return {f"{name}{key}": opts for (name, key), opts in _CHOSEN.items()}


def _launch(name: str, jit_fn, tuned, grid, args, key, common):
    """Autotune once per key, then launch the plain JIT function with the chosen options:
    the autotuner's own per-call bookkeeping costs far more host time than the launch."""
    opts = _CHOSEN.get((name, key))
    if opts is None:
        tuned[grid](*args, **common)
        cfg = tuned.best_config
        opts = dict(cfg.kwargs, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
        _CHOSEN[(name, key)] = opts
        return
    jit_fn[grid](*args, **common, **opts)


def _n_chunks(device, rows: int, n_keys: int) -> int:
    want = max(1, math.ceil(8 * sm_count(device) / rows))     # ~8 waves: the tail wave costs little
    return max(1, min(triton.cdiv(n_keys, _CHUNK_ALIGN), want))


def _launcher(q, k, W: int, D: int, Hq: int, Hkv: int, L: int):
    block_w, block_d = max(16, next_pow2(W)), max(16, next_pow2(D))
    common = dict(GROUP=Hq // Hkv, BLOCK_W=block_w, BLOCK_D=block_d, UPCAST=upcast_loads(q.dtype),
                  IEEE=q.dtype == torch.float32)
    interp = interpreter_on()
    key = (L.bit_length(), D, W, Hq // Hkv, str(q.dtype), q.device.index)

    def launch(name, jit_fn, tuned, grid, args):
        if interp:   # the interpreter cannot autotune: one fixed configuration
            jit_fn[grid](*args, **common, BLOCK_K=64, num_warps=4)
        else:
            _launch(name, jit_fn, tuned, grid, args, key, common)
    return launch, block_w


def window_softmax_stats(q: torch.Tensor, k: torch.Tensor, window: int, scale: Optional[float] = None):
    """Softmax statistics of the last ``window`` queries over all keys (causal inside the
    window): ``(m, inv_l)``, each ``[B, Hq, window]`` float32, with ``m`` the row maximum of the
    logits times ``scale * log2(e)`` and ``inv_l`` the reciprocal of the row sum of
    ``exp2(logit * scale * log2(e) - m)``. So ``p_ij = exp2(s_ij * scale * log2(e) - m_i) * inv_l_i``.
    Pass 1 of the scorer; also used by FlexPrefill's estimation (``1 <= window <= L``)."""
    B, Hq, Hkv, L, D = check_qkv(q, k, k)
    if isinstance(window, bool) or not isinstance(window, int) or not 1 <= window <= L:
        raise ValueError(f"window must be an integer in [1, {L}], got {window!r}")
    check_triton_device(q, "window_softmax_stats")
    W = window
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    launch, block_w = _launcher(q, k, W, D, Hq, Hkv, L)
    f32 = dict(device=q.device, dtype=torch.float32)
    n_chunks = _n_chunks(q.device, B * Hq, L)
    chunk_len = triton.cdiv(triton.cdiv(L, n_chunks), _CHUNK_ALIGN) * _CHUNK_ALIGN
    n_chunks = triton.cdiv(L, chunk_len)
    m_part = torch.empty((B, Hq, n_chunks, W), **f32)
    l_part = torch.empty((B, Hq, n_chunks, W), **f32)
    launch("stats", _stats_kernel, _stats_tuned, (Hq, n_chunks, B),
           (q, k, m_part, l_part, *q.stride(), *k.stride(), L, W, D, scale * _LOG2E, chunk_len, n_chunks,
            L.bit_length()))
    m = torch.empty((B, Hq, W), **f32)
    inv_l = torch.empty((B, Hq, W), **f32)
    _combine_kernel[(B * Hq,)](m_part, l_part, m, inv_l, W, n_chunks, BLOCK_W=block_w)
    return m, inv_l


def score_window_triton(q: torch.Tensor, k: torch.Tensor, window: int,
                        scale: Optional[float] = None, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Triton twin of :func:`tsa_core.scoring.naive.score_window_naive` (same contract)."""
    B, Hq, Hkv, L, D = check_qkv(q, k, k)
    check_window(window, L)
    check_triton_device(q, "score_window_triton")
    W, P = window, L - window
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    qk_scale = scale * _LOG2E
    m, inv_l = window_softmax_stats(q, k, W, scale)
    launch, _ = _launcher(q, k, W, D, Hq, Hkv, L)
    f32 = dict(device=q.device, dtype=torch.float32)
    bucket = L.bit_length()
    p_chunks = _n_chunks(q.device, B * Hq, P)
    p_chunk_len = triton.cdiv(triton.cdiv(P, p_chunks), _CHUNK_ALIGN) * _CHUNK_ALIGN
    p_chunks = triton.cdiv(P, p_chunk_len)
    if out is None:
        out = torch.empty((B, Hq, P), **f32)
    else:
        check_out(out, (B, Hq, P), q.device)
    launch("probs", _probs_kernel, _probs_tuned, (Hq, p_chunks, B),
           (q, k, m, inv_l, out, *q.stride(), *k.stride(), L, W, P, D, qk_scale, 1.0 / W, p_chunk_len, bucket))
    return out
