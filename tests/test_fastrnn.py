"""The hoisted LSTM used for training computes what keras.layers.LSTM computes."""

import numpy as np
import pytest

from textgen._tf import tensorflow
from textgen.config import ModelConfig
from textgen.model import build_model, training_forward


@pytest.mark.parametrize("mask", [False, True])
def test_outputs_and_gradients_match_keras(mask):
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

    with tf.GradientTape(persistent=True) as tape:
        ref_logits = model(x, training=True)
        fast_logits, _ = fast(x, True)
        ref_loss, fast_loss = loss(ref_logits), loss(fast_logits)
    real = x != 0  # masked positions' outputs are never used
    np.testing.assert_allclose(
        np.asarray(fast_logits)[real], np.asarray(ref_logits)[real], atol=1e-5
    )
    ref_grads = tape.gradient(ref_loss, model.trainable_variables)
    fast_grads = tape.gradient(fast_loss, model.trainable_variables)
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
