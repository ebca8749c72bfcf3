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
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from textgen.model.lstm import gate_scale

State = list[tuple[np.ndarray, ...]]
GATES = {"lstm": 4, "gru": 3, "rnn": 1}
TABLE_LIMIT = 1 << 24  # float32 entries (64 MiB) for the first layer's projection table


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (np.tanh(0.5 * x) + 1.0)  # overflow-free form of 1/(1+e^-x)


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
        if cell not in GATES:
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
        for layer in self.layers:
            if self.cell == "lstm":
                scale = gate_scale(layer.units)
                layer = RNNWeights(
                    layer.kernel * scale, layer.recurrent * scale, layer.bias * scale
                )
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

    def _cell(self, xw: np.ndarray, layer: RNNWeights, state: tuple[np.ndarray, ...]):
        """One recurrent step given the input projection ``xw`` (bias included for lstm/rnn)."""
        h = state[0]
        if self.cell == "lstm":  # weights pre-halved for i, f, o: one tanh for all gates
            n = layer.units
            t = np.tanh(xw + h @ layer.recurrent)
            gates = t[:, : 2 * n] * 0.5 + 0.5  # sigmoid(i), sigmoid(f)
            c = gates[:, n:] * state[1] + gates[:, :n] * t[:, 2 * n : 3 * n]
            h = (t[:, 3 * n :] * 0.5 + 0.5) * np.tanh(c)
            return h, (h, c)
        if self.cell == "gru":
            inner = h @ layer.recurrent + layer.bias[1]
            xz, xr, xh = np.split(xw, 3, axis=-1)
            hz, hr, hh = np.split(inner, 3, axis=-1)
            z = _sigmoid(xz + hz)
            r = _sigmoid(xr + hr)
            cand = np.tanh(xh + r * hh)
            h = z * h + (1.0 - z) * cand
            return h, (h,)
        h = np.tanh(xw + h @ layer.recurrent)
        return h, (h,)

    def _project(self, x: np.ndarray, layer: RNNWeights) -> np.ndarray:
        bias = layer.bias[0] if self.cell == "gru" else layer.bias
        return x @ layer.kernel + bias

    def run(self, ids: np.ndarray, state: State | None = None) -> tuple[np.ndarray, State]:
        """Feed ``ids`` (batch, time) from ``state``; return logits (batch, time, vocab), state."""
        ids = np.atleast_2d(np.asarray(ids))
        if state is None:
            state = self.initial_state(ids.shape[0])
        x = self.embedding[ids]
        new_state: State = []
        for index, (layer, layer_state) in enumerate(zip(self._fast, state, strict=True)):
            if index == 0 and self._table is not None:
                xw = self._table[ids]
            else:
                xw = self._project(x, layer)  # all time steps in one product
            outs = []
            for t in range(ids.shape[1]):
                h, layer_state = self._cell(xw[:, t], layer, layer_state)
                outs.append(h)
            x = np.stack(outs, axis=1)
            new_state.append(layer_state)
        return x @ self.out_kernel + self.out_bias, new_state

    def step(self, ids: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        """One token per sequence: ``ids`` (batch,) → logits (batch, vocab) and the new state."""
        ids = np.asarray(ids)
        new_state: State = []
        x = None
        for index, (layer, layer_state) in enumerate(zip(self._fast, state, strict=True)):
            if index == 0:
                xw = (
                    self._table[ids]
                    if self._table is not None
                    else self._project(self.embedding[ids], layer)
                )
            else:
                xw = self._project(x, layer)
            x, layer_state = self._cell(xw, layer, layer_state)
            new_state.append(layer_state)
        return x @ self.out_kernel + self.out_bias, new_state
