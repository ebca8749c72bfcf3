"""What ``train.precision`` means on this machine: whether the CPU computes bf16 natively,
the one line a user gets when it does not, and whether the training step is XLA-compiled.

``"bfloat16"`` is bf16 compute over float32 master weights: the variables, the loss and the
optimizer state stay float32, and the weights are cast to bf16 where they are used, so a
bf16 run's ``weights.npz`` is read unchanged by the numpy decoder.

Native bf16 (``amx_bf16``: oneDNN's AMX tile kernels; ``avx512_bf16``: AVX-512 BF16 dot
products) is what makes bf16 faster than float32; elsewhere oneDNN emulates it and bf16
still trains, only not faster, which :func:`precision_notice` says in one line.

The bf16 step is not XLA-compiled (:func:`step_jit`). TensorFlow's oneDNN matmul is what
reaches AMX (``ONEDNN_VERBOSE=1`` shows ``brg_matmul:avx10_1_512_amx`` for a bf16
``tf.matmul`` in a ``tf.function``), while XLA:CPU normalises bf16 dots to float32 plus
conversions unless its oneDNN rewrite is on, so under XLA a bf16 step pays the casts and
keeps float32 products. Measured on an AMX Xeon (BENCHMARKS.md): the recurrent step's
(64×256)·(256×1024) product in bf16 took about 2× its float32 time under XLA; a bf16 Keras
LSTM was 7× slower with XLA than without. Outside XLA, each time step's gate arithmetic
runs in the compiled cell (:mod:`textgen.model.cell_op`) rather than a dozen TensorFlow
kernels.
"""

from __future__ import annotations

from textgen.machine import cpu_flags

NATIVE_FLAGS = ("amx_bf16", "avx512_bf16")  # the CPU flags of native bf16 arithmetic


def native_bf16(flags: frozenset[str] | set[str] | None = None) -> bool:
    """Whether the CPU (or the given ``flags``) has native bf16 arithmetic."""
    flags = cpu_flags() if flags is None else flags
    return any(flag in flags for flag in NATIVE_FLAGS)


def precision_notice(precision: str, flags: frozenset[str] | set[str] | None = None) -> str | None:
    """One line for bf16 on a CPU without native bf16 (it trains, but not faster), else None."""
    if precision != "bfloat16" or native_bf16(flags):
        return None
    return (
        "note: this CPU has no native bf16 (no amx_bf16 or avx512_bf16 flag): "
        'train.precision = "bfloat16" is emulated and will not be faster than float32'
    )


def step_jit(precision: str, requested: bool) -> bool:
    """Whether the training step is XLA-compiled: ``train.jit_compile`` for float32, never
    for bf16 (XLA:CPU turns bf16 products back into float32 ones; see the module doc)."""
    return requested and precision == "float32"


def compute_dtype(precision: str) -> str:
    """The dtype the recurrent and output products run in for ``precision``."""
    if precision not in ("float32", "bfloat16"):
        raise ValueError(f'precision must be "float32" or "bfloat16", got {precision!r}')
    return precision
