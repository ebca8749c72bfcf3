"""How many threads the BLAS under numpy's matrix products uses, read and set at run time.

numpy's wheels run ``@`` on OpenBLAS (``numpy.show_config()`` names it: scipy-openblas,
with its symbols prefixed ``scipy_``), which starts one thread per core. A product big
enough for OpenBLAS's threaded path is handed to the other threads and waited for; on a
machine whose cores are busy with other processes each hand-over waits for the
scheduler, and when the LSTM step still ran one (batch × 256) by (256 × 1024) product
per layer, a 2-thread step at batch 16 measured 15 to 20 times slower than a 1-thread
one (BENCHMARKS.md). Where OpenBLAS has its small-matrix kernel (:func:`small_matrix_kernel`)
the step splits its products into pieces for it (``numpy_lm``), which run on the calling
thread whatever this setting, so at batch 4-64 of a 2×256 LSTM the count does not matter
there (at load 13 on 2 cores: 17,626 tokens/s with 2 threads, 17,736 with 1, at batch 16).
It still decides the matrix-vector products of batch 1-2, the products of models too big
for that kernel, and every product where there is none (an AVX-512 AMD EPYC, OpenBLAS
``Haswell``: at batch 32 on a quiet machine the step ran 55,199 tokens/s with 1 thread and
91,875 with 2, but a server with 2 threads lost to one: its second thread takes the core
the event loop needs).
A server sharing its cores may therefore want ``set_blas_threads(1)`` (``textgen serve
--blas-threads``, 1 by default, in the server and its decoding processes: on 2 cores with
other work running, the step at batch 8 when its products still took the threaded path
fell from 7,242 tokens/s with one BLAS thread to 177 with two);
``OPENBLAS_NUM_THREADS=1`` in the environment does the same for a whole process from its
start.

Where numpy runs on another BLAS (MKL, Accelerate) these functions find no OpenBLAS and
answer ``None``: nothing is changed.
"""

from __future__ import annotations

import ctypes
import functools
import platform
from pathlib import Path

import numpy as np

# (setter, getter) names, newest builds first: scipy-openblas (numpy >= 2), plain OpenBLAS
_SYMBOLS = (
    ("scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_"),
    ("scipy_openblas_set_num_threads", "scipy_openblas_get_num_threads"),
    ("openblas_set_num_threads64_", "openblas_get_num_threads64_"),
    ("openblas_set_num_threads", "openblas_get_num_threads"),
)


def _candidates() -> list[str]:
    """Shared objects that look like OpenBLAS: those loaded in this process, then numpy's."""
    found: list[str] = []
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            for line in maps:
                path = line.split()[-1] if line.strip() else ""
                if "openblas" in path.lower() and path not in found:
                    found.append(path)
    except OSError:
        pass
    libs = Path(np.__file__).resolve().parent.parent / "numpy.libs"
    found += [str(p) for p in sorted(libs.glob("*openblas*")) if str(p) not in found]
    return found


# the kernel set OpenBLAS chose for this CPU, same builds in the same order
_CORENAME = (
    "scipy_openblas_get_corename64_",
    "scipy_openblas_get_corename",
    "openblas_get_corename64_",
    "openblas_get_corename",
)
# OpenBLAS's x86-64 kernel sets with its small-matrix sgemm kernel, the one that multiplies
# a small product without copying ("packing") the weights first (its kernel/x86_64 sources:
# SKYLAKEX, COOPERLAKE and SAPPHIRERAPIDS only; Haswell, Zen and the others pack every call)
SMALL_KERNEL_CORES = frozenset({"skylakex", "cooperlake", "sapphirerapids"})


@functools.cache
def corename() -> str | None:
    """The name of OpenBLAS's kernel set for this CPU (``"Haswell"``, ``"SkylakeX"``, ...),
    or None where numpy does not run on OpenBLAS. It can differ from the CPU's own kind:
    an AVX-512 AMD EPYC here gets ``"Haswell"``."""
    for path in _candidates():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in _CORENAME:
            function = getattr(lib, name, None)
            if function is not None:
                function.argtypes, function.restype = [], ctypes.c_char_p
                value = function()
                return value.decode("ascii", "replace") if value else None
    return None


def small_matrix_kernel(name: str | None = None, machine: str | None = None) -> bool:
    """Whether numpy's BLAS (or the OpenBLAS kernel set ``name``) multiplies small products
    in place, without packing: only then does splitting a product into smaller ones pay
    (:mod:`textgen.decoding.numpy_lm`); elsewhere each piece packs its weights again.

    Known for x86-64 only (:data:`SMALL_KERNEL_CORES`); on other machines (``machine``,
    ``platform.machine()`` by default: OpenBLAS's ARMv8 SVE sets have such a kernel too,
    not measured here) the answer is True, the splitting as it was."""
    machine = platform.machine() if machine is None else machine
    if machine.lower() not in ("x86_64", "amd64"):
        return True
    name = corename() if name is None else name
    return name is not None and name.lower() in SMALL_KERNEL_CORES


@functools.cache
def _functions() -> tuple[ctypes._CFuncPtr, ctypes._CFuncPtr] | None:
    for path in _candidates():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for set_name, get_name in _SYMBOLS:
            setter = getattr(lib, set_name, None)
            getter = getattr(lib, get_name, None)
            if setter is not None and getter is not None:
                setter.argtypes, setter.restype = [ctypes.c_int], None
                getter.argtypes, getter.restype = [], ctypes.c_int
                return setter, getter
    return None


def blas_threads() -> int | None:
    """The threads OpenBLAS uses for numpy's products now; None when it is not found."""
    functions = _functions()
    return None if functions is None else int(functions[1]())


def set_blas_threads(threads: int) -> int | None:
    """Make numpy's products use ``threads`` threads (>= 1); return the previous count,
    or None (and change nothing) where numpy does not run on OpenBLAS."""
    if threads < 1:
        raise ValueError(f"BLAS threads must be >= 1, got {threads}")
    functions = _functions()
    if functions is None:
        return None
    before = int(functions[1]())
    functions[0](threads)
    return before
