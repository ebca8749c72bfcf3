"""How many threads numpy's BLAS (OpenBLAS) uses, set at run time.

The server's process already runs two busy threads (the event loop and a decoding loop
per model), and on a small or shared machine OpenBLAS's own threads then fight them for
the cores: measured on 2 cores with other work running, the 2x256 LSTM step at batch 8
fell from 7,242 tokens/s with one BLAS thread to 177 with two. The LSTM step's products
are now sized for OpenBLAS's single-threaded small-matrix kernel at batch 4-64
(``textgen.decoding.numpy_lm``), where the setting no longer matters; it still does for
batch 1-2 and for models too big for that kernel, so one thread stays the default.
numpy is imported before ``textgen serve`` can set ``OPENBLAS_NUM_THREADS``, so the loaded
library is told directly through its ``*_set_num_threads`` function, found in the
process's mapped files.
"""

from __future__ import annotations

import ctypes
import re

SETTERS = (
    "scipy_openblas_set_num_threads64_",
    "scipy_openblas_set_num_threads",
    "openblas_set_num_threads64_",
    "openblas_set_num_threads",
)
GETTERS = tuple(name.replace("set_", "get_") for name in SETTERS)


def _libraries() -> list[str]:
    import numpy  # noqa: F401 - its BLAS must be loaded to be found

    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as fh:
            maps = fh.read()
    except OSError:
        return []
    return sorted(set(re.findall(r"(/\S*openblas\S*\.so[\w.]*)", maps)))


def _call(names: tuple[str, ...], *args: int) -> int | None:
    for path in _libraries():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in names:
            func = getattr(lib, name, None)
            if func is not None:
                result = func(*args)
                return int(result) if result is not None else 0
    return None


def set_threads(count: int) -> bool:
    """Tell OpenBLAS to use ``count`` threads; False when no OpenBLAS is loaded."""
    return _call(SETTERS, int(count)) is not None


def threads() -> int | None:
    """The number of threads OpenBLAS uses now (None without OpenBLAS)."""
    return _call(GETTERS)
