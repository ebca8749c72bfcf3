"""train.precision on this machine: native bf16 detection, the notice, the step's XLA."""

import pytest

from textgen.model import precision


def test_native_bf16_is_either_flag():
    assert precision.native_bf16({"avx2", "amx_bf16"})
    assert precision.native_bf16({"avx512f", "avx512_bf16"})
    assert not precision.native_bf16({"avx2", "avx512f", "fma"})
    assert not precision.native_bf16(set())


def test_native_bf16_reads_this_machines_flags():
    with open("/proc/cpuinfo", encoding="utf-8") as fh:
        text = fh.read()
    assert precision.native_bf16() == ("amx_bf16" in text or "avx512_bf16" in text)


def test_the_notice_is_one_line_for_emulated_bf16_only():
    note = precision.precision_notice("bfloat16", {"avx2"})
    assert note is not None and "\n" not in note and "no native bf16" in note
    assert precision.precision_notice("bfloat16", {"amx_bf16"}) is None
    assert precision.precision_notice("float32", {"avx2"}) is None


def test_the_bf16_step_is_never_xla_compiled():
    assert precision.step_jit("float32", True) is True
    assert precision.step_jit("float32", False) is False
    assert precision.step_jit("bfloat16", True) is False
    assert precision.step_jit("bfloat16", False) is False


def test_compute_dtype_refuses_an_unknown_precision():
    assert precision.compute_dtype("bfloat16") == "bfloat16"
    with pytest.raises(ValueError, match="precision must be"):
        precision.compute_dtype("float16")


def _tiny_model(mask=False):
    from textgen.config import ModelConfig
    from textgen.model.network import build_model, init_uniform

    cfg = ModelConfig(cell="lstm", embedding_dim=8, units=16, layers=2, output_dropout=0.0)
    model = build_model(cfg, 20, mask_padding=mask)
    init_uniform(model, 0.3, 0)
    return cfg, model


@pytest.mark.parametrize("mask", [False, True])
def test_bf16_computes_close_to_float32_over_float32_masters(mask):
    """Logits and gradients are float32 and close to float32's; the variables stay float32."""
    import numpy as np

    from textgen._tf import tensorflow
    from textgen.model.network import training_forward

    tf = tensorflow()
    cfg, model = _tiny_model(mask)
    rng = np.random.default_rng(0)
    x = rng.integers(1, 20, (4, 10)).astype(np.int32)
    if mask:
        x[:, :3] = 0
    y = rng.integers(1, 20, (4, 10)).astype(np.int32)
    out = {}
    for name in ("float32", "bfloat16"):
        forward = training_forward(model, cfg, mask_padding=mask, precision=name)
        with tf.GradientTape() as tape:
            logits, _ = forward(x, True)
            loss = tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
            )
        grads = [tf.convert_to_tensor(g) for g in tape.gradient(loss, model.trainable_variables)]
        assert logits.dtype == tf.float32 and all(g.dtype == tf.float32 for g in grads)
        out[name] = logits.numpy(), float(loss), [g.numpy() for g in grads]
    assert all(v.dtype == "float32" for v in model.trainable_variables)
    (l32, loss32, g32), (l16, loss16, g16) = out["float32"], out["bfloat16"]
    assert not np.array_equal(l32, l16)  # the products really ran in bf16
    np.testing.assert_allclose(l16, l32, atol=0.02)
    assert abs(loss16 - loss32) < 0.01 * loss32
    for a, b in zip(g32, g16, strict=True):
        # bf16 keeps 8 bits of mantissa: a gradient agrees to about 2 % of its scale
        assert np.abs(a - b).max() <= 0.03 * np.abs(a).max() + 1e-6


