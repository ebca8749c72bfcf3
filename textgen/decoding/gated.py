"""The LSTM's and the GRU's arithmetic for :class:`textgen.decoding.numpy_lm.NumpyLM`,
gate-major: the weight stacks, the per-gate products in row groups, the gate functions.

**Gate-major.** The weights are kept as ``(gates, inner, units)`` stacks, one matrix per
gate (the LSTM's in the order :data:`GATE_MAJOR`, the three sigmoid gates first; the
GRU's ``z, r, h``, as Keras lays them out), and the pre-activations are ``(gates, batch,
units)`` arrays, so every gate is contiguous memory: numpy's elementwise loops over the
column views of a ``(batch, 4·units)`` array (the textbook layout) ran 2-6 times slower
than over contiguous arrays at batch 16.

**Row groups.** Each gate's matrix multiplies groups of rows (:func:`row_groups`: batch
16 as 2 × 8 rows, 32 as 4 × 8, 31 as 2 × 11 and 9), all groups in one stacked ``matmul``
call (:func:`gate_product`), so that every product is small enough for OpenBLAS's
copy-free kernel (``numpy_lm.SMALL_PRODUCT``, the module docstring there says why).

**The LSTM's sigmoid gates are pre-halved**: ``sigmoid(z) = (tanh(z/2) + 1)/2`` with
the halving folded into the weights (scaling by 0.5 is exact in floating point), so one
``tanh`` covers all four gates. The gate functions overwrite the fresh pre-activations
they are given (``out=``) and never the state; every elementwise operation is the one
the straightforward formulas perform, in the same order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from textgen.model.lstm import gate_block, gate_scale

GATE_MAJOR = ("i", "f", "o", "c")  # the LSTM step's gate order: the sigmoid gates first


class Layer(Protocol):
    """A recurrent layer's weights (:class:`textgen.decoding.numpy_lm.RNNWeights`)."""

    kernel: np.ndarray  # (in, gates·units)
    recurrent: np.ndarray  # (units, gates·units)
    bias: np.ndarray  # (gates·units,); the GRU's (2, gates·units): input, recurrent

    @property
    def units(self) -> int: ...


def gate_major(a: np.ndarray, units: int) -> np.ndarray:
    """The gate blocks of ``a`` (..., 4·units) stacked in :data:`GATE_MAJOR` order: a new
    contiguous (4, ..., units) array of the same numbers."""
    return np.stack([a[..., gate_block(g, units)] for g in GATE_MAJOR])


def gru_gate_major(a: np.ndarray) -> np.ndarray:
    """The three gate blocks ``z, r, h`` of a GRU array (..., 3·units) stacked: a new
    contiguous (3, ..., units) array of the same numbers."""
    return np.stack(np.split(a, 3, axis=-1))


def lstm_weights(layers: Sequence[Layer]) -> list[dict[str, np.ndarray]]:
    """Each LSTM layer's weights gate-major and pre-halved for the sigmoid gates:
    kernels and recurrent kernels ``(4, inner, units)``, biases ``(4, 1, units)``."""
    out = []
    for layer in layers:
        units, scale = layer.units, gate_scale(layer.units)
        out.append(
            {
                "kernel": gate_major(layer.kernel * scale, units),
                "recurrent": gate_major(layer.recurrent * scale, units),
                "bias": gate_major(layer.bias * scale, units)[:, None],
            }
        )
    return out


def lstm_table(embedding: np.ndarray, first: Layer) -> np.ndarray:
    """The first LSTM layer's input projection of every token, bias included, gate-major
    and pre-halved: ``(4, vocab, units)``."""
    scale = gate_scale(first.units)
    table = embedding @ (first.kernel * scale)  # one product, as it always was
    table += first.bias * scale
    return gate_major(table, first.units)


def gru_weights(layers: Sequence[Layer]) -> list[dict[str, np.ndarray]]:
    """Each GRU layer's weights gate-major: kernels and recurrent kernels ``(3, inner,
    units)``, the input and recurrent biases ``(3, 1, units)``."""
    return [
        {
            "kernel": gru_gate_major(layer.kernel),
            "recurrent": gru_gate_major(layer.recurrent),
            "bias": gru_gate_major(layer.bias[0])[:, None],
            "bias_rec": gru_gate_major(layer.bias[1])[:, None],
        }
        for layer in layers
    ]


