"""The sgemm rate of the machine a benchmark runs on, measured in the same run.

Figures from two CPU kinds must never share a ratio, so every benchmark prints
:func:`textgen.machine.machine_line` first (the CPU model and the SIMD flags that decide
its kernels' speed: the line ``textgen train`` ends with). A roofline fraction divides by
:func:`sgemm_gflops`, measured in the same run.
"""

from __future__ import annotations

import time

import numpy as np


def sgemm_gflops(n: int = 1024, reps: int = 20) -> float:
    """numpy's float32 matrix product of two n×n matrices, in GFLOP/s (one warm-up)."""
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    a @ a
    start = time.perf_counter()
    for _ in range(reps):
        a @ a
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e9
