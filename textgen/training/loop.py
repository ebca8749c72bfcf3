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
import os
import platform
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
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
from textgen.corpus.examples import Examples, Prepared, prepare
from textgen.errors import DataError, TextgenError, UsageError
from textgen.model.network import (
    build_model,
    count_params,
    init_uniform,
    sync_tied,
    training_forward,
)
from textgen.training import distribute
from textgen.training.progress import ByteBar, Reporter

HISTORY_FIELDS = (
    "epoch", "train_loss", "val_loss", "check_loss", "perplexity", "bits_per_token",
    "tokens_per_s", "seconds", "elapsed", "learning_rate",
)  # fmt: skip
LOGS = "logs"  # TensorBoard event files, under the run directory
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


class Interrupted(TextgenError):
    """Training stopped by a signal after saving its resumable state."""

    def __init__(self, message: str, exit_code: int = 130) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class PeerLost(TextgenError):
    """Multi-worker training lost a worker; the chief's last saved state is the backup."""


class Diverged(TextgenError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainResult:
    """What a finished run reports back."""

    run_dir: Path
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_loss: float = math.inf
    stopped_early: bool = False
    out_of_time: bool = False  # stopped by train.max_minutes
    params: int = 0
    # what "best" is judged by: val_loss, or without validation check_loss (the loss on a
    # fixed sample of the training set after the epoch)
    metric: str = "check_loss"
    chief: bool = True  # False on the workers of a multi-worker run that write nothing


def _renamed(row: dict[str, float]) -> dict[str, float]:
    """A history row of an older run: its running training loss was called ``loss``."""
    row = dict(row)
    if "loss" in row:
        row["train_loss"] = row.pop("loss")
    return {"check_loss": math.nan} | row


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


def _check_out(run_dir: Path) -> None:
    """Refuse an ``--out`` that cannot be a run directory, before anything is written."""
    if run_dir.name == "latest" or (run_dir.is_symlink() and not run_dir.is_dir()):
        raise UsageError(
            f"--out {run_dir}: 'latest' is the link to the most recent run; choose another name"
        )
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"--out {run_dir} exists and is not a folder")


def _prepare_run_dir(run_dir: Path, overwrite: bool) -> None:
    """Make ``run_dir`` an empty run (the caller holds its lock).

    ``--overwrite`` deletes only what textgen wrote, and only in a folder that holds a run;
    anything else in the folder refuses the whole overwrite, naming it.
    """
    entries = [p.name for p in run_dir.iterdir() if p.name != rundir.LOCK]
    if not entries:
        return
    if not overwrite:
        raise UsageError(
            f"run directory {run_dir} already exists; pass --overwrite to replace it, "
            f"--resume {run_dir} to continue it, or --out to choose another"
        )
    if not rundir.is_run(run_dir):
        raise UsageError(
            f"{run_dir} is not empty and is not a textgen run directory; "
            "refusing to delete it with --overwrite"
        )
    foreign = rundir.foreign_entries(run_dir)
    if foreign:
        shown = ", ".join(foreign[:3]) + (
            f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        )
        raise UsageError(
            f"{run_dir} holds {shown}, which textgen did not write; refusing to delete it "
            "with --overwrite (move them away or choose another --out)"
        )
    rundir.clear_run(run_dir)


