"""Decoding results pinned to files: the numpy decoder may get faster, never different.

Small LSTM, GRU and SimpleRNN models with seeded random weights (no TensorFlow) decode
greedily, by seeded sampling (temperature, top-k, top-p) and by beam search, alone and
in batches, with and without a stop string. ``tests/fixtures/decoding/outputs.json``
holds what the decoder produced before its step was rewritten for speed; every result
must match it token for token, and the mean log-probabilities to float32 rounding.

``TEXTGEN_RECORD_DECODING=1 pytest tests/test_decoding_fixtures.py`` rewrites the file
(only for a deliberate change of results, with the reason in the commit).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from textgen.decoding import numpy_lm
from textgen.decoding.generate import Generator, Strategy
from textgen.decoding.numpy_lm import NumpyLM, RNNWeights
from textgen.text import fit_tokenizer

FIXTURE = Path(__file__).parent / "fixtures" / "decoding" / "outputs.json"
TEXT = "the quick brown fox jumps over the lazy dog.\nPACK MY BOX WITH FIVE DOZEN JUGS!\n"
GATE_BLOCKS = {"lstm": 4, "gru": 3, "rnn": 1}

# name: (cell, embedding, units, layers, projection table on)
MODELS = {
    "lstm2x48": ("lstm", 16, 48, 2, True),
    "lstm2x48-notable": ("lstm", 16, 48, 2, False),
    "gru2x40": ("gru", 12, 40, 2, True),
    "rnn1x32": ("rnn", 8, 32, 1, True),
}

# The mean log-probabilities agree to float32 rounding, which differs between CPU kinds
# (OpenBLAS picks its kernels by SIMD width). The SimpleRNN's random recurrent matrix has
# a spectral radius of 2.18, so its tanh recurrence amplifies that rounding along a
# sample: 6.5e-5 relative after 60 steps on an AVX-512 host against the recording one,
# where the gated cells stay under 2e-6. Its tokens must still match exactly.
LOGPROB_RTOL = {"lstm": 1e-5, "gru": 1e-5, "rnn": 3e-4}

# name: (seed, length, num, strategy, rng seed, stop)
CASES = {
    "greedy-1": ("the ", 60, 1, Strategy(), None, None),
    "greedy-5": ("PACK ", 40, 5, Strategy(), None, None),
    "greedy-stop": ("fox", 80, 2, Strategy(), None, "o"),
    "sample-t1": ("the ", 50, 3, Strategy("sample"), 0, None),
    "sample-t07-k5": ("lazy", 50, 4, Strategy("sample", temperature=0.7, top_k=5), 1, None),
    "sample-p09": ("dog", 50, 4, Strategy("sample", temperature=1.3, top_p=0.9), 2, None),
    "sample-k3-p05": ("J", 40, 16, Strategy("sample", top_k=3, top_p=0.5), 3, None),
    "sample-stop": ("the", 60, 8, Strategy("sample", temperature=0.9), 4, " "),
    "sample-32": ("box", 30, 32, Strategy("sample", temperature=1.1, top_k=10), 5, None),
    "beam-3x2": ("over", 30, 2, Strategy("beam", beam_width=3), None, None),
    "beam-5-stop": ("the", 40, 3, Strategy("beam", beam_width=5, length_penalty=0.5), None, "."),
}


def tokenizer():
    return fit_tokenizer(TEXT.splitlines(), "char", eos=True)


def random_lm(cell: str, embedding: int, units: int, layers: int, seed: int = 0) -> NumpyLM:
    """A model whose logits are spread enough that greedy does not stall on one token."""
    rng = np.random.default_rng(seed)
    vocab = len(tokenizer().vocab)
    g = GATE_BLOCKS[cell]

    def w(*shape, scale=0.4):
        return (scale * rng.standard_normal(shape)).astype(np.float32)

    weights, width = [], embedding
    for _ in range(layers):
        bias = w(2, g * units) if cell == "gru" else w(g * units, scale=0.1)
        weights.append(RNNWeights(w(width, g * units), w(units, g * units), bias))
        width = units
    out_bias = w(vocab)
    out_bias[tokenizer().eos_id] -= 2.0  # texts longer than a token or two
    return NumpyLM(
        cell, w(vocab, embedding, scale=1.0), weights, w(units, vocab, scale=1.5), out_bias
    )


def decode_all() -> dict:
    out: dict = {}
    tok = tokenizer()
    for name, (cell, emb, units, layers, table) in MODELS.items():
        limit = numpy_lm.TABLE_LIMIT
        numpy_lm.TABLE_LIMIT = limit if table else 0
        try:
            lm = random_lm(cell, emb, units, layers)
        finally:
            numpy_lm.TABLE_LIMIT = limit
        assert (lm._table is not None) == table  # the case runs the path it names
        gen = Generator(lm, tok, warn=lambda _m: None)
        for case, (seed, length, num, strategy, rng_seed, stop) in CASES.items():
            decoded = gen.continue_ids(
                seed, length=length, num=num, strategy=strategy, rng_seed=rng_seed, stop=stop
            )
            out[f"{name}/{case}"] = {"ids": decoded.ids, "mean_logprob": decoded.mean_logprob}
        logits, _ = lm.run(tok.encode(TEXT[:20])[None, :])
        out[f"{name}/run-logits"] = {"sum": float(np.float64(logits).sum())}
    return out


@pytest.fixture(scope="module")
def results() -> dict:
    return decode_all()


@pytest.fixture(scope="module")
def recorded(results) -> dict:
    if os.environ.get("TEXTGEN_RECORD_DECODING") == "1":
        FIXTURE.parent.mkdir(parents=True, exist_ok=True)
        lines = [f"{json.dumps(k)}: {json.dumps(v)}" for k, v in results.items()]
        FIXTURE.write_text("{\n" + ",\n".join(lines) + "\n}\n", encoding="utf-8")
    return json.loads(FIXTURE.read_text(encoding="utf-8"))


def test_the_fixture_covers_every_model_and_case(recorded):
    assert set(recorded) == {f"{m}/{c}" for m in MODELS for c in [*CASES, "run-logits"]}
    # the cases decode something worth comparing: tokens, several distinct texts
    assert all(len(ids) > 0 for k, v in recorded.items() if "ids" in v for ids in v["ids"])
    assert len({tuple(ids) for ids in recorded["lstm2x48/sample-32"]["ids"]}) > 16


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("case", list(CASES))
def test_decoding_matches_the_recorded_tokens(results, recorded, model, case):
    key = f"{model}/{case}"
    assert results[key]["ids"] == recorded[key]["ids"]
    np.testing.assert_allclose(
        results[key]["mean_logprob"],
        recorded[key]["mean_logprob"],
        rtol=LOGPROB_RTOL[MODELS[model][0]],
        atol=1e-6,
    )


@pytest.mark.parametrize("model", list(MODELS))
def test_run_matches_the_recorded_logits(results, recorded, model):
    key = f"{model}/run-logits"
    assert results[key]["sum"] == pytest.approx(recorded[key]["sum"], rel=1e-5, abs=1e-3)


# -- what the faster step and loop promise besides the results ----------------------------
@pytest.mark.parametrize("model", list(MODELS))
def test_step_and_run_never_write_into_what_they_are_given(model):
    cell, emb, units, layers, _ = MODELS[model]
    lm = random_lm(cell, emb, units, layers)
    rng = np.random.default_rng(1)
    state = [
        tuple(rng.uniform(-1, 1, p.shape).astype(np.float32) for p in s)
        for s in lm.initial_state(3)
    ]
    kept = [tuple(p.copy() for p in s) for s in state]
    ids = np.array([3, 4, 5])
    logits, new = lm.step(ids, state)
    logits_again, _ = lm.step(ids, state)  # a caller may step an old state again (beam search)
    np.testing.assert_array_equal(logits, logits_again)
    lm.run(ids[:, None].repeat(4, axis=1), state)
    for old, saved in zip(state, kept, strict=True):
        for part, copy in zip(old, saved, strict=True):
            np.testing.assert_array_equal(part, copy)
    fresh = [p for s in new for p in s] + [logits]
    assert not any(np.shares_memory(a, b) for a in fresh for s in state for b in s)
    assert not np.shares_memory(logits, logits_again)


def test_a_state_for_the_wrong_number_of_layers_is_refused():
    lm = random_lm("lstm", 8, 16, 2)
    with pytest.raises(ValueError, match="a state for 2 layers, got 1"):
        lm.step(np.array([1]), lm.initial_state(1)[:1])
    with pytest.raises(ValueError, match="a state for 2 layers, got 4"):
        lm.run(np.array([[1, 2]]), lm.initial_state(1) * 2)


@pytest.mark.parametrize("chunk", [1, 65 * 4 * 7, 65 * 4 * 64])
@pytest.mark.parametrize("strategy", ["greedy", "sample"])
def test_scores_kept_in_chunks_are_those_of_one_step_at_a_time(monkeypatch, chunk, strategy):
    """decode scores the picked tokens in chunks of steps; the sums must be bit-identical
    to scoring each step as it comes (chunk 1), whatever the chunk and the stops."""
    from textgen.decoding import sampling

    lm = random_lm("lstm", 16, 48, 2)
    tok = tokenizer()
    gen = Generator(lm, tok, warn=lambda _m: None)
    args = {"length": 300, "num": 4, "rng_seed": 7, "strategy": Strategy(strategy, top_k=8)}
    monkeypatch.setattr(sampling, "SCORE_CHUNK", 1)
    ref = gen.continue_ids("the ", **args)
    monkeypatch.setattr(sampling, "SCORE_CHUNK", chunk)
    got = gen.continue_ids("the ", **args)
    assert got.ids == ref.ids
    assert got.mean_logprob == ref.mean_logprob  # exactly
    assert max(len(ids) for ids in ref.ids) > 7  # past a chunk boundary (7 steps at 1820)
    if strategy == "sample":
        assert len({len(ids) for ids in ref.ids}) > 1  # rows stopped at different steps


def test_blas_threads_are_read_and_set_where_numpy_runs_on_openblas():
    from textgen.decoding.blas import blas_threads, set_blas_threads

    with pytest.raises(ValueError, match="BLAS threads must be >= 1, got 0"):
        set_blas_threads(0)
    before = blas_threads()
    if before is None:
        pytest.skip("numpy does not run on OpenBLAS here")
    try:
        assert set_blas_threads(1) == before
        assert blas_threads() == 1
        a = np.ones((64, 64), np.float32)
        assert float((a @ a)[0, 0]) == 64.0  # products still work under the new setting
    finally:
        set_blas_threads(before)
    assert blas_threads() == before


def test_bench_generate_steps_litert_and_numpy_alike(tmp_path):
    """bench/generate.py's two step arms run the same model: LiteRT's exported step at a
    resized batch gives textgen's logits, and the greedy step loops pick the same ids."""
    pytest.importorskip("ai_edge_litert")
    from .test_bench import load_bench

    bench = load_bench("generate")
    lm = random_lm("lstm", 16, 48, 2)
    model = bench.litert_model(lm)
    for batch in (1, 3):
        step = bench.LiteRTStep(model, batch, threads=1)
        assert bench.check_litert(step, lm) < 1e-4
        _, ours = bench.numpy_steps(lm, batch, 40)
        _, theirs = step.steps(40)
        assert ours == theirs and len(set(ours)) > 3
    assert (
        bench.forward_flops(lm)
        == 2 * sum(layer.kernel.size + layer.recurrent.size for layer in lm.layers)
        + 2 * lm.out_kernel.size
    )
