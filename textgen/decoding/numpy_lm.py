"""The trained language model as plain numpy arrays, stepping one token at a time.

Generation never needs TensorFlow: a run directory stores its weights as ``weights.npz``
and :class:`NumpyLM` runs the same Embedding → RNN×N → Dense computation as the Keras
model (Keras 3 gate layouts: LSTM ``i, f, c, o``; GRU ``z, r, h`` with ``reset_after``).
It carries the recurrent state, so each new token costs one step and the prefix is never
fed again; the seed is fed once, with its input projections done as one matrix product.

Batch-1 decoding is dominated by per-call overhead, which is microseconds in numpy and
milliseconds for a TensorFlow call, and the process starts without importing TensorFlow.
Two exact rewrites cut the work per step: the first layer's input projection is a lookup
in ``embedding @ kernel + bias`` computed once (when that table is small enough), and the
LSTM's sigmoid gates use ``sigmoid(z) = (tanh(z/2) + 1)/2`` with the halving folded into
the weights (scaling by 0.5 is exact in floating point), so one ``tanh`` covers all gates.

A step is a handful of numpy calls per layer, all float32, with no Python loop over rows:
the pre-activations are one fresh array per layer that the gate nonlinearities then
overwrite in place (``out=``), so a step allocates little more than the state and logits
it returns. It never writes into the arrays it is given (a caller may keep an old state,
as beam search and the server do) and returns new arrays each call. Every elementwise
operation is the one the straightforward formulas perform, in the same order, so the
results are those of the textbook cell to the last bit of the matrix products.

**The LSTM and the GRU run gate-major**, each gate's weights and pre-activations
contiguous (:mod:`textgen.decoding.gated` holds that arithmetic and says why).

**Products are sized for OpenBLAS's copy-free kernel, where it has one.** numpy's
OpenBLAS copies ("packs") a whole weight matrix on every ``sgemm`` call unless the product
is small enough for its small-matrix kernel, which reads the weights in place: about
``rows · inner · columns <= 10⁶`` (:data:`SMALL_PRODUCT`, a threshold of that build, found
by measuring). A 2×256 LSTM's products at batch 4-32 are 1-8 million multiply-adds, so
each paid a 1 MB copy per step. A gate-major step multiplies each gate's matrix by groups
of rows (:meth:`NumpyLM.row_groups`: batch 16 as 2 × 8 rows, 32 as 4 × 8, 31 as 2 × 11 and
9), the groups in one stacked ``matmul`` call; the SimpleRNN and the output layer split a
product into column blocks instead (:func:`column_width`). Each output element is still
one dot product over the same inner dimension, so results agree with the one-product form
to float32 rounding (in the measurements, to the bit); only which BLAS kernel computes it
changes. That kernel runs on the calling thread, so the BLAS thread count does not matter
for these products (a threaded product has to wake OpenBLAS's sleeping threads, which on
a busy machine cost milliseconds). Models too big for the small kernel keep one product
per gate. Measured on one core (CPU time, weights in cache): a product at batch 4 took
21 µs where the one (4, 256) × (256, 1024) product took 63, at batch 8 41 against 77, at
batch 16 80 against 98.

On x86-64 only OpenBLAS's SkylakeX, Cooperlake and Sapphire Rapids kernel sets have that
kernel (:func:`textgen.decoding.blas.small_matrix_kernel`; other machines keep the
split). With any other x86-64 set (an AVX-512 AMD EPYC gets ``Haswell``) every piece packs
its weights again and the split products were slower, so there each gate is one product
(:func:`splits_products`), and these products take OpenBLAS's threaded path again
(``textgen serve`` runs one BLAS thread by default).

**Every other step starts with the top layer's recurrent product** (it needs only the
old state), so the step starts on the weights the previous one ended on: a 2×256 LSTM
reads 3.1 MB of weights a token and a core's L2 holds 2 MB. The outputs are the same
either way, to the bit.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from textgen.decoding.blas import small_matrix_kernel
from textgen.decoding.gated import (
    gate_product,
    group_rows,
    gru_gates,
    gru_table,
    gru_weights,
    lstm_gates,
    lstm_table,
    lstm_weights,
    row_groups,
)
from textgen.model.lstm import LSTM_GATES

State = list[tuple[np.ndarray, ...]]
GATE_BLOCKS = {"lstm": len(LSTM_GATES), "gru": 3, "rnn": 1}  # column blocks of a layer
TABLE_LIMIT = 1 << 24  # float32 entries (64 MiB) for the first layer's projection table
SMALL_PRODUCT = 1_000_000  # rows · inner · columns that OpenBLAS's small kernel takes
MIN_WIDTH = 32  # narrowest column block worth a call of its own
MAX_BLOCKS = 16  # most column blocks a product is split into


@functools.cache
def splits_products() -> bool:
    """Whether products are split for the small-matrix kernel (module docstring): only
    where numpy's BLAS has one. On an AVX-512 AMD EPYC (OpenBLAS ``Haswell``, one core),
    the (32, 256) times four (256, 256) gate product took 280 µs as 4 × 8 rows against
    169 µs whole, and 146 against 101 at batch 16. Asked once per process (the output
    layer's :func:`column_width` asks it every step)."""
    return small_matrix_kernel()


def column_width(rows: int, inner: int, columns: int) -> int | None:
    """The column block width that splits a ``(rows, inner) @ (inner, columns)`` product
    into products small enough for OpenBLAS's copy-free kernel, or None for one product
    (it is small already, a matrix-vector product, or the blocks would be too narrow)."""
    if rows < 3 or rows * inner * columns <= SMALL_PRODUCT or not splits_products():
        return None
    width = 1 << max(0, (SMALL_PRODUCT // (rows * inner)).bit_length() - 1)  # a power of 2
    if width < MIN_WIDTH or -(-columns // width) > MAX_BLOCKS:
        return None
    return width


def matmul(x: np.ndarray, weights: np.ndarray, blocks: dict[int, list[np.ndarray]]) -> np.ndarray:
    """``x @ weights`` as a fresh array, in column blocks where :func:`column_width` says
    so; ``blocks`` caches the contiguous column blocks of ``weights`` by width."""
    rows = x.shape[0] if x.ndim == 2 else 1
    width = column_width(rows, *weights.shape)
    if width is None or x.ndim != 2:
        return x @ weights
    parts = blocks.get(width)
    if parts is None:
        columns = weights.shape[1]
        parts = [np.ascontiguousarray(weights[:, i : i + width]) for i in range(0, columns, width)]
        blocks[width] = parts
    out = np.empty((rows, weights.shape[1]), np.float32)
    for i, part in enumerate(parts):
        np.matmul(x, part, out=out[:, i * width : i * width + part.shape[1]])
    return out


@dataclass
class RNNWeights:
    """One recurrent layer: ``kernel`` (in, g·H), ``recurrent`` (H, g·H), ``bias``."""

    kernel: np.ndarray
    recurrent: np.ndarray
    bias: np.ndarray

    @property
    def units(self) -> int:
        return self.recurrent.shape[0]


class NumpyLM:
    """A recurrent language model that maps ``(ids, state)`` to ``(logits, state)``."""

    def __init__(
        self,
        cell: str,
        embedding: np.ndarray,
        layers: list[RNNWeights],
        out_kernel: np.ndarray,
        out_bias: np.ndarray,
    ) -> None:
        if cell not in GATE_BLOCKS:
            raise ValueError(f"unknown cell {cell!r}")
        self.cell = cell
        self.embedding = np.asarray(embedding, dtype=np.float32)
        self.layers = layers
        self.out_kernel = np.asarray(out_kernel, dtype=np.float32)
        self.out_bias = np.asarray(out_bias, dtype=np.float32)
        self._native: Any = None  # the compiled step, once use_native() built it
        self._prepare()

    def use_native(self) -> bool:
        """Take the compiled multi-core step (:mod:`textgen.decoding.native`) from now on,
        where this model has one: an LSTM with layers of one width, a first-layer table
        within :data:`TABLE_LIMIT`, and numba installed. Returns whether it does. The
        step compiles here (about 25 s the first time, then loaded from numba's disk
        cache); its numbers are the numpy step's to float32 rounding, so a model's greedy
        text can differ from the numpy step's where two tokens nearly tie."""
        from textgen.decoding.native import native_step

        self._native = native_step(
            self.cell, self.embedding, self.layers, self.out_kernel, self.out_bias, TABLE_LIMIT
        )
        return self._native is not None

    @property
    def native(self) -> bool:
        """Whether :meth:`step` runs the compiled step (:meth:`use_native`)."""
        return self._native is not None

    def _prepare(self) -> None:
        """Precompute the decoding forms of the weights (see the module docstring)."""
        self._units = [layer.units for layer in self.layers]
        self._parts: dict[tuple[int, str], dict[int, list[np.ndarray]]] = {(-1, "out"): {}}
        self._table: np.ndarray | None = None
        if self.cell in ("lstm", "gru"):
            self._prepare_gated()
            return
        self._fast: list[RNNWeights] = list(self.layers)
        # column blocks of each product's weights by width, made on first use (matmul)
        for index in range(len(self._fast)):
            self._parts[index, "in"], self._parts[index, "rec"] = {}, {}
        first = self._fast[0]
        if self.embedding.shape[0] * first.kernel.shape[1] <= TABLE_LIMIT:
            self._table = self._project(self.embedding, first, None)

    def _prepare_gated(self) -> None:
        """The LSTM's or the GRU's weights gate-major (:mod:`textgen.decoding.gated`),
        with the first layer's projection table ``(gates, vocab, units)`` when it is
        small enough."""
        lstm = self.cell == "lstm"
        self._gm = lstm_weights(self.layers) if lstm else gru_weights(self.layers)
        first = self.layers[0]
        if self.embedding.shape[0] * first.kernel.shape[1] <= TABLE_LIMIT:
            self._table = (lstm_table if lstm else gru_table)(self.embedding, first)
        # rows for the small kernel; without one, one product per gate (row_groups: 1)
        self._group_rows = group_rows(self._gm, SMALL_PRODUCT) if splits_products() else 0
        self._early = False  # whether the last step did the top recurrent product first

    @property
    def vocab_size(self) -> int:
        return self.out_kernel.shape[1]

    # -- persistence ---------------------------------------------------------------------
    def arrays(self) -> dict[str, np.ndarray]:
        """Named arrays for ``np.savez`` (the ``weights.npz`` of a run directory)."""
        out = {
            "embedding": self.embedding,
            "out_kernel": self.out_kernel,
            "out_bias": self.out_bias,
        }
        for i, layer in enumerate(self.layers):
            out[f"rnn_{i}_kernel"] = layer.kernel
            out[f"rnn_{i}_recurrent"] = layer.recurrent
            out[f"rnn_{i}_bias"] = layer.bias
        return out

    def save(self, path: str | Path) -> None:
        with open(path, "wb") as fh:
            np.savez(fh, cell=np.array(self.cell), **self.arrays())

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> NumpyLM:
        cell = str(arrays["cell"])
        n = sum(1 for key in arrays if key.endswith("_recurrent"))
        layers = [
            RNNWeights(
                np.asarray(arrays[f"rnn_{i}_kernel"], np.float32),
                np.asarray(arrays[f"rnn_{i}_recurrent"], np.float32),
                np.asarray(arrays[f"rnn_{i}_bias"], np.float32),
            )
            for i in range(n)
        ]
        return cls(cell, arrays["embedding"], layers, arrays["out_kernel"], arrays["out_bias"])

    @classmethod
    def from_model(cls, model: Any) -> NumpyLM:
        """The twin of a Keras language model (imports TensorFlow, as the model did)."""
        from textgen.model.network import weight_arrays

        return cls.from_arrays(weight_arrays(model))

    @classmethod
    def load(cls, path: str | Path) -> NumpyLM:
        with np.load(path, allow_pickle=False) as data:
            return cls.from_arrays({key: data[key] for key in data.files})

    # -- computation ---------------------------------------------------------------------
    def initial_state(self, batch: int = 1) -> State:
        """Zero state for ``batch`` sequences: ``(h, c)`` per LSTM layer, ``(h,)`` otherwise."""
        parts = 2 if self.cell == "lstm" else 1
        return [
            tuple(np.zeros((batch, units), np.float32) for _ in range(parts))
            for units in self._units
        ]

    def _cell(
        self, z: np.ndarray, index: int, state: tuple[np.ndarray, ...]
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        """One SimpleRNN step of layer ``index``: ``z`` is the input projection (bias
        included), a fresh array that this step overwrites."""
        layer, h = self._fast[index], state[0]
        z += matmul(h, layer.recurrent, self._parts[index, "rec"])
        np.tanh(z, out=z)
        return z, (z,)

    def _project(self, x: np.ndarray, layer: RNNWeights, index: int | None) -> np.ndarray:
        """``x @ kernel + bias`` of a SimpleRNN layer (``index`` None: one product)."""
        bias = layer.bias
        out = (
            x @ layer.kernel if index is None else matmul(x, layer.kernel, self._parts[index, "in"])
        )
        out += bias
        return out

    def _logits(self, x: np.ndarray) -> np.ndarray:
        out = matmul(x, self.out_kernel, self._parts[-1, "out"])
        out += self.out_bias
        return out

    def _check(self, state: State) -> None:
        if len(state) != len(self._units):
            raise ValueError(f"a state for {len(self._units)} layers, got {len(state)}")

    def run(self, ids: np.ndarray, state: State | None = None) -> tuple[np.ndarray, State]:
        """Feed ``ids`` (batch, time) from ``state``; return logits (batch, time, vocab), state."""
        ids = np.atleast_2d(np.asarray(ids))
        if state is None:
            state = self.initial_state(ids.shape[0])
        self._check(state)
        if self.cell != "rnn":
            return self._gated_run(ids, state)
        new_state: State = []
        x = None
        for index, layer_state in enumerate(state):
            # all time steps' input projections in one product
            layer = self._fast[index]
            xw = self._inputs(ids) if index == 0 else self._project(x, layer, index)
            outs = []
            for t in range(ids.shape[1]):
                h, layer_state = self._cell(xw[:, t], index, layer_state)
                outs.append(h)
            x = np.stack(outs, axis=1)
            new_state.append(layer_state)
        return self._logits(x), new_state

    def _inputs(self, ids: np.ndarray) -> np.ndarray:
        """A SimpleRNN's first input projection of ``ids`` (any shape): a fresh array."""
        if self._table is not None:
            return self._table[ids]
        return self._project(self.embedding[ids], self._fast[0], 0)

    def step(self, ids: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        """One token per sequence: ``ids`` (batch,) → logits (batch, vocab) and the new state."""
        self._check(state)
        ids = np.asarray(ids)
        if self.cell != "rnn":
            if ids.ndim != 1:
                raise ValueError(f"step takes one id per sequence, shape (batch,), got {ids.shape}")
            if self._native is not None:
                return self._native.step(ids, state)
            return self._gated_step(ids, state)
        new_state: State = []
        x = self._inputs(ids)
        for index, layer_state in enumerate(state):
            if index:
                x = self._project(x, self._fast[index], index)
            x, layer_state = self._cell(x, index, layer_state)
            new_state.append(layer_state)
        return self._logits(x), new_state

    # -- the LSTM and the GRU, gate-major ----------------------------------------------
    def row_groups(self, batch: int) -> tuple[int, int]:
        """``(groups, rows)`` of a gate-major step at ``batch`` rows for this model's
        weights (:func:`textgen.decoding.gated.row_groups`)."""
        return row_groups(batch, self._group_rows)

    # a method too: bench/step.py --breakdown times it on this and on older numpy_lm files
    _gate_product = staticmethod(gate_product)

    def _gated_layer(
        self, z: np.ndarray, rec: np.ndarray, index: int, state: tuple[np.ndarray, ...]
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        """One LSTM or GRU layer from its input projection ``z`` (bias included) and its
        recurrent product ``rec``, both gate-major and fresh: the output and new state."""
        if self.cell == "lstm":
            z += rec
            h, c = lstm_gates(z, state[1])
            return h, (h, c)
        rec += self._gm[index]["bias_rec"]
        h = gru_gates(z, rec, state[0])
        return h, (h,)

    def _gated_step(self, ids: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        """:meth:`step` for an LSTM or a GRU (module docstring: gate-major, row groups)."""
        split = self.row_groups(ids.shape[0])
        last = len(state) - 1
        # Every other step, the top layer's recurrent product (it needs only the old
        # state) goes first: the step then starts on the weights the previous one ended
        # on, which are still in the core's cache when all of them are not (three 1 MB
        # matrices through a 2 MB L2: 101 against 88 µs at batch 1). Same results.
        self._early = early = not self._early and last > 0
        top = None
        if early:
            top = self._gate_product(state[last][0], self._gm[last]["recurrent"], split)
        new_state: State = []
        x = self.embedding[ids] if self._table is None else None
        for index, layer_state in enumerate(state):
            weights = self._gm[index]
            if index == 0 and self._table is not None:
                z = np.take(self._table, ids, axis=1)  # (gates, batch, units), bias included
            else:
                z = self._gate_product(x, weights["kernel"], split)
                z += weights["bias"]
            if index == last and top is not None:
                rec = top
            else:
                rec = self._gate_product(layer_state[0], weights["recurrent"], split)
            x, layer_state = self._gated_layer(z, rec, index, layer_state)
            new_state.append(layer_state)
        return self._logits(x), new_state

    def _gated_run(self, ids: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        """:meth:`run` for an LSTM or a GRU: each layer's input projections of all time
        steps in one product ``(gates, batch, time, units)``, then one step per token."""
        steps, split = ids.shape[1], self.row_groups(ids.shape[0])
        new_state: State = []
        x = self.embedding[ids] if self._table is None else None  # (batch, time, inner)
        for index, layer_state in enumerate(state):
            weights = self._gm[index]
            if index == 0 and self._table is not None:
                xw = np.take(self._table, ids, axis=1)  # (gates, batch, time, units)
            else:
                xw = np.matmul(x, weights["kernel"][:, None])
                xw += weights["bias"][:, None]
            outs = []
            for t in range(steps):
                rec = self._gate_product(layer_state[0], weights["recurrent"], split)
                h, layer_state = self._gated_layer(xw[:, :, t].copy(), rec, index, layer_state)
                outs.append(h)
            x = np.stack(outs, axis=1)
            new_state.append(layer_state)
        return self._logits(x), new_state
