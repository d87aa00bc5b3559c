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


@functools.lru_cache(maxsize=None)
def _shared_memory(index: int) -> int:
    import triton
    return int(triton.runtime.driver.active.utils.get_device_properties(index)["max_shared_mem"])


def shared_memory_per_block(device: torch.device) -> int:
    """Bytes of shared memory one program may use on ``device`` (the H100/H200 opt-in limit is
    232,448); a large constant off CUDA (the interpreter has no such limit)."""
    if device.type != "cuda":
        return 1 << 30
    return _shared_memory(device.index if device.index is not None else torch.cuda.current_device())


def upcast_loads(dtype: torch.dtype) -> bool:
    """Under the interpreter bf16 arithmetic is wrong: convert to fp32 right after loads."""
    return interpreter_on() or dtype == torch.float32
