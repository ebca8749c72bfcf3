"""TrainState is the one list of what last.npz keeps besides the variables: every field,
and a field added to it, is saved and restored by walking the list, with no other edit."""

from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from textgen import rundir
from textgen.training import checkpoint as checkpoint_mod
from textgen.training import loop as loop_mod
from textgen.training.checkpoint import HISTORY_FIELDS
from textgen.training.state import ARRAY, ARRAYS, TrainState

from .conftest import small_config

QUIET = {"progress": False, "log": lambda _m: None}


def _corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(12)]
    lines = [" ".join(rng.choice(words, size=rng.integers(3, 7))) for _ in range(40)]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _other_value(f: dataclasses.Field, index: int, carry_shape: tuple, shapes: list) -> object:
    """A value unlike the field's default, chosen from the field's kind and type (a list
    of arrays has the shapes of the model's trainable variables, like the average)."""
    rng = np.random.default_rng(index)
    kept = f.metadata.get("kept", "info")
    if kept == "array":
        return rng.standard_normal(carry_shape).astype(np.float32)
    if kept == "arrays":
        return [rng.standard_normal(shape).astype(np.float32) for shape in shapes]
    if kept == "history":
        return [{name: float(j + 0.25) for name in HISTORY_FIELDS} | {"epoch": j} for j in (1, 2)]
    kind = f.type if isinstance(f.type, str) else f.type.__name__
    if kind.startswith("int"):
        return 10 + index
    if kind.startswith("float"):
        return 0.5 + index
    if kind.startswith("str"):
        return f"value {index}"
    if kind.startswith("dict"):
        return {"path": f"p{index}", "n": index}
    raise AssertionError(f"no test value for the type {f.type} of TrainState.{f.name}")


def _equal(a: object, b: object) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(np.asarray(a), np.asarray(b))
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, Path]:
    """A tiny run trained once (one epoch) for the module: its config and folder."""
    tmp_path = tmp_path_factory.mktemp("state")
    cfg = small_config(_corpus(tmp_path), train={"epochs": 1, "jit_compile": False})
    loop_mod.train(cfg, tmp_path / "run", **QUIET)
    return cfg, tmp_path / "run"


def _trainer(trained: tuple[object, Path], tmp_path: Path) -> loop_mod.Trainer:
    """A trainer over a copy of the trained run (not restored)."""
    cfg, source = trained
    run_dir = tmp_path / "run"
    shutil.copytree(source, run_dir, symlinks=True)
    config, prepared = loop_mod.read_corpus(cfg, rundir.run_tokenizer(run_dir), False, print)
    return loop_mod.Trainer(config, prepared, run_dir, lambda _m: None)


def _round_trip(trained: tuple[object, Path], tmp_path: Path) -> tuple[TrainState, TrainState]:
    trainer = _trainer(trained, tmp_path)
    values = {}
    shapes = [tuple(v.shape) for v in trainer.model.trainable_variables]
    for index, f in enumerate(dataclasses.fields(trainer.state)):
        values[f.name] = _other_value(f, index, np.shape(trainer.carry), shapes)
    trainer.state = type(trainer.state)(**values)
    trainer.averager.start(trainer.state.asgd_average)  # as a restore of this state does
    trainer.segment_t0 = None  # save() adds no running time to elapsed
    trainer.save()
    again = loop_mod.Trainer(trainer.config, trainer.prepared, trainer.run_dir, lambda _m: None)
    return trainer.state, again.checkpoint.restore(again.model, again.optimizer)


def test_every_field_of_the_state_is_saved_and_restored(trained, tmp_path, monkeypatch):
    # the corpus check compares the saved sha256 with the corpus': let the values pass
    monkeypatch.setattr(checkpoint_mod.Checkpoint, "restore", _restore_without_checks)
    saved, restored = _round_trip(trained, tmp_path)
    assert type(restored) is TrainState
    for f in dataclasses.fields(TrainState):
        assert _equal(getattr(saved, f.name), getattr(restored, f.name)), f.name


def test_a_field_added_to_the_list_is_saved_and_restored_with_no_other_edit(
    trained, tmp_path, monkeypatch
):
    wider = dataclasses.make_dataclass(
        "WiderState",
        [
            ("new_count", int, dataclasses.field(default=0)),
            ("new_array", object, dataclasses.field(default=None, metadata=ARRAY)),
            ("new_arrays", list, dataclasses.field(default_factory=list, metadata=ARRAYS)),
        ],
        bases=(TrainState,),
    )
    monkeypatch.setattr(loop_mod, "TrainState", wider)
    monkeypatch.setattr(checkpoint_mod, "TrainState", wider)
    monkeypatch.setattr(checkpoint_mod.Checkpoint, "restore", _restore_without_checks)
    saved, restored = _round_trip(trained, tmp_path)
    assert type(restored) is wider
    assert restored.new_count == saved.new_count != 0
    assert np.array_equal(restored.new_array, saved.new_array)
    assert len(restored.new_arrays) > 1 and _equal(restored.new_arrays, saved.new_arrays)


_real_restore = checkpoint_mod.Checkpoint.restore


def _restore_without_checks(self, model, optimizer):
    """Checkpoint.restore with the test's made-up sums and batch accepted."""
    real = self.prepared.corpus_sha256
    _, _, info = rundir.load_state(self.run_dir, info_only=True)
    object.__setattr__(self, "global_batch", info["global_batch"])
    object.__setattr__(self.prepared, "corpus_sha256", info["corpus_sha256"])
    try:
        return _real_restore(self, model, optimizer)
    finally:
        object.__setattr__(self.prepared, "corpus_sha256", real)


def test_an_older_state_without_the_new_fields_keeps_their_defaults():
    """last.npz of earlier versions: no config fields here, carry among the arrays,
    "wait" for epochs_since_best, the history in the record with a "loss" column."""
    old = {"epoch": 3, "wait": 1, "best_loss": None, "global_batch": 8,
           "history": [{"epoch": 1, "loss": 2.0}], "unknown_later_field": 1}  # fmt: skip
    carry = np.ones((1, 2, 4, 3), np.float32)
    state = TrainState.restored(old, {"carry": carry})
    assert (state.epoch, state.epochs_since_best, state.global_batch) == (3, 1, 8)
    assert math.isinf(state.best_loss) and state.history[0]["train_loss"] == 2.0
    assert np.array_equal(state.carry, carry)
    assert (state.asgd_start, state.asgd_average, state.averaging) == (-1, [], False)
