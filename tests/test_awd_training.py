"""The training side of AWD-LSTM: AR and TAR in the training loss only, NT-ASGD's
trigger and average, exact resume with each on (NT-ASGD across its switch)."""

from __future__ import annotations

import itertools
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from textgen import rundir
from textgen._tf import tensorflow
from textgen.plot import read_history
from textgen.training.averaging import Averager, nonmono_triggered
from textgen.training.loop import train
from textgen.training.signals import Interrupted
from textgen.training.steps import activation_penalties

from .conftest import small_config
from .test_reliability import corpus_file, interrupt_after

QUIET = {"progress": False, "log": lambda _m: None}


# -- AR / TAR ------------------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 4),
    time=st.integers(1, 6),
    units=st.integers(1, 5),
    seed=st.integers(0, 2**16),
)
def test_penalties_are_means_over_real_positions_only(batch, time, units, seed):
    rng = np.random.default_rng(seed)
    raw = rng.standard_normal((batch, time, units)).astype(np.float32)
    dropped = rng.standard_normal((batch, time, units)).astype(np.float32)
    mask = np.ones((batch, time), np.float32)
    for row in range(batch):  # lines mode pads on the left
        mask[row, : rng.integers(0, time + 1)] = 0.0
    ar_sum, ar_n, tar_sum, tar_n = (float(v) for v in activation_penalties(raw, dropped, mask))
    real = mask.astype(bool)
    want_ar = dropped[real] ** 2
    assert ar_n == want_ar.size and ar_sum == pytest.approx(want_ar.sum(), rel=1e-5)
    pairs = real[:, 1:] & real[:, :-1]
    want_tar = (raw[:, 1:] - raw[:, :-1])[pairs] ** 2
    assert tar_n == want_tar.size and tar_sum == pytest.approx(want_tar.sum(), rel=1e-5, abs=1e-6)
    # padded positions change nothing, whatever they hold
    raw[~real], dropped[~real] = 1e3, -1e3
    again = [float(v) for v in activation_penalties(raw, dropped, mask)]
    assert again == pytest.approx([ar_sum, ar_n, tar_sum, tar_n], rel=1e-5, abs=1e-6)


