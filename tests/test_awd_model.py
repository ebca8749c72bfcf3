"""The model's side of AWD-LSTM (Merity et al. 2017): the last layer's hidden outputs for
AR/TAR, weight drop, locked dropout and embedding dropout in ``training_forward``."""

import numpy as np
import pytest

from textgen._tf import tensorflow
from textgen.config import ModelConfig
from textgen.model.network import build_model, init_uniform, training_forward


def tiny(cell="lstm", **model):
    cfg = ModelConfig(cell=cell, embedding_dim=6, units=8, layers=2, **model)
    built = build_model(cfg, 11, mask_padding=False)
    init_uniform(built, 0.3, 0)
    return cfg, built


def ids(batch=3, time=5, seed=0):
    return np.random.default_rng(seed).integers(1, 11, (batch, time)).astype(np.int32)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_hidden_outputs_are_the_last_layers_before_and_after_output_dropout(cell):
    tf = tensorflow()
    cfg, model = tiny(cell, output_dropout=0.5)
    forward = training_forward(model, cfg, mask_padding=False)
    x = ids()
    tf.random.set_seed(0)
    logits, state, (raw, dropped) = forward(x, True, hidden=True)
    assert state is None
    assert raw.shape == dropped.shape == (3, 5, cfg.units)
    assert raw.dtype == dropped.dtype == logits.dtype == tf.float32
    raw, dropped = np.asarray(raw), np.asarray(dropped)
    # inverted dropout: every unit is either zeroed or scaled by 1 / (1 - p)
    kept = dropped != 0
    assert 0 < kept.mean() < 1
    np.testing.assert_allclose(dropped[kept], raw[kept] / 0.5, rtol=1e-6)
    # the logits are the dropped outputs' projection
    dense = model.get_layer("logits")
    np.testing.assert_allclose(
        np.asarray(logits), dropped @ np.asarray(dense.kernel) + np.asarray(dense.bias), atol=1e-5
    )
    # without training both are the same and the logits are the model's
    logits, _, (raw, dropped) = forward(x, False, hidden=True)
    np.testing.assert_array_equal(np.asarray(raw), np.asarray(dropped))
    np.testing.assert_allclose(np.asarray(logits), np.asarray(model(x)), atol=1e-5)
    plain, _ = forward(x, False)
    np.testing.assert_array_equal(np.asarray(plain), np.asarray(logits))


def test_hidden_outputs_carry_the_state_too():
    cfg, model = tiny()
    forward = training_forward(model, cfg, mask_padding=False)
    zeros = np.zeros((3, cfg.units), np.float32)
    state = [(zeros, zeros)] * cfg.layers
    _, new_state, (raw, _) = forward(ids(), False, state, hidden=True)
    assert len(new_state) == cfg.layers
    np.testing.assert_allclose(np.asarray(new_state[-1][0]), np.asarray(raw)[:, -1], atol=1e-6)


def test_unknown_path_is_refused():
    cfg, model = tiny()
    with pytest.raises(ValueError, match="path must be one of auto, fast, keras"):
        training_forward(model, cfg, mask_padding=False, path="cudnn")
