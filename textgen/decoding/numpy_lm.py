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
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from textgen.model.lstm import LSTM_GATES, gate_block, gate_offset, gate_scale

State = list[tuple[np.ndarray, ...]]
GATE_BLOCKS = {"lstm": len(LSTM_GATES), "gru": 3, "rnn": 1}  # column blocks of a layer
TABLE_LIMIT = 1 << 24  # float32 entries (64 MiB) for the first layer's projection table


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
        self._prepare()

    def _prepare(self) -> None:
        """Precompute the decoding forms of the weights (see the module docstring)."""
        self._fast: list[RNNWeights] = []
        self._after: list[tuple[np.ndarray, np.ndarray]] = []  # lstm: tanh's scale, offset
        self._blocks: list[tuple[slice, ...]] = []  # lstm: the gates' columns, i f c o
        for layer in self.layers:
            if self.cell == "lstm":
                units, scale = layer.units, gate_scale(layer.units)
                layer = RNNWeights(
                    layer.kernel * scale, layer.recurrent * scale, layer.bias * scale
                )
                self._after.append((scale, gate_offset(units)))
                self._blocks.append(tuple(gate_block(g, units) for g in LSTM_GATES))
            self._fast.append(layer)
        first = self._fast[0]
        size = self.embedding.shape[0] * first.kernel.shape[1]
        self._table = self._project(self.embedding, first) if size <= TABLE_LIMIT else None

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
            tuple(np.zeros((batch, layer.units), np.float32) for _ in range(parts))
            for layer in self.layers
        ]

    def _cell(
        self, z: np.ndarray, index: int, state: tuple[np.ndarray, ...]
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        """One recurrent step of layer ``index``: ``z`` is the input projection (bias
        included for lstm/rnn), a fresh array that this step overwrites."""
        layer, h = self._fast[index], state[0]
        if self.cell == "lstm":  # weights pre-halved for i, f, o: one tanh for all gates
            z += h @ layer.recurrent
            np.tanh(z, out=z)
            scale, offset = self._after[index]
            z *= scale  # sigmoid gates: 0.5 · tanh + 0.5; the cell candidate: tanh itself
            z += offset
            i, f, g, o = (z[..., block] for block in self._blocks[index])
            np.multiply(i, g, out=i)
            c = f * state[1]
            c += i  # f·c + i·g
            h = np.tanh(c)
            h *= o
            return h, (h, c)
        if self.cell == "gru":
            n = layer.units
            inner = h @ layer.recurrent
            inner += layer.bias[1]
            zr = z[..., : 2 * n]  # update and reset gates together
            zr += inner[..., : 2 * n]
            zr *= 0.5  # sigmoid(x) = 0.5 * (tanh(0.5 * x) + 1), overflow-free
            np.tanh(zr, out=zr)
            zr += 1.0
            zr *= 0.5
            update, reset = zr[..., :n], zr[..., n:]
            cand = inner[..., 2 * n :]
            cand *= reset
            cand += z[..., 2 * n :]
            np.tanh(cand, out=cand)
            new = update * h
            np.subtract(1.0, update, out=reset)  # the reset gate is spent
            reset *= cand
            new += reset  # z·h + (1 - z)·candidate
            return new, (new,)
        z += h @ layer.recurrent
        np.tanh(z, out=z)
        return z, (z,)

    def _project(self, x: np.ndarray, layer: RNNWeights) -> np.ndarray:
        bias = layer.bias[0] if self.cell == "gru" else layer.bias
        out = x @ layer.kernel
        out += bias
        return out

    def _logits(self, x: np.ndarray) -> np.ndarray:
        out = x @ self.out_kernel
        out += self.out_bias
        return out

    def _inputs(self, ids: np.ndarray) -> np.ndarray:
        """The first layer's input projection of ``ids`` (any shape): a fresh array."""
        if self._table is not None:
            return self._table[ids]
        return self._project(self.embedding[ids], self._fast[0])

    def run(self, ids: np.ndarray, state: State | None = None) -> tuple[np.ndarray, State]:
        """Feed ``ids`` (batch, time) from ``state``; return logits (batch, time, vocab), state."""
        ids = np.atleast_2d(np.asarray(ids))
        if state is None:
            state = self.initial_state(ids.shape[0])
        if len(state) != len(self._fast):
            raise ValueError(f"a state for {len(self._fast)} layers, got {len(state)}")
        new_state: State = []
        x = None
        for index, layer_state in enumerate(state):
            # all time steps' input projections in one product
            xw = self._inputs(ids) if index == 0 else self._project(x, self._fast[index])
            outs = []
            for t in range(ids.shape[1]):
                h, layer_state = self._cell(xw[:, t], index, layer_state)
                outs.append(h)
            x = np.stack(outs, axis=1)
            new_state.append(layer_state)
        return self._logits(x), new_state

    def step(self, ids: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        """One token per sequence: ``ids`` (batch,) → logits (batch, vocab) and the new state."""
        if len(state) != len(self._fast):
            raise ValueError(f"a state for {len(self._fast)} layers, got {len(state)}")
        ids = np.asarray(ids)
        new_state: State = []
        x = self._inputs(ids)
        for index, layer_state in enumerate(state):
            if index:
                x = self._project(x, self._fast[index])
            x, layer_state = self._cell(x, index, layer_state)
            new_state.append(layer_state)
        return self._logits(x), new_state
