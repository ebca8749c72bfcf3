import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from textgen.decoding.sampling import (
    beam_search,
    decode,
    filter_logits,
    greedy,
    log_softmax,
    sampler,
)

V = 6


def fake_next(table):
    """A next() whose logits depend only on the last token: table[token] → logits."""

    def next_fn(ids, state):
        return np.stack([table[int(i)] for i in ids]), state + 1

    return next_fn


def chain_table(order, eos):
    """Logits that make greedy follow ``order`` then ``eos``."""
    table = np.zeros((V, V))
    for a, b in zip(order, [*order[1:], eos], strict=True):
        table[a, b] = 5.0
    return table


def test_greedy_follows_the_argmax_chain_and_stops_at_eos():
    table = chain_table([3, 4, 5], eos=2)
    start = table[[1]]  # logits after the seed point at 3
    start[0, 3] = 5.0
    out = decode(fake_next(table), start, 0, length=10, pick=greedy, stop_id=2)
    assert out.ids == [[3, 4, 5]]
    assert out.mean_logprob[0] < 0


def test_length_is_a_maximum_and_steps_are_one_per_token():
    calls = []
    table = np.zeros((V, V))
    table[:, 4] = 1.0

    def next_fn(ids, state):
        calls.append(ids.copy())
        return table[ids], state

    out = decode(next_fn, table[[0]], None, length=5, stop_id=None)
    assert out.ids == [[4, 4, 4, 4, 4]]
    assert len(calls) == 4  # the last token needs no further step
    assert all(c.shape == (1,) for c in calls)  # one token per call, never the prefix


def test_rows_of_a_batch_stop_independently():
    table = chain_table([3, 4], eos=2)
    start = np.zeros((2, V))
    start[0, 4] = 5.0  # row 0: 4 → eos
    start[1, 3] = 5.0  # row 1: 3 → 4 → eos
    out = decode(fake_next(table), start, 0, length=10, stop_id=2)
    assert out.ids == [[4], [3, 4]]


def test_on_token_streams_each_token():
    seen = []
    table = chain_table([3, 4], eos=2)
    start = np.zeros((1, V))
    start[0, 3] = 5.0
    decode(
        fake_next(table), start, 0, length=10, stop_id=2, on_token=lambda r, t: seen.append((r, t))
    )
    assert seen == [(0, 3), (0, 4)]


def test_log_softmax_normalises():
    logits = np.array([[1.0, 2.0, 3.0]])
    np.testing.assert_allclose(np.exp(log_softmax(logits)).sum(), 1.0)


# -- strategies ------------------------------------------------------------------------

logit_rows = arrays(np.float64, (3, 12), elements=st.floats(-8, 8, allow_nan=False))


@settings(max_examples=60, deadline=None)
@given(logit_rows, st.integers(1, 12), st.integers(0, 2**32 - 1))
def test_top_k_never_picks_outside_the_k_best(logits, k, seed):
    rng = np.random.default_rng(seed)
    pick = sampler(temperature=1.5, top_k=k)
    for _ in range(20):
        ids = pick(logits, rng)
        for row, token in enumerate(ids):
            # strictly better tokens than the picked one must be fewer than k
            assert (logits[row] > logits[row, token]).sum() < k


@settings(max_examples=60, deadline=None)
@given(logit_rows, st.floats(0.05, 1.0), st.integers(0, 2**32 - 1))
def test_top_p_never_picks_outside_the_nucleus(logits, p, seed):
    rng = np.random.default_rng(seed)
    probs = np.exp(log_softmax(logits))
    pick = sampler(top_p=p)
    for _ in range(20):
        ids = pick(logits, rng)
        for row, token in enumerate(ids):
            # the mass of tokens strictly more likely than the picked one is below p
            assert probs[row][probs[row] > probs[row, token]].sum() < p + 1e-9


def test_filter_logits_keeps_the_nucleus_exactly():
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]]))
    kept = np.isfinite(filter_logits(logits, top_p=0.8))
    assert kept.tolist() == [[True, True, False, False]]
    kept = np.isfinite(filter_logits(logits, top_p=0.81))
    assert kept.tolist() == [[True, True, True, False]]
    assert np.isfinite(filter_logits(logits, top_k=1)).tolist() == [[True, False, False, False]]


@settings(max_examples=40, deadline=None)
@given(logit_rows)
def test_temperature_near_zero_equals_greedy(logits):
    gaps = np.sort(logits, axis=-1)
    if (gaps[:, -1] - gaps[:, -2] < 1e-3).any():
        return  # near-ties: both tokens are argmax within rounding
    pick = sampler(temperature=1e-4)
    assert (pick(logits, np.random.default_rng(0)) == greedy(logits)).all()


