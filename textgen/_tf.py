"""Import TensorFlow quietly and only when needed.

TensorFlow takes seconds to import and prints C++ log lines on start-up; every module that
needs it calls :func:`tensorflow` inside the function that uses it, so ``textgen --help``
and numpy-only generation never pay for it. The start-up lines are written by C++ code
before any logging setting applies, so the import runs with file descriptor 2 pointed at
``/dev/null``; an import that fails still raises its Python exception as usual.

TensorFlow's CPU tensors come from its pooling (BFC) allocator rather than ``malloc``:
with ``malloc`` every training step's large buffers (gate activations, logits) are fresh
pages from the kernel, and faulting them in cost about 27,000 page faults and 30% of an
LSTM layer's forward and backward time on the benchmark machine (BENCHMARKS.md, issue 4).
Set ``TF_CPU_ALLOCATOR_USE_BFC=false`` to go back to ``malloc``.
"""

from __future__ import annotations

import os
import sys
from types import ModuleType


def _quiet_import() -> ModuleType:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")  # see the module docstring
    if os.environ.get("TEXTGEN_TF_VERBOSE"):
        import tensorflow as tf

        return tf
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow as tf
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    return tf


def tensorflow() -> ModuleType:
    """Return the ``tensorflow`` module, importing it quietly the first time."""
    tf = sys.modules.get("tensorflow")
    return tf if tf is not None else _quiet_import()


def keras() -> ModuleType:
    """Return ``keras`` (Keras 3) running on the TensorFlow backend."""
    tensorflow()
    import keras

    return keras