class _Signals:
    """Turns the first SIGINT/SIGTERM into a flag checked after each step.

    A second signal exits at once: every file is written by atomic rename, so stopping
    anywhere leaves the last good files in place.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._saved: dict[int, Any] = {}

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.received is not None:
            os._exit(128 + signum)
        self.received = signum
        _stderr("stopping after this step (press Ctrl-C again to quit at once)")

    def __enter__(self) -> _Signals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._saved[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)


def scheduled_learning_rate(cfg: TrainConfig, epoch: int, plateau_scale: float) -> float:
    """The learning rate of ``epoch`` (from 1): multiplied by ``lr_decay`` once per epoch
    after the first ``lr_decay_after`` epochs, times the reduce-on-plateau factor so far."""
    decays = max(0, epoch - cfg.lr_decay_after) if cfg.lr_decay < 1.0 else 0
    return cfg.learning_rate * cfg.lr_decay**decays * plateau_scale


def steps_per_epoch(examples: Examples, batch_size: int, carry_state: bool) -> int:
    """Batches per epoch: all examples, or whole rounds of the parallel streams (carry)."""
    if carry_state:
        return len(examples) // min(batch_size, len(examples))
    return math.ceil(len(examples) / batch_size)


def _batches(
    examples: Examples, batch_size: int, seed: int, epoch: int, start: int, carry: bool = False
) -> Iterator:
    """Batches of epoch ``epoch`` (from 1) from step ``start``.

    Shuffled: a permutation fixed by ``(seed, epoch)``. Carried state (truncated BPTT):
    the consecutive windows form ``batch_size`` parallel streams, row ``b`` of batch ``i``
    is window ``i`` of stream ``b``, so each batch continues the one before; the windows
    left over when the count does not divide are not used.
    """
    steps = steps_per_epoch(examples, batch_size, carry)
    if carry:
        rows = min(batch_size, len(examples))
        for step in range(start, steps):
            yield step + 1, *examples.rows(np.arange(rows) * steps + step)
        return
    order = np.random.default_rng([seed, epoch]).permutation(len(examples))
    for step in range(start, steps):
        yield step + 1, *examples.rows(np.sort(order[step * batch_size : (step + 1) * batch_size]))


def _run_batches(
    examples: Examples,
    batch_size: int,
    seed: int,
    epoch: int,
    step: int,
    epochs: int,
    carry: bool,
) -> Iterator:
    """The batches of epochs ``epoch``..``epochs``, the first from ``step`` (a resume)."""
    for e in range(epoch, epochs + 1):
        yield from _batches(examples, batch_size, seed, e, step if e == epoch else 0, carry)


def _prefetched(batches: Callable[[], Iterator]) -> Iterator:
    """The batches of ``batches()`` through a ``tf.data`` pipeline that reads ahead.

    The rows of the next batches are read (from the id file, for a stream corpus) in
    tf.data's background thread while the current step runs; the order and content are
    exactly those of ``batches()``, so resuming at a step still sees the same batches.
    """
    tf = tensorflow()
    ids = tf.TensorSpec([None, None], tf.int32)
    spec = (tf.TensorSpec([], tf.int64), ids, ids)
    dataset = tf.data.Dataset.from_generator(batches, output_signature=spec).prefetch(2)
    for step, x, y in dataset:
        yield int(step), x, y


def clip_by_global_norm(grads: list[Any], clipnorm: float) -> list[Any]:
    """Scale ``grads`` so that their global L2 norm is at most ``clipnorm``.

    The embedding's gradient arrives as ``IndexedSlices``, one row per token of the batch,
    so a token that occurs twice has two rows. Keras' ``global_clipnorm`` squares those
    rows as they come, which is not the norm of the gradient (the test of one clipped
    step measured 0.99987 of the intended update). Made dense first, the rows of a token
    are summed, and the norm is the gradient's; Keras' clipping made them dense too.
    """
    tf = tensorflow()
    dense = [tf.convert_to_tensor(g) for g in grads]
    clipped, _ = tf.clip_by_global_norm(dense, clipnorm)
    return clipped


class _Steps:
    """The compiled training and evaluation steps for one model and optimizer.

    With a carried state every step takes the state ``(layers, 2, batch, units)`` the
    previous batch left and returns the new one; otherwise each batch starts from zeros.
    """

    def __init__(
        self,
        model: Any,
        optimizer: Any,
        forward: Any,
        jit: bool,
        state_shape: tuple | None,
        strategy: Any = None,
        clipnorm: float = 0.0,
    ) -> None:
        tf = tensorflow()
        spec = tf.TensorSpec([None, None], tf.int32)
        self.model, self.optimizer, self.state_shape = model, optimizer, state_shape
        carry = state_shape is not None
        state_spec = tf.TensorSpec([state_shape[0], 2, None, state_shape[1]] if carry else [])

        def token_loss(x: Any, y: Any, state: Any, training: bool) -> tuple[Any, Any, Any]:
            layers = [(state[i, 0], state[i, 1]) for i in range(state_shape[0])] if carry else None
            logits, new = forward(x, training, layers)
            ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
            mask = tf.cast(tf.not_equal(x, 0), ce.dtype)  # padding predicts nothing
            new_state = tf.stack([tf.stack(pair) for pair in new]) if carry else state
            return tf.reduce_sum(ce * mask), tf.reduce_sum(mask), new_state

        @tf.function(input_signature=[spec, spec, state_spec], jit_compile=jit)
        def train_step(x: Any, y: Any, state: Any) -> tuple[Any, Any, Any, Any]:
            with tf.GradientTape() as tape:
                total, count, new_state = token_loss(x, y, state, True)
                loss = total / tf.maximum(count, 1.0)
            grads = tape.gradient(loss, model.trainable_variables)
            if clipnorm:
                grads = clip_by_global_norm(grads, clipnorm)
            optimizer.apply(grads, model.trainable_variables)
            # the loss is measured before the update; a step can still leave bad weights
            finite = tf.reduce_all(
                [tf.reduce_all(tf.math.is_finite(v)) for v in model.trainable_variables]
            )
            return total, count, finite, new_state

        @tf.function(input_signature=[spec, spec, state_spec], jit_compile=jit)
        def eval_step(x: Any, y: Any, state: Any) -> tuple[Any, Any, Any]:
            return token_loss(x, y, state, False)

        self.train_step, self.eval_step = train_step, eval_step
        # with a strategy the workers agree on stopping: each step all-reduces whether
        # this process was signalled (stop_here), and all stop after the same step
        self.stop_here = self.stop_all = False
        if strategy is not None:
            self.train_step = self._distributed(strategy, token_loss, clipnorm)

    def _distributed(self, strategy: Any, token_loss: Any, clipnorm: float) -> Any:
        """A train step that splits the global batch over the replicas of ``strategy``.

        Each replica scores its rows and divides by the token count of the whole global
        batch, so the replicas' gradients sum to the gradient of the global mean loss;
        they are summed, clipped by global norm as one gradient (as without a strategy),
        and handed to the optimizer divided by the replica count because the optimizer
        sums them once more across replicas.
        """
        tf = tensorflow()
        model, optimizer = self.model, self.optimizer
        count = strategy.num_replicas_in_sync
        sum_ = tf.distribute.ReduceOp.SUM

        def replica_step(x: Any, y: Any, stop: Any) -> tuple[Any, Any, Any, Any]:
            ctx = tf.distribute.get_replica_context()
            variables = model.trainable_variables
            with tf.GradientTape() as tape:
                total, tokens, _ = token_loss(x, y, tf.zeros([]), True)
                all_tokens = ctx.all_reduce(sum_, tokens)
                loss = total / tf.maximum(all_tokens, 1.0)
            grads = [tf.convert_to_tensor(g) for g in tape.gradient(loss, variables)]
            grads = ctx.all_reduce(sum_, grads)  # summed over replicas, then clipped as one
            if clipnorm:
                grads = clip_by_global_norm(grads, clipnorm)
            optimizer.apply([g / count for g in grads], variables)
            finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(v)) for v in variables])
            return total, tokens, tf.cast(finite, tf.float32), stop

        @tf.function(reduce_retracing=True)
        def step(xs: Any, ys: Any, stops: Any) -> tuple[Any, Any, Any, Any]:
            total, tokens, finite, stop = strategy.run(replica_step, args=(xs, ys, stops))
            return (
                strategy.reduce(sum_, total, axis=None),
                strategy.reduce(sum_, tokens, axis=None),
                strategy.reduce(sum_, finite, axis=None) >= count,  # finite on every replica
                strategy.reduce(sum_, stop, axis=None) > 0,  # some worker was signalled
            )

        def train_step(x: Any, y: Any, state: Any) -> tuple[Any, Any, Any, Any]:
            x, y = np.asarray(x), np.asarray(y)
            parts = distribute.replica_rows(len(x), count)

            def rows(of: np.ndarray) -> Any:
                return strategy.experimental_distribute_values_from_function(
                    lambda ctx: of[parts[ctx.replica_id_in_sync_group]]
                )

            padded_x = np.concatenate([x, np.zeros((1, x.shape[1]), x.dtype)])
            padded_y = np.concatenate([y, np.zeros((1, y.shape[1]), y.dtype)])
            flag = np.float32(self.stop_here)
            stops = strategy.experimental_distribute_values_from_function(lambda _ctx: flag)
            total, tokens, finite, stop_all = step(rows(padded_x), rows(padded_y), stops)
            self.stop_all = bool(stop_all)
            return total, tokens, finite, state

        return train_step

    def zero_state(self, batch: int) -> np.ndarray:
        """The state a stream starts from (a placeholder when no state is carried)."""
        if self.state_shape is None:
            return np.zeros((), np.float32)
        layers, units = self.state_shape
        return np.zeros((layers, 2, batch, units), np.float32)

    def evaluate(self, examples: Examples, batch_size: int) -> float:
        """Mean loss per predicted token over ``examples`` (exact, not a mean of batches)."""
        total = count = 0.0
        if self.state_shape is not None:  # parallel streams, state carried through each
            state = self.zero_state(min(batch_size, len(examples)))
            for _, x, y in _batches(examples, batch_size, 0, 0, 0, carry=True):
                t, c, state = self.eval_step(x, y, state)
                total, count = total + float(t), count + float(c)
            return total / max(count, 1.0)
        none = self.zero_state(0)
        for start in range(0, len(examples), batch_size):
            x, y = examples.rows(np.arange(start, min(start + batch_size, len(examples))))
            t, c, _ = self.eval_step(x, y, none)
            total, count = total + float(t), count + float(c)
        return total / max(count, 1.0)


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
        self.steps = _Steps(
            self.model, self.optimizer, forward, jit, state_shape, strategy, cfg.clipnorm
        )
        self.carry_rows = min(cfg.batch_size, len(prepared.train))  # parallel streams
        self.carry = self.steps.zero_state(self.carry_rows)
        self.lr_scale = 1.0  # reduce-on-plateau factor so far
        self.elapsed = 0.0  # training seconds of finished epoch segments, over resumes
        self.segment_t0: float | None = None  # when the running epoch segment started
        self.global_step = 0
        self.writer: Any = None
        self.result = TrainResult(
            run_dir,
            params=count_params(self.model),
            metric="val_loss" if prepared.val is not None else "check_loss",
        )
        self.probe = prepared.train[: 4 * config.train.batch_size]  # see fit()
        self.epoch, self.step, self.wait = 1, 0, 0
        self.total = self.count = 0.0  # loss sum and token count so far in this epoch
        self.created = datetime.now(UTC).isoformat(timespec="seconds")

    # -- state ---------------------------------------------------------------------------
    def learning_rate(self) -> float:
        return scheduled_learning_rate(self.config.train, self.epoch, self.lr_scale)

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
        info = {
            "epoch": self.epoch,
            "step": self.step,
            "wait": self.wait,
            "lr_scale": self.lr_scale,
            "elapsed": self.elapsed_now(),
            "global_step": self.global_step,
            "total": self.total,
            "count": self.count,
            "history": self.result.history,
            "best_epoch": self.result.best_epoch,
            "best_loss": self.result.best_loss if math.isfinite(self.result.best_loss) else None,
            "created": self.created,
            "config": self.config.to_toml(),  # resume continues with the config in force
            "global_batch": self.global_batch,
            "corpus_sha256": self.prepared.corpus_sha256,
        }
        with rundir.Commit(self.run_dir) as commit:
            if best:
                rundir.write_bundle(
                    commit, self.model, self.config.to_toml(), self._bundle_metadata()
                )
            commit.write_text(rundir.HISTORY, _history_csv(self.result.history))
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
        self.epoch, self.step, self.wait = info["epoch"], info["step"], info["wait"]
        saved_batch = info.get("global_batch", self.config.train.batch_size)
        if self.step and saved_batch != self.global_batch:
            raise DataError(
                f"{self.run_dir} stopped mid-epoch with a global batch of {saved_batch} rows; "
                f"resume it with the same batch_size x replicas (now {self.global_batch})"
            )
        self.lr_scale = info.get("lr_scale", 1.0)
        self.elapsed = info.get("elapsed", 0.0)
        self.global_step = info.get("global_step", 0)
        carry = info.get("arrays", {}).get("carry")
        if carry is not None and carry.shape == np.shape(self.carry):
            self.carry = carry
        # a --set on resume may change the learning rate; the config wins over the saved one
        self.optimizer.learning_rate.assign(self.learning_rate())
        self.total, self.count = info["total"], info["count"]
        self.result.history = [_renamed(row) for row in info["history"]]
        self.result.best_epoch = info["best_epoch"]
        self.result.best_loss = info["best_loss"] if info["best_loss"] is not None else math.inf
        self.created = info["created"]

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
            "best_epoch": self.result.best_epoch,
            "best_loss": self.result.best_loss,
            "created": self.created,
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

            self.writer = tf.summary.create_file_writer(str(self.run_dir / LOGS))
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
        return self.elapsed + running

    def _out_of_time(self) -> bool:
        limit = self.config.train.max_minutes * 60.0
        return bool(limit) and self.elapsed_now() >= limit

    def fit(self, reporter: Reporter, signals: _Signals) -> TrainResult:
        cfg, prepared, result = self.config.train, self.prepared, self.result
        tokens = prepared.train.num_tokens
        batch = self.global_batch
        steps = steps_per_epoch(prepared.train, batch, cfg.carry_state)
        patience = cfg.patience if prepared.val is not None else 0
        out_of_time = False
        # one read-ahead pipeline for the whole run, from where it stands
        stream = _prefetched(
            partial(
                _run_batches, prepared.train, batch, cfg.seed, self.epoch, self.step,
                cfg.epochs, cfg.carry_state,
            )
        )  # fmt: skip
        while self.epoch <= cfg.epochs and not out_of_time:
            reporter.epoch_start(self.epoch, self.step)
            lr = self.learning_rate()
            self.optimizer.learning_rate.assign(lr)
            t0 = self.segment_t0 = time.perf_counter()
            first_step = self.step
            if self.step == 0:
                self.total = self.count = 0.0
                self.carry = self.steps.zero_state(self.carry_rows)
            for step, x, y in itertools.islice(stream, steps - self.step):
                self.steps.stop_here = signals.received is not None
                t, c, finite, carry = self._train_step(x, y)
                t, c = float(t), float(c)
                if not (math.isfinite(t) and bool(finite)):
                    what = f"loss became {t}" if not math.isfinite(t) else "weights became NaN/inf"
                    raise Diverged(
                        f"{what} at epoch {self.epoch}, step {step}; stopped. The last good "
                        f"checkpoint in {self.run_dir} is kept (try a lower learning_rate)"
                    )
                self.carry = carry.numpy() if cfg.carry_state else self.carry
                self.step, self.global_step = step, self.global_step + 1
                self.total, self.count = self.total + t, self.count + c
                reporter.step(step, self.total / max(self.count, 1.0))
                if cfg.log_every_steps and self.global_step % cfg.log_every_steps == 0:
                    self._log_scalars({"step/loss": t / max(c, 1.0)}, self.global_step)
                if self._stop_requested(signals):
                    self.interrupt(reporter, signals.received)
                if cfg.save_every_steps and step % cfg.save_every_steps == 0:
                    self.save()
                if self._out_of_time():
                    out_of_time = True
                    break
            seconds = time.perf_counter() - t0
            self.elapsed, self.segment_t0 = self.elapsed + seconds, None
            loss = self.total / self.count if self.count else math.nan
            val = self.steps.evaluate(prepared.val, cfg.batch_size) if prepared.val else math.nan
            # The running loss was measured before each update, so it cannot judge the weights
            # as they are now. Without validation, a fixed sample of the training set does.
            score = val if prepared.val else self.steps.evaluate(self.probe, cfg.batch_size)
            if not math.isfinite(score):
                raise Diverged(
                    f"loss became {score} at the end of epoch {self.epoch}; stopped. The last "
                    f"good checkpoint in {self.run_dir} is kept (try a lower learning_rate)"
                )
            done = (self.step - first_step) / steps
            if result.history and result.history[-1]["epoch"] == self.epoch:
                # the rest of an epoch a time budget cut short: one row for the whole epoch
                earlier = result.history.pop()
                seconds += earlier["seconds"]
                done = self.step / steps
            row = {
                "epoch": self.epoch,
                "train_loss": loss,
                "val_loss": val,
                "check_loss": score if not prepared.val else math.nan,
                "perplexity": math.exp(min(score, 700.0)),
                "bits_per_token": score / math.log(2),
                "tokens_per_s": tokens * done / seconds,
                "seconds": seconds,
                "elapsed": self.elapsed,
                "learning_rate": lr,
            }
            result.history.append(row)
            reporter.epoch_end(self.epoch, row)
            self._log_scalars(
                {"epoch/loss": loss, "epoch/val_loss": val, "epoch/learning_rate": lr},
                self.epoch,
            )
            improved = score < result.best_loss
            if improved:
                result.best_loss, result.best_epoch, self.wait = score, self.epoch, 0
            else:
                self.wait += 1
                if cfg.plateau_factor < 1.0:
                    self.lr_scale *= cfg.plateau_factor
                    self.log(f"no improvement: learning rate x{cfg.plateau_factor:g}")
            if out_of_time and self.step < steps:
                result.out_of_time = True
                self.log(
                    f"time budget of {cfg.max_minutes:g} min reached at epoch {self.epoch}, "
                    f"step {self.step}/{steps}"
                )
            else:
                self.epoch, self.step = self.epoch + 1, 0
                result.out_of_time = out_of_time
            self.save(best=improved)
            if patience and self.wait >= patience:
                result.stopped_early = True
                self.log(
                    f"early stop: no improvement for {patience} epochs "
                    f"(best epoch {result.best_epoch})"
                )
                break
            if self._stop_requested(signals):
                self.interrupt(reporter, signals.received)
        if self.writer is not None:
            self.writer.flush()
        return result

    def _stop_requested(self, signals: _Signals) -> bool:
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
                f"a peer worker stopped answering at epoch {self.epoch}, step {self.step + 1} "
                f"({type(err).__name__}); restart every worker with the same command: training "
                f"continues from {self.run_dir / rundir.STATE}"
            ) from None

    def interrupt(self, reporter: Reporter, signum: int | None) -> None:
        """Save (the chief) and stop with a message that says how to go on."""
        reporter.close()
        self.save()
        name = signal.Signals(signum).name if signum else "another worker was interrupted"
        where = f"training stopped at epoch {self.epoch}, step {self.step}"
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
    if resume and run_dir.is_symlink():
        run_dir = run_dir.resolve()  # --resume runs/latest continues the run it names
    if not resume:
        _check_out(run_dir)
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
            if run.epoch > config.train.epochs:
                raise UsageError(
                    f"{run_dir} has already trained its {config.train.epochs} epochs; to go on, "
                    f"raise them: textgen train --resume {run_dir} --set "
                    f"train.epochs={config.train.epochs + 10}"
                )
            log(f"resuming {run_dir} at epoch {run.epoch}, step {run.step}")
        elif chief:
            _prepare_run_dir(run_dir, overwrite)
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
        with _Signals() as signals:
            return run.fit(reporter, signals)
    except OSError as err:
        raise DataError(
            f"could not write to {run.run_dir}: {err.strerror or err}; "
            "the previous checkpoint is intact"
        ) from None
    finally:
        reporter.close()


def _saved_tokenizer(run_dir: Path) -> Any:
    if not run_dir.is_dir():
        raise DataError(f"run directory not found: {run_dir}")
    rundir.load_state(run_dir, info_only=True)  # a clear error when there is no state
    return rundir.run_tokenizer(run_dir)


def resume_config(run_dir: Path, overrides: list[str]) -> Config:
    """The config in force when the run's state was saved, plus ``--set`` overrides.

    An override may change how long and how fast training goes on (:data:`RESUME_KEYS`),
    never what the saved state means: data, model, optimizer kind or seed.
    """
    if run_dir.is_symlink():
        run_dir = run_dir.resolve()
    if not run_dir.is_dir():
        raise DataError(f"run directory not found: {run_dir}")
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
