"""Dense causal attention backends (see :mod:`tsa_core.backends` for the contract)."""
from __future__ import annotations

import functools
from typing import Optional

import torch
import torch.nn.functional as F


def math_attention(q, k, v, *, scale: float, valid_len: Optional[torch.Tensor] = None,
                   chunk: int = 1024) -> torch.Tensor:
    """Reference: fp32 logits, causal mask, softmax, one chunk of queries at a time.

    GQA by viewing the query heads as ``[Hkv, G]`` groups (no repeated K/V).
    """
    B, Hq, L, D = q.shape
    Hkv = k.shape[1]
    G = Hq // Hkv
    kf, vf = k.float(), v.float()
    out = torch.empty((B, Hq, L, D), dtype=q.dtype, device=q.device)
    key_pos = torch.arange(L, device=q.device)
    for s in range(0, L, chunk):
        e = min(L, s + chunk)
        qc = q[:, :, s:e].float().reshape(B, Hkv, G, e - s, D)
        logits = torch.einsum("bhgqd,bhkd->bhgqk", qc, kf) * scale
        causal = key_pos.view(1, L) > torch.arange(s, e, device=q.device).view(e - s, 1)
        probs = torch.softmax(logits.masked_fill(causal, float("-inf")), dim=-1)
        out[:, :, s:e] = torch.einsum("bhgqk,bhkd->bhgqd", probs, vf).reshape(B, Hq, e - s, D).to(q.dtype)
    return out


def sdpa_attention(q, k, v, *, scale: float, valid_len: Optional[torch.Tensor] = None,
                   sdpa_backend: Optional[str] = None) -> torch.Tensor:
    """torch SDPA with native GQA (``enable_gqa``); ``sdpa_backend`` pins one kernel."""
    gqa = q.shape[1] != k.shape[1]
    if sdpa_backend is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
    from torch.nn.attention import SDPBackend, sdpa_kernel
    with sdpa_kernel(getattr(SDPBackend, sdpa_backend)):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)


def _causal(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


@functools.lru_cache(maxsize=32)
def _causal_block_mask(L: int, device: str):
    from torch.nn.attention.flex_attention import create_block_mask
    return create_block_mask(_causal, B=None, H=None, Q_LEN=L, KV_LEN=L, device=device, _compile=True)


@functools.lru_cache(maxsize=1)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention
    return torch.compile(flex_attention, dynamic=False)


def flex_attention_causal(q, k, v, *, scale: float, valid_len: Optional[torch.Tensor] = None) -> torch.Tensor:
    """FlexAttention with a cached causal BlockMask per length (GQA native)."""
    mask = _causal_block_mask(q.shape[2], str(q.device))
    return _compiled_flex()(q, k, v, block_mask=mask, scale=scale, enable_gqa=q.shape[1] != k.shape[1])


def flash_attn_attention(q, k, v, *, scale: float, valid_len: Optional[torch.Tensor] = None) -> torch.Tensor:
    """flash-attn's ``flash_attn_func`` (layout [B, L, H, D]; GQA native)."""
    from flash_attn import flash_attn_func
    out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                          softmax_scale=scale, causal=True)
    return out.transpose(1, 2)
