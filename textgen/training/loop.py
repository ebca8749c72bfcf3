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
import csv
import io
import itertools
import math
import platform
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from textgen import __version__, rundir
from textgen import config as config_mod
from textgen._tf import keras, tensorflow
from textgen.config import Config, TrainConfig
from textgen.corpus.examples import Prepared, prepare
from textgen.errors import DataError, TextgenError, UsageError
from textgen.model.network import (
    build_model,
    count_params,
    init_uniform,
    sync_tied,
    training_forward,
)
from textgen.training import distribute
from textgen.training.batches import prefetched, run_batches, steps_per_epoch
from textgen.training.progress import ByteBar, Reporter
from textgen.training.signals import Interrupted, Signals
from textgen.training.state import TrainState
from textgen.training.steps import Steps

HISTORY_FIELDS = (
    "epoch", "train_loss", "val_loss", "check_loss", "perplexity", "bits_per_token",
    "tokens_per_s", "seconds", "elapsed", "learning_rate",
)  # fmt: skip
# what --set may change on --resume: how long and how fast to go on, never what the saved
# state means (data, model, optimizer kind, seed); batch_size is checked against the position
RESUME_KEYS = frozenset(
    f"train.{key}"
    for key in (
        "epochs", "max_minutes", "patience", "learning_rate", "lr_decay", "lr_decay_after",
        "plateau_factor", "clipnorm", "save_every_steps", "log_every_steps", "jit_compile",
        "distribute", "peer_timeout", "batch_size",
    )
)  # fmt: skip


class PeerLost(TextgenError):
    """Multi-worker training lost a worker; the chief's last saved state is the backup."""


