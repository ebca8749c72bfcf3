"""The numpy decoder's fast step: gate-major LSTM, row groups, column blocks.

The step computes its products in pieces sized for OpenBLAS's copy-free kernel (row
groups per gate for the LSTM, plus one product of the remaining rows when the batch does
not split evenly; column blocks for the GRU, the RNN and the output layer). These tests
hold it to the textbook cell in float64 at every batch size and split, to one row at a time, and to
its promises about the arrays it is given and returns; the recorded outputs of
tests/test_decoding_fixtures.py pin the small models' results to the bit.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from textgen.decoding import numpy_lm
from textgen.decoding.numpy_lm import NumpyLM, RNNWeights, column_width, matmul

GATES = {"lstm": 4, "gru": 3, "rnn": 1}


def random_lm(cell: str, embedding: int, units: int, layers: int, vocab: int = 29) -> NumpyLM:
    rng = np.random.default_rng(7)

    def w(*shape: int, scale: float = 0.3) -> np.ndarray:
        return (scale * rng.standard_normal(shape)).astype(np.float32)

    g, width, weights = GATES[cell], embedding, []
    for _ in range(layers):
        bias = w(2, g * units) if cell == "gru" else w(g * units, scale=0.1)
        weights.append(RNNWeights(w(width, g * units), w(units, g * units), bias))
        width = units
    return NumpyLM(cell, w(vocab, embedding, scale=1.0), weights, w(units, vocab), w(vocab))


def textbook_lstm(lm: NumpyLM, ids: np.ndarray, state) -> tuple[np.ndarray, list]:
    """One step of the Keras LSTM (gates i, f, c, o) in float64 from the stored arrays."""

    def sigmoid(x: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-x))

    x = lm.embedding[ids].astype(np.float64)
    new = []
    for layer, (h, c) in zip(lm.layers, state, strict=True):
        z = x @ layer.kernel + h.astype(np.float64) @ layer.recurrent + layer.bias
        i, f, g, o = np.split(z, 4, axis=-1)
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
        x = sigmoid(o) * np.tanh(c)
        new.append((x, c))
    return x @ lm.out_kernel + lm.out_bias, new


def textbook_gru(lm: NumpyLM, ids: np.ndarray, state) -> tuple[np.ndarray, list]:
    """One step of the Keras GRU (gates z, r, h; reset_after) in float64."""

    def sigmoid(x: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-x))

    x = lm.embedding[ids].astype(np.float64)
    new = []
    for layer, (h,) in zip(lm.layers, state, strict=True):
        xz, xr, xh = np.split(x @ layer.kernel + layer.bias[0], 3, axis=-1)
        hz, hr, hh = np.split(h.astype(np.float64) @ layer.recurrent + layer.bias[1], 3, axis=-1)
        z, r = sigmoid(xz + hz), sigmoid(xr + hr)
        x = z * h + (1 - z) * np.tanh(xh + r * hh)
        new.append((x,))
    return x @ lm.out_kernel + lm.out_bias, new


TEXTBOOK = {"lstm": textbook_lstm, "gru": textbook_gru}


def random_state(lm: NumpyLM, batch: int, seed: int = 3):
    rng = np.random.default_rng(seed)
    return [
        tuple(rng.uniform(-0.9, 0.9, p.shape).astype(np.float32) for p in layer)
        for layer in lm.initial_state(batch)
    ]


@pytest.fixture(autouse=True)
def small_kernel(monkeypatch):
    """The splits are tested on every machine, as where numpy's BLAS has the small-matrix
    kernel (``splits_products``); the tests below without it set it back to False."""
    monkeypatch.setattr(numpy_lm, "splits_products", lambda: True)


def test_without_a_small_kernel_each_gate_is_one_product(monkeypatch):
    """Where OpenBLAS has no small-matrix kernel (Haswell, Zen, ...) a split product packs
    its weights once per piece: the 2×256 LSTM multiplies whole batches, the column blocks
    are off, and the step is still the textbook cell."""
    monkeypatch.setattr(numpy_lm, "splits_products", lambda: False)
    lm = random_lm("lstm", 64, 256, 2, vocab=65)
    assert [lm.row_groups(b) for b in (1, 16, 31, 32, 64)] == [
        (1, 1), (1, 16), (1, 31), (1, 32), (1, 64)
    ]  # fmt: skip
    assert column_width(64, 256, 4096) is None
    ids = np.arange(32) % lm.vocab_size
    state = random_state(lm, 32)
    logits, _ = lm.step(ids, state)
    np.testing.assert_allclose(logits, textbook_lstm(lm, ids, state)[0], rtol=1e-4, atol=1e-4)


def test_the_small_kernel_is_known_by_openblas_kernel_set():
    """OpenBLAS's x86-64 small-matrix sgemm kernel is in its SkylakeX, Cooperlake and
    Sapphire Rapids kernel sets only; this process's BLAS is named when it is OpenBLAS."""
    from textgen.decoding import blas

    assert blas.small_matrix_kernel("SkylakeX") and blas.small_matrix_kernel("SAPPHIRERAPIDS")
    assert not blas.small_matrix_kernel("Haswell") and not blas.small_matrix_kernel("Zen")
    assert blas.small_matrix_kernel("Haswell", machine="aarch64")  # only x86's sets are known
    name = blas.corename()
    assert name is None or (isinstance(name, str) and name.strip())


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_without_a_small_kernel_rows_are_alone_and_run_is_the_step(monkeypatch, cell):
    """The whole-product path (the one machines without the small kernel run) keeps the
    server's batch identity, and ``run`` is its ``step`` token by token."""
    monkeypatch.setattr(numpy_lm, "splits_products", lambda: False)
    lm = random_lm(cell, 8, 24, 2)
    assert lm.row_groups(31) == (1, 31)
    ids = np.arange(31) % lm.vocab_size
    state = random_state(lm, 31)
    logits, _ = lm.step(ids, state)
    for row in (0, 15, 30):
        alone = [tuple(p[row : row + 1] for p in layer) for layer in state]
        one, _ = lm.step(ids[row : row + 1], alone)
        np.testing.assert_allclose(logits[row], one[0], rtol=1e-5, atol=1e-6)
        assert int(np.argmax(logits[row])) == int(np.argmax(one[0]))
    seq = np.random.default_rng(2).integers(0, lm.vocab_size, (31, 4))
    run_logits, _ = lm.run(seq, state)
    stepped = state
    for t in range(4):
        step_logits, stepped = lm.step(seq[:, t], stepped)
        np.testing.assert_allclose(run_logits[:, t], step_logits, rtol=1e-5, atol=1e-6)


