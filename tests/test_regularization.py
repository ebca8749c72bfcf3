"""The literature's training recipes: SGD, schedules, carried state, tying, dropout, logs."""

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from textgen import config as config_mod
from textgen import rundir
from textgen._tf import tensorflow
from textgen.cli import main
from textgen.config import ModelConfig, TrainConfig
from textgen.decoding.numpy_lm import NumpyLM
from textgen.errors import UsageError
from textgen.model.network import build_model, init_uniform, training_forward
from textgen.training.loop import train
from textgen.training.optimizer import scheduled_learning_rate
from textgen.training.signals import Interrupted

from .conftest import small_config
from .test_reliability import QUIET, corpus_file, final_state, interrupt_after


def char_corpus(tmp_path: Path) -> Path:
    path = tmp_path / "chars.txt"
    rng = np.random.default_rng(1)
    path.write_text("".join(rng.choice(list("abcde \n"), size=3000)), encoding="utf-8")
    return path


def carry_config(corpus: Path, epochs: int = 2, precision: str = "float32"):
    return small_config(
        corpus,
        data={"level": "char", "mode": "stream", "seq_len": 10, "val_split": 0.1},
        model={"layers": 2, "input_dropout": 0.1, "output_dropout": 0.1},
        train={
            "epochs": epochs,
            "batch_size": 5,
            "carry_state": True,
            "optimizer": "sgd",
            "learning_rate": 1.0,
            "lr_decay": 0.5,
            "lr_decay_after": 1,
            "save_every_steps": 7,
            "jit_compile": False,
            "precision": precision,
        },
    )


def test_learning_rate_schedule():
    cfg = TrainConfig(learning_rate=1.0, lr_decay=0.5, lr_decay_after=4)
    rates = [scheduled_learning_rate(cfg, epoch, 1.0) for epoch in range(1, 9)]
    assert rates == [1.0, 1.0, 1.0, 1.0, 0.5, 0.25, 0.125, 0.0625]  # Zaremba et al.
    assert scheduled_learning_rate(cfg, 2, 0.1) == pytest.approx(0.1)
    assert scheduled_learning_rate(TrainConfig(learning_rate=0.3), 50, 1.0) == 0.3


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.tie_weights=true", "embedding_dim == units"),
        ("train.carry_state=true", "data.mode"),
        ("train.optimizer=rmsprop", "adam, sgd"),
        ("train.lr_decay=1.5", "lr_decay"),
        ("model.output_dropout=1.0", "output_dropout"),
    ],
)
def test_bad_recipe_keys(override, message):
    with pytest.raises(UsageError, match=message):
        config_mod.Config().with_overrides([override])


def test_carried_state_continues_the_sequence():
    """Two halves with the state carried give the logits of the whole sequence at once."""
    cfg = ModelConfig(cell="lstm", embedding_dim=6, units=8, layers=2)
    model = build_model(cfg, 11, mask_padding=False)
    forward = training_forward(model, cfg, mask_padding=False)
    x = np.random.default_rng(0).integers(1, 11, (3, 12)).astype(np.int32)
    whole, _ = forward(x, False)
    tf = tensorflow()
    zeros = [(tf.zeros((3, 8)), tf.zeros((3, 8)))] * 2
    first, state = forward(x[:, :5], False, zeros)
    second, _ = forward(x[:, 5:], False, state)
    np.testing.assert_allclose(
        np.concatenate([first, second], axis=1), np.asarray(whole), atol=1e-5
    )


def test_init_scale_and_tied_weights():
    cfg = ModelConfig(embedding_dim=8, units=8, tie_weights=True, output_dropout=0.5)
    model = build_model(cfg, 13, mask_padding=False)
    init_uniform(model, 0.05, seed=3)
    for variable in model.trainable_variables:
        assert np.abs(np.asarray(variable)).max() <= 0.05
    embedding = np.asarray(model.get_layer("embedding").embeddings)
    np.testing.assert_array_equal(np.asarray(model.get_layer("logits").kernel), embedding.T)
    # the tied projection is what the training forward uses, and equals the Keras model's
    x = np.arange(1, 7, dtype=np.int32).reshape(2, 3)
    logits, _ = training_forward(model, cfg, mask_padding=False)(x, False)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(model(x)), atol=1e-6)


def test_tied_model_trains_and_saves_its_tied_copy(tmp_path):
    corpus = corpus_file(tmp_path)
    cfg = small_config(
        corpus, model={"embedding_dim": 16, "units": 16, "tie_weights": True}, train={"epochs": 1}
    )
    train(cfg, tmp_path / "run", **QUIET)
    lm = NumpyLM.load(tmp_path / "run" / rundir.WEIGHTS)
    np.testing.assert_array_equal(lm.out_kernel, lm.embedding.T)
    model = rundir.load_keras_model(tmp_path / "run")
    kernel = np.asarray(model.get_layer("logits").kernel)
    np.testing.assert_array_equal(kernel, np.asarray(model.get_layer("embedding").embeddings).T)


