"""Training progress on stderr: tqdm bars on a terminal, summary lines otherwise.

Kept apart from the training loop so the loop only reports numbers, and nothing below
``train`` knows about tqdm. A corpus with one step per epoch (the toy) gets one bar over
epochs instead of a bar per epoch.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import Any

LOG_SECONDS = 30.0  # without bars, an epoch ending this long after the last line is shown


class Reporter:
    """Shows per-step and per-epoch progress of one training run."""

    def __init__(
        self,
        *,
        epochs: int,
        steps: int,
        tokens_per_epoch: int,
        bars: bool,
        log: Callable[[str], None],
    ) -> None:
        self.epochs, self.steps, self.tokens = epochs, steps, tokens_per_epoch
        self.bars, self.log = bars, log
        self.per_epoch_bars = steps > 1
        # without bars: every epoch up to 20, else every tenth of them, and any epoch that
        # ends LOG_SECONDS or more after the last line (a time budget's large epoch cap
        # would otherwise leave an hour's run without a line)
        self.log_every = 1 if epochs <= 20 else math.ceil(epochs / 10)
        self.logged_at = time.perf_counter()
        self.bar: Any = None
        self.t0 = time.perf_counter()
        if bars and not self.per_epoch_bars:
            self.bar = self._tqdm(total=epochs, desc="training", unit="epoch")

    @staticmethod
    def _tqdm(**kwargs: Any) -> Any:
        from tqdm.auto import tqdm

        return tqdm(file=sys.stderr, dynamic_ncols=True, **kwargs)

    def epoch_start(self, epoch: int, first_step: int) -> None:
        """``epoch`` counts from 1; ``first_step`` > 0 when resuming mid-epoch."""
        self.t0 = time.perf_counter()
        self.first_step = first_step
        if self.bars and self.per_epoch_bars:
            self.bar = self._tqdm(
                total=self.steps,
                initial=first_step,
                desc=f"epoch {epoch}/{self.epochs}",
                unit="step",
            )

    def step(self, step: int, loss: float) -> None:
        """``step`` is the number of steps done in this epoch."""
        if self.bar is None or not self.per_epoch_bars:
            return
        self.bar.update(step - self.bar.n)
        done = (step - self.first_step) / self.steps * self.tokens
        rate = done / max(time.perf_counter() - self.t0, 1e-9)
        self.bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{rate:,.0f}", refresh=False)

    def epoch_end(self, epoch: int, row: dict[str, float]) -> None:
        summary = f"train loss {row['train_loss']:.4f}"
        if not math.isnan(row["val_loss"]):
            summary += f", val loss {row['val_loss']:.4f}"
        elif not math.isnan(row.get("check_loss", math.nan)):
            summary += f", check loss {row['check_loss']:.4f}"
        summary += f", {row['tokens_per_s']:,.0f} tok/s"
        if self.bar is not None:
            if not self.per_epoch_bars:
                self.bar.update(1)
            self.bar.set_postfix_str(summary, refresh=False)
            if self.per_epoch_bars:
                self.close()
        elif (
            epoch % self.log_every == 0
            or epoch == self.epochs
            or time.perf_counter() - self.logged_at >= LOG_SECONDS
        ):
            self.log(f"epoch {epoch}/{self.epochs}: {summary}")
            self.logged_at = time.perf_counter()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class ByteBar:
    """A tqdm bar over the bytes of a file being read (when ``enabled``); ``update(n)``
    is the callback the streaming tokenizer calls. The bar opens at the first bytes read,
    so a corpus found in the cache shows none."""

    def __init__(self, path: object, desc: str, *, enabled: bool) -> None:
        import os

        self.enabled, self.desc = enabled, desc
        try:
            self.total = os.path.getsize(str(path)) if enabled else 0
        except OSError:
            self.total = 0
        self.bar: Any = None

    def update(self, n: int) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            self.bar = Reporter._tqdm(
                total=self.total, desc=self.desc, unit="B", unit_scale=True, unit_divisor=1024
            )
        self.bar.update(n)

    def __enter__(self) -> ByteBar:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()
