"""The LSTM's weight layout is written once, in model/lstm.py: permuting the gate blocks
there (with the weights permuted to match) changes every reader together, so the fast
kernel (with its compiled cell too), the Keras path, the numpy decoder and the reorder for
Keras' cuDNN function all compute what they computed in Keras 3's layout."""

import numpy as np
import pytest

from textgen._tf import tensorflow
from textgen.config import ModelConfig
from textgen.model import fastrnn, keras_rnn, lstm
from textgen.model.network import build_model, init_uniform, training_forward, weight_arrays

PERMUTED = ("o", "c", "i", "f")


def permute(array, units, new_layout):
    """``array`` (·, 4·units) in Keras' block order, re-laid out in ``new_layout``."""
    blocks = dict(zip(lstm.KERAS_GATES, np.split(array, 4, axis=-1), strict=True))
    return np.concatenate([blocks[g] for g in new_layout], axis=-1)


@pytest.fixture
def permuted_layout(monkeypatch):
    """LSTM_GATES permuted in model/lstm.py and in every module that imported the name."""
    for module in (lstm, fastrnn, keras_rnn):
        monkeypatch.setattr(module, "LSTM_GATES", PERMUTED)
    import textgen.decoding.numpy_lm as numpy_lm

    monkeypatch.setattr(numpy_lm, "LSTM_GATES", PERMUTED)
    return PERMUTED


def lstm_arrays_permuted(model, cfg, layout):
    for i in range(cfg.layers):
        cell = model.get_layer(f"rnn_{i}").cell
        for variable in (cell.kernel, cell.recurrent_kernel, cell.bias):
            variable.assign(permute(np.asarray(variable), cfg.units, layout))


@pytest.mark.parametrize("path", ["fast", "cell", "keras"])
def test_a_permuted_layout_changes_the_training_paths_together(path, permuted_layout, monkeypatch):
    tf = tensorflow()
    if path == "cell":  # the fast kernel with the compiled cell (lstm_cell.cc) in float32
        from textgen.model.cell_op import cell_ops

        if cell_ops() is None:
            pytest.skip("the compiled LSTM cell could not be built here (no C++ compiler?)")
        monkeypatch.setattr(fastrnn, "_compiled_cell", lambda requested, reduced: cell_ops())
        path = "fast"
    cfg = ModelConfig(cell="lstm", embedding_dim=5, units=6, layers=2)
    model = build_model(cfg, 11, mask_padding=True)
    init_uniform(model, 0.4, 0)
    x = np.random.default_rng(0).integers(1, 11, (3, 7)).astype(np.int32)
    x[0, :3] = 0

    def logits_and_grads():
        forward = training_forward(model, cfg, mask_padding=True, path=path)
        with tf.GradientTape() as tape:
            logits, _ = forward(x, True)
            loss = tf.reduce_sum(logits * logits * (x != 0)[:, :, None])
        grads = tape.gradient(loss, model.trainable_variables)
        return np.asarray(logits), [np.asarray(tf.convert_to_tensor(g)) for g in grads]

    with pytest.MonkeyPatch.context() as keras_order:  # Keras 3's own layout first
        for module in (lstm, fastrnn, keras_rnn):
            keras_order.setattr(module, "LSTM_GATES", lstm.KERAS_GATES)
        reference, ref_grads = logits_and_grads()
    lstm_arrays_permuted(model, cfg, permuted_layout)
    logits, grads = logits_and_grads()
    np.testing.assert_allclose(logits, reference, atol=1e-5)
    for var, g, ref in zip(model.trainable_variables, grads, ref_grads, strict=True):
        if g.shape[-1:] == (4 * cfg.units,):  # a gate-blocked weight: its gradient is too
            ref = permute(ref, cfg.units, permuted_layout)
        np.testing.assert_allclose(g, ref, atol=1e-5, err_msg=var.path)


def test_a_permuted_layout_changes_the_numpy_decoder_with_it(permuted_layout):
    from textgen.decoding.numpy_lm import NumpyLM

    cfg = ModelConfig(cell="lstm", embedding_dim=5, units=6, layers=2)
    model = build_model(cfg, 11, mask_padding=False)
    init_uniform(model, 0.4, 0)
    x = np.random.default_rng(1).integers(1, 11, (2, 6)).astype(np.int32)
    arrays = weight_arrays(model)
    with pytest.MonkeyPatch.context() as keras_order:
        import textgen.decoding.numpy_lm as numpy_lm

        for module in (lstm, numpy_lm):
            keras_order.setattr(module, "LSTM_GATES", lstm.KERAS_GATES)
        reference, _ = NumpyLM.from_arrays(arrays).run(x)
    permuted = dict(arrays)
    for name in list(arrays):
        if name.startswith("rnn_"):
            permuted[name] = permute(arrays[name], cfg.units, permuted_layout)
    logits, _ = NumpyLM.from_arrays(permuted).run(x)
    np.testing.assert_allclose(logits, reference, atol=1e-5)


def test_keras_cudnn_function_gets_its_own_order_back(permuted_layout):
    """What keras_rnn hands Keras' cuDNN LSTM is in Keras' order, whatever the layout."""
    tf = tensorflow()
    original = np.arange(2 * 4 * 3, dtype=np.float32).reshape(2, 12)
    laid_out = tf.constant(permute(original, 3, permuted_layout))
    back = lstm.to_keras_order(
        laid_out, lambda parts: tf.concat(parts, -1), lambda t: tf.split(t, 4, -1)
    )
    np.testing.assert_array_equal(np.asarray(back), original)
    with pytest.MonkeyPatch.context() as keras_order:  # Keras' layout: nothing to reorder
        keras_order.setattr(lstm, "LSTM_GATES", lstm.KERAS_GATES)
        assert lstm.to_keras_order(laid_out, None, None) is laid_out
