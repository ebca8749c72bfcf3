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


def test_a_few_bf16_steps_follow_float32s_loss():
    """A short version of issue 20's target (bf16's loss within 2 % of float32's after 200
    steps): 30 Adam steps from the same weights on the same batches."""
    import numpy as np

    from textgen._tf import keras, tensorflow
    from textgen.model.network import training_forward

    tf, k = tensorflow(), keras()
    rng = np.random.default_rng(1)
    text = np.tile(rng.integers(1, 20, 37), 40).astype(np.int32)
    finals = {}
    for name in ("float32", "bfloat16"):
        cfg, model = _tiny_model()
        forward = training_forward(model, cfg, mask_padding=False, precision=name)
        optimizer = k.optimizers.Adam(0.01)

        @tf.function(jit_compile=False)
        def step(x, y, forward=forward, model=model, optimizer=optimizer):
            with tf.GradientTape() as tape:
                logits, _ = forward(x, True)
                loss = tf.reduce_mean(
                    tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
                )
            variables = model.trainable_variables
            optimizer.apply(tape.gradient(loss, variables), variables)
            return loss

        for s in range(30):
            starts = (np.arange(8) * 97 + s * 13) % (len(text) - 21)
            x = np.stack([text[i : i + 20] for i in starts])
            y = np.stack([text[i + 1 : i + 21] for i in starts])
            loss = float(step(x, y))
        finals[name] = loss
        assert not [v for v in optimizer.variables if "16" in str(v.dtype)]
    assert finals["float32"] < 2.5  # it learned something (log 19 ≈ 2.94 at the start)
    assert abs(finals["bfloat16"] - finals["float32"]) <= 0.02 * finals["float32"]
