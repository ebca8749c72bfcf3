"""Train a language model from a config and write its run directory.

Teacher forcing: the model sees ``tokens[:-1]`` and is scored on ``tokens[1:]`` at every
position at once. This is the same objective as the tutorial's prefix expansion (one
example per prefix, scored on its last token) at O(L) instead of O(L²) cost per line.

The loop is our own (a ``tf.function`` step over numpy batches) rather than ``fit``, so
that every piece of state is explicit and can be saved and restored exactly: the batch
order of epoch ``e`` is a permutation drawn from ``(seed, e)``, so a run resumed at
(epoch, step) sees the same batches as one that never stopped. Ctrl-C or SIGTERM saves
the resumable state after the current step; a NaN loss stops before anything is saved.

Progress goes to stderr; nothing here prints to stdout, so the CLI's stdout stays clean.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from textgen import rundir
from textgen._tf import keras, tensorflow
from textgen.config import Config
from textgen.corpus.examples import Prepared
from textgen.errors import DataError, UsageError
from textgen.model.network import (
    build_model,
    count_params,
    init_uniform,
    set_weight_arrays,
    training_forward,
)
from textgen.model.precision import precision_notice, step_jit
from textgen.training import distribute
from textgen.training.averaging import Averager, nonmono_triggered
from textgen.training.batches import prefetched, run_batches, steps_per_epoch
from textgen.training.budget import TimeBudget
from textgen.training.checkpoint import Checkpoint, saved_tokenizer
from textgen.training.finetune import Start
from textgen.training.optimizer import make_optimizer
from textgen.training.outcome import Diverged, PeerLost, TrainResult, epoch_row
from textgen.training.preflight import (
    check_corpus_is_there,
    check_every_file,
    check_fits,
    check_not_finished,
    read_corpus,  # bench/end_to_end.py patches it here
    restarted_worker,
)
from textgen.training.progress import Reporter
from textgen.training.scalars import Scalars
from textgen.training.signals import Signals, interrupted
from textgen.training.state import TrainState
from textgen.training.steps import Steps


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Trainer(TimeBudget):
    """One training run: the model, the optimizer, the loop over epochs and steps.

    What reaches the disk goes through :class:`~textgen.training.checkpoint.Checkpoint`
    (chief only); TensorBoard scalars through :class:`~textgen.training.scalars.Scalars`;
    the clock and the learning rate it assigns are :class:`~textgen.training.budget.TimeBudget`'s.
    """

    def __init__(
        self,
        config: Config,
        prepared: Prepared,
        run_dir: Path,
        log: Callable[[str], None],
        strategy: Any = None,
        start: Start | None = None,
    ):
        tf, k = tensorflow(), keras()
        cfg = config.train
        self.config, self.prepared, self.run_dir, self.log = config, prepared, run_dir, log
        self.strategy, self.chief = strategy, distribute.is_chief(strategy)
        self.global_batch = cfg.batch_size * distribute.replicas(strategy)
        k.utils.set_random_seed(cfg.seed)
        tf.config.experimental.enable_op_determinism()
        mask = config.data.mode == "lines"
        check_fits(config, len(prepared.tokenizer.vocab))
        with strategy.scope() if strategy is not None else contextlib.nullcontext():
            self.model = build_model(config.model, len(prepared.tokenizer.vocab), mask_padding=mask)
            if config.model.init_scale > 0:
                init_uniform(self.model, config.model.init_scale, cfg.seed)
            if start is not None:  # fine-tuning: the parent's (possibly grown) weights
                set_weight_arrays(self.model, start.arrays)
            self.optimizer = make_optimizer(cfg, self.model.trainable_variables)
        forward = training_forward(
            self.model, config.model, mask_padding=mask, precision=cfg.precision
        )
        state_shape = (config.model.layers, config.model.units) if cfg.carry_state else None
        jit = step_jit(cfg.precision, cfg.jit_compile) and strategy is None
        notice = precision_notice(cfg.precision)
        if notice:
            log(notice)
        self.steps = Steps(
            self.model, self.optimizer, forward, jit, state_shape, strategy, cfg.clipnorm,
            cfg.ar, cfg.tar, precision=cfg.precision, width=prepared.train.width,
        )  # fmt: skip
        self.averager = Averager(self.model.trainable_variables, jit)  # NT-ASGD
        self.carry_rows = min(cfg.batch_size, len(prepared.train))  # parallel streams
        self.segment_t0: float | None = None  # when the running epoch segment started
        self.epoch_lr = self.assigned_lr = cfg.learning_rate  # train.anneal's starting point
        params = count_params(self.model)
        self.checkpoint = Checkpoint(run_dir, config, prepared, self.global_batch, params)
        self.state = self.checkpoint.identified(
            TrainState(
                created=datetime.now(UTC).isoformat(timespec="seconds"),
                run_id=uuid.uuid4().hex,
                parent=dict(start.parent) if start is not None else {},
                carry=self.steps.zero_state(self.carry_rows),
            )
        )
        self.scalars = Scalars(run_dir / rundir.LOGS, enabled=self.chief)
        self.result = TrainResult(
            run_dir,
            params=params,
            metric="val_loss" if prepared.val is not None else "check_loss",
        )

    # -- state ---------------------------------------------------------------------------
    @property
    def carry(self) -> np.ndarray:
        """The recurrent state the next step starts from (a placeholder without carry)."""
        return self.state.carry

    @carry.setter
    def carry(self, value: np.ndarray) -> None:
        self.state.carry = value

    def save(self, best: bool = False) -> None:
        """Commit one snapshot (chief only): the state, the history and, when ``best``,
        the bundle of the current weights."""
        if self.chief:
            state = replace(
                self.state,
                elapsed=self.elapsed_now(),  # the running epoch too
                asgd_average=self.averager.arrays(),
            )
            self.checkpoint.save(
                self.model, self.optimizer, state, best=best, averaged=self.averager.swapped
            )
            self.record_logs()

    def record_logs(self) -> None:
        """Record the TensorBoard files written so far (they are not in the snapshots)."""
        files = self.scalars.files()
        if self.chief and files:
            rundir.record_written(self.run_dir, files, grows=True)

    def restore_state(self) -> None:
        """Load ``last.npz`` into the model, the optimizer and the loop's position."""
        zero = self.steps.zero_state(self.carry_rows)
        self.state = self.checkpoint.identified(self.checkpoint.restore(self.model, self.optimizer))
        if self.state.carry is None or np.shape(self.state.carry) != zero.shape:
            self.carry = zero  # a state saved without it, or with other streams
        if self.state.averaging:
            self.averager.start(self.state.asgd_average)
        # a --set on resume may change the learning rate; the config wins over the saved one
        self.optimizer.learning_rate.assign(self.learning_rate())

    def check_sample(self) -> Any:
        """Without validation, "best" is judged on this fixed sample of the training set:
        its size is set when the run starts and kept over resumes."""
        if not self.state.check_rows:
            self.state.check_rows = 4 * self.config.train.batch_size
        return self.prepared.train[: self.state.check_rows]

    # -- the loop ------------------------------------------------------------------------
    def fit(self, reporter: Reporter, signals: Signals) -> TrainResult:
        """Train epoch after epoch from where the state stands; save after each."""
        cfg, state = self.config.train, self.state
        steps = steps_per_epoch(self.prepared.train, self.global_batch, cfg.carry_state)
        patience = cfg.patience if self.prepared.val is not None else 0
        # one read-ahead pipeline for the whole run, from where it stands
        stream = prefetched(
            partial(
                run_batches, self.prepared.train, self.global_batch, cfg.seed, state.epoch,
                state.step, cfg.epochs, cfg.carry_state,
            )
        )  # fmt: skip
        out_of_time = False
        while state.epoch <= cfg.epochs and not out_of_time:
            reporter.epoch_start(state.epoch, state.step)
            self.start_epoch_lr()
            first_step = state.step
            out_of_time = self._train_steps(stream, steps, reporter, signals)
            lr = self.assigned_lr  # the rate at the epoch's end (train.anneal moves it)
            row = self._end_epoch(lr, first_step, steps)
            reporter.epoch_end(state.epoch, row)
            self.scalars.write(
                {"epoch/loss": row["train_loss"], "epoch/val_loss": row["val_loss"],
                 "epoch/learning_rate": lr},
                state.epoch,
            )  # fmt: skip
            score = row["val_loss"] if self.prepared.val else row["check_loss"]
            improved = state.record(score)
            self._maybe_average(score, out_of_time and state.step < steps)
            if not improved and cfg.plateau_factor < 1.0:
                state.lr_scale *= cfg.plateau_factor
                self.log(f"no improvement: learning rate x{cfg.plateau_factor:g}")
            self._next_position(out_of_time, steps)
            self.save(best=improved)
            if patience and state.epochs_since_best >= patience:
                self.result.stopped_early = True
                self.log(
                    f"early stop: no improvement for {patience} epochs "
                    f"(best epoch {state.best_epoch})"
                )
                break
            if self._stop_requested(signals):
                self.interrupt(reporter, signals.received)
        self.record_logs()
        self.result.state = state
        return self.result

    def _maybe_average(self, score: float, cut: bool) -> None:
        """NT-ASGD: switch to averaging when this check is worse than the best of those
        before the last ``train.asgd_nonmono`` ones (not at an epoch a time budget cut)."""
        cfg, state = self.config.train, self.state
        if not cfg.asgd_nonmono or state.averaging or cut:
            return
        key = "val_loss" if self.prepared.val else "check_loss"
        previous = [row[key] for row in state.history[:-1]]
        if nonmono_triggered(previous, score, cfg.asgd_nonmono):
            state.asgd_start = state.global_step
            self.averager.start()
            self.log(
                f"NT-ASGD: no improvement on the best before the last {cfg.asgd_nonmono} "
                f"checks; averaging the weights from step {state.global_step + 1} on"
            )

    def _train_steps(
        self, stream: Iterator, steps: int, reporter: Reporter, signals: Signals
    ) -> bool:
        """The steps of the running epoch, from where it stands; True when the time
        budget (``train.max_minutes``) ran out before its end."""
        cfg, state = self.config.train, self.state
        self.start_segment()
        if state.step == 0:
            state.total = state.count = 0.0
            self.carry = self.steps.zero_state(self.carry_rows)
        for step, x, y in itertools.islice(stream, steps - state.step):
            self.steps.stop_here = signals.received is not None
            loss_sum, tokens, finite, carry = self._train_step(x, y)
            loss_sum, tokens = float(loss_sum), float(tokens)
            if not (math.isfinite(loss_sum) and bool(finite)):
                what = (
                    f"loss became {loss_sum}" if not math.isfinite(loss_sum)
                    else "weights became NaN/inf"
                )  # fmt: skip
                raise Diverged.at(what, f"at epoch {state.epoch}, step {step}", self.run_dir)
            self.carry = carry.numpy() if cfg.carry_state else self.carry
            state.step, state.global_step = step, state.global_step + 1
            if state.averaging:
                self.averager.update(state.global_step - state.asgd_start)
            if cfg.anneal == "budget":
                self.anneal()
            state.total, state.count = state.total + loss_sum, state.count + tokens
            reporter.step(step, state.total / max(state.count, 1.0))
            if cfg.log_every_steps and state.global_step % cfg.log_every_steps == 0:
                self.scalars.write({"step/loss": loss_sum / max(tokens, 1.0)}, state.global_step)
            if self._stop_requested(signals):
                self.interrupt(reporter, signals.received)
            if cfg.save_every_steps and step % cfg.save_every_steps == 0:
                self.save()
            if self.out_of_time():
                return True
        return False

    def _end_epoch(self, lr: float, first_step: int, steps: int) -> dict[str, float]:
        """Close the running epoch segment, measure the weights as they are now, and add
        the epoch's row to the history (one row per epoch, also when a time budget split
        it over two processes)."""
        state, prepared, batch_size = self.state, self.prepared, self.config.train.batch_size
        seconds = self.close_segment()
        with self.averager.swapped():  # NT-ASGD: the averaged weights are the model's
            val = self.steps.evaluate(prepared.val, batch_size) if prepared.val else math.nan
            # The running loss was measured before each update, so it cannot judge the
            # weights as they are now. Without validation, a fixed sample of the training
            # set does.
            score = val if prepared.val else self.steps.evaluate(self.check_sample(), batch_size)
        row = epoch_row(state, lr, seconds, val, score, self.run_dir)
        tokens = prepared.train.num_tokens
        return state.add_epoch_row(row, tokens, state.step - first_step, steps)

    def _next_position(self, out_of_time: bool, steps: int) -> None:
        """Move to the next epoch, or stay mid-epoch when the time budget cut this one."""
        state = self.state
        if out_of_time and state.step < steps:
            self.result.out_of_time = True
            self.log(
                f"time budget of {self.config.train.max_minutes:g} min reached at epoch "
                f"{state.epoch}, step {state.step}/{steps}"
            )
        else:
            state.epoch, state.step = state.epoch + 1, 0
            self.result.out_of_time = out_of_time

    def _stop_requested(self, signals: Signals) -> bool:
        """Stop now? Alone: when signalled. With workers: when any of them was signalled
        before the last step (so that every worker stops after the same step)."""
        if self.strategy is None:
            return signals.received is not None
        return self.steps.stop_all

    def _train_step(self, x: np.ndarray, y: np.ndarray) -> tuple[Any, Any, Any, Any]:
        """One optimizer step; with a strategy, a lost peer becomes a clear error."""
        if self.strategy is None:
            return self.steps.train_step(x, y, self.carry)
        tf = tensorflow()
        try:
            return self.steps.train_step(x, y, self.carry)
        except (tf.errors.DeadlineExceededError, tf.errors.UnavailableError) as err:
            where = self.state.epoch, self.state.step + 1
            raise PeerLost.at(*where, type(err).__name__, self.run_dir) from None

    def interrupt(self, reporter: Reporter, signum: int | None) -> None:
        """Save (the chief) and stop with a message that says how to go on."""
        reporter.close()
        self.save()
        where = f"training stopped at epoch {self.state.epoch}, step {self.state.step}"
        role = "alone" if self.strategy is None else "chief" if self.chief else "worker"
        raise interrupted(signum, where, self.run_dir, role)


