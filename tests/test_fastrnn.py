"""The hoisted LSTM used for training computes what keras.layers.LSTM computes."""

import numpy as np
import pytest

from textgen._tf import tensorflow
from textgen.config import ModelConfig
from textgen.model.network import build_model, training_forward


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "xla"])
@pytest.mark.parametrize("mask", [False, True])
def test_outputs_and_gradients_match_keras(mask, compiled):
    tf = tensorflow()
    cfg = ModelConfig(cell="lstm", embedding_dim=6, units=10, layers=2)
    model = build_model(cfg, 13, mask_padding=mask)
    rng = np.random.default_rng(0)
    for layer in model.layers:  # non-trivial biases
        weights = layer.get_weights()
        if weights:
            layer.set_weights(
                [w + 0.2 * rng.standard_normal(w.shape).astype(np.float32) for w in weights]
            )
    x = rng.integers(1, 13, (4, 9)).astype(np.int32)
    y = rng.integers(1, 13, (4, 9)).astype(np.int32)
    if mask:
        x[:, :3] = 0  # pre-padding
        x[1, :6] = 0
    fast = training_forward(model, cfg, mask_padding=mask)

    def loss(logits):
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
        weight = tf.cast(x != 0, ce.dtype)
        return tf.reduce_sum(ce * weight) / tf.reduce_sum(weight)

    with tf.GradientTape() as tape:
        ref_logits = model(x, training=True)
        ref_loss = loss(ref_logits)
    ref_grads = tape.gradient(ref_loss, model.trainable_variables)

    def fast_logits_and_grads():
        with tf.GradientTape() as tape:
            logits, _ = fast(x, True)
            fast_loss = loss(logits)
        return logits, tape.gradient(fast_loss, model.trainable_variables)

    if compiled:  # the training step's path: one XLA computation
        fast_logits_and_grads = tf.function(fast_logits_and_grads, jit_compile=True)
    fast_logits, fast_grads = fast_logits_and_grads()
    real = x != 0  # masked positions' outputs are never used
    np.testing.assert_allclose(
        np.asarray(fast_logits)[real], np.asarray(ref_logits)[real], atol=1e-5
    )
    for var, a, b in zip(model.trainable_variables, ref_grads, fast_grads, strict=True):
        np.testing.assert_allclose(
            np.asarray(tf.convert_to_tensor(b)),
            np.asarray(tf.convert_to_tensor(a)),
            atol=1e-6,
            err_msg=var.path,
        )


def test_other_cells_use_the_keras_model():
    cfg = ModelConfig(cell="gru", embedding_dim=4, units=5)
    model = build_model(cfg, 7, mask_padding=False)
    x = np.ones((2, 3), np.int32)
    np.testing.assert_array_equal(
        np.asarray(training_forward(model, cfg, mask_padding=False)(x, False)[0]),
        np.asarray(model(x)),
    )


def compare_layer_with_keras(x, compiled, mask=None, initial=None):
    """Run ``lstm_layer`` and a Keras LSTM with the same (non-trivial) weights on batch-major
    ``x``; assert equal outputs at real steps, final state and weight gradients."""
    from textgen._tf import keras
    from textgen.model.fastrnn import lstm_layer

    tf, k = tensorflow(), keras()
    rng = np.random.default_rng(x.shape[1])
    batch, steps = x.shape[:2]
    layer = k.layers.LSTM(4, return_sequences=True, return_state=True)
    layer(x)
    layer.set_weights([w + 0.3 * rng.standard_normal(w.shape) for w in layer.get_weights()])
    weights = layer.trainable_variables  # kernel, recurrent kernel, bias
    real = np.ones((batch, steps), bool) if mask is None else mask
    target = rng.standard_normal((batch, steps, 4)).astype(np.float32) * real[:, :, None]

    with tf.GradientTape() as tape:
        keras_state = None if initial is None else list(initial)
        ref_h, ref_last_h, ref_last_c = layer(x, mask=mask, initial_state=keras_state)
        ref_loss = tf.reduce_sum(ref_h * target)
    ref_grads = tape.gradient(ref_loss, weights)

    def fast():
        kernel, recurrent, bias = (tf.convert_to_tensor(w) for w in weights)
        zeros = tf.zeros([batch, 4])
        m = None if mask is None else tf.cast(tf.transpose(mask), tf.float32)[:, :, None]
        with tf.GradientTape() as tape:
            tape.watch([kernel, recurrent, bias])
            hs, (last_h, last_c) = lstm_layer(
                tf.transpose(x, [1, 0, 2]), kernel, bias, recurrent, m,
                initial=(zeros, zeros) if initial is None else initial,
            )  # fmt: skip
            fast_loss = tf.reduce_sum(tf.transpose(hs, [1, 0, 2]) * target)
        return hs, last_h, last_c, tape.gradient(fast_loss, [kernel, recurrent, bias])

    if compiled:  # the training step's path: one XLA computation
        fast = tf.function(fast, jit_compile=True)
    hs, last_h, last_c, grads = fast()
    # outputs at masked steps are not compared (never used)
    np.testing.assert_allclose(
        np.transpose(hs, [1, 0, 2])[real], np.asarray(ref_h)[real], atol=1e-5
    )
    np.testing.assert_allclose(last_h, ref_last_h, atol=1e-5)
    np.testing.assert_allclose(last_c, ref_last_c, atol=1e-5)
    for a, b in zip(grads, ref_grads, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "xla"])