def test_a_few_bf16_steps_follow_float32s_validation_loss():
    """A short version of issue 20's target (bf16's validation loss within 2 % of float32's
    after 200 steps): 30 Adam steps from the same weights on the same batches, the loss
    then measured on windows of the text neither run trained on."""
    import numpy as np

    from textgen._tf import keras, tensorflow
    from textgen.model.network import training_forward

    tf, k = tensorflow(), keras()
    rng = np.random.default_rng(1)
    text = np.tile(rng.integers(1, 20, 37), 40).astype(np.int32)
    held = len(text) - 200  # the last 200 tokens are validation only

    def windows(starts):
        return (
            np.stack([text[i : i + 20] for i in starts]),
            np.stack([text[i + 1 : i + 21] for i in starts]),
        )

    finals, trained = {}, {}
    for name in ("float32", "bfloat16"):
        cfg, model = _tiny_model()
        forward = training_forward(model, cfg, mask_padding=False, precision=name)
        optimizer = k.optimizers.Adam(0.01)

        @tf.function(jit_compile=False)
        def step(x, y, forward=forward, model=model, optimizer=optimizer):
            with tf.GradientTape() as tape:  # bf16: the loss is its own XLA computation
                ce, _ = forward(x, True, labels=y)
                loss = tf.reduce_mean(ce)
            variables = model.trainable_variables
            optimizer.apply(tape.gradient(loss, variables), variables)
            return loss

        for s in range(30):
            loss = float(step(*windows((np.arange(8) * 97 + s * 13) % (held - 21))))
        trained[name] = loss
        x, y = windows(held + np.arange(0, 180, 20))
        logits, _ = forward(x, False)
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
        finals[name] = float(tf.reduce_mean(ce))
        assert not [v for v in optimizer.variables if "16" in str(v.dtype)]
    assert finals["float32"] < 2.5  # it learned something (log 19 ≈ 2.94 at the start)
    assert trained["float32"] < 2.5
    assert abs(finals["bfloat16"] - finals["float32"]) <= 0.02 * finals["float32"]


@pytest.mark.parametrize("piece", ["widen", "fused"])
@pytest.mark.parametrize("time_major", [False, True])
def test_the_compiled_pieces_of_the_bf16_step_compute_what_tensorflow_does(piece, time_major):
    """The bf16 step's XLA-compiled pieces over its bf16 (time-major for an LSTM) logits
    give TensorFlow's own values and gradients (to float32 rounding): the logits widened
    with their bias (``widen``; then TensorFlow's loss), and the bias with the loss as one
    computation, the labels transposed (``fused``)."""
    import numpy as np

    from textgen._tf import tensorflow
    from textgen.model import network

    tf = tensorflow()
    rng = np.random.default_rng(3)
    raw = tf.constant(rng.standard_normal((5, 3, 11)).astype(np.float32))
    bias = tf.constant(rng.standard_normal(11).astype(np.float32))
    labels = tf.constant(rng.integers(0, 11, (3, 5) if time_major else (5, 3)).astype(np.int32))
    out = []
    for compiled in (False, True):
        low = tf.cast(raw, tf.bfloat16)
        with tf.GradientTape() as tape:
            tape.watch([low, bias])
            values = []
            if compiled and piece == "fused":
                ce = network._bias_cross_entropy()(labels, low, bias, time_major)
            else:
                if compiled:
                    logits = network._widen_add_bias()(low, bias, time_major)
                else:
                    logits = tf.cast(low, tf.float32) + bias
                    logits = tf.transpose(logits, [1, 0, 2]) if time_major else logits
                assert logits.dtype == tf.float32
                values.append(logits.numpy())
                ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
            weights = tf.reshape(tf.range(1.0, 1.0 + tf.size(ce, tf.float32)), tf.shape(ce))
            loss = tf.reduce_sum(ce * weights)
        d_low, d_bias = tape.gradient(loss, [low, bias])
        assert ce.shape == labels.shape and d_low.dtype == tf.bfloat16
        out.append([ce.numpy(), d_low.numpy().astype(np.float32), d_bias.numpy(), *values])
    if piece == "fused":
        out[0] = out[0][:3]  # the fused piece has no logits to compare
    for a, b in zip(*out, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_forward_with_labels_is_the_cross_entropy_of_its_logits():
    """``training_forward``'s ``labels`` returns each position's loss in place of the
    logits, in both precisions, and the same values as the loss of the logits."""
    import numpy as np

    from textgen._tf import tensorflow
    from textgen.model.network import training_forward

    tf = tensorflow()
    rng = np.random.default_rng(5)
    x = tf.constant(rng.integers(1, 20, (4, 9)).astype(np.int32))
    y = tf.constant(rng.integers(1, 20, (4, 9)).astype(np.int32))
    for name in ("float32", "bfloat16"):
        cfg, model = _tiny_model()
        forward = training_forward(model, cfg, mask_padding=False, precision=name)
        logits, _ = forward(x, False)
        ce, _ = forward(x, False, labels=y)
        assert ce.shape == (4, 9) and ce.dtype == tf.float32
        expected = tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits)
        np.testing.assert_allclose(ce.numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)


