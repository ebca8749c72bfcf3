import numpy as np
import pytest

from textgen.config import ModelConfig
from textgen.decoding.numpy_lm import NumpyLM
from textgen.model.network import build_model


def _model(cell: str, layers: int = 2, mask: bool = True):
    model = build_model(
        ModelConfig(cell=cell, embedding_dim=8, units=16, layers=layers), 20, mask_padding=mask
    )
    rng = np.random.default_rng(0)
    # non-zero biases so every weight matters in the comparison
    for layer in model.layers:
        weights = layer.get_weights()
        if weights:
            layer.set_weights(
                [w + 0.3 * rng.standard_normal(w.shape).astype(np.float32) for w in weights]
            )
    return model


def test_output_shape_is_logits_per_position():
    model = build_model(ModelConfig(embedding_dim=8, units=16, layers=2), 30, mask_padding=False)
    out = model(np.ones((4, 7), np.int32))
    assert tuple(out.shape) == (4, 7, 30)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_numpy_twin_matches_keras_logits(cell):
    model = _model(cell)
    ids = np.array([[5, 3, 4, 9, 6, 2]], np.int32)
    ref = np.asarray(model(ids))
    lm = NumpyLM.from_model(model)
    full, _ = lm.run(ids)
    np.testing.assert_allclose(full, ref, atol=1e-4)
    state, steps = lm.initial_state(1), []
    for t in range(ids.shape[1]):
        logits, state = lm.step(ids[:, t], state)
        steps.append(logits)
    np.testing.assert_allclose(np.stack(steps, axis=1), ref, atol=1e-4)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_pre_padding_is_masked_so_state_starts_at_zero(cell):
    model = _model(cell)
    padded = np.array([[0, 0, 0, 5, 3, 4]], np.int32)
    alone = np.array([[5, 3, 4]], np.int32)
    np.testing.assert_allclose(
        np.asarray(model(padded))[:, 3:], np.asarray(model(alone)), atol=1e-5
    )


def test_dropout_sits_between_recurrent_layers_only():
    model = build_model(
        ModelConfig(layers=3, dropout=0.5, units=8, embedding_dim=4), 10, mask_padding=True
    )
    names = [layer.name for layer in model.layers]
    assert names == [
        "ids",
        "embedding",
        "rnn_0",
        "dropout_1",
        "rnn_1",
        "dropout_2",
        "rnn_2",
        "logits",
    ]
    for layer in model.layers:
        if layer.name.startswith("rnn"):
            assert layer.recurrent_dropout == 0 and not layer.unroll