@settings(max_examples=10, deadline=None)
@given(batch=st.integers(1, 3), time=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_penalties_time_major_and_compiled_agree_with_batch_major(batch, time, seed):
    """The bf16 step's form of the sums (time-major outputs, one XLA computation) gives
    the sums and the gradients of the plain batch-major form."""
    tf = tensorflow()
    rng = np.random.default_rng(seed)
    raw = tf.constant(rng.standard_normal((batch, time, 3)).astype(np.float32))
    dropped = tf.constant(rng.standard_normal((batch, time, 3)).astype(np.float32))
    mask = np.ones((batch, time), np.float32)
    mask[0, : rng.integers(0, time + 1)] = 0.0
    weights = tf.constant([2.0, 1.0, 3.0, 0.5])

    def sums_and_grads(time_axis: int, compiled: bool):
        r, d = (tf.transpose(v, [1, 0, 2]) if time_axis == 0 else v for v in (raw, dropped))
        with tf.GradientTape() as tape:
            tape.watch([r, d])
            sums = activation_penalties(r, d, mask, time_axis=time_axis, compiled=compiled)
            scalar = tf.reduce_sum(tf.stack(sums) * weights)
        grads = tape.gradient(scalar, [r, d])
        if time_axis == 0:
            grads = [tf.transpose(g, [1, 0, 2]) for g in grads]
        return [float(v) for v in sums], [np.asarray(g) for g in grads]

    want_sums, want_grads = sums_and_grads(1, False)
    for time_axis, compiled in ((0, False), (0, True), (1, True)):
        sums, grads = sums_and_grads(time_axis, compiled)
        assert sums == pytest.approx(want_sums, rel=1e-5, abs=1e-6)
        for got, want in zip(grads, want_grads, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def _trainer(corpus: Path, tmp_path: Path, **train_keys):
    from textgen.training import loop

    cfg = small_config(corpus, train={"batch_size": 8} | train_keys)
    config, prepared = loop.read_corpus(cfg, None, False, lambda _m: None)
    return loop.Trainer(config, prepared, tmp_path / "run", lambda _m: None)


def test_ar_and_tar_change_the_step_but_not_the_reported_loss(tmp_path):
    corpus = corpus_file(tmp_path)
    plain = _trainer(corpus, tmp_path, jit_compile=False)
    x, y = plain.prepared.train.rows(np.arange(8))
    results = {}
    for ar, tar in ((0.0, 0.0), (2.0, 0.0), (0.0, 2.0)):
        run = _trainer(corpus, tmp_path, ar=ar, tar=tar, jit_compile=False)
        total, count, _, _ = run.steps.train_step(x, y, run.carry)
        results[ar, tar] = (
            float(total),
            float(count),
            [np.asarray(v) for v in run.model.variables],
        )
    base = results[0.0, 0.0]
    for key in ((2.0, 0.0), (0.0, 2.0)):
        total, count, weights = results[key]
        assert (total, count) == (base[0], base[1])  # the cross-entropy, as before the step
        moved = max(float(np.abs(a - b).max()) for a, b in zip(weights, base[2], strict=True))
        assert moved > 1e-6, f"{key} did not change the update"


def test_the_bf16_step_with_ar_and_tar_keeps_its_loss_and_changes_its_update(tmp_path):
    """The bf16 step (AR/TAR's sums compiled on their own, over time-major outputs):
    the reported loss is the cross-entropy, the update differs from the plain step's and
    is close to the float32 step's with the same penalties (SGD: the update is the
    gradient, which bf16 rounds; Adam's first step is its sign)."""
    corpus = corpus_file(tmp_path)
    x, y = _trainer(corpus, tmp_path).prepared.train.rows(np.arange(8))
    results = {}
    for precision, ar in (("bfloat16", 0.0), ("bfloat16", 2.0), ("float32", 2.0)):
        run = _trainer(
            corpus, tmp_path, ar=ar, tar=ar / 2, precision=precision, optimizer="sgd",
            learning_rate=1.0,
        )  # fmt: skip
        before = [np.asarray(v) for v in run.model.trainable_variables]
        total, _, finite, _ = run.steps.train_step(x, y, run.carry)
        assert bool(finite)
        after = [np.asarray(v) for v in run.model.trainable_variables]
        results[precision, ar] = float(total), [a - b for a, b in zip(after, before, strict=True)]
    (plain, plain_delta), (reg, reg_delta) = results["bfloat16", 0.0], results["bfloat16", 2.0]
    assert reg == plain  # the cross-entropy before the step
    assert max(float(np.abs(a - b).max()) for a, b in zip(reg_delta, plain_delta, strict=True)) > 0
    _, f32_delta = results["float32", 2.0]
    for a, b in zip(reg_delta, f32_delta, strict=True):  # bf16 keeps 8 bits of mantissa
        assert np.abs(a - b).max() <= 0.05 * np.abs(b).max() + 1e-6


def test_ar_pulls_the_outputs_towards_zero(tmp_path):
    """The gradient of the AR term alone shrinks the last layer's activations."""
    from textgen.model.network import training_forward

    corpus = corpus_file(tmp_path)
    run = _trainer(corpus, tmp_path, ar=1.0, learning_rate=0.5)
    x, _ = run.prepared.train.rows(np.arange(8))
    forward = training_forward(run.model, run.config.model, mask_padding=True)
    mask = (x != 0).astype(np.float32)

    def ar_mean() -> float:
        _, _, (_, dropped) = forward(x, False, None, hidden=True)
        total, n, _, _ = activation_penalties(dropped, dropped, mask)
        return float(total) / float(n)

    tf = tensorflow()
    before = ar_mean()
    variables = run.model.trainable_variables
    with tf.GradientTape() as tape:
        _, _, (_, dropped) = forward(x, False, None, hidden=True)
        total, n, _, _ = activation_penalties(dropped, dropped, mask)
        loss = total / n
    for v, g in zip(variables, tape.gradient(loss, variables), strict=True):
        if g is not None:
            v.assign_sub(0.5 * tf.convert_to_tensor(g))
    assert ar_mean() < before


# -- NT-ASGD -------------------------------------------------------------------------------
def test_the_trigger_is_non_monotone():
    assert not nonmono_triggered([3.0, 2.0], 2.5, 0)  # off
    assert not nonmono_triggered([3.0, 2.0], 2.5, 2)  # not more checks than nonmono yet
    assert nonmono_triggered([3.0, 2.0], 3.5, 1)  # worse than 3.0, the best before the last
    assert not nonmono_triggered([3.0, 2.0], 2.9, 1)  # better than 3.0: no switch
    assert not nonmono_triggered([4.0, 3.0, 2.5, 2.6], 2.9, 2)  # best before last two: 3.0
    assert nonmono_triggered([4.0, 3.0, 2.5, 2.6], 3.1, 2)


def test_the_average_is_the_mean_of_the_iterates_and_swaps_back_exactly():
    tf = tensorflow()
    w = tf.Variable(np.zeros(3, np.float32))
    averager = Averager([w])
    averager.start()
    iterates = [np.array([1.0, 2.0, 3.0]), np.array([3.0, 0.0, -1.0]), np.array([2.0, 1.0, 1.0])]
    for n, value in enumerate(iterates, start=1):
        w.assign(value.astype(np.float32))
        averager.update(n)
    np.testing.assert_allclose(averager.arrays()[0], np.mean(iterates, axis=0), rtol=1e-6)
    with averager.swapped():
        np.testing.assert_allclose(w.numpy(), np.mean(iterates, axis=0), rtol=1e-6)
    assert np.array_equal(w.numpy(), iterates[-1].astype(np.float32))


def _asgd_config(corpus: Path, **train_keys):
    return small_config(
        corpus,
        data={"val_split": 0.1},
        model={"layers": 2, "dropout": 0.2},
        train={"epochs": 6, "batch_size": 8, "save_every_steps": 5, "optimizer": "sgd",
               "learning_rate": 1.0, "asgd_nonmono": 1, "jit_compile": False} | train_keys,
    )  # fmt: skip


def _state(run_dir: Path):
    model_vars, opt_vars, info = rundir.load_state(run_dir)
    return model_vars + opt_vars, info


def test_exact_resume_across_the_switch_to_averaging_with_ar_and_tar(tmp_path, monkeypatch):
    """Interrupted after NT-ASGD switched (AR, TAR and dropout on), resumed: the weights,
    the optimizer, the average and the losses equal an uninterrupted run's.

    The switch is made to come at the third check whatever this CPU's rounding does to
    the losses (the trigger's rule has its own test); the loop must hand the trigger the
    scores of the checks before, which is checked here."""
    from textgen.training import loop

    calls = []

    def at_the_third_check(previous, score, nonmono):
        calls.append((list(previous), score, nonmono))
        return len(previous) >= 2

    monkeypatch.setattr(loop, "nonmono_triggered", at_the_third_check)
    corpus = corpus_file(tmp_path)
    cfg = _asgd_config(corpus, ar=2.0, tar=1.0, epochs=5)
    straight = train(cfg, tmp_path / "straight", **QUIET)
    losses = [row["val_loss"] for row in straight.history]
    assert calls == [(losses[:i], losses[i], 1) for i in range(3)]  # not called once averaging
    start = straight.state.asgd_start
    assert start == 3 * 18  # after the third epoch's 18 steps
    stop_at = start + 7  # 7 steps after the switch, between two saves
    with monkeypatch.context() as m:
        interrupt_after(stop_at, m)
        with pytest.raises(Interrupted):
            train(cfg, tmp_path / "stopped", **QUIET)
    _, info = _state(tmp_path / "stopped")
    assert info["asgd_start"] == start and info["global_step"] == stop_at
    train(cfg, tmp_path / "stopped", resume=True, **QUIET)
    (a_vars, a_info), (b_vars, b_info) = _state(tmp_path / "straight"), _state(tmp_path / "stopped")
    for a, b in zip(a_vars, b_vars, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    a_avg, b_avg = _average(a_info), _average(b_info)
    assert len(a_avg) == len(b_avg) > 0
    for a, b in zip(a_avg, b_avg, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    history = [
        (tmp_path / r / "history.csv").read_text().splitlines() for r in ("straight", "stopped")
    ]
    assert [r.split(",")[:5] for r in history[0]] == [r.split(",")[:5] for r in history[1]]


def _average(info: dict) -> list[np.ndarray]:
    arrays = info["arrays"]
    count = sum(1 for k in arrays if k.startswith("asgd_average."))
    return [arrays[f"asgd_average.{i}"] for i in range(count)]


def test_the_best_model_is_the_average_and_the_state_the_iterate(tmp_path):
    """Once averaging, a best save writes the averaged weights into the bundle (what eval
    and generate read) and the trained ones into last.npz (what training goes on from)."""
    from textgen.training import loop

    corpus = corpus_file(tmp_path)
    cfg = _asgd_config(corpus, epochs=1)
    train(cfg, tmp_path / "run", **QUIET)
    config, prepared = loop.read_corpus(cfg, rundir.run_tokenizer(tmp_path / "run"), False, print)
    run = loop.Trainer(config, prepared, tmp_path / "run", lambda _m: None)
    run.restore_state()
    run.state.asgd_start = run.state.global_step
    average = [np.asarray(v) * 0.5 + 0.01 for v in run.model.trainable_variables]
    run.averager.start(average)
    trained = [np.asarray(v) for v in run.model.variables]
    run.save(best=True)
    assert all(
        np.array_equal(a, np.asarray(b)) for a, b in zip(trained, run.model.variables, strict=True)
    )
    model_vars, info = _state(tmp_path / "run")
    assert all(
        np.array_equal(a, b) for a, b in zip(trained, model_vars[: len(trained)], strict=True)
    )
    assert all(np.array_equal(a, b) for a, b in zip(average, _average(info), strict=True))
    weights = np.load(tmp_path / "run" / "weights.npz")
    np.testing.assert_array_equal(weights["embedding"], average[0])
    np.testing.assert_array_equal(weights["rnn_0_recurrent"], average[2])


# -- the schedule follows the budget ------------------------------------------------------
def test_budget_annealing_is_a_cosine_over_the_time_budget():
    from textgen.training.optimizer import budget_factor

    assert budget_factor(0.0, 60.0) == 1.0
    assert budget_factor(30.0, 60.0) == pytest.approx(0.5)
    assert budget_factor(45.0, 60.0) == pytest.approx(0.5 * (1 + np.cos(0.75 * np.pi)))
    assert budget_factor(90.0, 60.0) == 0.0  # past the budget
    assert budget_factor(10.0, 0.0) == 1.0  # no budget, no annealing


def test_the_learning_rate_follows_the_time_spent(tmp_path):
    corpus = corpus_file(tmp_path)
    run = _trainer(
        corpus, tmp_path, anneal="budget", max_minutes=1.0, learning_rate=0.01, jit_compile=False
    )
    run.epoch_lr = 0.01
    for spent, factor in ((0.0, 1.0), (15.0, 0.5 * (1 + np.cos(np.pi / 4))), (30.0, 0.5)):
        run.state.elapsed = spent
        run.anneal()
        assert float(run.optimizer.learning_rate) == pytest.approx(0.01 * factor, rel=1e-4)


def test_the_history_records_the_annealed_rate(tmp_path, monkeypatch):
    # every row holds the rate the optimizer had at the epoch's end, down to about 0 when
    # the budget is spent, not the starting rate the cosine multiplies. The training clock
    # advances 0.05 s each time it is read, so the run does not depend on the CPU's speed.
    from textgen.training import budget

    ticks = itertools.count()
    monkeypatch.setattr(budget, "time", SimpleNamespace(perf_counter=lambda: next(ticks) / 20))
    cfg = small_config(
        corpus_file(tmp_path),
        train={"epochs": 10_000, "anneal": "budget", "max_minutes": 0.5, "optimizer": "sgd",
               "learning_rate": 1.0, "jit_compile": False},
    )  # fmt: skip
    rates = [row["learning_rate"] for row in train(cfg, tmp_path / "run", **QUIET).history]
    assert len(rates) >= 2 and rates[0] < 1.0
    assert all(b <= a for a, b in itertools.pairwise(rates))
    assert rates[-1] < 0.05  # the cosine's end: the budget is spent
    written = [row["learning_rate"] for row in read_history(tmp_path / "run")]
    assert written == pytest.approx(rates, rel=1e-5)


@pytest.mark.parametrize(
    "toml, message",
    [
        ('anneal = "budget"', 'train.anneal = "budget" needs train.max_minutes > 0'),
        ('anneal = "cosine"', "must be one of none, budget"),
        ("ar = -1.0", "train.ar must be >= 0"),
        ("tar = -0.5", "train.tar must be >= 0"),
        ("asgd_nonmono = 2", 'train.asgd_nonmono applies to train.optimizer = "sgd" only'),
        (
            'optimizer = "sgd"\nasgd_nonmono = 2\ndistribute = "mirrored"',
            'train.asgd_nonmono works with train.distribute = "none" only',
        ),
    ],
)
def test_bad_training_settings_are_one_line(tmp_path, toml, message):
    from click.testing import CliRunner

    from textgen.cli import main

    config = tmp_path / "c.toml"
    config.write_text(f"[train]\n{toml}\n", encoding="utf-8")
    corpus = corpus_file(tmp_path)
    result = CliRunner().invoke(
        main,
        ["train", "--config", str(config), "--corpus", str(corpus), "--out", str(tmp_path / "r")],
    )
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert message in lines[0]
    assert not (tmp_path / "r").exists()
