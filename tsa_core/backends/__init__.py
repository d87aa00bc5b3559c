"""One registry of attention backends, dense and sparse, with one call signature.

Every backend is called as ``fn(q, k, v, *, scale, valid_len=None) -> out`` with

* ``q [B, Hq, L, D]``, ``k, v [B, Hkv, L, D]`` (``Hq % Hkv == 0``), causal prefill attention
  where query ``i`` attends to keys ``j <= i`` (query and key lengths are equal);
* ``valid_len``: ``None``, or a ``[B]`` int64 tensor when a batch of compressed sequences was
  padded at the end to one length. Padding follows every valid row, so a causal dense kernel
  may ignore it; a sparse method whose pattern estimation reads the last queries must use it.
* ``out [B, Hq, L, D]`` with ``q``'s dtype.

Backends are registered lazily as ``"module:attr"`` strings, so listing them imports nothing.
"""
from __future__ import annotations

from tsa_core.backends.registry import (AttentionBackend, available_backends, get_backend, list_backends,
                                        register_backend)

__all__ = ["AttentionBackend", "available_backends", "get_backend", "list_backends", "register_backend"]

_D = "tsa_core.backends.dense"
for _b in (
    AttentionBackend("math", f"{_D}:math_attention", devices=("cpu", "cuda"),
                     description="reference: explicit fp32 softmax, query-chunked"),
    AttentionBackend("sdpa", f"{_D}:sdpa_attention", devices=("cpu", "cuda"),
                     description="torch SDPA, default dispatch"),
    AttentionBackend("sdpa-flash", f"{_D}:sdpa_attention", options={"sdpa_backend": "FLASH_ATTENTION"},
                     description="torch SDPA, FlashAttention-2 kernels"),
    AttentionBackend("sdpa-cudnn", f"{_D}:sdpa_attention", options={"sdpa_backend": "CUDNN_ATTENTION"},
                     description="torch SDPA, cuDNN fused attention"),
    AttentionBackend("sdpa-efficient", f"{_D}:sdpa_attention",
                     options={"sdpa_backend": "EFFICIENT_ATTENTION"},
                     description="torch SDPA, memory-efficient (CUTLASS) kernels"),
    AttentionBackend("flex", f"{_D}:flex_attention_causal",
                     description="FlexAttention (torch.compile), causal block mask"),
    AttentionBackend("flash-attn", f"{_D}:flash_attn_attention", requires=("flash_attn",),
                     description="flash-attn package (FA2/FA3), when installed"),
):
    register_backend(_b)

from tsa_core.backends import sparse as _sparse  # noqa: E402,F401  (registers the sparse methods)
