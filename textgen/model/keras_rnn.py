"""The Keras path of training's LSTM layers: Keras' cuDNN-backed LSTM when TensorFlow sees
a GPU, Keras' own recurrence (its TensorFlow backend's ``rnn`` loop) otherwise.

:func:`keras_lstm` has the contract of :func:`textgen.model.fastrnn.lstm_layer` (time-major
input, the layer's kernel, bias and recurrent kernel passed in, so a weight-dropped
recurrent kernel trains through it; a mask keeps the state over masked steps; a carried
initial state is a constant), so :func:`textgen.model.network.training_forward` picks one
or the other per ``path`` and the weights, their layout and ``weights.npz`` are the same.

On a GPU the layer is ``keras.src.backend.tensorflow.rnn.lstm``, the function
``keras.layers.LSTM`` calls for cuDNN, fed in Keras' gate order
(:func:`textgen.model.lstm.to_keras_order`). cuDNN takes right-padded masks only, while
``lines`` mode pre-pads: since a pre-padded line's masked steps keep the zero initial
state, each row is rotated left by its padding before the call and back after it (the
outputs at padded steps are the zero state either way, as in the fast kernel).

Precision: the products and the recurrence run in ``compute_dtype`` with float32 master
weights cast at use, outputs cast back to float32 (Keras' ``mixed_bfloat16`` semantics).
bf16 keeps float32's exponent range, so no loss scaling is needed, which is why
``"bfloat16"`` maps to bf16 here and not to ``mixed_float16``.
"""

from __future__ import annotations

from typing import Any

from textgen._tf import tensorflow
from textgen.model.lstm import LSTM_GATES, by_gate, to_keras_order


def gpu_available() -> bool:
    """Whether TensorFlow sees a GPU (then ``path="auto"`` trains on the Keras path)."""
    return bool(tensorflow().config.list_logical_devices("GPU"))


def keras_lstm(
    x: Any,
    kernel: Any,
    bias: Any,
    recurrent: Any,
    mask: Any | None = None,
    initial: tuple[Any, Any] | None = None,
    *,
    compute_dtype: Any = None,
) -> Any:
    """:func:`textgen.model.fastrnn.lstm_layer`'s contract on the Keras path: ``x`` is
    (time, batch, features), ``mask`` (time, batch, 1) float or None. Returns the hidden
    states (time, batch, H), with ``(h_last, c_last)`` when ``initial`` is given."""
    tf = tensorflow()
    units = recurrent.shape[0]
    dtype = x.dtype
    low = tf.as_dtype(compute_dtype) if compute_dtype is not None else dtype
    carried = initial is not None
    if initial is None:
        zeros = tf.zeros([tf.shape(x)[1], units], dtype)
        initial = (zeros, zeros)
    h0, c0 = (tf.cast(tf.stop_gradient(tf.convert_to_tensor(v)), low) for v in initial)
    x, kernel, bias, recurrent = (tf.cast(t, low) for t in (x, kernel, bias, recurrent))
    run = _cudnn if gpu_available() else _keras_loop
    hs, (h_last, c_last) = run(x, kernel, bias, recurrent, mask, h0, c0)
    hs = tf.cast(hs, dtype)
    if not carried:
        return hs
    return hs, (tf.stop_gradient(tf.cast(h_last, dtype)), tf.stop_gradient(tf.cast(c_last, dtype)))


def _keras_loop(
    x: Any, kernel: Any, bias: Any, recurrent: Any, mask: Any, h0: Any, c0: Any
) -> tuple[Any, tuple[Any, Any]]:
    """Keras' backend recurrence with the LSTM cell of :mod:`textgen.model.lstm`'s layout."""
    from keras.src.backend.tensorflow.rnn import rnn

    tf = tensorflow()
    xs = tf.tensordot(x, kernel, 1) + bias  # the input projection of all steps at once

    def step(z_in: Any, states: list[Any]) -> tuple[Any, list[Any]]:
        h, c = states
        gate = by_gate(tf.split(z_in + tf.matmul(h, recurrent), len(LSTM_GATES), axis=-1))
        i, f, o = (tf.sigmoid(gate[g]) for g in ("i", "f", "o"))
        c_new = f * c + i * tf.tanh(gate["c"])
        h_new = o * tf.tanh(c_new)
        return h_new, [h_new, c_new]

    # batch-major, as keras.layers.LSTM calls it (with time_major=True Keras 3.15 bounds
    # the loop by inputs.shape[1], the batch size, instead of the time steps)
    keep = None if mask is None else tf.transpose(mask[:, :, 0] > 0)
    xs = tf.transpose(xs, [1, 0, 2])
    _, hs, (h_last, c_last) = rnn(step, xs, [h0, c0], mask=keep)
    return tf.transpose(hs, [1, 0, 2]), (h_last, c_last)


def _cudnn(
    x: Any, kernel: Any, bias: Any, recurrent: Any, mask: Any, h0: Any, c0: Any
) -> tuple[Any, tuple[Any, Any]]:
    """Keras' cuDNN LSTM (GPU only), pre-padded rows rotated to right padding and back."""
    from keras.src.backend.tensorflow.rnn import lstm

    tf = tensorflow()

    def keras_order(w: Any) -> Any:
        return to_keras_order(
            w, lambda parts: tf.concat(parts, -1), lambda t: tf.split(t, len(LSTM_GATES), -1)
        )

    shift = None
    if mask is not None:  # (time, batch): pads come first; rotate each row by its pads
        real = tf.cast(mask[:, :, 0] > 0, tf.int32)
        steps = tf.shape(real)[0]
        shift = steps - tf.reduce_sum(real, axis=0)  # (batch,)
        t = tf.range(steps)[:, None]
        forward_index = (t + shift[None, :]) % steps  # right-padded step t reads step t+pad
        x = _take_steps(x, forward_index)
        mask_rp = tf.transpose(t < (steps - shift)[None, :])  # (batch, time), right-padded
    else:
        mask_rp = None
    _, hs, (h_last, c_last) = lstm(
        x, h0, c0, mask_rp, keras_order(kernel), keras_order(recurrent), keras_order(bias),
        tf.tanh, tf.sigmoid, return_sequences=True, time_major=True,
    )  # fmt: skip
    if shift is not None:  # back to pre-padding: step t reads right-padded step t-pad
        back = (tf.range(tf.shape(hs)[0])[:, None] - shift[None, :]) % tf.shape(hs)[0]
        hs = _take_steps(hs, back)
    return hs, (h_last, c_last)


def _take_steps(x: Any, index: Any) -> Any:
    """``x[index[t, b], b]`` for (time, batch, ·) ``x`` and (time, batch) ``index``."""
    tf = tensorflow()
    batch = tf.broadcast_to(tf.range(tf.shape(index)[1])[None, :], tf.shape(index))
    return tf.gather_nd(x, tf.stack([index, batch], axis=-1))
