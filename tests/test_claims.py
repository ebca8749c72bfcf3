"""Claims of the README and RELIABILITY.md that had no test: gradient clipping, dropout in
training only, config keys that reach the model and optimizer, the no-pickle and
safe_mode refusals, the non-finite weights branch, and resume through the CLI."""

from __future__ import annotations

import numpy as np
import pytest

from textgen.corpus.examples import prepare
from textgen.training.loop import Trainer

QUIET_LOG = {"log": lambda _m: None}


def toy_run_object(toy_config, tmp_path, *overrides: str) -> tuple[Trainer, np.ndarray, np.ndarray]:
    cfg = toy_config.with_overrides(list(overrides))
    prepared = prepare(cfg.data)
    run = Trainer(cfg, prepared, tmp_path / "r", lambda _m: None)
    x, y = prepared.train.rows(np.arange(len(prepared.train)))
    return run, x, y


def weights(run: Trainer) -> list[np.ndarray]:
    return [np.array(v) for v in run.model.trainable_variables]


@pytest.mark.parametrize("jit", [False, True])
def test_one_step_clips_the_true_global_norm(toy_config, tmp_path, jit):
    """SGD with clipping moves the weights by exactly lr x clipnorm when the gradient is
    larger; the embedding's repeated token rows are summed before the norm is taken."""
    run, x, y = toy_run_object(
        toy_config, tmp_path, "train.optimizer=sgd", "train.learning_rate=0.5",
        "train.clipnorm=0.05", f"train.jit_compile={str(jit).lower()}",
    )  # fmt: skip
    before = weights(run)
    run.steps.train_step(x, y, run.carry)
    moved = np.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(weights(run), before, strict=True)))
    assert moved == pytest.approx(0.5 * 0.05, rel=1e-5)


def test_a_step_below_the_clip_norm_is_not_scaled(toy_config, tmp_path):
    plain, x, y = toy_run_object(toy_config, tmp_path, "train.optimizer=sgd", "train.clipnorm=0")
    clipped, _, _ = toy_run_object(
        toy_config, tmp_path, "train.optimizer=sgd", "train.clipnorm=1000"
    )
    plain.steps.train_step(x, y, plain.carry)
    clipped.steps.train_step(x, y, clipped.carry)
    for a, b in zip(weights(plain), weights(clipped), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


# -- dropout, momentum, init_scale from a config --------------------------------------------
@pytest.mark.parametrize("key", ["model.input_dropout", "model.dropout", "model.output_dropout"])
def test_dropout_is_active_in_training_and_off_in_evaluation(toy_config, tmp_path, key):
    """Each dropout key on its own (on the embeddings, between the two layers, before the
    logits) draws a new mask at every training call and none in evaluation."""
    from textgen.model.network import training_forward

    run, x, _ = toy_run_object(toy_config, tmp_path, "model.layers=2", f"{key}=0.5")
    forward = training_forward(run.model, run.config.model, mask_padding=True)
    train_a, _ = forward(x, True)
    train_b, _ = forward(x, True)
    eval_a, _ = forward(x, False)
    eval_b, _ = forward(x, False)
    assert not np.allclose(np.asarray(train_a), np.asarray(train_b))  # a new mask each call
    np.testing.assert_array_equal(np.asarray(eval_a), np.asarray(eval_b))
    assert not np.allclose(np.asarray(train_a), np.asarray(eval_a))
    # evaluation is the plain model: what generation (numpy, no dropout) computes
    np.testing.assert_allclose(np.asarray(eval_a), np.asarray(run.model(x)), atol=1e-5)


def test_momentum_and_init_scale_reach_the_optimizer_and_the_weights(tmp_path):
    from textgen import config as config_mod

    corpus = tmp_path / "c.txt"
    corpus.write_text("a b c d\nb c d a\nc d a b\n" * 5, encoding="utf-8")
    path = tmp_path / "c.toml"
    path.write_text(
        f'[data]\ncorpus = "{corpus}"\nval_split = 0.0\n[model]\nunits = 8\nembedding_dim = 4\n'
        'init_scale = 0.04\n[train]\noptimizer = "sgd"\nmomentum = 0.9\nlearning_rate = 0.1\n',
        encoding="utf-8",
    )
    cfg = config_mod.load(path)
    prepared = prepare(cfg.data)
    run = Trainer(cfg, prepared, tmp_path / "r", lambda _m: None)
    assert float(run.optimizer.momentum) == pytest.approx(0.9)
    values = np.concatenate([np.ravel(v) for v in weights(run)])
    assert np.abs(values).max() <= 0.04 and np.abs(values).max() > 0.035  # uniform, not Keras'
    # momentum at work: the second of two identical steps moves further than the first
    x, y = prepared.train.rows(np.arange(len(prepared.train)))
    start = weights(run)
    run.steps.train_step(x, y, run.carry)
    middle = weights(run)
    first = np.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(middle, start, strict=True)))
    run.steps.train_step(x, y, run.carry)
    second = np.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(weights(run), middle, strict=True)))
    assert second > 1.5 * first


