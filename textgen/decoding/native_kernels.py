"""The compiled LSTM step of :mod:`textgen.decoding.native`, which imports this module
lazily (it imports numba and defines the kernels; they compile on first call and are cached on
disk).

The products read the weights transposed (one output's weights a contiguous row) and
compute dot products, each over the whole inner index, in registers: four rows by four
outputs at a time (``_dots4``), the rest two rows by eight (``_dots2``) and one by
sixteen (``_dots1``). All keep sixteen sums, which LLVM vectorizes alike, so a row gets
the same numbers in any of them; :class:`textgen.decoding.native.NativeLSTM` checks that
for each model and otherwise runs the remaining rows as blocks of four. The previous
kernels accumulated into memory (``a[j] += x[k]·w[k, j] + ...``, four ``k`` at a time):
102 against 56 µs for the 2x256 recurrent product of one slice at batch 16, 7.0 µs each
at batch 1 (one thread, AMD EPYC with AVX-512).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

# fast-math flags: contraction into FMAs and no NaN/inf/signed-zero care; not ``arcp`` or
# ``afn``, which made results depend on the arrays' addresses (textgen.decoding.native)
FLAGS = frozenset({"contract", "nnan", "ninf", "nsz"})
_JIT = {"fastmath": set(FLAGS), "error_model": "numpy", "cache": True}
# the products' sums may be reordered (``reassoc``), which lets LLVM vectorize each dot
# product over its inner index; every row's sums are still the same instructions. Not
# inlined by numba: an inlined function would take its caller's flags, without reassoc
_DOTS = _JIT | {"fastmath": set(FLAGS) | {"reassoc"}}
ZERO = np.float32(0.0)
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


@njit(**_DOTS)
def _dots4(a0, a1, a2, a3, x0, x1, x2, x3, wt):  # pragma: no cover - compiled
    """``a_r += x_r @ wt.T`` for four rows, as dot products of the four rows by four
    weight rows at a time held in sixteen sums. ``wt`` has a multiple of 16 rows (the
    padded width)."""
    width, inner = wt.shape
    for j in range(0, width, 4):
        w0, w1, w2, w3 = wt[j], wt[j + 1], wt[j + 2], wt[j + 3]
        s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = ZERO
        s20 = s21 = s22 = s23 = s30 = s31 = s32 = s33 = ZERO
        for k in range(inner):
            p0, p1, p2, p3 = x0[k], x1[k], x2[k], x3[k]
            v0, v1, v2, v3 = w0[k], w1[k], w2[k], w3[k]
            s00 += p0 * v0
            s01 += p0 * v1
            s02 += p0 * v2
            s03 += p0 * v3
            s10 += p1 * v0
            s11 += p1 * v1
            s12 += p1 * v2
            s13 += p1 * v3
            s20 += p2 * v0
            s21 += p2 * v1
            s22 += p2 * v2
            s23 += p2 * v3
            s30 += p3 * v0
            s31 += p3 * v1
            s32 += p3 * v2
            s33 += p3 * v3
        _add4(a0, j, s00, s01, s02, s03)
        _add4(a1, j, s10, s11, s12, s13)
        _add4(a2, j, s20, s21, s22, s23)
        _add4(a3, j, s30, s31, s32, s33)


@njit(inline="always", **_JIT)
def _add4(a, j, s0, s1, s2, s3):  # pragma: no cover - compiled
    a[j] += s0
    a[j + 1] += s1
    a[j + 2] += s2
    a[j + 3] += s3


@njit(**_DOTS)
def _dots2(a0, a1, x0, x1, wt):  # pragma: no cover - compiled
    """``a_r += x_r @ wt.T`` for two rows, eight weight rows at a time: sixteen sums
    again, vectorized as in ``_dots4``."""
    width, inner = wt.shape
    for j in range(0, width, 8):
        w0, w1, w2, w3 = wt[j], wt[j + 1], wt[j + 2], wt[j + 3]
        w4, w5, w6, w7 = wt[j + 4], wt[j + 5], wt[j + 6], wt[j + 7]
        s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = ZERO
        t0 = t1 = t2 = t3 = t4 = t5 = t6 = t7 = ZERO
        for k in range(inner):
            p, q = x0[k], x1[k]
            v0, v1, v2, v3 = w0[k], w1[k], w2[k], w3[k]
            v4, v5, v6, v7 = w4[k], w5[k], w6[k], w7[k]
            s0 += p * v0
            s1 += p * v1
            s2 += p * v2
            s3 += p * v3
            s4 += p * v4
            s5 += p * v5
            s6 += p * v6
            s7 += p * v7
            t0 += q * v0
            t1 += q * v1
            t2 += q * v2
            t3 += q * v3
            t4 += q * v4
            t5 += q * v5
            t6 += q * v6
            t7 += q * v7
        _add4(a0, j, s0, s1, s2, s3)
        _add4(a0, j + 4, s4, s5, s6, s7)
        _add4(a1, j, t0, t1, t2, t3)
        _add4(a1, j + 4, t4, t5, t6, t7)


@njit(**_DOTS)
def _dots1(acc, x, b, wt):  # pragma: no cover - compiled
    """``acc[b] += x[b] @ wt.T`` for one row: sixteen weight rows at a time, again in
    sixteen sums, so each sum is vectorized as in ``_dots4`` (checked per model,
    :attr:`textgen.decoding.native.NativeLSTM.rows_agree`)."""
    width, inner = wt.shape
    x0 = x[b]
    a = acc[b]
    for j in range(0, width, 16):
        w0, w1, w2, w3 = wt[j], wt[j + 1], wt[j + 2], wt[j + 3]
        w4, w5, w6, w7 = wt[j + 4], wt[j + 5], wt[j + 6], wt[j + 7]
        w8, w9, wa, wb = wt[j + 8], wt[j + 9], wt[j + 10], wt[j + 11]
        wc, wd, we, wf = wt[j + 12], wt[j + 13], wt[j + 14], wt[j + 15]
        s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = ZERO
        s8 = s9 = sa = sb = sc = sd = se = sf = ZERO
        for k in range(inner):
            p = x0[k]
            s0 += p * w0[k]
            s1 += p * w1[k]
            s2 += p * w2[k]
            s3 += p * w3[k]
            s4 += p * w4[k]
            s5 += p * w5[k]
            s6 += p * w6[k]
            s7 += p * w7[k]
            s8 += p * w8[k]
            s9 += p * w9[k]
            sa += p * wa[k]
            sb += p * wb[k]
            sc += p * wc[k]
            sd += p * wd[k]
            se += p * we[k]
            sf += p * wf[k]
        _add4(a, j, s0, s1, s2, s3)
        _add4(a, j + 4, s4, s5, s6, s7)
        _add4(a, j + 8, s8, s9, sa, sb)
        _add4(a, j + 12, sc, sd, se, sf)


@njit(**_DOTS)
def _product(acc, x, wt, batch, exact):  # pragma: no cover - compiled
    """``acc[:batch] += x[:batch] @ wt.T``, four rows at a time. With ``exact`` the 1-3
    rows left run as a pair (``_dots2``) and one (``_dots1``), which give a row the
    numbers ``_dots4`` does; without it each runs as a block of four with three copies
    of itself whose results are dropped (copies, not the row, so the compiler cannot
    merge the four rows' sums and vectorize them otherwise)."""
    b = 0
    while b + 4 <= batch:
        _dots4(acc[b], acc[b + 1], acc[b + 2], acc[b + 3], x[b], x[b + 1], x[b + 2], x[b + 3], wt)
        b += 4
    if exact:
        if b + 2 <= batch:
            _dots2(acc[b], acc[b + 1], x[b], x[b + 1], wt)
            b += 2
        if b < batch:
            _dots1(acc, x, b, wt)
    elif b < batch:
        copies = np.empty((3, x.shape[1]), np.float32)
        dropped = np.zeros((3, acc.shape[1]), np.float32)
        while b < batch:
            for r in range(3):
                copies[r] = x[b]
            _dots4(acc[b], dropped[0], dropped[1], dropped[2], x[b], copies[0], copies[1],
                   copies[2], wt)  # fmt: skip
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
              scratch, chunk, exact):  # pragma: no cover - compiled  # fmt: skip
    """One step of an LSTM LM in the layout of :class:`textgen.decoding.native.NativeLSTM`
    from the state ``hs``, ``cs`` (layers, batch, units): writes the new h and c into
    ``new`` (2, layers, batch, units) and the ``logits``. One signature for any depth.
    The products' weights (``kernel``, ``recurrent``, ``out_kernel``) are transposed,
    (..., parts, width, inner); every width (theirs, ``table``'s, the biases') is padded
    to a multiple of 16; ``chunk`` is each part's units, ``exact`` as in ``_product``."""
    layers, parts, gates, _ = recurrent.shape
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
                _product(z, x, kernel[layer - 1, t], batch, exact)
            _product(z, h, recurrent[layer, t], batch, exact)
            for b in range(batch):
                _cell(z[b], c, h_out, c_out, b, t * chunk, chunk)
    top = new[0, layers - 1]
    width = out_kernel.shape[1]
    vocab = logits.shape[1]
    share = -(-vocab // parts)  # the logits each part computes (NativeLSTM's layout)
    for t in prange(parts):
        z = scratch[t]
        for b in range(batch):
            for j in range(width):
                z[b, j] = out_bias[t, j]
        _product(z, top, out_kernel[t], batch, exact)
        first = t * share
        last = min(vocab, first + share)
        for b in range(batch):
            for j in range(last - first):
                logits[b, first + j] = z[b, j]
