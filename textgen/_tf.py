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

XLA keeps what it compiles in ``$TEXTGEN_CACHE/xla`` (XLA's persistent compilation cache,
keyed by the computation, so a changed model or textgen never finds a stale entry): the
second ``textgen train`` of a model finds its compiled step there instead of compiling it
again (its compilation 1.0-1.5 s instead of 2.5-5 s on the benchmark machine, BENCHMARKS.md). A
``TF_XLA_FLAGS`` that already names a cache directory is left as it is; delete the folder
to reclaim its space.

Importing TensorFlow imports Keras, whose image-plotting helpers (``keras.visualization``)
import ``matplotlib.pyplot`` wherever matplotlib is installed (the ``plot`` extra): 0.4-0.55 s
of every ``textgen train``'s start on the benchmark machine, for functions textgen never
calls. The import therefore runs with matplotlib hidden (Keras' helpers then see no
matplotlib, as on a machine without it); ``textgen plot`` imports it afterwards as usual.

Every traced function goes through :func:`traced`, which turns autograph off: none of
textgen's traced code has tensor-dependent Python control flow (its loops are explicit
``tf.while_loop`` calls), so autograph only rewrote source, and tracing the char 2x256 train
step took 4.8-5.7 s with it against 0.5-0.8 s without (BENCHMARKS.md, first step).
``tests/test_tf_setup.py`` fails on a bare ``tf.function`` elsewhere in the package.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

XLA_CACHE_FLAG = "--tf_xla_persistent_cache_directory"


def cache_folder() -> Path:
    """textgen's cache: ``$TEXTGEN_CACHE``, else ``textgen`` in the user cache folder."""
    root = os.environ.get("TEXTGEN_CACHE") or os.path.join(  # corpus.cache.CACHE_ENV
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "textgen"
    )
    return Path(root)


def _xla_cache_flags() -> None:
    """Point XLA's persistent compilation cache at ``$TEXTGEN_CACHE/xla`` (or the user
    cache folder's), unless ``TF_XLA_FLAGS`` already names one or the folder cannot be
    made; it must be set before TensorFlow loads."""
    flags = os.environ.get("TF_XLA_FLAGS", "")
    if XLA_CACHE_FLAG in flags:
        return
    folder = cache_folder() / "xla"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return  # a read-only home: compile every time, as before
    os.environ["TF_XLA_FLAGS"] = f"{flags} {XLA_CACHE_FLAG}={folder}".strip()


def _import_without_matplotlib() -> ModuleType:
    """``import tensorflow`` with matplotlib hidden unless it is already imported (the
    module docstring says why): a ``None`` in ``sys.modules`` makes its import raise
    ``ImportError``, which Keras' plotting helpers catch. The entry is removed afterwards,
    so a later ``import matplotlib`` finds the real package."""
    hide = "matplotlib" not in sys.modules
    if hide:
        sys.modules["matplotlib"] = None  # type: ignore[assignment]
    try:
        import tensorflow as tf
    finally:
        if hide and sys.modules.get("matplotlib", 0) is None:
            del sys.modules["matplotlib"]
    return tf


def _quiet_import() -> ModuleType:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")  # see the module docstring
    _xla_cache_flags()
    if os.environ.get("TEXTGEN_TF_VERBOSE"):
        return _import_without_matplotlib()
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        tf = _import_without_matplotlib()
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


def traced(fn: Any = None, /, **options: Any) -> Any:
    """``tf.function(fn, autograph=False, **options)``; without ``fn``, a decorator.

    The one way textgen traces a function (the module docstring says why autograph is off).
    ``options`` are ``tf.function``'s own (``jit_compile``, ``input_signature``, ...).

    >>> step = traced(lambda x: x + 1, jit_compile=True)   # doctest: +SKIP
    """
    if "autograph" in options:
        raise TypeError("traced() always turns autograph off; do not pass autograph")
    tf = tensorflow()
    if fn is None:
        return lambda f: tf.function(f, autograph=False, **options)
    return tf.function(fn, autograph=False, **options)