# -- no pickle, safe_mode, non-finite weights -------------------------------------------------
def replace_in_snapshot(run, name: str, data: bytes) -> None:
    """Swap a file of the run's current snapshot and record its checksum, as a run made
    by someone else would arrive: consistent, but with content of their choosing."""
    import json

    from textgen import rundir

    snap = rundir.current_snapshot(run)
    (snap.folder / name).unlink()
    (snap.folder / name).write_bytes(data)
    manifest = json.loads((snap.folder / rundir.MANIFEST).read_text())
    manifest["files"][name] = rundir.sha256_file(snap.folder / name)
    (snap.folder / rundir.MANIFEST).write_text(json.dumps(manifest))
    if name != rundir.METADATA:
        meta = json.loads((snap.folder / rundir.METADATA).read_text())
        if name in meta["files"]:
            meta["files"][name] = manifest["files"][name]
            replace_in_snapshot(run, rundir.METADATA, json.dumps(meta).encode())


class _WritesAMarker:
    """Unpickling this calls ``open(marker, "w")``: proof that a file was unpickled."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _with_a_pickled_array(path, key: str, marker) -> bytes:
    """The .npz at ``path`` complete, with ``key`` replaced by an object array that would
    create ``marker`` when loaded with pickle allowed (every other array is the real one)."""
    import io

    with np.load(path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    assert key in arrays
    evil = np.empty(arrays[key].shape[:1] or (1,), dtype=object)
    evil[0] = _WritesAMarker(marker)
    arrays[key] = evil
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def test_pickled_arrays_are_refused(tmp_path, toy_run):
    """A complete weights.npz and last.npz, each with one object array that writes a marker
    file when unpickled: both are refused with a clear error and nothing is unpickled."""
    import shutil

    from click.testing import CliRunner

    from textgen import rundir
    from textgen.cli import main

    run = tmp_path / "run"
    shutil.copytree(toy_run, run, symlinks=True)
    marker = tmp_path / "unpickled"
    snap = rundir.current_snapshot(run).folder
    planted = _with_a_pickled_array(snap / "weights.npz", "embedding", marker)
    replace_in_snapshot(run, "weights.npz", planted)
    result = CliRunner().invoke(main, ["generate", "--model", str(run), "--seed", "그의"])
    assert not marker.exists(), "weights.npz was unpickled"
    assert result.exit_code == 1, result.output
    assert "weights.npz is not a readable weights file (Object arrays cannot be loaded" in (
        result.stderr
    )
    assert "Traceback" not in result.output
    planted = _with_a_pickled_array(snap / "last.npz", "model_0", marker)
    replace_in_snapshot(run, "last.npz", planted)
    result = CliRunner().invoke(main, ["train", "--resume", str(run), "--set", "train.epochs=151"])
    assert not marker.exists(), "last.npz was unpickled"
    assert result.exit_code == 1, result.output
    assert "last.npz is corrupt (ValueError); it cannot be resumed" in result.stderr
    assert "Traceback" not in result.output


def test_a_model_keras_with_code_is_refused_by_safe_mode(tmp_path, toy_run):
    import shutil

    from textgen import rundir
    from textgen._tf import keras
    from textgen.errors import DataError

    k = keras()
    inputs = k.Input((3,))
    evil = k.Model(inputs, k.layers.Lambda(lambda t: t * 2)(inputs))  # Python bytecode
    evil.save(tmp_path / "evil.keras")
    run = tmp_path / "run"
    shutil.copytree(toy_run, run, symlinks=True)
    replace_in_snapshot(run, "model.keras", (tmp_path / "evil.keras").read_bytes())
    with pytest.raises(DataError, match=r"model\.keras is not a loadable Keras model"):
        rundir.load_keras_model(run)


def test_weights_that_become_infinite_stop_training(toy_config, tmp_path):
    from textgen.training.loop import Diverged, train

    cfg = toy_config.with_overrides(
        ["train.optimizer=sgd", "train.learning_rate=1e39", "train.epochs=2"]  # inf in float32
    )
    with pytest.raises(Diverged, match=r"weights became NaN/inf at epoch 1, step 1"):
        train(cfg, tmp_path / "run", progress=False, log=lambda _m: None)
