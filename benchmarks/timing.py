"""The one step timer of the benchmarks: warm-up calls, then the mean of timed calls, with a
GPU synchronized around each call so that its queued kernels count."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def mean_seconds(step: Callable[[int], object], device: str, repeats: int, warmup: int = 3) -> float:
    """Mean wall time of `step(i)` over `repeats` calls after `warmup` untimed ones; `i` counts
    every call from 0 (for steps that act every k-th step)."""
    times = []
    for i in range(warmup + repeats):
        sync(device)
        started = time.perf_counter()
        step(i)
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - started)
    return statistics.fmean(times)