def test_same_rng_seed_same_samples():
    table = np.random.default_rng(1).normal(size=(V, V))
    start = table[[0, 1]]
    runs = [
        decode(
            fake_next(table), start, 0, length=30, pick=sampler(), rng=np.random.default_rng(7)
        ).ids
        for _ in range(2)
    ]
    assert runs[0] == runs[1]
    other = decode(
        fake_next(table), start, 0, length=30, pick=sampler(), rng=np.random.default_rng(8)
    )
    assert other.ids != runs[0]


def test_should_stop_ends_a_row():
    table = np.zeros((V, V))
    table[:, 3] = 1.0
    out = decode(
        fake_next(table), table[[0]], 0, length=10, should_stop=lambda r, ids: len(ids) == 3
    )
    assert out.ids == [[3, 3, 3]]


def beam_table():
    """A toy distribution where greedy is not the most likely sequence.

    After the seed: A (id 3) 0.55, B (id 4) 0.45. After A: three tokens at 1/3 each, then
    <eos>. After B: C (id 5) 0.9. Greedy: A → x, p = 0.55 · 1/3 ≈ 0.18. Best: B C <eos>,
    p = 0.45 · 0.9 ≈ 0.40.
    """
    logp = np.full((V, V), -30.0)
    logp[0, 3], logp[0, 4] = np.log(0.55), np.log(0.45)
    logp[3, [1, 5, 0]] = np.log(1 / 3)
    logp[4, 5], logp[4, 1] = np.log(0.9), np.log(0.1)
    logp[5, 2] = 0.0
    logp[1, 2] = 0.0
    logp[[2], 2] = 0.0
    return logp


def test_beam_search_finds_the_best_sequence_where_greedy_does_not():
    table = beam_table()
    start = table[[0]]
    greedy_out = decode(fake_next(table), start, 0, length=5, stop_id=2)
    assert greedy_out.ids[0][0] == 3  # greedy commits to A
    beam = beam_search(
        fake_next_state(table), start, np.zeros((1, 1)), width=2, length=5, stop_id=2, alpha=0
    )
    assert beam.ids == [[4, 5]]
    assert beam.mean_logprob[0] == pytest.approx(np.log(0.45 * 0.9) / 3)


def test_beam_returns_num_best_and_respects_length():
    table = beam_table()
    beam = beam_search(
        fake_next_state(table), table[[0]], np.zeros((1, 1)), width=3, length=1, num=2
    )
    assert beam.ids == [[3], [4]]


def fake_next_state(table):
    """Like fake_next, but with a per-row numpy state so beams can be reordered."""

    def next_fn(ids, state):
        return table[np.asarray(ids)], state[: len(ids)] + 1

    return next_fn


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": 0}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -1}, "top_k"),
    ],
)
def test_sampler_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        sampler(**kwargs)


def penalty_table():
    """Token 0 stops. Stopping at once scores -1.0 in total; one token x (1) then stopping
    scores -1.2 in total but -0.6 per token: the length penalty decides which is best."""
    lp = np.log
    first = np.array([-1.0, -0.6, lp(1 - np.exp(-1.0) - np.exp(-0.6))])
    after_x = np.array([-0.6, -1.0, lp(1 - np.exp(-1.0) - np.exp(-0.6))])
    return first, after_x


def penalty_search(**kwargs):
    first, after_x = penalty_table()

    def next_fn(ids, state):
        return np.stack([after_x for _ in ids]), state

    return beam_search(next_fn, first[None, :], np.zeros((1, 1)), width=3, length=5,
                       stop_id=0, **kwargs)  # fmt: skip


def test_beam_length_penalty_default_is_the_mean_per_token():
    from textgen.decoding.generate import Strategy

    assert Strategy("beam").length_penalty == 1.0
    assert penalty_search().ids == [[1]]  # mean -0.6 beats -1.0
    assert penalty_search(alpha=1.0).ids == [[1]]
    assert penalty_search(alpha=0.0).ids == [[]]  # raw sum: -1.0 beats -1.2


def test_length_penalty_option_reaches_the_beam_search(toy_run, monkeypatch):
    from click.testing import CliRunner

    import textgen.decoding.generate as generate_mod
    from textgen.cli import main

    seen = []
    real = generate_mod.beam_search

    def spy(*args, **kwargs):
        seen.append(kwargs["alpha"])
        return real(*args, **kwargs)

    monkeypatch.setattr(generate_mod, "beam_search", spy)
    base = ["generate", "--model", str(toy_run), "--seed", "그의", "--strategy", "beam"]
    assert CliRunner().invoke(main, base).exit_code == 0
    assert CliRunner().invoke(main, [*base, "--length-penalty", "0.3"]).exit_code == 0
    assert seen == [1.0, 0.3]
