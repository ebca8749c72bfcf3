"""The compiled LSTM cell (textgen/model/lstm_cell.cc through textgen.model.cell_op): the
fast kernel computes the same layer with it as with TensorFlow's own kernels, outputs and
gradients, masked or not, from a given state or not, in float32 and bf16; it is
deterministic; a bad layout is an error; without a compiler the step falls back and says
so in one line."""

import numpy as np
import pytest

from textgen._tf import tensorflow
from textgen.model import cell_op, fastrnn
from textgen.model.fastrnn import lstm_layer

pytestmark = pytest.mark.skipif(
    cell_op.compiler() is None, reason="no C++ compiler (g++ or $CXX) to build the LSTM cell"
)

T, B, F, H = 9, 5, 4, 6


def inputs():
    tf = tensorflow()
    rng = np.random.default_rng(3)
    x = tf.constant(rng.standard_normal((T, B, F)).astype(np.float32))
    weights = [
        tf.Variable(rng.standard_normal(shape).astype(np.float32) * 0.5)
        for shape in ((F, 4 * H), (4 * H,), (H, 4 * H))
    ]
    mask = np.ones((T, B, 1), np.float32)
    mask[:3, 0] = 0  # a row that starts with padding
    mask[5:, 2] = 0  # one that ends with it
    state = tuple(tf.constant(rng.standard_normal((B, H)).astype(np.float32)) for _ in range(2))
    return x, weights, tf.constant(mask), state


def layer_and_grads(cell, dtype, masked, carried):
    """The layer's outputs, final state and the gradients of a loss over both."""
    tf = tensorflow()
    x, weights, mask, state = inputs()
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = lstm_layer(
            x, *weights, mask if masked else None, state if carried else None,
            compute_dtype=dtype, cell_op=cell,
        )  # fmt: skip
        hs = out[0] if carried else out
        loss = tf.reduce_sum(hs * tf.sin(3.0 * hs))
    grads = tape.gradient(loss, [x, *weights])
    results = [hs, *(out[1] if carried else ())]
    return [np.asarray(tf.cast(t, tf.float32)) for t in results + grads]


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("carried", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_compiled_cell_computes_the_kernels_layer(dtype, masked, carried):
    reference = layer_and_grads(False, dtype, masked, carried)
    compiled = layer_and_grads(True, dtype, masked, carried)
    # float32: the same arithmetic up to tanh's approximation and summation order; bf16:
    # products rounded to 8 bits, whose last-bit differences the recurrence carries on
    tolerance = 2e-5 if dtype == "float32" else 3e-2
    names = [*["h", "h_last", "c_last"][: 3 if carried else 1], "dx", "dkernel", "dbias", "drec"]
    for name, ref, got in zip(names, reference, compiled, strict=True):
        scale = max(float(np.abs(ref).max()), 1e-6)
        np.testing.assert_allclose(got / scale, ref / scale, atol=tolerance, err_msg=name)
    if masked:  # a padded step keeps the state: row 0's first outputs are the initial h
        hs = compiled[0]
        start = inputs()[3][0] if carried else np.zeros((B, H), np.float32)
        np.testing.assert_allclose(hs[2, 0], np.asarray(start)[0], atol=1e-6)


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_unrolled_loops_compute_what_the_while_loops_do(dtype, masked, monkeypatch):
    unrolled = layer_and_grads(True, dtype, masked, True)  # static length: unrolled
    monkeypatch.setattr(fastrnn, "UNROLL_STEPS", T - 1)
    looped = layer_and_grads(True, dtype, masked, True)
    for a, b in zip(unrolled, looped, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_length_known_only_at_run_time_takes_the_while_loop():
    tf = tensorflow()
    x, weights, *_ = inputs()
    layer = tf.function(
        lambda x: lstm_layer(x, *weights, compute_dtype="bfloat16", cell_op=True),
        input_signature=[tf.TensorSpec([None, B, F], tf.float32)],
    )
    graph = layer.get_concrete_function().graph
    assert any(op.type in ("While", "StatelessWhile") for op in graph.get_operations())
    np.testing.assert_array_equal(
        layer(x), lstm_layer(x, *weights, compute_dtype="bfloat16", cell_op=True)
    )


def test_the_compiled_cell_is_deterministic():
    first = layer_and_grads(True, "bfloat16", True, True)
    second = layer_and_grads(True, "bfloat16", True, True)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_bad_gate_layout_is_an_error_naming_it():
    tf = tensorflow()
    ops = cell_op.cell_ops()
    z = tf.zeros([2, 8])
    h = tf.zeros([2, 2])
    with pytest.raises(tf.errors.InvalidArgumentError, match="gates must be i, f, c, o"):
        ops.textgen_lstm_cell(z, tf.zeros([8]), z, h, h, 1.0, gates=["i", "f", "c", "c"])


def test_wrong_shapes_are_an_error_not_a_crash():
    tf = tensorflow()
    ops = cell_op.cell_ops()
    h = tf.zeros([2, 2])
    with pytest.raises(tf.errors.InvalidArgumentError, match="xp and hr"):
        ops.textgen_lstm_cell(
            tf.zeros([2, 7]), tf.zeros([8]), tf.zeros([2, 8]), h, h, 1.0, gates=list("ifco")
        )


def test_without_a_compiler_the_step_falls_back_and_says_so(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("TEXTGEN_CACHE", str(tmp_path))  # nothing built here yet
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setattr(cell_op.shutil, "which", lambda name: None)
    cell_op.cell_ops.cache_clear()
    try:
        assert cell_op.cell_ops() is None
        err = capsys.readouterr().err
        assert "the compiled LSTM cell is not available (no C++ compiler" in err
        assert err.count("\n") == 2, err  # that it builds, then why it could not
        # the bf16 layer still trains, on TensorFlow's kernels
        fallback = layer_and_grads(None, "bfloat16", True, False)
        reference = layer_and_grads(False, "bfloat16", True, False)
        for a, b in zip(fallback, reference, strict=True):
            np.testing.assert_array_equal(a, b)
        with pytest.raises(RuntimeError, match="asked for but is not available"):
            layer_and_grads(True, "float32", False, False)
    finally:
        cell_op.cell_ops.cache_clear()


def test_turned_off_it_is_not_built(monkeypatch, tmp_path):
    monkeypatch.setenv("TEXTGEN_CACHE", str(tmp_path))
    monkeypatch.setenv(cell_op.ENV, "0")
    cell_op.cell_ops.cache_clear()
    try:
        assert cell_op.cell_ops() is None
        assert not (tmp_path / "ops").exists()
    finally:
        cell_op.cell_ops.cache_clear()


def test_a_built_library_is_cached_per_source_and_machine(monkeypatch, tmp_path):
    monkeypatch.setenv("TEXTGEN_CACHE", str(tmp_path))
    path = cell_op.library_path()
    assert path.parent == tmp_path / "ops" and path.name.startswith("lstm_cell-")
    monkeypatch.setattr(cell_op, "cpu_model", lambda: "another CPU")
    assert cell_op.library_path() != path  # -march=native: a build per CPU
