"""Timing helpers of pi-bench and the repository's kernel benchmark (bench/kernels.py): repeated
runs, medians."""
from __future__ import annotations

import statistics
import time


def median_seconds(fn, reps: int, warmup: int = 2) -> float:
    """Median wall time of fn() over `reps` runs after `warmup` untimed runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


class Rotation:
    """Cycles through copies of a buffer so that each timed call reads memory not in cache."""

    def __init__(self, items):
        self.items = list(items)
        self.i = 0

    def next(self):
        self.i = (self.i + 1) % len(self.items)
        return self.items[self.i]