def train(
    config: Config,
    run_dir: str | Path,
    *,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool | None = None,
    log: Callable[[str], None] = _stderr,
    start: Start | None = None,
) -> TrainResult:
    """Train ``config`` into ``run_dir`` (or continue it with ``resume=True``).

    ``start`` (:func:`textgen.training.finetune.start_from`) begins a new run from given
    weights and tokenizer instead of fresh ones: fine-tuning. The optimizer starts fresh.

    ``progress=None`` shows tqdm bars only when stderr is a terminal (one summary line per
    epoch is logged otherwise). Deterministic for a given ``train.seed``, also across an
    interruption and resume. Everything is checked (data, model) before the run
    directory is touched; one process at a time holds a run directory.
    """
    run_dir = Path(run_dir)
    if resume and start is not None:
        raise UsageError("--init-from starts a new run; --resume continues one: give one of them")
    if resume:  # a missing run is an error; --resume runs/latest continues the run it names
        run_dir = rundir.resolve_run(run_dir)
    else:
        rundir.check_out(run_dir)
    if progress is None:
        progress = sys.stderr.isatty()
    # a multi-worker strategy must exist before TensorFlow runs anything else
    strategy = distribute.make_strategy(config.train.distribute, config.train.peer_timeout)
    chief = distribute.is_chief(strategy)
    if strategy is not None:
        log(f"distributed training: {distribute.describe(strategy)}")
    if restarted_worker(config, run_dir, resume or overwrite):
        resume = True
        log(f"found the backup {run_dir / rundir.STATE}; continuing from it")
    if resume:
        rundir.check_links(run_dir)
        check_corpus_is_there(config, run_dir)
    given = saved_tokenizer(run_dir) if resume else start.tokenizer if start else None
    config, prepared = read_corpus(config, given, progress, log)
    run = Trainer(config, prepared, run_dir, log, strategy, start)  # model errors, too
    lock = rundir.RunLock(run_dir) if chief else contextlib.nullcontext()
    with lock:
        if resume:
            _restore(run, log)
        elif chief:
            rundir.prepare_new(run_dir, overwrite)
            with rundir.Commit(run_dir) as commit:
                commit.write_text(rundir.CONFIG, config.to_toml())
                commit.write_text(rundir.TOKENIZER, prepared.tokenizer.to_json())
        if chief and not rundir.set_latest(run_dir):  # from the run's first commit on
            log(f"note: {rundir.latest_link(run_dir)} is not a link; left it alone")
        result = _fit(run, config, prepared, progress, log)
    result.chief = chief
    return result


def _restore(run: Trainer, log: Callable[[str], None]) -> None:
    """Put the saved state back into ``run``; a finished run says how to go on."""
    rundir.read_run(run.run_dir, check_every_file)  # a damaged file is not carried on
    run.restore_state()
    check_not_finished(run.run_dir, run.state.epoch, run.config.train.epochs)
    log(f"resuming {run.run_dir} at epoch {run.state.epoch}, step {run.state.step}")


def _fit(
    run: Trainer, config: Config, prepared: Prepared, progress: bool, log: Callable[[str], None]
) -> TrainResult:
    """Run the loop with progress and signal handling; write errors become one line."""
    reporter = Reporter(
        epochs=config.train.epochs,
        steps=steps_per_epoch(prepared.train, run.global_batch, config.train.carry_state),
        tokens_per_epoch=prepared.train.num_tokens,
        bars=progress,
        log=log,
    )
    try:
        with Signals() as signals:
            return run.fit(reporter, signals)
    except OSError as err:
        raise DataError(
            f"could not write to {run.run_dir}: {err.strerror or err}; "
            "the previous checkpoint is intact"
        ) from None
    finally:
        reporter.close()
