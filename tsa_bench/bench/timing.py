"""Timing with CUDA events (GPU) or the wall clock (CPU), median with p20/p80."""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, List

import torch


@dataclass(frozen=True)
class Timing:
    """Milliseconds: median and the 20th/80th percentiles over ``n`` timed calls."""

    median: float
    p20: float
    p80: float
    n: int
    clock: str          # "cuda-events" or "wall"

    @staticmethod
    def of(samples: List[float], clock: str) -> "Timing":
        s = sorted(samples)
        q = statistics.quantiles(s, n=5, method="inclusive") if len(s) > 1 else [s[0]] * 4
        return Timing(statistics.median(s), q[0], q[3], len(s), clock)


def time_fn(fn: Callable[[int], object], device: torch.device, *, warmup: int = 3, reps: int = 0,
            budget_s: float = 2.0, min_reps: int = 5, max_reps: int = 50) -> Timing:
    """Time ``fn(i)`` (``i`` = call index, for rotating inputs).

    Warm-up calls first (they also absorb Triton autotuning and compilation). ``reps=0`` picks
    the count from the duration of the last warm-up call so one measurement takes about
    ``budget_s`` seconds, clamped to ``[min_reps, max_reps]``. On CUDA each call is bracketed
    by its own pair of events; the host synchronises once at the end.
    """
    cuda = device.type == "cuda"
    t_last = 0.0
    for i in range(max(1, warmup)):
        if cuda:
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn(i)
        if cuda:
            torch.cuda.synchronize(device)
        t_last = time.perf_counter() - t0
    if reps <= 0:
        reps = int(min(max_reps, max(min_reps, budget_s / max(t_last, 1e-6))))
    if not cuda:
        samples = []
        for i in range(reps):
            t0 = time.perf_counter()
            fn(warmup + i)
            samples.append((time.perf_counter() - t0) * 1e3)
        return Timing.of(samples, "wall")
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    torch.cuda.synchronize(device)
    for i in range(reps):
        starts[i].record()
        fn(warmup + i)
        ends[i].record()
    torch.cuda.synchronize(device)
    return Timing.of([s.elapsed_time(e) for s, e in zip(starts, ends)], "cuda-events")