def test_the_bf16_steps_compiled_loss_and_update_keep_its_losses():
    """The bf16 step's bias and cross-entropy and its update (clipping and Adam) as their own XLA
    computations give the losses the bf16 step without them gives, step after step, and
    only the bf16 step is built with them."""
    import numpy as np

    from textgen._tf import keras
    from textgen.model.network import training_forward
    from textgen.training.steps import Steps

    k = keras()
    rng = np.random.default_rng(4)
    batches = [
        (rng.integers(1, 20, (4, 12)).astype(np.int32), rng.integers(1, 20, (4, 12)))
        for _ in range(5)
    ]

    def xla_functions(steps):
        graph = steps.train_step.get_concrete_function().graph.as_graph_def()
        return {f.signature.name for f in graph.library.function if f.attr["_XlaMustCompile"].b}

    def has(names, part):
        return any(part in name for name in names)

    losses, compiled = {}, {}
    for name in ("float32", "bfloat16"):  # what Steps is told; the forward is bf16 in both
        cfg, model = _tiny_model()
        forward = training_forward(model, cfg, mask_padding=False, precision="bfloat16")
        optimizer = k.optimizers.Adam(0.01)
        optimizer.build(model.trainable_variables)
        steps = Steps(model, optimizer, forward, False, None, clipnorm=0.05, precision=name)
        zero = steps.zero_state(0)
        runs = [steps.train_step(x, y.astype(np.int32), zero) for x, y in batches]
        assert all(bool(finite) for _, _, finite, _ in runs)
        losses[name] = [float(total) / float(count) for total, count, _, _ in runs]
        compiled[name] = xla_functions(steps)
    # the bias with the loss, and the update, compiled on their own in the bf16 step only
    assert has(compiled["bfloat16"], "bias_ce") and has(compiled["bfloat16"], "update")
    assert not has(compiled["float32"], "bias_ce") and not has(compiled["float32"], "update")
    assert losses["float32"][-1] < losses["float32"][0]  # the updates took effect
    np.testing.assert_allclose(losses["bfloat16"], losses["float32"], rtol=1e-6, atol=0)


def _loop_ops(function) -> list[str]:
    """The while loops in ``function``'s graph and in the functions it calls."""
    graph = function.graph.as_graph_def()
    nodes = [*graph.node, *(n for f in graph.library.function for n in f.node_def)]
    return [n.op for n in nodes if n.op in ("While", "StatelessWhile")]


def _compiled_cell_or_skip() -> None:
    from textgen.model.cell_op import cell_ops

    if cell_ops() is None:
        pytest.skip("the compiled LSTM cell could not be built on this machine")


def test_textgen_trains_bf16_with_a_step_built_for_the_examples_width(toy_config, tmp_path):
    """The trainer's bf16 step knows its number of time steps, so the compiled cell's
    loops are written out (no while loop in its graph); evaluation takes any width."""
    import numpy as np

    from textgen.corpus.examples import prepare
    from textgen.training.loop import Trainer

    _compiled_cell_or_skip()
    cfg = toy_config.with_overrides(["train.precision=bfloat16", "model.cell=lstm"])
    prepared = prepare(cfg.data)
    x, y = prepared.train.rows(np.arange(2))
    assert prepared.train.width == x.shape[1] > 2
    run = Trainer(cfg, prepared, tmp_path / "r", lambda _m: None)
    assert run.steps.train_step.input_signature[0].shape.as_list() == [None, x.shape[1]]
    assert _loop_ops(run.steps.train_step.get_concrete_function()) == []
    total, count, _ = run.steps.eval_step(x[:, :-1], y[:, :-1], run.steps.zero_state(2))
    assert float(count) == np.count_nonzero(x[:, :-1]) and np.isfinite(float(total))


def test_a_step_told_its_width_computes_the_losses_of_one_that_is_not():
    """Unrolled (``width`` given) and looped (none) bf16 steps: the same losses, bit for bit,
    over five updates; only the second has while loops."""
    import numpy as np

    from textgen._tf import keras
    from textgen.model.network import training_forward
    from textgen.training.steps import Steps

    _compiled_cell_or_skip()
    rng = np.random.default_rng(5)
    batches = [
        (rng.integers(1, 20, (4, 12)).astype(np.int32), rng.integers(1, 20, (4, 12)))
        for _ in range(5)
    ]
    losses, loops = {}, {}
    for width in (12, None):
        cfg, model = _tiny_model()
        forward = training_forward(model, cfg, mask_padding=False, precision="bfloat16")
        optimizer = keras().optimizers.Adam(0.01)
        optimizer.build(model.trainable_variables)
        steps = Steps(
            model, optimizer, forward, False, None, clipnorm=0.05, precision="bfloat16",
            width=width,
        )  # fmt: skip
        zero = steps.zero_state(0)
        runs = [steps.train_step(x, y.astype(np.int32), zero) for x, y in batches]
        losses[width] = [float(total) / float(count) for total, count, _, _ in runs]
        loops[width] = len(_loop_ops(steps.train_step.get_concrete_function()))
    assert loops[12] == 0 and loops[None] >= 4  # two layers, forward and backward
    assert losses[12][-1] < losses[12][0]
    assert losses[12] == losses[None]
