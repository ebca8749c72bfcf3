"""Where a run stands between two steps: the one list of what ``last.npz`` keeps besides
the model and optimizer variables. It is saved and restored by walking its fields, so a
new field cannot be saved and forgotten on resume (or the other way round)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any


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
    history: list[dict[str, float]] = field(default_factory=list)
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

    def record(self, score: float) -> bool:
        """Judge the epoch that just ended by ``score`` (lower is better): whether it is
        the best so far. Early stopping and reduce-on-plateau count the epochs since."""
        if score < self.best_loss:
            self.best_loss, self.best_epoch, self.epochs_since_best = score, self.epoch, 0
            return True
        self.epochs_since_best += 1
        return False

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

    def to_info(self) -> dict[str, Any]:
        """The fields as JSON-ready values (an infinite best loss is ``None``)."""
        info = dataclasses.asdict(self)
        info["best_loss"] = self.best_loss if math.isfinite(self.best_loss) else None
        return info

    @classmethod
    def from_info(cls, info: dict[str, Any]) -> TrainState:
        """The state :meth:`to_info` wrote; fields an older textgen did not save keep
        their defaults, and its history rows are renamed (``loss`` → ``train_loss``)."""
        known = {f.name for f in dataclasses.fields(cls)}
        renamed = {"wait": "epochs_since_best"}  # the names of earlier versions
        info = {renamed.get(k, k): v for k, v in info.items()}
        state = cls(**{k: v for k, v in info.items() if k in known})
        if state.best_loss is None:
            state.best_loss = math.inf
        state.history = [_renamed(row) for row in state.history]
        return state


def _renamed(row: dict[str, float]) -> dict[str, float]:
    """A history row of an older run: its running training loss was called ``loss``."""
    row = dict(row)
    if "loss" in row:
        row["train_loss"] = row.pop("loss")
    return {"check_loss": math.nan} | row
