"""The machine a benchmark ran on, for the first line of its output.

Figures from two CPU kinds must never share a ratio, so every benchmark prints the CPU
model and the SIMD flags that decide its kernels' speed (AVX2, AVX-512, AMX / bf16).
"""

from __future__ import annotations

import os
import platform

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