def gru_table(embedding: np.ndarray, first: Layer) -> np.ndarray:
    """The first GRU layer's input projection of every token, input bias included,
    gate-major: ``(3, vocab, units)``."""
    table = embedding @ first.kernel  # one product, as it always was
    table += first.bias[0]
    return gru_gate_major(table)


def group_rows(weights: Sequence[dict[str, np.ndarray]], small_product: int) -> int:
    """The most rows a product by the largest gate matrix of ``weights`` may have and
    stay within ``small_product`` multiply-adds (the small kernel's threshold)."""
    inner = max(w[k].shape[-2] * w[k].shape[-1] for w in weights for k in ("kernel", "recurrent"))
    return small_product // inner


def row_groups(batch: int, most: int) -> tuple[int, int]:
    """``(groups, rows)``: a gate-major step multiplies each gate's matrix by ``groups``
    groups of ``rows`` rows and, when ``groups · rows < batch``, the remaining rows
    (fewer than ``rows``) as one more product; each has at most ``most`` rows
    (:func:`group_rows`), so it is small enough for OpenBLAS's copy-free kernel. An
    exact split is preferred when one is near."""
    if batch <= most or most < 4:  # small already, or a model too big for it
        return 1, batch
    least = -(-batch // most)
    for groups in range(least, 2 * least + 1):
        if batch % groups == 0:
            return groups, batch // groups
    rows = -(-batch // least)
    return batch // rows, rows


def gate_product(x: np.ndarray, weights: np.ndarray, split: tuple[int, int]) -> np.ndarray:
    """``x`` (n, inner) times each gate's matrix of ``weights`` (gates, inner, units): a
    fresh (gates, n, units) array, in the row groups of ``split`` (:func:`row_groups`),
    all groups in one ``matmul`` and the remaining rows in another."""
    groups, rows = split
    if groups == 1 and rows == x.shape[0]:
        return np.matmul(x, weights)
    n, inner = x.shape
    gates, units = weights.shape[0], weights.shape[-1]
    out = np.empty((gates, n, units), np.float32)
    whole = groups * rows
    np.matmul(x[:whole].reshape(groups, rows, inner), weights[:, None],
              out=out[:, :whole].reshape(gates, groups, rows, units))  # fmt: skip
    if whole < n:
        np.matmul(x[whole:], weights, out=out[:, whole:])
    return out


def lstm_gates(z: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The cell from its pre-activations ``z`` (4, n, units), gate-major and with the
    sigmoid gates pre-halved, which it overwrites: the new ``(h, c)``."""
    np.tanh(z, out=z)
    sigmoid = z[:3]  # sigmoid gates: 0.5 · tanh + 0.5; the cell candidate: tanh itself
    sigmoid *= 0.5
    sigmoid += 0.5
    i, f, o, g = z
    np.multiply(i, g, out=i)
    c = f * c
    c += i  # f·c + i·g
    h = np.tanh(c)
    h *= o
    return h, c


def gru_gates(z: np.ndarray, inner: np.ndarray, h: np.ndarray) -> np.ndarray:
    """The GRU cell (``reset_after``) from its input projection ``z`` and recurrent
    product ``inner`` (3, n, units), bias included, which it overwrites: the new h."""
    zr = z[:2]  # update and reset gates together
    zr += inner[:2]
    zr *= 0.5  # sigmoid(x) = 0.5 * (tanh(0.5 * x) + 1), overflow-free
    np.tanh(zr, out=zr)
    zr += 1.0
    zr *= 0.5
    update, reset = zr
    cand = inner[2]
    cand *= reset
    cand += z[2]
    np.tanh(cand, out=cand)
    new = update * h
    np.subtract(1.0, update, out=reset)  # the reset gate is spent
    reset *= cand
    new += reset  # z·h + (1 - z)·candidate
    return new
