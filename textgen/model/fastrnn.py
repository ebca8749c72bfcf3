"""A faster LSTM layer for training on CPU, over the Keras layer's own variables.

Keras' CPU LSTM runs its cell once per time step, input projection included, and lets
autodiff accumulate the weight gradients step by step. This module does what cuDNN and
PyTorch do instead:

* the input projection ``x @ kernel + bias`` of all time steps is one large matrix
  product before the recurrence (differentiated by TensorFlow);
* the recurrence carries only ``h @ recurrent_kernel`` per step, with a hand-written
  backward pass (a ``tf.custom_gradient``) that returns the per-step gradients, so the
  recurrent kernel's gradient is one large product ``H_prevᵀ @ dZ`` after the loop;
* one ``tanh`` yields all four gates (``sigmoid(z) = (tanh(z/2) + 1)/2``); the halving is
  folded into the weights before the products (exact: the factors are 1/2 and 1), so no
  pass over the (time, batch, 4·units) pre-activations is spent on it;
* every large per-step array lives in a ``TensorArray`` that the loop writes in place: the
  gate activations overwrite the pre-activations they came from, and the states are
  stored with the initial state in slot 0, so ``h_prev``/``c_prev`` are slices, not
  copies. The backward loop computes each step's elementwise terms from those slots
  rather than materialising them for all steps first.

Each of the last two points removes a pass over a (time, batch, ·) array; on the benchmark
machine they took one layer's forward and backward from 108 to 104 ms (BENCHMARKS.md,
issue 4), where the loop's matrix products now take about half the time.

It is numerically the same LSTM as ``keras.layers.LSTM`` (gates i, f, c, o; zero initial
state unless one is given; masked steps keep the previous state), so ``model.keras``
stays a plain Keras model. Tests compare outputs and gradients with Keras', eagerly and
under XLA.
"""

from __future__ import annotations

from typing import Any

from textgen._tf import tensorflow, traced
from textgen.model.lstm import LSTM_GATES, by_gate, gate_offset, gate_scale, in_gate_order


def _gate_constants(units: int, dtype: Any) -> tuple[Any, Any]:
    """(scale, offset) with gates = scale * tanh(scale * z) + offset, per gate block."""
    tf = tensorflow()
    return tf.constant(gate_scale(units), dtype), tf.constant(gate_offset(units), dtype)


def lstm_layer(
    x: Any,
    kernel: Any,
    bias: Any,
    recurrent: Any,
    mask: Any | None = None,
    initial: tuple[Any, Any] | None = None,
    *,
    compute_dtype: Any = None,
    cell_op: bool | None = None,
) -> Any:
    """Run one LSTM layer over time-major ``x`` (time, batch, features).

    ``kernel`` (features, 4H), ``bias`` (4H) and ``recurrent`` (H, 4H) are the Keras
    layer's weights. ``mask`` is (time, batch, 1) float, 1 where the step is real (None:
    all real). ``initial`` is the state ``(h, c)`` to start from (None: zeros); it is a
    constant for differentiation, as in truncated backpropagation through time.
    Returns the hidden states (time, batch, H) when ``initial`` is None, else
    ``(hidden states, (h_last, c_last))`` with the final state to carry into the next call.

    ``compute_dtype`` (e.g. ``tf.bfloat16``; None: ``x``'s dtype) is the dtype of the matrix
    products, forward and backward: their operands are cast to it at use, their results
    back to ``x``'s dtype, so the weights, the gates, the cell state, the outputs and the
    gradients stay float32 (bf16 compute over float32 masters).

    ``cell_op``: whether each time step's gate arithmetic runs in the compiled cell
    (:mod:`textgen.model.cell_op`) rather than in TensorFlow kernels. None: when the
    products run in a reduced dtype (that step is never XLA-compiled, and the ops have no
    XLA kernel) and the cell could be built. True asks for it in any dtype outside XLA.
    """
    tf = tensorflow()
    units = recurrent.shape[0]
    dtype = x.dtype
    low = tf.as_dtype(compute_dtype) if compute_dtype is not None else dtype
    scale, offset = _gate_constants(units, dtype)
    ops = _compiled_cell(cell_op, low != dtype)
    # the gates' 1/2 goes into the weights (exact), autodiff carries it to their gradients
    projected = tf.tensordot(_cast(x, low), _cast(kernel * scale, low), 1)
    carried = initial is not None
    if initial is None:
        zeros = tf.zeros([tf.shape(x)[1], units], dtype)
        initial = (zeros, zeros)
    h0, c0 = (tf.stop_gradient(tf.cast(v, dtype)) for v in initial)
    rec = _cast(recurrent * scale, low)
    if ops is not None:
        hs, c_last = _compiled_recurrence(ops, projected, bias * scale, rec, mask, h0, c0)
    else:
        xs = _cast(projected, dtype) + bias * scale
        hs, c_last = _recurrence(xs, rec, mask, h0, c0, scale, offset)
    if not carried:
        return hs
    return hs, (tf.stop_gradient(hs[-1]), tf.stop_gradient(c_last))


