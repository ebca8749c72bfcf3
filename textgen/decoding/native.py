"""The LSTM step compiled to machine code (numba), split across the CPU's cores: the
decoder's fast path where ``numba`` is installed (``pip install 'textgen[serve]'``).

**Why.** :class:`textgen.decoding.numpy_lm.NumpyLM`'s step is a handful of numpy calls
per layer, all on one core: at batch 1 most of its time is numpy's per-call overhead and
reading 3 MB of weights (2×256) from L3, because a core's L2 holds 2 MB. This step is one
compiled call. Each of ``parts`` threads owns a slice of every layer's units (all four
gates of those units, pre-activations to the new ``h`` and ``c``), so its share of the
weights stays in its own core's cache from step to step, and a layer's products and cell
run in one pass with no numpy temporaries. Threads meet once per layer and once for the
output layer.

**The same numbers as the numpy step, to float32 rounding** (a product's sums run in
another order, and ``tanh`` is ``native_kernels._tanh``, within 5e-7 of the true one,
where numpy's is within an ulp): the tests hold logits to 1e-5. **A row's result never
depends on the other rows** or on the thread count: rows are taken four at a time, the
rest two or one at a time, by product kernels that keep a row's sums alike (checked for each
model when it is built, :meth:`NativeLSTM._rows_agree`; where they differ, the remaining
rows run as blocks of four), and the fast-math flags leave out the two that let
the compiler pick a different division or function per code path (``arcp``, ``afn``:
with them, a vectorized loop and its scalar fallback, chosen at run time by the arrays'
addresses, rounded differently). So a step gives a row the same numbers alone and among 31
others (the server's prefill of a seed still runs on numpy, :meth:`NumpyLM.run`).

**Wide vectors.** LLVM prefers 256-bit vectors on AVX-512 CPUs; this module asks numba
for 512-bit ones (``-prefer-256-bit``) before numba is first imported, unless
``NUMBA_CPU_FEATURES`` is set already. On the 2-core Xeon a layer at batch 1 took 26.8
against 44.0 µs with them.

:func:`native_step` says whether a model can take this path (an LSTM whose layers have
one width, with a first-layer table, and numba that imports and compiles here) and builds
it. The compiled code checks no bounds, so :meth:`NativeLSTM.step` checks the ids and the
state's shapes first.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from textgen.decoding.gated import gate_major
from textgen.machine import cores as machine_cores
from textgen.model.lstm import gate_scale

MAX_PARTS = 8  # most slices a layer's units are split into


def _wide_vectors() -> None:
    """Ask LLVM for 512-bit vectors where the CPU has AVX-512 (before numba's import)."""
    if "NUMBA_CPU_FEATURES" in os.environ:
        return
    try:
        import llvmlite.binding as llvm
    except ImportError:
        return
    features = llvm.get_host_cpu_features()
    if features.get("avx512f"):
        os.environ["NUMBA_CPU_FEATURES"] = features.flatten() + ",-prefer-256-bit"


_KERNEL: Any = None


def _kernel() -> Any:
    """The compiled step (numba imported and the kernels defined on first use)."""
    global _KERNEL
    if _KERNEL is None:
        _wide_vectors()
        from textgen.decoding import native_kernels

        _KERNEL = native_kernels.lstm_step
    return _KERNEL


def available() -> bool:
    """Whether numba is installed (without importing it)."""
    import importlib.util

    return importlib.util.find_spec("numba") is not None


def default_parts(units: int, cores: int | None = None) -> int:
    """How many slices to split ``units`` into: one per core (at most :data:`MAX_PARTS`),
    fewer where ``units`` does not divide evenly or a slice would be under 16 units."""
    if cores is None:
        cores = machine_cores()
    for parts in range(max(1, min(cores, MAX_PARTS)), 0, -1):
        if units % parts == 0 and (units // parts >= 16 or parts == 1):
            return parts
    return 1


def _slices(a: np.ndarray, units: int, parts: int) -> np.ndarray:
    """The columns of ``a`` (..., 4·units) regrouped as ``(parts, ..., width)``: part
    ``t`` holds the gates ``gated.GATE_MAJOR`` of units ``t·chunk .. (t+1)·chunk``
    (:func:`~textgen.decoding.gated.gate_major`'s stack, cut into ``parts``), then zeros
    up to ``width``, 4·chunk rounded up to a multiple of 16 (the products' blocks)."""
    chunk = units // parts
    stacked = gate_major(a, units)  # (4, ..., units)
    cut = stacked.reshape(*stacked.shape[:-1], parts, chunk)  # (4, ..., parts, chunk)
    moved = np.moveaxis(np.moveaxis(cut, -2, 0), 1, -2)  # (parts, ..., 4, chunk)
    return _padded(moved.reshape(*moved.shape[:-2], 4 * chunk))


def _padded(a: np.ndarray) -> np.ndarray:
    """``a`` with zero columns added to make its last axis a multiple of 16."""
    width = -(-a.shape[-1] // 16) * 16
    out = np.zeros((*a.shape[:-1], width), np.float32)
    out[..., : a.shape[-1]] = a
    return out


def _transposed(a: np.ndarray) -> np.ndarray:
    """A product's weights (..., inner, width) as (..., width, inner), which the compiled
    products read: each output is a dot product over one contiguous row."""
    return np.ascontiguousarray(np.swapaxes(a, -1, -2))


class NativeLSTM:
    """An LSTM language model's weights in the compiled step's layout, and the step.

    ``layers`` are :class:`~textgen.decoding.numpy_lm.RNNWeights`; every layer has the
    same width and ``embedding @ kernel`` of the first fits in memory (the caller checks,
    :func:`native_step`)."""

    def __init__(
        self,
        embedding: np.ndarray,
        layers: Sequence[Any],
        out_kernel: np.ndarray,
        out_bias: np.ndarray,
        parts: int | None = None,
    ) -> None:
        units = layers[0].units
        if (
            embedding.shape[0] != out_kernel.shape[1]
            or any(x.units != units for x in layers)
            or any(x.kernel.shape[0] != units for x in layers[1:])
        ):  # the step reads unchecked
            raise ValueError("the compiled step takes LSTM layers of one width and an "
                             "embedding with a row per output token")  # fmt: skip
        self.parts = parts = default_parts(units) if parts is None else parts
        scale = gate_scale(units)  # the sigmoid gates pre-halved, as the numpy step does
        first = layers[0]
        table = embedding @ (first.kernel * scale)
        table += first.bias * scale
        self.table = _slices(table, units, parts)  # (parts, vocab, width)
        recurrent = [_slices(x.recurrent * scale, units, parts) for x in layers]
        self.recurrent = _transposed(np.stack(recurrent))  # (layers, parts, width, units)
        deeper = layers[1:] or layers[:1]  # a 1-layer model passes a placeholder
        self.kernel = _transposed(
            np.stack([_slices(x.kernel * scale, units, parts) for x in deeper])
        )
        self.bias = np.stack([_slices(x.bias * scale, units, parts) for x in deeper])
        vocab = out_kernel.shape[1]
        share = -(-vocab // parts)  # the logits each part computes
        padded = np.zeros((units, share * parts), np.float32)
        padded[:, :vocab] = out_kernel
        bias = np.zeros(share * parts, np.float32)
        bias[:vocab] = out_bias
        by_part = _padded(padded.reshape(units, parts, share).transpose(1, 0, 2))
        self.out_kernel = _transposed(by_part)  # (parts, width, units)
        self.out_bias = _padded(bias.reshape(parts, share))
        self.units, self.vocab, self.layers = units, vocab, len(layers)
        self.rows_agree = True  # the step reads it: the check runs the exact kernels
        self.rows_agree = self._rows_agree()

    def _rows_agree(self) -> bool:
        """Whether a row gets, bit for bit, the same numbers in a block of four, in a
        pair and alone (the product kernels' sums vectorized alike, as LLVM did on every
        CPU measured). Where not, the rows after the blocks of four run as short blocks
        of four instead: slower at batches that are not a multiple of four, and a row's
        numbers again independent of the batch."""
        rng = np.random.default_rng(0)
        ids = rng.integers(0, self.vocab, 4)
        state = [
            tuple(rng.uniform(-1, 1, (4, self.units)).astype(np.float32) for _ in "hc")
            for _ in range(self.layers)
        ]
        together, together_state = self.step(ids, state)
        for first, last in ((0, 2), (2, 4), (0, 1), (1, 2), (3, 4)):
            rows = slice(first, last)
            part, part_state = self.step(ids[rows], [(h[rows], c[rows]) for h, c in state])
            if not np.array_equal(part, together[rows]) or not all(
                np.array_equal(p, q[rows])
                for pair, whole in zip(part_state, together_state, strict=True)
                for p, q in zip(pair, whole, strict=True)
            ):
                return False
        return True

    def step(
        self, ids: np.ndarray, state: Sequence[tuple[np.ndarray, np.ndarray]]
    ) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
        """One token per row: ``ids`` (batch,) and the ``(h, c)`` of each layer → logits
        (batch, vocab) and new ``(h, c)`` arrays (the given ones are not written)."""
        ids = np.asarray(ids)
        batch = ids.shape[0] if ids.ndim == 1 else -1
        if batch < 0 or ids.dtype.kind not in "iu":
            raise ValueError(
                f"step takes integer ids of shape (batch,), got {ids.dtype} {ids.shape}"
            )
        if batch <= 256:  # a server's batches: Python's min/max of a list beat numpy's
            values = ids.tolist()
            low, high = (min(values), max(values)) if values else (0, 0)
        else:
            low, high = int(ids.min()), int(ids.max())
        if batch and not -self.vocab <= low <= high < self.vocab:
            raise IndexError(f"a token id outside the vocabulary of {self.vocab}")
        shape = (self.layers, batch, self.units)
        if len(state) != self.layers or any(
            np.shape(h) != shape[1:] or np.shape(c) != shape[1:] for h, c in state
        ):  # the compiled code checks no bounds
            got = [(np.shape(h), np.shape(c)) for h, c in state]
            raise ValueError(f"a state of (h, c) shaped {shape[1:]} for {shape[0]} layers, "
                             f"got {got}")  # fmt: skip
        hs = np.empty(shape, np.float32)  # (layers, B, U), the given arrays copied in
        cs = np.empty(shape, np.float32)
        for i, (h, c) in enumerate(state):
            hs[i] = h
            cs[i] = c
        if low < 0:
            ids = np.where(ids < 0, ids.astype(np.int64) + self.vocab, ids)  # as numpy indexes
        new = np.empty((2, len(state), batch, self.units), np.float32)  # new h and c
        logits = np.empty((batch, self.vocab), np.float32)
        gates = self.recurrent.shape[-2]
        scratch = np.empty((self.parts, batch, max(gates, self.out_bias.shape[1])), np.float32)
        _kernel()(
            np.ascontiguousarray(ids, np.int64), self.table, self.kernel, self.bias,
            self.recurrent, self.out_kernel, self.out_bias, hs, cs, new, logits, scratch,
            self.units // self.parts, self.rows_agree,
        )  # fmt: skip
        return logits, [(new[0, i], new[1, i]) for i in range(len(state))]


def native_step(
    cell: str, embedding: np.ndarray, layers: Sequence[Any], out_kernel: np.ndarray,
    out_bias: np.ndarray, table_limit: int,
) -> NativeLSTM | None:  # fmt: skip
    """The compiled step for this model, compiled (or loaded from numba's cache) and
    checked (:meth:`NativeLSTM._rows_agree`), or None where it has none: not an LSTM,
    layers of different widths, an embedding whose rows are not the output's
    vocabulary (the compiled step checks ids against one of them), a first-layer table
    over ``table_limit`` entries, numba not installed, or numba that fails to import or
    compile here (the numpy step then serves, as for the others)."""
    if cell != "lstm" or not available():
        return None
    units = layers[0].units
    if any(x.units != units for x in layers) or any(x.kernel.shape[0] != units for x in layers[1:]):
        return None
    if embedding.shape[0] != out_kernel.shape[1]:
        return None
    if embedding.shape[0] * 4 * units > table_limit:
        return None
    try:  # building it compiles the step and runs it (NativeLSTM._rows_agree)
        step = NativeLSTM(embedding, layers, out_kernel, out_bias)
    except (ImportError, OSError, RuntimeError) as err:  # numba too old, no cache, ...
        import warnings

        warnings.warn(
            f"the compiled step is unavailable ({err}); using the numpy step", stacklevel=2
        )
        return None
    return step