def test_carried_state_matches_keras_initial_state(compiled):
    """A carried (h, c) starts the layer where Keras' initial_state does; it is a constant."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 7, 5)).astype(np.float32)
    initial = tuple(rng.standard_normal((3, 4)).astype(np.float32) for _ in range(2))
    compare_layer_with_keras(x, compiled, initial=initial)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "xla"])
def test_masked_steps_inside_a_sequence_keep_the_state_as_in_keras(compiled):
    """A masked step in the middle passes state forward and gradients back unchanged."""
    x = np.random.default_rng(2).standard_normal((3, 8, 5)).astype(np.float32)
    mask = np.ones((3, 8), bool)
    mask[0, 2:4] = mask[2, 5] = False
    compare_layer_with_keras(x, compiled, mask=mask)


def test_the_gate_layout_is_read_from_one_place():
    """model/lstm.py names the blocks once: blocks, splitting and joining agree with it and
    with the sigmoid scaling both kernels use (0.5 on i, f, o; 1 on the cell candidate)."""
    from textgen.model.lstm import (
        LSTM_GATES,
        by_gate,
        gate_block,
        gate_offset,
        gate_scale,
        in_gate_order,
    )

    units = 3
    columns = np.arange(len(LSTM_GATES) * units)
    parts = by_gate(np.split(columns, len(LSTM_GATES)))
    assert list(parts) == list(LSTM_GATES) == ["i", "f", "c", "o"]  # Keras 3's order
    for gate in LSTM_GATES:
        np.testing.assert_array_equal(columns[gate_block(gate, units)], parts[gate])
        sigmoid = gate != "c"  # sigmoid(z) = 0.5 * tanh(z / 2) + 0.5; c is tanh(z)
        assert set(gate_scale(units)[gate_block(gate, units)]) == {0.5 if sigmoid else 1.0}
        assert set(gate_offset(units)[gate_block(gate, units)]) == {0.5 if sigmoid else 0.0}
    np.testing.assert_array_equal(np.concatenate(in_gate_order(parts)), columns)
    with pytest.raises(ValueError, match="an LSTM has 4 gate blocks, got 3"):
        by_gate([1, 2, 3])


@pytest.mark.parametrize("mode", ["lines", "stream"])
def test_the_keras_path_trains_as_the_fast_kernel(mode):
    """path="keras" (Keras' recurrence on CPU; its cuDNN LSTM on a GPU) against the fast
    kernel: the same loss and gradients within 1e-5 over three SGD steps, in lines mode
    (pre-padded, masked) and in stream mode with the state carried from step to step."""
    from textgen._tf import keras
    from textgen.model.network import init_uniform

    tf, k = tensorflow(), keras()
    mask = mode == "lines"
    cfg = ModelConfig(cell="lstm", embedding_dim=6, units=10, layers=2)
    rng = np.random.default_rng(5)
    models, steps = {}, {}
    for path in ("fast", "keras"):
        model = build_model(cfg, 13, mask_padding=mask)
        init_uniform(model, 0.3, 0)
        forward = training_forward(model, cfg, mask_padding=mask, path=path)
        optimizer = k.optimizers.SGD(0.5)

        def step(x, y, state, forward=forward, model=model, optimizer=optimizer):
            with tf.GradientTape() as tape:
                logits, new_state = forward(x, True, state)
                ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
                weight = tf.cast(x != 0, ce.dtype)
                loss = tf.reduce_sum(ce * weight) / tf.reduce_sum(weight)
            grads = [
                tf.convert_to_tensor(g) for g in tape.gradient(loss, model.trainable_variables)
            ]
            optimizer.apply(grads, model.trainable_variables)
            return loss, grads, new_state

        models[path], steps[path] = model, step
    zeros = np.zeros((4, cfg.units), np.float32)
    states = {path: [(zeros, zeros)] * cfg.layers if not mask else None for path in steps}
    for _ in range(3):
        x = rng.integers(1, 13, (4, 9)).astype(np.int32)
        y = rng.integers(1, 13, (4, 9)).astype(np.int32)
        if mask:
            x[:, :2] = 0
            x[1, :6] = 0
        out = {}
        for path, step in steps.items():
            out[path] = step(x, y, states[path])
            states[path] = out[path][2]
        (loss_f, grads_f, _), (loss_k, grads_k, _) = out["fast"], out["keras"]
        np.testing.assert_allclose(float(loss_k), float(loss_f), atol=1e-5)
        for a, b in zip(grads_f, grads_k, strict=True):
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5)
    fast_weights, keras_weights = (models[p].trainable_variables for p in ("fast", "keras"))
    for a, b in zip(fast_weights, keras_weights, strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5)


def test_the_keras_path_computes_in_bf16_too():
    cfg = ModelConfig(cell="lstm", embedding_dim=6, units=10, layers=2)
    model = build_model(cfg, 13, mask_padding=False)
    x = np.random.default_rng(6).integers(1, 13, (4, 9)).astype(np.int32)
    ref = np.asarray(training_forward(model, cfg, mask_padding=False, path="keras")(x, False)[0])
    low = training_forward(model, cfg, mask_padding=False, precision="bfloat16", path="keras")
    logits = np.asarray(low(x, False)[0])
    assert logits.dtype == np.float32 and not np.array_equal(logits, ref)
    np.testing.assert_allclose(logits, ref, atol=0.03)


def test_the_cudnn_call_gets_right_padded_rows_and_gives_pre_padded_outputs(monkeypatch):
    """cuDNN takes right padding only: the GPU branch rotates pre-padded rows before the
    call and back after it. Here Keras' cuDNN function is stood in for by Keras' loop
    (which checks that every mask it gets is right-padded), on CPU."""
    import importlib

    from textgen.model import keras_rnn
    from textgen.model.fastrnn import lstm_layer

    tf = tensorflow()
    seen = []

    def fake_cudnn(x, h0, c0, mask, kernel, recurrent, bias, *args, **kwargs):
        rows = np.asarray(mask)
        seen.append(rows)
        assert (np.sort(rows, axis=1)[:, ::-1] == rows).all()  # right-padded
        m = tf.cast(tf.transpose(mask), tf.float32)[:, :, None]
        hs, last = keras_rnn._keras_loop(x, kernel, bias, recurrent, m, h0, c0)
        return last[0], hs, list(last)

    backend = importlib.import_module("keras.src.backend.tensorflow.rnn")
    monkeypatch.setattr(backend, "lstm", fake_cudnn)
    monkeypatch.setattr(keras_rnn, "gpu_available", lambda: True)
    rng = np.random.default_rng(7)
    x = tf.constant(rng.standard_normal((6, 3, 2)).astype(np.float32))
    kernel, recurrent = (
        tf.constant(rng.standard_normal(s).astype(np.float32)) for s in ((2, 16), (4, 16))
    )
    bias = tf.constant(rng.standard_normal(16).astype(np.float32))
    real = np.ones((6, 3), np.float32)
    real[:2, 0] = real[:4, 2] = 0  # pre-padding: 2 and 4 pads
    mask = tf.constant(real[:, :, None])
    ours = np.asarray(keras_rnn.keras_lstm(x, kernel, bias, recurrent, mask))
    fast = np.asarray(lstm_layer(x, kernel, bias, recurrent, mask))
    assert seen and not seen[0].all()
    np.testing.assert_allclose(ours[real > 0], fast[real > 0], atol=1e-5)  # padded: unused
