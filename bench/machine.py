"""The machine a benchmark ran on, for the first line of its output, and its sgemm rate.

Figures from two CPU kinds must never share a ratio, so every benchmark prints the CPU
model and the SIMD flags that decide its kernels' speed (AVX2, AVX-512, AMX / bf16). A
roofline fraction divides by :func:`sgemm_gflops`, measured in the same run.
"""

from __future__ import annotations

import os
import platform
import time

import numpy as np

FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu_model_and_flags() -> tuple[str, list[str]]:
    """The CPU's model name and which of :data:`FLAGS` it has (from /proc/cpuinfo)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                if flags and model:
                    break
    except OSError:
        pass
    return model, [flag for flag in FLAGS if flag in flags]


def machine_line() -> str:
    """``Intel(R) Xeon(R) Processor [avx2 fma avx512f amx_bf16], 2 cores``."""
    model, flags = cpu_model_and_flags()
    return f"{model} [{' '.join(flags) or 'no AVX2'}], {os.cpu_count()} cores"


def sgemm_gflops(n: int = 1024, reps: int = 20) -> float:
    """numpy's float32 matrix product of two n×n matrices, in GFLOP/s (one warm-up)."""
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    a @ a
    start = time.perf_counter()
    for _ in range(reps):
        a @ a
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e9