def _compiled_cell(requested: bool | None, reduced: bool) -> Any | None:
    """The compiled cell's ops when this layer should use them (see ``lstm_layer``)."""
    from textgen.model.cell_op import cell_ops

    if requested is False or (requested is None and not reduced):
        return None
    ops = cell_ops()
    if ops is None and requested:
        raise RuntimeError("the compiled LSTM cell was asked for but is not available")
    return ops


UNROLL_STEPS = 512  # the compiled cell's loops are unrolled up to this many static steps


def _compiled_recurrence(
    ops: Any, projected: Any, bias: Any, rec: Any, mask: Any | None, h0: Any, c0: Any
) -> tuple[Any, Any]:
    """:func:`_recurrence` with each step's gate arithmetic in the compiled cell.

    ``projected`` is the input projection in the compute dtype (``rec``'s), ``bias`` the
    scaled bias; the cell adds them. Its backward pass returns the gradients of those and of
    ``rec``: the per-step ``dz`` in the compute dtype (the projection's and the recurrent
    product's operand) and the bias's, summed over the steps in float32 by the cell.

    When the number of steps is known when the graph is built (training's fixed
    ``seq_len``; up to :data:`UNROLL_STEPS`), both loops are unrolled: a while loop's
    per-iteration bookkeeping (its frame, the TensorArray reads and writes, a slice per
    input) costs about as much as the cell itself at these sizes, and unrolled, one
    layer's step can run beside the step of the layer below."""
    tf = tensorflow()
    units = rec.shape[0]
    dtype, low = h0.dtype, rec.dtype
    width = len(LSTM_GATES) * units
    gates = list(LSTM_GATES)
    one = tf.constant(1.0, dtype)
    static = projected.shape[0]
    unrolled = static is not None and static <= UNROLL_STEPS

    @tf.custom_gradient
    def run(projected: Any, bias: Any, rec: Any) -> Any:
        steps = static if unrolled else tf.shape(projected)[0]
        inputs = _steps_of(projected, steps, unrolled)
        masks = _steps_of(mask, steps, unrolled) if mask is not None else None

        def step(t: Any, h: Any, h_low: Any, c: Any, *arrays: Any) -> tuple[Any, ...]:
            ts, hs, cs, lows = arrays
            m = masks(t) if masks is not None else one
            gate_tanh, h_new, c_new, h_low = ops.textgen_lstm_cell(
                inputs(t), bias, tf.matmul(h_low, rec), h, c, m, gates=gates
            )
            return (
                t + 1, h_new, h_low, c_new, ts.write(t, gate_tanh),
                hs.write(t + 1, h_new), cs.write(t + 1, c_new), lows.write(t + 1, h_low),
            )  # fmt: skip

        h0_low = _cast(h0, low)
        start = (
            0, h0, h0_low, c0,
            _slots(dtype, steps, width, unrolled),  # each step's tanh(z)
            _slots(dtype, steps + 1, units, unrolled).write(0, h0),
            _slots(dtype, steps + 1, units, unrolled).write(0, c0),
            _slots(low, steps + 1, units, unrolled).write(0, h0_low),
        )  # fmt: skip
        out = _loop(steps, unrolled, step, start)
        c_last, ts, hs, cs, lows = out[3], *out[4:]
        h_all = hs.stack()  # (time + 1, batch, H): the initial state, then every step's

        def grad(dhs: Any, _dc_last: Any) -> tuple[Any, Any, Any]:
            zeros = tf.zeros_like(h0)
            upstream = _steps_of(dhs, steps, unrolled)

            def back(s: Any, dh_rec: Any, dh_pass: Any, dc: Any, db: Any, dzs: Any) -> tuple:
                t = steps - 1 - s
                m = masks(t) if masks is not None else one
                dz, dc, dh_pass, db = ops.textgen_lstm_cell_grad(
                    ts.read(t), cs.read(t + 1), cs.read(t), upstream(t), dh_rec, dh_pass, dc,
                    m, db, gates=gates,
                )  # fmt: skip
                dh_rec = tf.matmul(dz, rec, transpose_b=True)
                return s + 1, dh_rec, dh_pass, dc, db, dzs.write(t, dz)

            start = (
                0, _cast(zeros, low), zeros, zeros, tf.zeros([width], dtype),
                _slots(low, steps, width, unrolled),
            )  # fmt: skip
            _, _, _, _, d_bias, dzs = _loop(steps, unrolled, back, start)
            dzs = dzs.stack()
            d_rec = tf.matmul(
                tf.reshape(lows.stack()[:-1], [-1, units]),
                tf.reshape(dzs, [-1, width]),
                transpose_a=True,
            )
            return dzs, d_bias, d_rec

        return (h_all[1:], c_last), grad

    return run(projected, bias, rec)


