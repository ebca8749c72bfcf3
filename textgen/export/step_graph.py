"""One recurrent step of the trained network as TensorFlow operations, for export: the
``step`` of a SavedModel and the LiteRT model, over the weights of ``weights.npz``; the
``generate`` loop of :mod:`textgen.export.graph` steps through it too.

The step computes what :class:`textgen.decoding.numpy_lm.NumpyLM` computes (Keras 3 gate
layouts: LSTM ``i, f, c, o``; GRU ``z, r, h`` with ``reset_after``; SimpleRNN), written
with plain TensorFlow ops (``gather``, ``matmul``, ``sigmoid``, ``tanh``, slices) so that
the LiteRT converter maps every one of them to a builtin operator.

**The state is one float32 tensor** ``(batch, state_size)``: the layers one after the
other, each ``h`` (``units`` columns) followed, for an LSTM, by ``c``. Zeros are the
initial state, as in training. :func:`state_layout` says where each part sits (it goes
into ``export.json``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from textgen._tf import tensorflow, traced
from textgen.model.lstm import by_gate

PARTS = {"lstm": 2, "gru": 1, "rnn": 1}  # state tensors per layer: (h, c) or (h,)


def layer_count(arrays: Mapping[str, np.ndarray]) -> int:
    """How many recurrent layers ``weights.npz``-style arrays hold."""
    return sum(1 for key in arrays if key.startswith("rnn_") and key.endswith("_recurrent"))


def state_layout(arrays: Mapping[str, np.ndarray]) -> list[dict[str, Any]]:
    """Where each layer's ``h`` (and ``c``) sits in the flat state: column ranges."""
    cell = str(arrays["cell"])
    layout, offset = [], 0
    for i in range(layer_count(arrays)):
        units = int(np.shape(arrays[f"rnn_{i}_recurrent"])[0])
        entry: dict[str, Any] = {"layer": i, "units": units, "h": [offset, offset + units]}
        offset += units
        if cell == "lstm":
            entry["c"] = [offset, offset + units]
            offset += units
        layout.append(entry)
    return layout


def state_size(arrays: Mapping[str, np.ndarray]) -> int:
    """Columns of the flat state tensor."""
    layout = state_layout(arrays)
    return max(max(entry.get("c", entry["h"])[1] for entry in layout), 0) if layout else 0


class StepWeights:
    """The network's weights as TensorFlow variables, and one step over them."""

    def __init__(self, arrays: Mapping[str, np.ndarray]) -> None:
        tf = tensorflow()
        self.cell = str(arrays["cell"])
        if self.cell not in PARTS:
            raise ValueError(f"unknown cell {self.cell!r}")

        def var(name: str) -> Any:
            return tf.Variable(np.asarray(arrays[name], np.float32), trainable=False, name=name)

        self.embedding = var("embedding")
        self.kernels = [var(f"rnn_{i}_kernel") for i in range(layer_count(arrays))]
        self.recurrents = [var(f"rnn_{i}_recurrent") for i in range(layer_count(arrays))]
        self.biases = [var(f"rnn_{i}_bias") for i in range(layer_count(arrays))]
        self.out_kernel = var("out_kernel")
        self.out_bias = var("out_bias")
        self.units = [
            int(np.shape(arrays[f"rnn_{i}_recurrent"])[0]) for i in range(len(self.kernels))
        ]
        self.vocab_size = int(np.shape(arrays["out_kernel"])[1])
        self.state_size = state_size(arrays)

    def variables(self) -> list[Any]:
        """Every variable, for a ``tf.Module`` to track."""
        return [
            self.embedding, *self.kernels, *self.recurrents, *self.biases,
            self.out_kernel, self.out_bias,
        ]  # fmt: skip

    def step(self, ids: Any, state: Any) -> tuple[Any, Any]:
        """``ids`` (batch,) int32 and the flat state → logits (batch, vocab), new state."""
        tf = tensorflow()
        x = tf.gather(self.embedding, ids)
        offset, parts = 0, []
        for kernel, recurrent, bias, n in zip(
            self.kernels, self.recurrents, self.biases, self.units, strict=True
        ):
            h = state[:, offset : offset + n]
            offset += n
            if self.cell == "lstm":
                c = state[:, offset : offset + n]
                offset += n
                z = tf.matmul(x, kernel) + tf.matmul(h, recurrent) + bias
                gate = by_gate(tf.split(z, 4, axis=-1))  # model.lstm knows the order
                c = tf.sigmoid(gate["f"]) * c + tf.sigmoid(gate["i"]) * tf.tanh(gate["c"])
                h = tf.sigmoid(gate["o"]) * tf.tanh(c)
                parts += [h, c]
            elif self.cell == "gru":
                xw = tf.matmul(x, kernel) + bias[0]
                inner = tf.matmul(h, recurrent) + bias[1]
                xz, xr, xh = tf.split(xw, 3, axis=-1)
                hz, hr, hh = tf.split(inner, 3, axis=-1)
                z = tf.sigmoid(xz + hz)
                r = tf.sigmoid(xr + hr)
                h = z * h + (1.0 - z) * tf.tanh(xh + r * hh)
                parts.append(h)
            else:
                h = tf.tanh(tf.matmul(x, kernel) + tf.matmul(h, recurrent) + bias)
                parts.append(h)
            x = h
        logits = tf.matmul(x, self.out_kernel) + self.out_bias
        return logits, tf.concat(parts, axis=-1)


def step_module(arrays: Mapping[str, np.ndarray]) -> Any:
    """A ``tf.Module`` whose ``step`` function has the export's input signature."""
    tf = tensorflow()
    module = tf.Module()
    weights = StepWeights(arrays)
    module.weights = weights
    module.variables_held = weights.variables()  # tracked, so the SavedModel stores them

    @traced(
        input_signature=[
            tf.TensorSpec([None], tf.int32, name="ids"),
            tf.TensorSpec([None, weights.state_size], tf.float32, name="state"),
        ],
    )
    def step(ids: Any, state: Any) -> dict[str, Any]:
        logits, new_state = weights.step(ids, state)
        return {"logits": logits, "state": new_state}

    module.step = step
    return module
