"""The facts of an LSTM layer's weights, written once: the TensorFlow training kernel
(:mod:`textgen.model.fastrnn`) and the numpy twin (:mod:`textgen.decoding.numpy_lm`)
both read them.

Keras 3 lays out the kernel, recurrent kernel and bias in four column blocks, the gates
``i, f, c, o`` (input, forget, cell candidate, output), ``units`` columns each. Both
kernels compute the three sigmoid gates with one ``tanh`` over all blocks, since
``sigmoid(z) = (tanh(z / 2) + 1) / 2``: the weights are scaled by :func:`gate_scale`
(exact: a power of two) and the gates are ``gate_scale * tanh(z') + gate_offset``.
"""

from __future__ import annotations

import numpy as np

GATES = ("i", "f", "c", "o")  # the column blocks of an LSTM's weights, in Keras 3's order
SIGMOID_GATES = ("i", "f", "o")  # the cell candidate c is a plain tanh


def gate_scale(units: int) -> np.ndarray:
    """Per column: 0.5 for the sigmoid gates, 1 for the cell candidate (float32)."""
    return np.concatenate(
        [np.full(units, 0.5 if g in SIGMOID_GATES else 1.0, np.float32) for g in GATES]
    )


def gate_offset(units: int) -> np.ndarray:
    """Per column: 0.5 for the sigmoid gates, 0 for the cell candidate (float32)."""
    return np.concatenate(
        [np.full(units, 0.5 if g in SIGMOID_GATES else 0.0, np.float32) for g in GATES]
    )
