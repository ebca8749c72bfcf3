"""The compiled multi-core LSTM step (``textgen.decoding.native``) against the numpy
step: the same logits and state to float32 rounding, a row's numbers independent of the
batch and of how many slices the units are split into, the models it does not take, and
a server on it giving a request the same text alone and among 31 others."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("numba", reason="the native step needs numba (the serve extra)")

from tests.test_serve_support import LiveServer, char_model
from textgen.decoding.native import NativeLSTM, default_parts
from textgen.decoding.numpy_lm import NumpyLM, RNNWeights
from textgen.serve.runs import Loaded, Settings, describe


def lstm(units: int, layers: int, vocab: int = 23, embed: int = 12, seed: int = 0) -> NumpyLM:
    rng = np.random.default_rng(seed)

    def rand(*shape: int, scale: float = 0.4) -> np.ndarray:
        return rng.normal(0, scale, shape).astype(np.float32)

    stack = [
        RNNWeights(rand(embed if i == 0 else units, 4 * units), rand(units, 4 * units),
                   rand(4 * units, scale=0.2))
        for i in range(layers)
    ]  # fmt: skip
    return NumpyLM("lstm", rand(vocab, embed, scale=1.0), stack, rand(units, vocab), rand(vocab))


def random_state(lm: NumpyLM, batch: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        tuple(rng.uniform(-2, 2, p.shape).astype(np.float32) for p in layer)
        for layer in lm.initial_state(batch)
    ]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shape=st.sampled_from([(16, 1), (16, 2), (17, 1), (20, 2), (21, 3), (32, 2), (48, 4)]),
    layers=st.integers(1, 3),
    batch=st.integers(1, 11),
    vocab=st.sampled_from([7, 23]),
    seed=st.integers(0, 1000),
)
def test_native_step_matches_the_numpy_step(shape, layers, batch, vocab, seed) -> None:
    """Widths that are not a multiple of 4 (the products' last rows one at a time), units
    split into 1-4 slices and vocabularies that do not split evenly (padded columns)."""
    units, parts = shape
    plain = lstm(units, layers, vocab=vocab, seed=seed)
    probe = lstm(units, 1)
    assert probe.use_native() and probe.native and not plain.native
    fast = NativeLSTM(plain.embedding, plain.layers, plain.out_kernel, plain.out_bias, parts)
    ids = np.random.default_rng(seed).integers(0, plain.vocab_size, batch)
    state = random_state(plain, batch, seed)
    kept = [tuple(p.copy() for p in layer) for layer in state]
    want, want_state = plain.step(ids, state)
    got, got_state = fast.step(ids.astype(np.int32), state)
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    for (h, c), (h2, c2) in zip(got_state, want_state, strict=True):
        np.testing.assert_allclose(h, h2, atol=1e-5, rtol=0)
        np.testing.assert_allclose(c, c2, atol=1e-5, rtol=0)
    for layer, old in zip(state, kept, strict=True):  # the given state is not written
        for p, q in zip(layer, old, strict=True):
            assert np.array_equal(p, q)


def test_the_fallback_for_lone_rows_matches_the_numpy_step() -> None:
    """Where a lone row's products would round unlike a block of four's, the 1-3 rows
    left after the blocks of four each run as a block of four with copies of the row
    (``rows_agree`` False): the same numbers to rounding."""
    plain = lstm(21, 2, seed=4)
    fast = NativeLSTM(plain.embedding, plain.layers, plain.out_kernel, plain.out_bias, 3)
    fast.rows_agree = False
    for batch in (1, 3, 6):
        ids = np.arange(batch) % plain.vocab_size
        state = random_state(plain, batch, batch)
        want, want_state = plain.step(ids, state)
        got, got_state = fast.step(ids, state)
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
        np.testing.assert_allclose(got_state[1][1], want_state[1][1], atol=1e-5, rtol=0)


def test_many_steps_track_the_numpy_step() -> None:
    """Fed their own greedy picks for 200 steps, the two steps pick the same tokens."""
    plain, fast = lstm(32, 2, seed=3), lstm(32, 2, seed=3)
    assert fast.use_native()
    ids = np.arange(4)
    s1, s2 = plain.initial_state(4), fast.initial_state(4)
    for _ in range(200):
        l1, s1 = plain.step(ids, s1)
        l2, s2 = fast.step(ids, s2)
        np.testing.assert_allclose(l2, l1, atol=1e-4, rtol=0)
        assert np.array_equal(l1.argmax(1), l2.argmax(1))
        ids = l1.argmax(1)


@pytest.mark.parametrize("rows_agree", [True, False])
def test_a_row_is_the_same_alone_in_any_batch_and_any_split(rows_agree: bool) -> None:
    """Bit for bit: row r of a batch of 31 equals r stepped alone, and the units split
    into 1, 2 or 4 slices give the same numbers (each unit's sums run in one order); with
    the one-row products (``rows_agree``, as measured here) and with their fallback."""
    lm = lstm(32, 2, seed=5)
    steps = {
        p: NativeLSTM(lm.embedding, lm.layers, lm.out_kernel, lm.out_bias, p) for p in (1, 2, 4)
    }
    for step in steps.values():
        step.rows_agree = rows_agree
    ids = np.random.default_rng(0).integers(0, lm.vocab_size, 31)
    state = random_state(lm, 31, 9)
    batch, batch_state = steps[2].step(ids, state)
    for r in (0, 3, 4, 7, 8, 29, 30):
        alone, alone_state = steps[2].step(
            ids[r : r + 1], [(h[r : r + 1], c[r : r + 1]) for h, c in state]
        )
        assert np.array_equal(alone[0], batch[r]), r
        assert np.array_equal(alone_state[1][0][0], batch_state[1][0][r]), r
    for parts in (1, 4):
        other, other_state = steps[parts].step(ids, state)
        assert np.array_equal(other, batch), parts
        assert np.array_equal(other_state[0][1], batch_state[0][1]), parts


def test_models_without_a_native_step_keep_the_numpy_step() -> None:
    gru, _ = char_model(units=16, cell="gru")
    rnn, _ = char_model(units=16, cell="rnn")
    narrow = lstm(16, 1)
    mixed = NumpyLM(
        "lstm", narrow.embedding,
        [narrow.layers[0], RNNWeights(np.zeros((16, 32), np.float32), np.zeros((8, 32), np.float32),
                                      np.zeros(32, np.float32))],
        np.zeros((8, narrow.vocab_size), np.float32), narrow.out_bias,
    )  # fmt: skip
    for lm in (gru, rnn, mixed):
        before, _ = lm.step(np.zeros(2, np.int64), lm.initial_state(2))
        assert lm.use_native() is False and lm.native is False
        after, _ = lm.step(np.zeros(2, np.int64), lm.initial_state(2))
        assert np.array_equal(before, after)


def test_bad_ids_and_states_are_errors_not_reads_out_of_bounds() -> None:
    """The compiled code checks no bounds, so the step checks its input first."""
    lm = lstm(16, 2)
    assert lm.use_native()
    state = lm.initial_state(2)
    with pytest.raises(IndexError, match="vocabulary"):
        lm.step(np.array([0, lm.vocab_size]), state)
    with pytest.raises(ValueError, match="integer ids"):
        lm.step(np.array([0.0, 1.0]), state)
    with pytest.raises(ValueError, match="state"):
        lm.step(np.array([0, 1, 2]), state)  # three ids, a state of two rows
    with pytest.raises(ValueError, match="state"):
        lm.step(np.array([0, 1]), [(h[:, :8], c[:, :8]) for h, c in state])
    last, _ = lm.step(np.array([-1, 0]), state)  # negative ids index from the end, as numpy's
    first, _ = lm.step(np.array([lm.vocab_size - 1, 0]), state)
    assert np.array_equal(last, first)
    empty, empty_state = lm.step(np.zeros(0, np.int64), lm.initial_state(0))
    assert empty.shape == (0, lm.vocab_size) and empty_state[1][0].shape == (0, 16)


def test_default_parts() -> None:
    assert default_parts(256, cores=2) == 2
    assert default_parts(256, cores=16) == 8
    assert default_parts(200, cores=3) == 2  # 200 is not a multiple of 3
    assert default_parts(16, cores=4) == 1  # slices under 16 units are not worth a thread
    assert default_parts(250, cores=1) == 1


def test_served_on_the_native_step_a_request_is_the_same_alone_and_among_31() -> None:
    def load() -> Loaded:
        lm, tok = char_model()
        assert lm.use_native()
        return Loaded(lm, tok, describe(lm, tok))

    live = LiveServer({"chars": load}, Settings(max_tokens_limit=100_000))
    try:
        url = live.url + "/v1/completions"
        models = httpx.get(live.url + "/v1/models", timeout=60).json()["data"]
        assert models[0]["step"] == "native"
        targets = [
            {"prompt": "the cat sat", "max_tokens": 60, "temperature": 0},
            {"prompt": "a b", "max_tokens": 60, "temperature": 0.8, "top_k": 12, "seed": 1234},
        ]
        alone = [httpx.post(url, json={"model": "chars"} | t, timeout=300).json() for t in targets]

        def other(k: int) -> int:
            body = {"model": "chars", "prompt": "xy z"[: 1 + k % 4], "max_tokens": 1_500 + 10 * k,
                    "temperature": 0 if k % 2 else 0.7, "seed": k}  # fmt: skip
            return httpx.post(url, json=body, timeout=300).status_code

        with ThreadPoolExecutor(32) as pool:
            others = [pool.submit(other, k) for k in range(31)]
            deadline = time.monotonic() + 120
            while live.metric("textgen_requests_running", model="chars") < 31:
                assert time.monotonic() < deadline, "the 31 neighbours never ran together"
                time.sleep(0.005)
            among = [
                httpx.post(url, json={"model": "chars"} | t, timeout=300).json() for t in targets
            ]
            assert [f.result() for f in others] == [200] * 31
        for a, b in zip(alone, among, strict=True):
            assert a["choices"][0]["text"] == b["choices"][0]["text"]
            assert len(a["choices"][0]["text"]) > 10
    finally:
        live.close()


def test_an_embedding_without_a_row_per_output_token_is_not_compiled() -> None:
    """The compiled step checks ids against the output's vocabulary and reads the
    embedding's table unchecked, so the two must agree; otherwise numpy serves."""
    lm = lstm(16, 1, vocab=23)
    short = lm.embedding[:20]
    with pytest.raises(ValueError, match="embedding"):
        NativeLSTM(short, lm.layers, lm.out_kernel, lm.out_bias)
    odd = NumpyLM("lstm", short, lm.layers, lm.out_kernel, lm.out_bias)
    assert odd.use_native() is False
