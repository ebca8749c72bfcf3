"""What a training run reports back: a history row per epoch, the result at the end, or
the error that stopped it.

The loop (:mod:`textgen.training.loop`) decides when; this module says what each report
holds and how each error reads, so that the loop's body stays the order of the work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from textgen import rundir
from textgen.errors import TextgenError
from textgen.training.state import TrainState


class PeerLost(TextgenError):
    """Multi-worker training lost a worker; the chief's last saved state is the backup."""

    @classmethod
    def at(cls, epoch: int, step: int, error: str, run_dir: Path) -> PeerLost:
        """The error for a peer lost during ``step`` of ``epoch`` (``error``: its kind)."""
        return cls(
            f"a peer worker stopped answering at epoch {epoch}, step {step} ({error}); "
            "restart every worker with the same command: training continues from "
            f"{run_dir / rundir.STATE}"
        )


class Diverged(TextgenError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""

    @classmethod
    def at(cls, what: str, where: str, run_dir: Path) -> Diverged:
        """The error for ``what`` went wrong (``loss became nan``) ``where`` (``at epoch 2,
        step 7``), which says that the last good checkpoint is kept."""
        return cls(
            f"{what} {where}; stopped. The last good checkpoint in {run_dir} is kept "
            "(try a lower learning_rate)"
        )


@dataclass
class TrainResult:
    """What a finished run reports back."""

    run_dir: Path
    state: TrainState = field(default_factory=TrainState)  # history and best epoch, as saved
    stopped_early: bool = False
    out_of_time: bool = False  # stopped by train.max_minutes
    params: int = 0
    # what "best" is judged by: val_loss, or without validation check_loss (the loss on a
    # fixed sample of the training set after the epoch)
    metric: str = "check_loss"
    chief: bool = True  # False on the workers of a multi-worker run that write nothing

    @property
    def history(self) -> list[dict[str, float]]:
        return self.state.history

    @property
    def best_epoch(self) -> int:
        return self.state.best_epoch

    @property
    def best_loss(self) -> float:
        return self.state.best_loss


def epoch_row(
    state: TrainState, lr: float, seconds: float, val: float, score: float, run_dir: Path
) -> dict[str, float]:
    """The history row of the epoch ``state`` stands at, before
    :meth:`~textgen.training.state.TrainState.add_epoch_row` adds its throughput.

    ``val`` is the validation loss (NaN without validation) and ``score`` what "best" is
    judged by: ``val``, or without validation the loss on the fixed check sample. A score
    that is not finite raises :class:`Diverged`.
    """
    if not math.isfinite(score):
        raise Diverged.at(f"loss became {score}", f"at the end of epoch {state.epoch}", run_dir)
    validated = not math.isnan(val)
    return {
        "epoch": state.epoch,
        "train_loss": state.total / state.count if state.count else math.nan,
        "val_loss": val,
        "check_loss": score if not validated else math.nan,
        "perplexity": math.exp(min(score, 700.0)),
        "bits_per_token": score / math.log(2),
        "tokens_per_s": math.nan,  # the state adds it (see add_epoch_row)
        "seconds": seconds,
        "elapsed": state.elapsed,
        "learning_rate": lr,
    }