def test_every_export_of_a_tied_model_ties_by_construction(tmp_path):
    """Training moves only the embedding; whatever the Dense copy holds by then, each
    export (weights.npz arrays, the resumable variables, model.keras) has its transpose."""
    from textgen._tf import keras
    from textgen.model.network import save_keras, variable_arrays, weight_arrays

    cfg = ModelConfig(embedding_dim=8, units=8, tie_weights=True)
    model = build_model(cfg, 13, mask_padding=False)
    embedding = model.get_layer("embedding").embeddings
    moved = np.random.default_rng(0).normal(size=(13, 8)).astype(np.float32)
    embedding.assign(moved)  # a step: the embedding moved, the Dense copy did not
    np.testing.assert_array_equal(weight_arrays(model)["out_kernel"], moved.T)
    kernel_at = [i for i, v in enumerate(model.variables) if v is model.get_layer("logits").kernel]
    np.testing.assert_array_equal(variable_arrays(model)[kernel_at[0]], moved.T)
    embedding.assign(moved * 2)
    save_keras(model, tmp_path / "m.keras")
    saved = keras().saving.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(np.asarray(saved.get_layer("logits").kernel), (moved * 2).T)


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_carried_state_run_resumes_exactly(tmp_path, monkeypatch, precision):
    """Interrupted mid-epoch, a carried-state SGD run resumes to the same weights (bf16:
    its step with the compiled LSTM cell where one can be built)."""
    corpus = char_corpus(tmp_path)
    cfg = carry_config(corpus, precision=precision)
    straight = train(cfg, tmp_path / "straight", **QUIET)
    assert [row["learning_rate"] for row in straight.history] == [1.0, 0.5]
    with monkeypatch.context() as m:
        interrupt_after(60, m)  # epoch 2, between state saves
        with pytest.raises(Interrupted):
            train(cfg, tmp_path / "stopped", **QUIET)
    _, _, info = rundir.load_state(tmp_path / "stopped")
    assert info["epoch"] == 2 and info["step"] > 0
    assert np.abs(info["arrays"]["carry"]).sum() > 0  # a live state was saved
    train(cfg, tmp_path / "stopped", resume=True, **QUIET)
    for a, b in zip(
        final_state(tmp_path / "straight"), final_state(tmp_path / "stopped"), strict=True
    ):
        np.testing.assert_array_equal(a, b)


def test_plateau_lowers_the_rate_and_time_budget_stops(tmp_path):
    corpus = corpus_file(tmp_path)
    cfg = small_config(
        corpus,
        data={"val_split": 0.2},
        # the schedule and the budget, not the XLA step (compiling it costs ~6 s CPU a run)
        train={
            "epochs": 4,
            "learning_rate": 5.0,
            "plateau_factor": 0.1,
            "optimizer": "sgd",
            "jit_compile": False,
        },
    )
    result = train(cfg, tmp_path / "run", **QUIET)
    rates = [row["learning_rate"] for row in result.history]
    best, reduced = float("inf"), 0
    for before, after, row in zip(rates, rates[1:], result.history, strict=False):
        improved = row["val_loss"] < best
        best = min(best, row["val_loss"])
        reduced += not improved
        assert after == pytest.approx(before if improved else before * 0.1)
    assert reduced >= 1  # learning rate 5 overshoots: the schedule had something to do

    budget = cfg.with_overrides(["train.max_minutes=0.0001", "train.epochs=50"])
    result = train(budget, tmp_path / "short", **QUIET)
    assert result.out_of_time and len(result.history) == 1
    rows = (tmp_path / "short" / "history.csv").read_text().splitlines()[1:]
    assert [row.split(",")[0] for row in rows] == ["1"]  # one row for the cut epoch
    # resumed without the budget, the cut epoch is finished and still has one row
    more = budget.with_overrides(["train.max_minutes=0", "train.epochs=2"])
    result = train(more, tmp_path / "short", resume=True, **QUIET)
    assert [row["epoch"] for row in result.history] == [1, 2]


def test_separate_validation_file(tmp_path):
    corpus = corpus_file(tmp_path)
    valid = tmp_path / "valid.txt"
    valid.write_text("w1 w2 w3\nw4 w5 unseen\n", encoding="utf-8")
    train_keys = {"epochs": 1, "jit_compile": False}  # not the XLA step: it costs ~6 s CPU
    cfg = small_config(corpus, data={"valid_corpus": str(valid)}, train=train_keys)
    result = train(cfg, tmp_path / "run", **QUIET)
    assert result.metric == "val_loss" and np.isfinite(result.history[0]["val_loss"])


def test_tensorboard_logs_and_plot(tmp_path):
    corpus = corpus_file(tmp_path)
    train_keys = {"log_every_steps": 5, "jit_compile": False}  # not the XLA step: ~6 s CPU
    cfg = small_config(corpus, data={"val_split": 0.1}, train=train_keys)
    train(cfg, tmp_path / "run", **QUIET)
    tf = tensorflow()
    tags = set()
    for event_file in (tmp_path / "run" / "logs").iterdir():
        for event in tf.compat.v1.train.summary_iterator(str(event_file)):
            tags.update(value.tag for value in event.summary.value)
    assert {"step/loss", "epoch/loss", "epoch/val_loss", "epoch/learning_rate"} <= tags

    pytest.importorskip("matplotlib")
    result = CliRunner().invoke(main, ["plot", str(tmp_path / "run"), "--x", "time"])
    assert result.exit_code == 0, result.output
    png = tmp_path / "run" / "loss.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_history_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(main, ["plot", str(tmp_path / "empty")])
    assert result.exit_code == 1
    assert "history.csv not found" in result.output
