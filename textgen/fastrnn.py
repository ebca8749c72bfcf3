"""A faster LSTM recurrence for training on CPU, over the Keras layer's own variables.

Keras' CPU LSTM runs its cell once per time step, input projection included, and lets
autodiff accumulate the weight gradients step by step. This module does what cuDNN and
PyTorch do instead:

* the input projection ``x @ kernel + bias`` of all time steps is one large matrix
  product before the recurrence (done by the caller, differentiated by TensorFlow);
* the recurrence carries only ``h @ recurrent_kernel`` per step, with a hand-written
  backward pass (a ``tf.custom_gradient``) that returns the per-step gradients, so the
  recurrent kernel's gradient is one large product ``H_prevᵀ @ dZ`` after the loop;
* everything that does not depend on the previous step (activation derivatives, tanh of
  the cell states) is computed for all steps at once outside the loops, because on a CPU
  every small op inside a loop costs scheduling time; one ``tanh`` yields all four gates
  (``sigmoid(z) = (tanh(z/2) + 1)/2``, the halving folded into the weights, exact).

It is numerically the same LSTM as ``keras.layers.LSTM`` (gates i, f, c, o; zero initial
state unless one is given; masked steps keep the previous state), so ``model.keras``
stays a plain Keras model. Tests compare outputs and gradients with Keras'.
"""

from __future__ import annotations

from typing import Any

from textgen._tf import tensorflow


def _gate_constants(units: int, dtype: Any) -> tuple[Any, Any, Any]:
    """(scale, a, b) with gates = a * tanh(scale * z) + b for the i, f, c, o blocks."""
    tf = tensorflow()
    half, one, zero = (tf.fill([units], v) for v in (0.5, 1.0, 0.0))
    scale = tf.cast(tf.concat([half, half, one, half], 0), dtype)
    offset = tf.cast(tf.concat([half, half, zero, half], 0), dtype)
    return scale, scale, offset


def lstm_recurrence(
    xw: Any, recurrent: Any, mask: Any | None = None, initial: tuple[Any, Any] | None = None
) -> Any:
    """Run the LSTM recurrence; ``xw`` is (time, batch, 4H) with the bias added.

    ``mask`` is (time, batch, 1) float, 1 where the step is real (None: all real).
    ``initial`` is the state ``(h, c)`` to start from (None: zeros); it is a constant for
    differentiation, as in truncated backpropagation through time.
    Returns the hidden states (time, batch, H) when ``initial`` is None, else
    ``(hidden states, (h_last, c_last))`` with the final state to carry into the next call.
    """
    tf = tensorflow()
    masked = mask is not None
    if mask is None:
        mask = tf.ones_like(xw[:1, :1, :1])  # unused placeholder input
    units = recurrent.shape[0]
    carried = initial is not None
    if initial is None:
        zeros = tf.zeros([tf.shape(xw)[1], units], xw.dtype)
        initial = (zeros, zeros)
    h0, c0 = (tf.stop_gradient(tf.convert_to_tensor(v)) for v in initial)

    @tf.custom_gradient
    def run(xw: Any, recurrent: Any, mask: Any, h0: Any, c0: Any) -> Any:
        batch = tf.shape(xw)[1]
        scale, a, b = _gate_constants(units, xw.dtype)
        zeros = tf.zeros([batch, units], xw.dtype)
        rec_scaled = recurrent * scale

        def step(carry: Any, inputs: Any) -> Any:
            h_prev, c_prev, _ = carry
            xs_t, m = inputs if masked else (inputs, None)
            t = tf.tanh(xs_t + tf.matmul(h_prev, rec_scaled))
            i, f, g, o = tf.split(t * a + b, 4, axis=-1)
            c = f * c_prev + i * g
            h = o * tf.tanh(c)
            if masked:
                c = c_prev + m * (c - c_prev)
                h = h_prev + m * (h - h_prev)
            return h, c, t

        xs = xw * scale
        t0 = tf.zeros([batch, 4 * units], xw.dtype)
        hs, cs, ts = tf.scan(step, (xs, mask) if masked else xs, initializer=(h0, c0, t0))

        def grad(dhs: Any, _dcs: Any) -> tuple[Any, ...]:
            # per-step quantities that do not depend on the recurrence, all steps at once
            i, f, g, o = tf.split(ts * a + b, 4, axis=-1)
            c_prev = tf.concat([c0[None], cs[:-1]], axis=0)
            tc = tf.tanh(cs)
            m_all = mask if masked else 1.0
            o_dtc = m_all * o * (1.0 - tc * tc)  # d c / d h through h = o * tanh(c)
            gci = tf.concat([g, c_prev, i], axis=-1)  # dc times these: d i, d f, d g
            dz_dgate = (a * scale) * (1.0 - ts * ts) * m_all
            recurrent_t = tf.transpose(recurrent)

            def back(carry: Any, inputs: Any) -> Any:
                dh_next, dc_next, _ = carry
                if masked:
                    dh_out, o_dtc_t, gci_t, tc_t, dz_dgate_t, f_t, m = inputs
                else:
                    dh_out, o_dtc_t, gci_t, tc_t, dz_dgate_t, f_t = inputs
                dh = dh_out + dh_next
                dc = dc_next + dh * o_dtc_t
                dgates = tf.concat([tf.tile(dc, [1, 3]) * gci_t, dh * tc_t], axis=-1)
                dz = dgates * dz_dgate_t
                dh_prev = tf.matmul(dz, recurrent_t)
                if masked:  # a masked step passes its gradients straight through
                    return dh_prev + (1.0 - m) * dh, dc * (m * f_t + (1.0 - m)), dz
                return dh_prev, dc * f_t, dz

            seqs = (dhs, o_dtc, gci, tc, dz_dgate, f) + ((mask,) if masked else ())
            _, _, dzs = tf.scan(back, seqs, initializer=(zeros, zeros, t0), reverse=True)
            h_prev = tf.concat([h0[None], hs[:-1]], axis=0)
            d_recurrent = tf.matmul(
                tf.reshape(h_prev, [-1, units]), tf.reshape(dzs, [-1, 4 * units]), transpose_a=True
            )
            return dzs, d_recurrent, tf.zeros_like(mask), tf.zeros_like(h0), tf.zeros_like(c0)

        return (hs, cs[-1]), grad

    hs, c_last = run(xw, recurrent, mask, h0, c0)
    if not carried:
        return hs
    return hs, (tf.stop_gradient(hs[-1]), tf.stop_gradient(c_last))
