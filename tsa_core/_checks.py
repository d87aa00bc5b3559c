"""Input validation shared by the ops: clear ValueErrors naming the argument."""
from __future__ import annotations

import os

import torch


def interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def check_triton_device(t: torch.Tensor, op: str) -> None:
    """Triton kernels need a CUDA tensor, or CPU tensors with ``TRITON_INTERPRET=1``."""
    if t.device.type == "cuda":
        return
    if t.device.type == "cpu" and interpreter_on():
        return
    raise ValueError(
        f"{op}: the Triton kernel needs CUDA tensors (got device={t.device}); on CPU set "
        "TRITON_INTERPRET=1 before importing tsa_core, or use impl='naive'")


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[int, int, int, int, int]:
    """Validate q [B, Hq, L, D], k/v [B, Hkv, L, D]; return (B, Hq, Hkv, L, D)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must have 4 dims [B, H, L, D], got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating tensor, got dtype {t.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    B, Hq, L, D = q.shape
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    Bk, Hkv, Lk, Dk = k.shape
    if Bk != B:
        raise ValueError(f"batch size of k ({Bk}) must equal that of q ({B})")
    if Lk != L:
        raise ValueError(f"TSA is a prefill op: k must have the query length {L}, got {Lk}")
    if Dk != D:
        raise ValueError(f"head dim of k ({Dk}) must equal that of q ({D})")
    if Hkv < 1 or Hq % Hkv != 0:
        raise ValueError(f"query heads ({Hq}) must be a multiple of KV heads ({Hkv})")
    if L < 1 or D < 1 or B < 1:
        raise ValueError(f"empty input: shape {tuple(q.shape)}")
    return B, Hq, Hkv, L, D
