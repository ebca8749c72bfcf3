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


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_native_hidden_outputs_are_the_same_in_the_layers_layout(cell):
    """``hidden="native"`` (what the training step asks for) returns the outputs of
    ``hidden=True`` in the layers' own layout, the time axis ``hidden_time_axis`` says."""
    cfg, model = tiny(cell)
    forward = training_forward(model, cfg, mask_padding=False)
    x = ids()
    _, _, batch_major = forward(x, False, hidden=True)
    _, _, native = forward(x, False, hidden="native")
    assert forward.hidden_time_axis == (0 if cell == "lstm" else 1)
    for got, want in zip(native, batch_major, strict=True):
        got = np.asarray(got)
        if forward.hidden_time_axis == 0:
            got = got.transpose(1, 0, 2)
        np.testing.assert_array_equal(got, np.asarray(want))


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


def variables_as_arrays(model):
    return [np.array(v) for v in model.variables]


def test_regularizers_off_by_default_change_nothing():
    """Defaults add no variable and leave training's forward equal to the Keras model."""
    cfg, model = tiny()
    assert not hasattr(model, "regularizer_seed")
    assert not any("regularizers" in v.path for v in model.variables)
    dropped = tiny(weight_drop=0.1)[1]  # one more variable: the regularizers' seed state
    assert len(dropped.variables) == len(model.variables) + 1
    assert [v.path for v in dropped.variables if "regularizers" in v.path]
    x = ids()
    logits, _ = training_forward(model, cfg, mask_padding=False)(x, True)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(model(x)), atol=1e-5)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_evaluation_uses_no_regularizer(cell):
    extra = {"weight_drop": 0.5} if cell == "lstm" else {}
    cfg, model = tiny(cell, embedding_dropout=0.5, locked_dropout=True, output_dropout=0.5, **extra)
    x = ids()
    logits, _ = training_forward(model, cfg, mask_padding=False)(x, False)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(model(x)), atol=1e-5)
    trained, _ = training_forward(model, cfg, mask_padding=False)(x, True)
    assert np.abs(np.asarray(trained) - np.asarray(logits)).max() > 1e-3


def test_weight_drop_zeroes_a_fraction_p_and_scales_the_rest():
    from textgen._tf import keras
    from textgen.model.regularizers import weight_drop

    seed = keras().random.SeedGenerator(0)
    kernel = np.ones((64, 256), np.float32)
    first = np.asarray(weight_drop(kernel, 0.3, seed))
    assert set(np.unique(first)) == {0.0, np.float32(1 / 0.7)}
    assert abs((first == 0).mean() - 0.3) < 0.02
    second = np.asarray(weight_drop(kernel, 0.3, seed))
    assert (first != second).mean() > 0.3  # a new mask for the next batch


def test_weight_drop_is_one_mask_over_the_whole_batch():
    """The weight-dropped forward is exactly an LSTM run over the masked recurrent kernels,
    one mask per layer for all time steps and rows; the next batch draws new masks."""
    from textgen.model.fastrnn import lstm_layer
    from textgen.model.regularizers import drop_mask, seed_generator

    tf = tensorflow()
    cfg, model = tiny(weight_drop=0.4)
    forward = training_forward(model, cfg, mask_padding=False)
    seed = seed_generator(model)
    x = ids(4, 7)
    before = np.array(seed.state)
    _, _, (raw, _) = forward(x, True, hidden=True)
    after = np.array(seed.state)
    seed.state.assign(before)  # replay the draws of that batch
    h = tf.gather(model.get_layer("embedding").embeddings, x.T)
    masks = []
    for i in range(cfg.layers):
        cell = model.get_layer(f"rnn_{i}").cell
        masks.append(np.asarray(drop_mask(tf.shape(cell.recurrent_kernel), 0.4, seed)))
        h = lstm_layer(h, cell.kernel, cell.bias, cell.recurrent_kernel * masks[-1])
    np.testing.assert_allclose(np.asarray(raw), np.transpose(h, [1, 0, 2]), atol=1e-6)
    np.testing.assert_array_equal(np.array(seed.state), after)
    next_mask = np.asarray(drop_mask(tf.shape(masks[0]), 0.4, seed))
    assert (next_mask != masks[0]).any() and (next_mask != masks[1]).any()


