"""Small helpers for launching Triton kernels (no CUDA query at import time)."""
from __future__ import annotations

import functools

import torch

from tsa_core._checks import interpreter_on


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of ``device`` (a small constant under the interpreter)."""
    if device.type != "cuda":
        return 4
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


def upcast_loads(dtype: torch.dtype) -> bool:
    """Under the interpreter bf16 arithmetic is wrong: convert to fp32 right after loads."""
    return interpreter_on() or dtype == torch.float32
