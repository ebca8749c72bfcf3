"""Where a run stands between two steps: the one list of what ``last.npz`` keeps besides
the model and optimizer variables. It is saved and restored by walking its fields
(:meth:`TrainState.saved`, :meth:`TrainState.restored`), so a new resumable field is one
line here and cannot be saved and forgotten on resume (or the other way round).

A field's ``metadata["kept"]`` says where it goes: ``"info"`` (the default) into the
JSON record of ``last.npz``, ``"array"`` (an array or None) and ``"arrays"`` (a list of
arrays) into arrays of ``last.npz`` named after the field, ``"history"`` into history.csv
(written and read by the checkpoint, so that ``last.npz`` stays the same size).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

ARRAY = {"kept": "array"}  # one array (or None) in last.npz
ARRAYS = {"kept": "arrays"}  # a list of arrays in last.npz, FIELD.0, FIELD.1, ...
HISTORY = {"kept": "history"}  # the rows of history.csv


@dataclass
class TrainState:
    """The position and bookkeeping of a run; ``epoch`` counts from 1, ``step`` is the
    number of steps done in it."""

    epoch: int = 1
    step: int = 0
    epochs_since_best: int = 0  # early stopping and reduce-on-plateau count these
    lr_scale: float = 1.0  # reduce-on-plateau factor so far
    elapsed: float = 0.0  # training seconds of finished epoch segments, over resumes
    global_step: int = 0
    total: float = 0.0  # loss sum of the running epoch so far ...
    count: float = 0.0  # ... and its token count
    history: list[dict[str, float]] = field(default_factory=list, metadata=HISTORY)
    best_epoch: int = 0
    best_loss: float = math.inf
    created: str = ""
    # without validation, "best" is judged on the first check_rows training rows: fixed
    # when the run starts, so a resume with another batch_size judges the same sample
    check_rows: int = 0
    # a fine-tuning run's origin (--init-from): the parent run's path, run id and the
    # sha256 of the weights it started from, and the vocabulary growth; {} otherwise.
    # Kept here so that a resume records it again in every later metadata.json.
    parent: dict[str, Any] = field(default_factory=dict)
    run_id: str = ""  # chosen when the run starts, kept over resumes
    config: str = ""  # the config in force (TOML): a resume continues with it
    global_batch: int = 0  # rows per step over all replicas (0: a state from before it)
    corpus_sha256: str = ""  # the text trained on, checked on resume
    valid_sha256: str = ""  # the separate validation file's ("" without one)
    # the recurrent state carried from batch to batch (train.carry_state), else None
    carry: np.ndarray | None = field(default=None, metadata=ARRAY)
    # NT-ASGD (train.asgd_nonmono): the global step after which averaging began (-1: not
    # yet) and the running average of the trainable variables since then
    asgd_start: int = -1
    asgd_average: list[np.ndarray] = field(default_factory=list, metadata=ARRAYS)

    def record(self, score: float) -> bool:
        """Judge the epoch that just ended by ``score`` (lower is better): whether it is
        the best so far. Early stopping and reduce-on-plateau count the epochs since."""
        if score < self.best_loss:
            self.best_loss, self.best_epoch, self.epochs_since_best = score, self.epoch, 0
            return True
        self.epochs_since_best += 1
        return False

    @property
    def averaging(self) -> bool:
        """Whether NT-ASGD has switched to averaging."""
        return self.asgd_start >= 0

    def add_epoch_row(
        self, row: dict[str, float], tokens_per_epoch: int, steps_done: int, steps: int
    ) -> dict[str, float]:
        """Add the history row of the epoch that just ended, its ``tokens_per_s``
        computed here from ``steps_done`` of ``steps``, and return it.

        One row per epoch: the rest of an epoch a time budget cut short replaces the row
        its first part wrote, with the seconds of both parts and the throughput over all
        of its steps.
        """
        seconds, done = row["seconds"], steps_done / steps
        if self.history and self.history[-1]["epoch"] == self.epoch:
            seconds += self.history.pop()["seconds"]
            done = self.step / steps
        row = row | {"tokens_per_s": tokens_per_epoch * done / seconds, "seconds": seconds}
        self.history.append(row)
        return row

    def saved(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Every field but the history, walked: (the JSON record, the named arrays).
        An infinite best loss is ``None`` in the record."""
        info: dict[str, Any] = {}
        arrays: dict[str, np.ndarray] = {}
        for f in dataclasses.fields(self):
            value, kept = getattr(self, f.name), f.metadata.get("kept", "info")
            if kept == "info":
                info[f.name] = value
            elif kept == "array" and value is not None:
                arrays[f.name] = np.asarray(value)
            elif kept == "arrays":
                arrays |= {f"{f.name}.{i}": np.asarray(v) for i, v in enumerate(value)}
        if not math.isfinite(self.best_loss):
            info["best_loss"] = None
        return info, arrays

    @classmethod
    def restored(
        cls,
        info: dict[str, Any],
        arrays: dict[str, np.ndarray],
        history: list[dict[str, float]] | None = None,
    ) -> TrainState:
        """The state :meth:`saved` wrote (``history`` from history.csv, or the record's own
        in states of older versions). Fields an older textgen did not save keep their
        defaults; the names of earlier versions are read (``wait``; a history's ``loss``)."""
        renamed = {"wait": "epochs_since_best"}
        info = {renamed.get(k, k): v for k, v in info.items()}
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            kept = f.metadata.get("kept", "info")
            if kept == "array" and f.name in arrays:
                values[f.name] = arrays[f.name]
            elif kept == "arrays":
                count = sum(1 for name in arrays if name.startswith(f"{f.name}."))
                if count:
                    values[f.name] = [arrays[f"{f.name}.{i}"] for i in range(count)]
            elif kept == "history":
                rows = history if history is not None else info.get(f.name)
                if rows is not None:
                    values[f.name] = [_renamed(row) for row in rows]
            elif kept == "info" and f.name in info:
                values[f.name] = info[f.name]
        state = cls(**values)
        if state.best_loss is None:
            state.best_loss = math.inf
        return state

    def to_info(self) -> dict[str, Any]:
        """The record's fields and the history as JSON-ready values (no arrays)."""
        info, _ = self.saved()
        return info | {"history": [dict(row) for row in self.history]}

    @classmethod
    def from_info(cls, info: dict[str, Any]) -> TrainState:
        """The state :meth:`to_info` wrote (the arrays at their defaults)."""
        return cls.restored(info, {})


def _renamed(row: dict[str, float]) -> dict[str, float]:
    """A history row of an older run: its running training loss was called ``loss``."""
    row = dict(row)
    if "loss" in row:
        row["train_loss"] = row.pop("loss")
    return {"check_loss": math.nan} | row
