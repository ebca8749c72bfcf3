"""The facts of an LSTM layer's weights, written once: the TensorFlow training kernel
(:mod:`textgen.model.fastrnn`) and the numpy twin (:mod:`textgen.decoding.numpy_lm`)
both read them, and neither spells the gate order itself.

Keras 3 lays out the kernel, recurrent kernel and bias in four column blocks, the gates
:data:`LSTM_GATES` = ``i, f, c, o`` (input, forget, cell candidate, output), ``units``
columns each. Code that needs one gate asks for its block (:func:`gate_block`), and code
that splits or joins all four goes through :func:`by_gate` / :func:`in_gate_order`, so a
different layout would be one edit here. :data:`KERAS_GATES` is the order Keras' own LSTM
reads (its layer and the cuDNN function of its TensorFlow backend); the two are the same,
so ``model.keras`` is a plain Keras model, and :func:`to_keras_order` is the one place
that would reorder the blocks if they were not.

Both kernels compute the three sigmoid gates with one ``tanh`` over all blocks, since
``sigmoid(z) = (tanh(z / 2) + 1) / 2``: the weights are scaled by :func:`gate_scale`
(exact: a power of two) and the gates are ``gate_scale * tanh(z') + gate_offset``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

import numpy as np

T = TypeVar("T")

KERAS_GATES = ("i", "f", "c", "o")  # the order Keras' LSTM (and its cuDNN function) reads
LSTM_GATES = KERAS_GATES  # the column blocks of textgen's LSTM weights: Keras 3's order
SIGMOID_GATES = ("i", "f", "o")  # the cell candidate c is a plain tanh


def gate_block(gate: str, units: int) -> slice:
    """The columns of ``gate`` (one of :data:`LSTM_GATES`) in a (·, 4·units) array."""
    start = LSTM_GATES.index(gate) * units
    return slice(start, start + units)


def by_gate(parts: Sequence[T]) -> dict[str, T]:
    """Four parts in the layout's order (e.g. ``tf.split(z, 4, axis=-1)``) → ``{gate: part}``."""
    if len(parts) != len(LSTM_GATES):
        raise ValueError(f"an LSTM has {len(LSTM_GATES)} gate blocks, got {len(parts)}")
    return dict(zip(LSTM_GATES, parts, strict=True))


def in_gate_order(parts: Mapping[str, T]) -> list[T]:
    """``{gate: part}`` → the parts in the layout's order (e.g. for ``tf.concat``)."""
    return [parts[gate] for gate in LSTM_GATES]


def gate_scale(units: int) -> np.ndarray:
    """Per column: 0.5 for the sigmoid gates, 1 for the cell candidate (float32)."""
    return np.concatenate(
        [np.full(units, 0.5 if g in SIGMOID_GATES else 1.0, np.float32) for g in LSTM_GATES]
    )


def gate_offset(units: int) -> np.ndarray:
    """Per column: 0.5 for the sigmoid gates, 0 for the cell candidate (float32)."""
    return np.concatenate(
        [np.full(units, 0.5 if g in SIGMOID_GATES else 0.0, np.float32) for g in LSTM_GATES]
    )


def to_keras_order(weights: T, concat: Callable[[list[T]], T], split: Callable[[T], list[T]]) -> T:
    """``weights`` (·, 4·units) from :data:`LSTM_GATES`' block order to :data:`KERAS_GATES`'
    (``split`` cuts the four blocks, ``concat`` joins them); the very array when the two
    orders are the same."""
    if LSTM_GATES == KERAS_GATES:
        return weights
    parts = by_gate(split(weights))
    return concat([parts[gate] for gate in KERAS_GATES])
