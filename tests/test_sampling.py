import numpy as np

from textgen.sampling import decode, greedy, log_softmax

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