def _loop(steps: Any, unrolled: bool, body: Any, start: tuple) -> tuple:
    """``body`` applied ``steps`` times from ``start`` (its first element the counter):
    written out in the graph when ``unrolled`` (``steps`` a Python int), else a while loop."""
    if not unrolled:
        return tensorflow().while_loop(lambda t, *_: t < steps, body, start)
    values = start
    for _ in range(steps):
        values = body(*values)
    return values


def _steps_of(x: Any, steps: Any, unrolled: bool) -> Any:
    """``t -> x[t]``: a slice per step in a while loop, one unstack when unrolled."""
    if not unrolled:
        return lambda t: x[t]
    parts = tensorflow().unstack(x, num=steps)
    return lambda t: parts[t]


class _Listed:
    """The :func:`_slots` of an unrolled loop: a list of tensors, at Python indices."""

    def __init__(self, size: int) -> None:
        self.items: list[Any] = [None] * size

    def write(self, index: int, value: Any) -> _Listed:
        self.items[index] = value
        return self

    def read(self, index: int) -> Any:
        return self.items[index]

    def stack(self) -> Any:
        return tensorflow().stack(self.items)


def _slots(dtype: Any, size: Any, width: int, unrolled: bool = False) -> Any:
    """A TensorArray of ``size`` (batch, ``width``) arrays that the loops write in place
    (a :class:`_Listed` in an unrolled loop)."""
    if unrolled:
        return _Listed(size)
    tf = tensorflow()
    return tf.TensorArray(dtype, size=size, element_shape=[None, width], clear_after_read=False)


def _cast(t: Any, dtype: Any) -> Any:
    """``t`` in ``dtype`` (no op when it already is)."""
    tf = tensorflow()
    return t if t.dtype == dtype else tf.cast(t, dtype)


