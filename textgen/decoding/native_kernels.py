"""The compiled LSTM step of :mod:`textgen.decoding.native`, which imports this module
lazily (it imports numba and defines the kernels; they compile on first call and are cached on
disk).

The products accumulate each row as ``a[j] += x[k]·w[k, j] + x[k+1]·w[k+1, j] + ...``
over blocks of four ``k``, for four, two or one rows at a time: the per-row expression is
the same in all three kernels, so a row's numbers do not depend on the batch.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

# fast-math flags: contraction into FMAs and no NaN/inf/signed-zero care; not ``arcp`` or
# ``afn``, which made results depend on the arrays' addresses (textgen.decoding.native)
FLAGS = frozenset({"contract", "nnan", "ninf", "nsz"})
_JIT = {"fastmath": set(FLAGS), "error_model": "numpy", "cache": True}
ONE = np.float32(1.0)
HALF = np.float32(0.5)
CLAMP = np.float32(9.0)  # tanh(9) is 1 - 6e-8 in float32
EIGHTH = np.float32(-2.0 / 16.0)


@njit(inline="always", **_JIT)
def _tanh(x):  # pragma: no cover - compiled
    """tanh(x) = (1 - e)/(1 + e), e = exp(-2|x|) = exp(-|x|/8)^16 by a degree-8 Taylor
    polynomial (|x| clamped to 9): within 5e-7 of the true tanh, and branch-free, so it
    vectorizes (numba's own ``math.tanh`` is a scalar library call, 20 ns an element)."""
    ax = x if x > 0 else -x
    ax = ax if ax < CLAMP else CLAMP
    r = ax * EIGHTH
    p = np.float32(1.0 / 40320.0)
    p = p * r + np.float32(1.0 / 5040.0)
    p = p * r + np.float32(1.0 / 720.0)
    p = p * r + np.float32(1.0 / 120.0)
    p = p * r + np.float32(1.0 / 24.0)
    p = p * r + np.float32(1.0 / 6.0)
    p = p * r + HALF
    p = p * r + ONE
    p = p * r + ONE
    p = p * p
    p = p * p
    p = p * p
    p = p * p
    t = (ONE - p) / (ONE + p)
    return t if x > 0 else -t


@njit(inline="always", **_JIT)
def _rows1(a, x, b, w):  # pragma: no cover - compiled
    """``a += x[b] @ w`` for one row."""
    inner, width = w.shape
    k = 0
    while k + 4 <= inner:
        w0, w1, w2, w3 = w[k], w[k + 1], w[k + 2], w[k + 3]
        p0, p1, p2, p3 = x[b, k], x[b, k + 1], x[b, k + 2], x[b, k + 3]
        for j in range(width):
            a[j] += p0 * w0[j] + p1 * w1[j] + p2 * w2[j] + p3 * w3[j]
        k += 4
    while k < inner:
        w0, p0 = w[k], x[b, k]
        for j in range(width):
            a[j] += p0 * w0[j]
        k += 1


@njit(inline="always", **_JIT)
def _rows2(a0, a1, x, b, w):  # pragma: no cover - compiled
    """``_rows1`` for rows ``b`` and ``b + 1``, reading each weight row once."""
    inner, width = w.shape
    k = 0
    while k + 4 <= inner:
        w0, w1, w2, w3 = w[k], w[k + 1], w[k + 2], w[k + 3]
        p0, p1, p2, p3 = x[b, k], x[b, k + 1], x[b, k + 2], x[b, k + 3]
        q0, q1, q2, q3 = x[b + 1, k], x[b + 1, k + 1], x[b + 1, k + 2], x[b + 1, k + 3]
        for j in range(width):
            a0[j] += p0 * w0[j] + p1 * w1[j] + p2 * w2[j] + p3 * w3[j]
            a1[j] += q0 * w0[j] + q1 * w1[j] + q2 * w2[j] + q3 * w3[j]
        k += 4
    while k < inner:
        w0, p0, q0 = w[k], x[b, k], x[b + 1, k]
        for j in range(width):
            a0[j] += p0 * w0[j]
            a1[j] += q0 * w0[j]
        k += 1


@njit(inline="always", **_JIT)
def _rows4(a0, a1, a2, a3, x, b, w):  # pragma: no cover - compiled
    """``_rows1`` for rows ``b .. b + 3``, reading each weight row once."""
    inner, width = w.shape
    k = 0
    while k + 4 <= inner:
        w0, w1, w2, w3 = w[k], w[k + 1], w[k + 2], w[k + 3]
        p0, p1, p2, p3 = x[b, k], x[b, k + 1], x[b, k + 2], x[b, k + 3]
        q0, q1, q2, q3 = x[b + 1, k], x[b + 1, k + 1], x[b + 1, k + 2], x[b + 1, k + 3]
        r0, r1, r2, r3 = x[b + 2, k], x[b + 2, k + 1], x[b + 2, k + 2], x[b + 2, k + 3]
        s0, s1, s2, s3 = x[b + 3, k], x[b + 3, k + 1], x[b + 3, k + 2], x[b + 3, k + 3]
        for j in range(width):
            a0[j] += p0 * w0[j] + p1 * w1[j] + p2 * w2[j] + p3 * w3[j]
            a1[j] += q0 * w0[j] + q1 * w1[j] + q2 * w2[j] + q3 * w3[j]
            a2[j] += r0 * w0[j] + r1 * w1[j] + r2 * w2[j] + r3 * w3[j]
            a3[j] += s0 * w0[j] + s1 * w1[j] + s2 * w2[j] + s3 * w3[j]
        k += 4
    while k < inner:
        w0, p0, q0, r0, s0 = w[k], x[b, k], x[b + 1, k], x[b + 2, k], x[b + 3, k]
        for j in range(width):
            a0[j] += p0 * w0[j]
            a1[j] += q0 * w0[j]
            a2[j] += r0 * w0[j]
            a3[j] += s0 * w0[j]
        k += 1


@njit(inline="always", **_JIT)
def _product(acc, x, w, batch):  # pragma: no cover - compiled
    """``acc[:batch] += x[:batch] @ w``, four rows at a time, then two, then one."""
    b = 0
    while b + 4 <= batch:
        _rows4(acc[b], acc[b + 1], acc[b + 2], acc[b + 3], x, b, w)
        b += 4
    while b + 2 <= batch:
        _rows2(acc[b], acc[b + 1], x, b, w)
        b += 2
    while b < batch:
        _rows1(acc[b], x, b, w)
        b += 1


@njit(inline="always", **_JIT)
def _cell(z, c, h_out, c_out, b, first, chunk):  # pragma: no cover - compiled
    """The LSTM cell of row ``b`` for units ``first .. first + chunk`` from their
    pre-activations ``z`` (gates i, f, o, c, the sigmoid ones pre-halved)."""
    for j in range(chunk):
        i = _tanh(z[j]) * HALF + HALF
        f = _tanh(z[chunk + j]) * HALF + HALF
        o = _tanh(z[2 * chunk + j]) * HALF + HALF
        g = _tanh(z[3 * chunk + j])
        cell = f * c[b, first + j] + i * g
        c_out[b, first + j] = cell
        h_out[b, first + j] = o * _tanh(cell)


@njit(parallel=True, **_JIT)
def lstm_step(ids, table, kernel, bias, recurrent, out_kernel, out_bias, hs, cs, new, logits,
              scratch):  # pragma: no cover - compiled  # fmt: skip
    """One step of an LSTM LM in the layout of :class:`textgen.decoding.native.NativeLSTM`
    from the state ``hs``, ``cs`` (layers, batch, units): writes the new h and c into
    ``new`` (2, layers, batch, units) and the ``logits``. One signature for any depth."""
    layers, parts, _, gates = recurrent.shape
    chunk = gates // 4
    batch = ids.shape[0]
    for layer in range(layers):
        h, c, h_out, c_out = hs[layer], cs[layer], new[0, layer], new[1, layer]
        x = new[0, layer - 1] if layer > 0 else h
        for t in prange(parts):
            z = scratch[t]
            if layer == 0:
                for b in range(batch):
                    row = table[t, ids[b]]
                    for j in range(gates):
                        z[b, j] = row[j]
            else:
                for b in range(batch):
                    for j in range(gates):
                        z[b, j] = bias[layer - 1, t, j]
                _product(z, x, kernel[layer - 1, t], batch)
            _product(z, h, recurrent[layer, t], batch)
            for b in range(batch):
                _cell(z[b], c, h_out, c_out, b, t * chunk, chunk)
    top = new[0, layers - 1]
    width = out_bias.shape[1]
    vocab = logits.shape[1]
    for t in prange(parts):
        z = scratch[t]
        for b in range(batch):
            for j in range(width):
                z[b, j] = out_bias[t, j]
        _product(z, top, out_kernel[t], batch)
        first = t * width
        last = min(vocab, first + width)
        for b in range(batch):
            for j in range(last - first):
                logits[b, first + j] = z[b, j]
