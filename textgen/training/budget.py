"""The time budget of a run (``train.max_minutes``) and the learning rate assigned under it.

Training time is counted in segments: a segment is the steps of one epoch in one process,
so validation and the save at an epoch's end are left out, and a resumed run goes on from
the seconds its state saved. Each epoch starts at the schedule's learning rate
(:func:`~textgen.training.optimizer.scheduled_learning_rate`); with ``train.anneal =
"budget"`` the rate then follows the cosine of the budget spent, assigned to the
optimizer only when it moved by more than 0.1%.

:class:`TimeBudget` is a part of :class:`textgen.training.loop.Trainer` (which inherits
it), kept here so that the loop reads as the order of the work, not the clock keeping.
"""

from __future__ import annotations

import time
from typing import Any

from textgen.config import Config
from textgen.training.optimizer import budget_factor, scheduled_learning_rate
from textgen.training.state import TrainState


class TimeBudget:
    """The clock and the learning rate of a :class:`~textgen.training.loop.Trainer`."""

    config: Config
    state: TrainState
    optimizer: Any
    segment_t0: float | None  # when the running epoch segment started (None: none runs)
    epoch_lr: float  # the running epoch's scheduled learning rate: train.anneal's start
    assigned_lr: float  # the learning rate the optimizer holds

    def learning_rate(self) -> float:
        """The scheduled learning rate of the epoch the state stands at."""
        return scheduled_learning_rate(self.config.train, self.state.epoch, self.state.lr_scale)

    def start_epoch_lr(self) -> None:
        """Assign the running epoch's scheduled learning rate (annealed with
        ``train.anneal = "budget"``). The history records ``assigned_lr`` at the epoch's
        end: the scheduled rate without annealing, the cosine's value with it."""
        lr = self.learning_rate()
        self.optimizer.learning_rate.assign(lr)
        self.assigned_lr = self.epoch_lr = lr
        if self.config.train.anneal == "budget":
            self.anneal()

    def start_segment(self) -> None:
        """The steps of an epoch begin: the clock runs."""
        self.segment_t0 = time.perf_counter()

    def close_segment(self) -> float:
        """The steps of an epoch ended: add their seconds to the state's and return them."""
        seconds = time.perf_counter() - (self.segment_t0 or 0.0)
        self.state.elapsed, self.segment_t0 = self.state.elapsed + seconds, None
        return seconds

    def elapsed_now(self) -> float:
        """Training seconds so far, the running epoch included (validation excluded)."""
        running = time.perf_counter() - self.segment_t0 if self.segment_t0 is not None else 0.0
        return self.state.elapsed + running

    def anneal(self) -> None:
        """``train.anneal = "budget"``: the epoch's learning rate times the cosine of the
        time budget spent (assigned when it moved by more than 0.1%)."""
        limit = self.config.train.max_minutes * 60.0
        lr = self.epoch_lr * budget_factor(self.elapsed_now(), limit)
        if abs(lr - self.assigned_lr) > 1e-3 * self.epoch_lr:
            self.optimizer.learning_rate.assign(lr)
            self.assigned_lr = lr

    def out_of_time(self) -> bool:
        """Whether the time budget (``train.max_minutes``; 0: none) is spent."""
        limit = self.config.train.max_minutes * 60.0
        return bool(limit) and self.elapsed_now() >= limit