def _recurrence(
    xs: Any, rec: Any, mask: Any | None, h0: Any, c0: Any, scale: Any, offset: Any
) -> tuple[Any, Any]:
    """The scaled recurrence: gates = scale·tanh(xs_t + h_{t-1} @ rec) + offset.

    The products run in ``rec``'s dtype (the compute dtype), everything else in ``xs``'."""
    tf = tensorflow()
    masked = mask is not None
    units = rec.shape[0]
    dtype, low = xs.dtype, rec.dtype

    def gates(gate_tanh: Any) -> tuple[Any, Any, Any, Any]:
        """The activations (input, forget, cell candidate, output) from one tanh."""
        gate = by_gate(tf.split(gate_tanh * scale + offset, len(LSTM_GATES), axis=-1))
        return gate["i"], gate["f"], gate["c"], gate["o"]

    one = tf.constant(1.0, dtype)

    def cell(xz: Any, hr: Any, h: Any, c: Any, m: Any) -> tuple[Any, Any, Any, Any]:
        """One step's elementwise work: (tanh of the gates, new h, new c, new h in the
        compute dtype for the next product); ``hr`` is the product, in the compute dtype."""
        gate_tanh = tf.tanh(xz + _cast(hr, dtype))
        i, f, g, o = gates(gate_tanh)
        c_new = f * c + i * g
        h_new = o * tf.tanh(c_new)
        if masked:  # a masked step keeps the previous state
            c_new = c + m * (c_new - c)
            h_new = h + m * (h_new - h)
        return gate_tanh, h_new, c_new, _cast(h_new, low)

    def cell_grad(
        gate_tanh: Any, c: Any, c_prev: Any, dh: Any, dc_next: Any, m: Any
    ) -> tuple[Any, Any, Any, Any]:
        """One backward step's elementwise work: (dz, dz in the compute dtype for the next
        product, dc_prev, the part of dh that a masked step passes straight through)."""
        i, f, g, o = gates(gate_tanh)
        tc = tf.tanh(c)
        dc = dc_next + m * dh * o * (1.0 - tc * tc)  # h = o * tanh(c)
        dgates = tf.concat(
            in_gate_order({"i": dc * g, "f": dc * c_prev, "c": dc * i, "o": dh * tc}), axis=-1
        )
        dz = dgates * (scale * (1.0 - gate_tanh * gate_tanh))
        if not masked:
            return dz, _cast(dz, low), dc * f, dh
        dz = dz * m
        return dz, _cast(dz, low), dc * (m * f + (1.0 - m)), (1.0 - m) * dh

    if low != dtype:
        # a reduced-precision step is not XLA-compiled as a whole (model/precision.py), so
        # each step's elementwise work would be a dozen small kernels: XLA fuses it into one
        cell = traced(cell, jit_compile=True)
        cell_grad = traced(cell_grad, jit_compile=True)

    @tf.custom_gradient
    def run(xs: Any, rec: Any) -> Any:
        steps = tf.shape(xs)[0]

        def step(t: Any, h: Any, h_low: Any, c: Any, ts: Any, hs: Any, cs: Any) -> tuple[Any, ...]:
            m = mask[t] if masked else one
            gate_tanh, h_new, c_new, h_low = cell(ts.read(t), tf.matmul(h_low, rec), h, c, m)
            return (
                t + 1, h_new, h_low, c_new,
                ts.write(t, gate_tanh), hs.write(t + 1, h_new), cs.write(t + 1, c_new),
            )  # fmt: skip

        start = (
            0, h0, _cast(h0, low), c0,
            _slots(dtype, steps, len(LSTM_GATES) * units).unstack(xs),  # then each step's tanh(z)
            _slots(dtype, steps + 1, units).write(0, h0),
            _slots(dtype, steps + 1, units).write(0, c0),
        )  # fmt: skip
        _, _, _, c_last, ts, hs, cs = tf.while_loop(lambda t, *_: t < steps, step, start)
        h_all = hs.stack()  # (time + 1, batch, H): the initial state, then every step's

        def grad(dhs: Any, _dc_last: Any) -> tuple[Any, Any]:
            rec_t = tf.transpose(rec)
            zeros = tf.zeros_like(h0)

            def back(s: Any, dh_next: Any, dc_next: Any, dzs: Any) -> tuple[Any, ...]:
                t = steps - 1 - s
                m = mask[t] if masked else one
                dh = dhs[t] + dh_next
                dz, dz_low, dc_prev, dh_kept = cell_grad(
                    ts.read(t), cs.read(t + 1), cs.read(t), dh, dc_next, m
                )
                dh_prev = _cast(tf.matmul(dz_low, rec_t), dtype)
                if masked:  # a masked step passes its gradients straight through
                    dh_prev = dh_prev + dh_kept
                return s + 1, dh_prev, dc_prev, dzs.write(t, dz)

            start = (0, zeros, zeros, _slots(dtype, steps, len(LSTM_GATES) * units))
            _, _, _, dzs = tf.while_loop(lambda s, *_: s < steps, back, start)
            dzs = dzs.stack()
            d_rec = tf.matmul(
                _cast(tf.reshape(h_all[:-1], [-1, units]), low),
                _cast(tf.reshape(dzs, [-1, len(LSTM_GATES) * units]), low),
                transpose_a=True,
            )
            return dzs, d_rec

        return (h_all[1:], c_last), grad

    return run(xs, rec)
