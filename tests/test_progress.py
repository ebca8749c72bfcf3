"""Training progress without a terminal: which epochs get a summary line."""

from __future__ import annotations

import math

import pytest

from textgen.training import progress
from textgen.training.progress import Reporter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


ROW = {"train_loss": 2.5, "val_loss": 2.25, "check_loss": math.nan, "tokens_per_s": 9000.0}


def reporter(monkeypatch: pytest.MonkeyPatch, epochs: int) -> tuple[Reporter, Clock, list[str]]:
    clock, lines = Clock(), []
    monkeypatch.setattr(progress.time, "perf_counter", clock)
    rep = Reporter(epochs=epochs, steps=10, tokens_per_epoch=6400, bars=False, log=lines.append)
    return rep, clock, lines


def test_a_short_run_shows_every_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    rep, _, lines = reporter(monkeypatch, epochs=3)
    for epoch in (1, 2, 3):
        rep.epoch_end(epoch, ROW)
    line = "epoch {}/3: train loss 2.5000, val loss 2.2500, 9,000 tok/s"
    assert lines == [line.format(e) for e in (1, 2, 3)]


def test_a_long_cap_shows_fast_epochs_by_tenths_and_slow_ones_each(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a time budget with epochs = 500 as its cap: quick epochs are shown every 50th,
    # but an epoch ending 30 s or more after the last line is always shown
    rep, clock, lines = reporter(monkeypatch, epochs=500)
    for epoch in range(1, 51):  # 25 s in all
        clock.now += 0.5
        rep.epoch_end(epoch, ROW)
    assert [line.split(":")[0] for line in lines] == ["epoch 50/500"]
    clock.now += progress.LOG_SECONDS - 0.5
    rep.epoch_end(51, ROW)
    assert len(lines) == 1
    clock.now += 0.5
    rep.epoch_end(52, ROW)
    clock.now += progress.LOG_SECONDS + 75.0
    rep.epoch_end(53, ROW)
    shown = [line.split(":")[0] for line in lines]
    assert shown == ["epoch 50/500", "epoch 52/500", "epoch 53/500"]