@pytest.fixture
def small_groups(monkeypatch):
    """A small-kernel threshold that makes a 2×24 LSTM split batches of 7 or more."""
    monkeypatch.setattr(numpy_lm, "SMALL_PRODUCT", 24 * 24 * 6)
    return random_lm("lstm", 8, 24, 2)


@pytest.mark.parametrize("batch", [1, 2, 6, 7, 12, 13, 17, 18, 31])
def test_the_lstm_step_is_the_textbook_cell_at_every_split(small_groups, batch):
    lm = small_groups
    groups, rows = lm.row_groups(batch)
    assert 0 <= batch - groups * rows < rows
    rng = np.random.default_rng(batch)
    ids = rng.integers(0, lm.vocab_size, batch)
    state = random_state(lm, batch)
    logits, new = lm.step(ids, state)
    ref_logits, ref_new = textbook_lstm(lm, ids, state)
    assert logits.shape == (batch, lm.vocab_size) and logits.dtype == np.float32
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-5, atol=1e-5)
    for (h, c), (rh, rc) in zip(new, ref_new, strict=True):
        assert h.shape == c.shape == (batch, 24)
        np.testing.assert_allclose(h, rh, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(c, rc, rtol=1e-5, atol=1e-6)


def test_the_splits_cover_remainders_and_exact_groups(small_groups):
    lm = small_groups  # 6 rows per group at most
    assert lm.row_groups(6) == (1, 6)
    assert lm.row_groups(12) == (2, 6)
    assert lm.row_groups(13) == (2, 5)  # a prime batch: 2 × 5 rows and 3 more
    assert lm.row_groups(16) == (4, 4)  # an exact split one group further on


@pytest.mark.parametrize("batch", [7, 13, 31])
def test_each_row_is_what_it_is_alone(small_groups, batch):
    """A row's logits and state at batch n are its batch-1 ones to float32 rounding, and
    greedy picks agree (the server's batch identity rests on this)."""
    lm = small_groups
    ids = np.arange(batch) % lm.vocab_size
    state = random_state(lm, batch)
    logits, new = lm.step(ids, state)
    for row in (0, batch // 2, batch - 1):
        alone = [tuple(p[row : row + 1] for p in layer) for layer in state]
        one, one_state = lm.step(ids[row : row + 1], alone)
        np.testing.assert_allclose(logits[row], one[0], rtol=1e-5, atol=1e-6)
        assert int(np.argmax(logits[row])) == int(np.argmax(one[0]))
        for layer, single in zip(new, one_state, strict=True):
            np.testing.assert_allclose(layer[0][row], single[0][0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("batch", [5, 13])
def test_run_is_the_step_token_by_token(small_groups, batch):
    lm = small_groups
    rng = np.random.default_rng(11)
    ids = rng.integers(0, lm.vocab_size, (batch, 6))
    state = random_state(lm, batch)
    logits, final = lm.run(ids, state)
    assert logits.shape == (batch, 6, lm.vocab_size)
    stepped = state
    for t in range(6):
        one, stepped = lm.step(ids[:, t], stepped)
        np.testing.assert_allclose(logits[:, t], one, rtol=1e-5, atol=1e-6)
    for a, b in zip(final, stepped, strict=True):
        np.testing.assert_allclose(a[1], b[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("batch", [1, 13])
def test_a_split_step_never_writes_into_its_state_and_returns_fresh_arrays(small_groups, batch):
    lm = small_groups
    state = random_state(lm, batch)
    kept = [tuple(p.copy() for p in s) for s in state]
    ids = np.arange(batch) % lm.vocab_size
    logits, new = lm.step(ids, state)
    again, _ = lm.step(ids, state)
    np.testing.assert_array_equal(logits, again)
    for old, saved in zip(state, kept, strict=True):
        for part, copy in zip(old, saved, strict=True):
            np.testing.assert_array_equal(part, copy)
    fresh = [p for s in new for p in s] + [logits]
    assert not any(np.shares_memory(a, b) for a in fresh for s in state for b in s)
    assert not np.shares_memory(logits, again)
    assert all(p.flags.c_contiguous for p in fresh)  # the batcher indexes and stacks rows


def test_the_order_of_a_steps_products_changes_nothing():
    """Every other step does the top layer's recurrent product first (for the cache); the
    same input gives bit-identical outputs either way."""
    for lm in (random_lm("lstm", 16, 64, 3), random_lm("gru", 16, 64, 2)):
        check_order_changes_nothing(lm)


def check_order_changes_nothing(lm: NumpyLM) -> None:
    for batch in (1, 5):
        state = random_state(lm, batch)
        ids = np.arange(batch) % lm.vocab_size
        first = lm._early
        a, sa = lm.step(ids, state)
        assert lm._early != first  # the two orders, one after the other
        b, sb = lm.step(ids, state)
        np.testing.assert_array_equal(a, b)
        for x, y in zip(sa, sb, strict=True):
            for part, again in zip(x, y, strict=True):
                np.testing.assert_array_equal(part, again)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_a_gated_step_takes_one_id_per_sequence(cell):
    lm = random_lm(cell, 4, 8, 1)
    with pytest.raises(ValueError, match=r"shape \(batch,\), got \(2, 1\)"):
        lm.step(np.array([[1], [2]]), lm.initial_state(2))


@pytest.mark.parametrize("table", [True, False])
@pytest.mark.parametrize("batch", [1, 6, 13, 18])
def test_the_gru_step_and_run_are_the_textbook_cell_at_every_split(monkeypatch, batch, table):
    monkeypatch.setattr(numpy_lm, "SMALL_PRODUCT", 24 * 24 * 6)
    if not table:
        monkeypatch.setattr(numpy_lm, "TABLE_LIMIT", 0)
    lm = random_lm("gru", 8, 24, 2)
    assert (lm._table is not None) == table
    rng = np.random.default_rng(batch)
    ids = rng.integers(0, lm.vocab_size, (batch, 3))
    state = random_state(lm, batch)
    stepped, ref = state, state
    run_logits, run_state = lm.run(ids, state)
    for t in range(3):
        logits, stepped = lm.step(ids[:, t], stepped)
        ref_logits, ref = textbook_gru(lm, ids[:, t], ref)
        np.testing.assert_allclose(logits, ref_logits, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(run_logits[:, t], logits, rtol=1e-5, atol=1e-6)
    for (h,), (rh,), (qh,) in zip(stepped, ref, run_state, strict=True):
        assert h.shape == (batch, 24) and h.flags.c_contiguous
        np.testing.assert_allclose(h, rh, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(qh, h, rtol=1e-5, atol=1e-6)


def test_without_a_table_the_lstm_projects_its_embedding(monkeypatch):
    monkeypatch.setattr(numpy_lm, "TABLE_LIMIT", 0)
    monkeypatch.setattr(numpy_lm, "SMALL_PRODUCT", 24 * 24 * 6)
    lm = random_lm("lstm", 8, 24, 2)
    assert lm._table is None
    ids = np.arange(9) % lm.vocab_size
    state = random_state(lm, 9)
    logits, _ = lm.step(ids, state)
    np.testing.assert_allclose(logits, textbook_lstm(lm, ids, state)[0], rtol=1e-5, atol=1e-5)
    run_logits, _ = lm.run(ids[:, None], state)
    np.testing.assert_allclose(run_logits[:, 0], logits, rtol=1e-5, atol=1e-6)


def test_the_2x256_lstm_splits_its_batches_and_matches_the_textbook():
    """The bench's shape: batch 16 as 2 × 8 rows per gate product, 32 as 4 × 8, 31 as
    2 × 11 and 9, 64 as 8 × 8."""
    lm = random_lm("lstm", 64, 256, 2, vocab=65)
    assert lm.row_groups(1) == (1, 1)
    assert lm.row_groups(16) == (2, 8)
    assert lm.row_groups(32) == (4, 8)
    assert lm.row_groups(31) == (2, 11)
    assert lm.row_groups(64) == (8, 8)
    assert numpy_lm.SMALL_PRODUCT >= 11 * 256 * 256
    for batch in (1, 16, 31):
        ids = np.arange(batch) % lm.vocab_size
        state = random_state(lm, batch)
        logits, _ = lm.step(ids, state)
        np.testing.assert_allclose(logits, textbook_lstm(lm, ids, state)[0], rtol=1e-4, atol=1e-4)


@settings(max_examples=200, deadline=None)
@given(rows=st.integers(1, 200), inner=st.integers(1, 2048), columns=st.integers(1, 20000))
def test_column_blocks_fit_the_small_kernel_and_stay_few(rows, inner, columns):
    width = column_width(rows, inner, columns)
    if width is None:
        return
    assert rows >= 3 and rows * inner * columns > numpy_lm.SMALL_PRODUCT
    assert rows * inner * width <= numpy_lm.SMALL_PRODUCT
    assert width >= numpy_lm.MIN_WIDTH and width & (width - 1) == 0
    assert -(-columns // width) <= numpy_lm.MAX_BLOCKS


@settings(max_examples=100, deadline=None)
@given(batch=st.integers(1, 300), most=st.integers(1, 40))
def test_row_groups_cover_the_batch_with_one_smaller_remainder(batch, most):
    lm = random_lm("lstm", 4, 8, 1)
    lm._group_rows = most
    groups, rows = lm.row_groups(batch)
    assert groups >= 1 and 0 <= batch - groups * rows < rows  # the rest: one smaller product
    if batch > most >= 4:
        assert rows <= most
    else:
        assert (groups, rows) == (1, batch)


@pytest.mark.parametrize("rows", [1, 4, 16])
def test_matmul_in_column_blocks_is_the_product(rows):
    rng = np.random.default_rng(rows)
    x = rng.standard_normal((rows, 256)).astype(np.float32)
    w = rng.standard_normal((256, 1000)).astype(np.float32)
    blocks: dict = {}
    out = matmul(x, w, blocks)
    np.testing.assert_allclose(out, x @ w, rtol=1e-5, atol=1e-4)
    assert out.flags.c_contiguous and not np.shares_memory(out, x)
    assert bool(blocks) == (column_width(rows, 256, 1000) is not None)
    assert not np.shares_memory(matmul(x, w, blocks), out)


@pytest.mark.parametrize("cell", ["rnn"])
def test_rnn_steps_in_column_blocks_match_one_product(monkeypatch, cell):
    lm_one = random_lm(cell, 8, 32, 2)
    monkeypatch.setattr(numpy_lm, "SMALL_PRODUCT", 12 * 32 * 16)
    monkeypatch.setattr(numpy_lm, "MIN_WIDTH", 8)
    lm_blocks = random_lm(cell, 8, 32, 2)
    state = random_state(lm_one, 12)
    ids = np.arange(12) % lm_one.vocab_size
    assert column_width(12, 32, GATES[cell] * 32) is not None  # the blocks are used
    a, sa = lm_one.step(ids, state)
    b, sb = lm_blocks.step(ids, state)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for x, y in zip(sa, sb, strict=True):
        np.testing.assert_allclose(x[0], y[0], rtol=1e-5, atol=1e-6)


def test_bench_step_arms_run_the_same_model(tmp_path):
    """bench/step.py's arms: its 2×256 weights give 1.74 MFLOP a token, the LiteRT step
    matches textgen's logits, and the greedy loops of textgen, a baseline copy of
    numpy_lm.py and LiteRT pick the same ids."""
    pytest.importorskip("ai_edge_litert")
    from pathlib import Path

    from textgen.export.litert import convert_step

    from .test_bench import load_bench

    bench = load_bench("step")
    arrays = bench.weights()
    assert bench.forward_flops(arrays) == 2 * (64 * 1024 + 3 * 256 * 1024 + 256 * 65)
    lm = NumpyLM.from_arrays(arrays)
    copy = tmp_path / "old_numpy_lm.py"
    copy.write_text(Path(numpy_lm.__file__).read_text(encoding="utf-8"), encoding="utf-8")
    old = bench.load_baseline(copy, arrays)
    step = bench.LiteRTStep(convert_step(arrays), 3, threads=1)
    assert bench.check_litert(step, lm) < 1e-4
    _, ours = bench.numpy_steps(lm, 3, 30)
    _, before = bench.numpy_steps(old, 3, 30)
    _, theirs = step.steps(30)
    assert ours == before == theirs and len(set(ours)) > 3