class Diverged(TextgenError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


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


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _history_csv(rows: list[dict[str, float]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=HISTORY_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return buf.getvalue()


def _versions() -> dict[str, str]:
    tf, k = tensorflow(), keras()
    return {
        "textgen": __version__,
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": k.__version__,
        "numpy": np.__version__,
    }


def scheduled_learning_rate(cfg: TrainConfig, epoch: int, plateau_scale: float) -> float:
    """The learning rate of ``epoch`` (from 1): multiplied by ``lr_decay`` once per epoch
    after the first ``lr_decay_after`` epochs, times the reduce-on-plateau factor so far."""
    decays = max(0, epoch - cfg.lr_decay_after) if cfg.lr_decay < 1.0 else 0
    return cfg.learning_rate * cfg.lr_decay**decays * plateau_scale


class _Run:
    """One training run: owns the model, the optimizer and what is written to disk."""

    def __init__(
        self,
        config: Config,
        prepared: Prepared,
        run_dir: Path,
        log: Callable[[str], None],
        strategy: Any = None,
    ):
        tf, k = tensorflow(), keras()
        self.config, self.prepared, self.run_dir, self.log = config, prepared, run_dir, log
        self.strategy, self.chief = strategy, distribute.is_chief(strategy)
        self.global_batch = config.train.batch_size * distribute.replicas(strategy)
        k.utils.set_random_seed(config.train.seed)
        tf.config.experimental.enable_op_determinism()
        mask = config.data.mode == "lines"
        cfg = config.train
        with strategy.scope() if strategy is not None else contextlib.nullcontext():
            self.model = build_model(config.model, len(prepared.tokenizer.vocab), mask_padding=mask)
            if config.model.init_scale > 0:
                init_uniform(self.model, config.model.init_scale, cfg.seed)
            # the step clips the gradient itself (see clip_by_global_norm)
            if cfg.optimizer == "sgd":
                self.optimizer = k.optimizers.SGD(
                    learning_rate=cfg.learning_rate, momentum=cfg.momentum
                )
            else:
                self.optimizer = k.optimizers.Adam(learning_rate=cfg.learning_rate)
            self.optimizer.build(self.model.trainable_variables)
        forward = training_forward(self.model, config.model, mask_padding=mask)
        state_shape = (config.model.layers, config.model.units) if cfg.carry_state else None
        jit = cfg.jit_compile and strategy is None
        self.steps = Steps(
            self.model, self.optimizer, forward, jit, state_shape, strategy, cfg.clipnorm
        )
        self.carry_rows = min(cfg.batch_size, len(prepared.train))  # parallel streams
        self.carry = self.steps.zero_state(self.carry_rows)
        self.state = TrainState(created=datetime.now(UTC).isoformat(timespec="seconds"))
        self.segment_t0: float | None = None  # when the running epoch segment started
        self.writer: Any = None
        self.result = TrainResult(
            run_dir,
            params=count_params(self.model),
            metric="val_loss" if prepared.val is not None else "check_loss",
        )
        self.check_sample = prepared.train[: 4 * config.train.batch_size]  # see fit()

    # -- state ---------------------------------------------------------------------------
    def learning_rate(self) -> float:
        return scheduled_learning_rate(self.config.train, self.state.epoch, self.state.lr_scale)

    def save(self, best: bool = False) -> None:
        """Commit one snapshot (chief only): ``last.npz``, history.csv and, when ``best``,
        the bundle of the current weights.

        The state and the best model it names are one commit, so whatever ``last.npz``
        calls best is on disk with it, whenever the process dies.
        """
        if not self.chief:
            return
        if self.config.model.tie_weights:
            sync_tied(self.model)
        info = self.state.to_info() | {
            "elapsed": self.elapsed_now(),
            "config": self.config.to_toml(),  # resume continues with the config in force
            "global_batch": self.global_batch,
            "corpus_sha256": self.prepared.corpus_sha256,
        }
        with rundir.Commit(self.run_dir) as commit:
            if best:
                rundir.write_bundle(
                    commit, self.model, self.config.to_toml(), self._bundle_metadata()
                )
            commit.write_text(rundir.HISTORY, _history_csv(self.state.history))
            rundir.write_state(
                commit,
                [np.asarray(v) for v in self.model.variables],
                [np.asarray(v) for v in self.optimizer.variables],
                info,
                {"carry": np.asarray(self.carry)},
            )

    def restore_state(self) -> None:
        """Load ``last.npz`` into the model, the optimizer and the loop's position."""
        model_vars, opt_vars, info = rundir.load_state(self.run_dir)
        saved_sha = info.get("corpus_sha256") or (rundir.load_metadata(self.run_dir) or {}).get(
            "corpus_sha256"
        )
        if saved_sha and saved_sha != self.prepared.corpus_sha256:
            raise DataError(
                f"the corpus changed since {self.run_dir} was trained (sha256 differs); "
                "cannot resume"
            )
        for name, mine, theirs in (
            ("model", self.model.variables, model_vars),
            ("optimizer", self.optimizer.variables, opt_vars),
        ):
            if [tuple(v.shape) for v in mine] != [a.shape for a in theirs]:
                raise DataError(f"{self.run_dir / rundir.STATE} does not match this {name}")
            for variable, value in zip(mine, theirs, strict=True):
                variable.assign(value)
        self.state = TrainState.from_info(info)
        saved_batch = info.get("global_batch", self.config.train.batch_size)
        if self.state.step and saved_batch != self.global_batch:
            raise DataError(
                f"{self.run_dir} stopped mid-epoch with a global batch of {saved_batch} rows; "
                f"resume it with the same batch_size x replicas (now {self.global_batch})"
            )
        carry = info.get("arrays", {}).get("carry")
        if carry is not None and carry.shape == np.shape(self.carry):
            self.carry = carry
        # a --set on resume may change the learning rate; the config wins over the saved one
        self.optimizer.learning_rate.assign(self.learning_rate())

    def _bundle_metadata(self) -> dict[str, Any]:
        data, prepared = self.config.data, self.prepared
        return {
            "versions": _versions(),
            "parameters": self.result.params,
            "vocab_size": len(prepared.tokenizer.vocab),
            "corpus": data.corpus,
            "corpus_sha256": prepared.corpus_sha256,
            "train_sequences": len(prepared.train),
            "train_tokens": prepared.train.num_tokens,
            "best_epoch": self.state.best_epoch,
            "best_loss": self.state.best_loss,
            "created": self.state.created,
            "updated": datetime.now(UTC).isoformat(timespec="seconds"),
        }

    # -- the loop ------------------------------------------------------------------------
    def _log_scalars(self, scalars: dict[str, float], step: int) -> None:
        """Write TensorBoard scalars (``tensorboard --logdir runs`` shows them).

        TensorFlow writes the event files itself; the ``tensorboard`` package is needed
        only to view them, so it is not a dependency.
        """
        if not self.chief:
            return
        tf = tensorflow()
        if self.writer is None:
            from tensorflow.core.framework import summary_pb2

            self.writer = tf.summary.create_file_writer(str(self.run_dir / rundir.LOGS))
            plugin = summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
            self.scalar_meta = summary_pb2.SummaryMetadata(plugin_data=plugin)
        with self.writer.as_default():
            for name, value in scalars.items():
                if math.isfinite(value):
                    tf.summary.write(
                        name, tf.constant(value, tf.float32), step=step, metadata=self.scalar_meta
                    )

    def elapsed_now(self) -> float:
        """Training seconds so far, the running epoch included (validation excluded)."""
        running = time.perf_counter() - self.segment_t0 if self.segment_t0 is not None else 0.0
        return self.state.elapsed + running

    def _out_of_time(self) -> bool:
        limit = self.config.train.max_minutes * 60.0
        return bool(limit) and self.elapsed_now() >= limit

    def fit(self, reporter: Reporter, signals: Signals) -> TrainResult:
        cfg, prepared, result = self.config.train, self.prepared, self.result
        tokens = prepared.train.num_tokens
        batch = self.global_batch
        steps = steps_per_epoch(prepared.train, batch, cfg.carry_state)
        patience = cfg.patience if prepared.val is not None else 0
        out_of_time = False
        # one read-ahead pipeline for the whole run, from where it stands
        stream = prefetched(
            partial(
                run_batches, prepared.train, batch, cfg.seed, self.state.epoch, self.state.step,
                cfg.epochs, cfg.carry_state,
            )
        )  # fmt: skip
        while self.state.epoch <= cfg.epochs and not out_of_time:
            reporter.epoch_start(self.state.epoch, self.state.step)
            lr = self.learning_rate()
            self.optimizer.learning_rate.assign(lr)
            t0 = self.segment_t0 = time.perf_counter()
            first_step = self.state.step
            if self.state.step == 0:
                self.state.total = self.state.count = 0.0
                self.carry = self.steps.zero_state(self.carry_rows)
            for step, x, y in itertools.islice(stream, steps - self.state.step):
                self.steps.stop_here = signals.received is not None
                t, c, finite, carry = self._train_step(x, y)
                t, c = float(t), float(c)
                if not (math.isfinite(t) and bool(finite)):
                    what = f"loss became {t}" if not math.isfinite(t) else "weights became NaN/inf"
                    raise Diverged(
                        f"{what} at epoch {self.state.epoch}, step {step}; stopped. The last good "
                        f"checkpoint in {self.run_dir} is kept (try a lower learning_rate)"
                    )
                self.carry = carry.numpy() if cfg.carry_state else self.carry
                self.state.step, self.state.global_step = step, self.state.global_step + 1
                self.state.total, self.state.count = self.state.total + t, self.state.count + c
                reporter.step(step, self.state.total / max(self.state.count, 1.0))
                if cfg.log_every_steps and self.state.global_step % cfg.log_every_steps == 0:
                    self._log_scalars({"step/loss": t / max(c, 1.0)}, self.state.global_step)
                if self._stop_requested(signals):
                    self.interrupt(reporter, signals.received)
                if cfg.save_every_steps and step % cfg.save_every_steps == 0:
                    self.save()
                if self._out_of_time():
                    out_of_time = True
                    break
            seconds = time.perf_counter() - t0
            self.state.elapsed, self.segment_t0 = self.state.elapsed + seconds, None
            loss = self.state.total / self.state.count if self.state.count else math.nan
            val = self.steps.evaluate(prepared.val, cfg.batch_size) if prepared.val else math.nan
            # The running loss was measured before each update, so it cannot judge the weights
            # as they are now. Without validation, a fixed sample of the training set does.
            score = val if prepared.val else self.steps.evaluate(self.check_sample, cfg.batch_size)
            if not math.isfinite(score):
                raise Diverged(
                    f"loss became {score} at the end of epoch {self.state.epoch}; stopped. The "
                    f"last good checkpoint in {self.run_dir} is kept (try a lower learning_rate)"
                )
            done = (self.state.step - first_step) / steps
            if self.state.history and self.state.history[-1]["epoch"] == self.state.epoch:
                # the rest of an epoch a time budget cut short: one row for the whole epoch
                earlier = self.state.history.pop()
                seconds += earlier["seconds"]
                done = self.state.step / steps
            row = {
                "epoch": self.state.epoch,
                "train_loss": loss,
                "val_loss": val,
                "check_loss": score if not prepared.val else math.nan,
                "perplexity": math.exp(min(score, 700.0)),
                "bits_per_token": score / math.log(2),
                "tokens_per_s": tokens * done / seconds,
                "seconds": seconds,
                "elapsed": self.state.elapsed,
                "learning_rate": lr,
            }
            self.state.history.append(row)
            reporter.epoch_end(self.state.epoch, row)
            self._log_scalars(
                {"epoch/loss": loss, "epoch/val_loss": val, "epoch/learning_rate": lr},
                self.state.epoch,
            )
            improved = score < self.state.best_loss
            if improved:
                self.state.best_loss, self.state.best_epoch, self.state.epochs_since_best = (
                    score,
                    self.state.epoch,
                    0,
                )
            else:
                self.state.epochs_since_best += 1
                if cfg.plateau_factor < 1.0:
                    self.state.lr_scale *= cfg.plateau_factor
                    self.log(f"no improvement: learning rate x{cfg.plateau_factor:g}")
            if out_of_time and self.state.step < steps:
                result.out_of_time = True
                self.log(
                    f"time budget of {cfg.max_minutes:g} min reached at epoch {self.state.epoch}, "
                    f"step {self.state.step}/{steps}"
                )
            else:
                self.state.epoch, self.state.step = self.state.epoch + 1, 0
                result.out_of_time = out_of_time
            self.save(best=improved)
            if patience and self.state.epochs_since_best >= patience:
                result.stopped_early = True
                self.log(
                    f"early stop: no improvement for {patience} epochs "
                    f"(best epoch {self.state.best_epoch})"
                )
                break
            if self._stop_requested(signals):
                self.interrupt(reporter, signals.received)
        if self.writer is not None:
            self.writer.flush()
        result.state = self.state
        return result

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
            raise PeerLost(
                f"a peer worker stopped answering at epoch {self.state.epoch}, step "
                f"{self.state.step + 1} ({type(err).__name__}); restart every worker with the "
                f"same command: training continues from {self.run_dir / rundir.STATE}"
            ) from None

    def interrupt(self, reporter: Reporter, signum: int | None) -> None:
        """Save (the chief) and stop with a message that says how to go on."""
        reporter.close()
        self.save()
        name = signal.Signals(signum).name if signum else "another worker was interrupted"
        where = f"training stopped at epoch {self.state.epoch}, step {self.state.step}"
        if self.strategy is None:
            message = (
                f"{name}: {where}; state saved. Resume with: textgen train --resume {self.run_dir}"
            )
        elif self.chief:
            message = (
                f"{name}: {where}; state saved in {self.run_dir}. Restart every worker with "
                "the same command to continue"
            )
        else:
            message = (
                f"{name}: {where}; the chief worker saved the state. Restart every worker "
                "with the same command to continue"
            )
        raise Interrupted(message, exit_code=128 + (signum or signal.SIGINT))


def train(
    config: Config,
    run_dir: str | Path,
    *,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool | None = None,
    log: Callable[[str], None] = _stderr,
) -> TrainResult:
    """Train ``config`` into ``run_dir`` (or continue it with ``resume=True``).

    ``progress=None`` shows tqdm bars only when stderr is a terminal (one summary line per
    epoch is logged otherwise). Deterministic for a given ``train.seed``, also across an
    interruption and resume. Everything is checked (data, model) before the run
    directory is touched; one process at a time holds a run directory.
    """
    run_dir = Path(run_dir)
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
    if (
        config.train.distribute == "multiworker"
        and not resume
        and not overwrite
        and (run_dir / rundir.STATE).is_file()
    ):  # a restarted worker: every worker continues from the chief's backup
        resume = True
        log(f"found the backup {run_dir / rundir.STATE}; continuing from it")
    with ByteBar(config.data.corpus, "tokenizing", enabled=progress) as bar:
        prepared = prepare(
            config.data,
            tokenizer=_saved_tokenizer(run_dir) if resume else None,
            progress=bar.update,
        )  # data errors surface before the run dir is touched
    absolute = {"corpus": str(Path(config.data.corpus).resolve())}
    if config.data.valid_corpus:
        absolute["valid_corpus"] = str(Path(config.data.valid_corpus).resolve())
    config = replace(config, data=replace(config.data, **absolute))
    if prepared.split_lines:
        log(
            f"note: {prepared.split_lines} lines longer than data.max_len were cut "
            "into overlapping pieces"
        )
    run = _Run(config, prepared, run_dir, log, strategy)  # model errors, too
    lock = rundir.RunLock(run_dir) if chief else contextlib.nullcontext()
    with lock:
        if resume:
            run.restore_state()
            if run.state.epoch > config.train.epochs:
                raise UsageError(
                    f"{run_dir} has already trained its {config.train.epochs} epochs; to go on, "
                    f"raise them: textgen train --resume {run_dir} --set "
                    f"train.epochs={config.train.epochs + 10}"
                )
            log(f"resuming {run_dir} at epoch {run.state.epoch}, step {run.state.step}")
        elif chief:
            rundir.prepare_new(run_dir, overwrite)
            with rundir.Commit(run_dir) as commit:
                commit.write_text(rundir.CONFIG, config.to_toml())
                commit.write_text(rundir.TOKENIZER, prepared.tokenizer.to_json())
        result = _fit(run, config, prepared, progress, log)
        if chief and not rundir.set_latest(run_dir):
            log(f"note: {run_dir.resolve().parent / 'latest'} is not a link; left it alone")
    result.chief = chief
    return result


def _fit(
    run: _Run, config: Config, prepared: Prepared, progress: bool, log: Callable[[str], None]
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


def _saved_tokenizer(run_dir: Path) -> Any:
    rundir.load_state(run_dir, info_only=True)  # a clear error when there is no state
    return rundir.run_tokenizer(run_dir)


def resume_config(run_dir: Path, overrides: list[str]) -> Config:
    """The config in force when the run's state was saved, plus ``--set`` overrides.

    An override may change how long and how fast training goes on (:data:`RESUME_KEYS`),
    never what the saved state means: data, model, optimizer kind or seed.
    """
    run_dir = rundir.resolve_run(run_dir)
    _, _, info = rundir.load_state(run_dir, info_only=True)
    source = f"{run_dir / rundir.STATE} (config)"
    saved = config_mod.loads(info["config"], source=source)
    config = saved.with_overrides(overrides)
    old, new = saved.to_dict(), config.to_dict()
    for section, values in new.items():
        for key, value in values.items():
            name = f"{section}.{key}"
            if value != old[section][key] and name not in RESUME_KEYS:
                raise UsageError(
                    f"--set {name} cannot change when resuming: {run_dir} was trained with "
                    f"{name} = {old[section][key]!r}; start a new run (--out) to change it"
                )
    return config