def test_weight_drop_gradient_matches_finite_differences():
    """Autodiff through the masked recurrent kernel (fixed mask) against central differences,
    in float64."""
    from textgen._tf import keras
    from textgen.model.fastrnn import lstm_layer
    from textgen.model.regularizers import weight_drop

    tf = tensorflow()
    rng = np.random.default_rng(3)
    units, feats, steps, batch = 3, 2, 5, 2
    x = tf.constant(rng.standard_normal((steps, batch, feats)))
    kernel = tf.constant(0.5 * rng.standard_normal((feats, 4 * units)))
    bias = tf.constant(0.1 * rng.standard_normal(4 * units))
    target = tf.constant(rng.standard_normal((steps, batch, units)))
    mask = np.asarray(
        weight_drop(np.ones((units, 4 * units)), 0.5, keras().random.SeedGenerator(1))
    )
    assert 0 < (mask == 0).mean() < 1

    def loss(recurrent):
        return tf.reduce_sum(lstm_layer(x, kernel, bias, recurrent * mask) * target)

    rec = tf.Variable(0.5 * rng.standard_normal((units, 4 * units)))
    with tf.GradientTape() as tape:
        value = loss(rec)
    grad = tape.gradient(value, rec).numpy()
    numeric = np.zeros_like(grad)
    eps = 1e-6
    base = rec.numpy()
    for idx in np.ndindex(base.shape):
        up, down = base.copy(), base.copy()
        up[idx] += eps
        down[idx] -= eps
        numeric[idx] = (float(loss(tf.constant(up))) - float(loss(tf.constant(down)))) / (2 * eps)
    np.testing.assert_allclose(grad, numeric, atol=1e-7)
    assert (grad[mask == 0] == 0).all() and np.abs(grad[mask != 0]).min() > 0


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_locked_dropout_drops_the_same_units_at_every_step_of_a_sequence(cell):
    cfg, model = tiny(cell, output_dropout=0.5, locked_dropout=True)
    forward = training_forward(model, cfg, mask_padding=False)
    _, _, (raw, dropped) = forward(ids(16, 6), True, hidden=True)
    ratio = np.asarray(dropped) / np.asarray(raw)  # (batch, time, units): 0 or 2
    np.testing.assert_allclose(np.unique(np.round(ratio, 4)), [0.0, 2.0])
    np.testing.assert_allclose(ratio, np.repeat(ratio[:, :1], 6, axis=1), atol=1e-5)
    per_sequence = ratio[:, 0]  # (batch, units)
    assert abs((per_sequence == 0).mean() - 0.5) < 0.15
    assert len({row.tobytes() for row in per_sequence}) > 8  # differs across sequences


def test_unlocked_dropout_draws_per_time_step():
    cfg, model = tiny(output_dropout=0.5)
    _, _, (raw, dropped) = training_forward(model, cfg, mask_padding=False)(
        ids(16, 6), True, hidden=True
    )
    ratio = np.asarray(dropped) / np.asarray(raw)
    assert (ratio[:, 0] != ratio[:, 1]).any()


def test_embedding_dropout_drops_every_occurrence_of_a_type_together():
    """Whole rows: a dropped type gets no gradient anywhere, a kept one does; the gathered
    vectors of one type are all zero or all the row scaled by 1 / (1 - p)."""
    from textgen._tf import keras
    from textgen.model.regularizers import embedding_dropout

    tf = tensorflow()
    table = np.random.default_rng(0).standard_normal((200, 4)).astype(np.float32)
    dropped = np.asarray(embedding_dropout(table, 0.25, keras().random.SeedGenerator(2)))
    gone = (dropped == 0).all(axis=1)
    assert abs(gone.mean() - 0.25) < 0.08
    np.testing.assert_allclose(dropped[~gone], table[~gone] / 0.75, rtol=1e-6)

    cfg, model = tiny(embedding_dropout=0.5)
    x = np.tile(np.arange(1, 11, dtype=np.int32), (4, 2))  # every type, 8 times
    with tf.GradientTape() as tape:
        logits, _ = training_forward(model, cfg, mask_padding=False)(x, True)
        loss = tf.reduce_sum(logits * logits)
    rows = np.abs(tf.convert_to_tensor(tape.gradient(loss, model.trainable_variables[0])))
    zero_rows = (rows[1:11] == 0).all(axis=1)
    assert zero_rows.any() and not zero_rows.all()
    assert (rows[1:11][~zero_rows] > 0).all()  # no kept type has a dropped occurrence


def test_masks_resume_exactly_from_the_saved_variables():
    """The regularizers' random state is in model.variables (so in last.npz): a model
    restored from a snapshot of them draws the same masks as the one that went on."""
    settings = {
        "weight_drop": 0.3, "embedding_dropout": 0.2, "locked_dropout": True,
        "input_dropout": 0.3, "output_dropout": 0.3,
    }  # fmt: skip
    cfg, model = tiny(**settings)
    forward = training_forward(model, cfg, mask_padding=False)
    forward(ids(seed=1), True)  # a batch before the interruption
    saved = variables_as_arrays(model)
    going_on = [np.asarray(forward(ids(seed=s), True)[0]) for s in (2, 3)]
    from textgen._tf import keras

    keras().utils.set_random_seed(99)  # another process, another global seed
    cfg, restored = tiny(**settings)
    for variable, value in zip(restored.variables, saved, strict=True):
        variable.assign(value)
    forward = training_forward(restored, cfg, mask_padding=False)
    resumed = [np.asarray(forward(ids(seed=s), True)[0]) for s in (2, 3)]
    for a, b in zip(going_on, resumed, strict=True):
        np.testing.assert_array_equal(a, b)
