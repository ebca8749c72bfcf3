"""What a training run writes into its run directory and reads back to resume.

One save is one commit (:class:`textgen.rundir.Commit`): the resumable state
``last.npz`` (every model and optimizer variable and every field of the
:class:`~textgen.training.state.TrainState`, walked: the position, the config in force,
the carried recurrent state, the NT-ASGD average, ...), history.csv, and, when the epoch
improved, the bundle of the current weights (the averaged ones once NT-ASGD averages).
The state and the best model it names therefore reach the disk together, whenever the
process dies.

Resuming reads the same files back: :func:`resume_config` is the config in force at the
last save (plus the ``--set`` overrides :data:`RESUME_KEYS` allows), and
:meth:`Checkpoint.restore` puts the variables and the position back.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import platform
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from textgen import __version__, rundir
from textgen import config as config_mod
from textgen._tf import keras, tensorflow
from textgen.config import Config
from textgen.corpus.examples import Prepared
from textgen.errors import DataError, UsageError
from textgen.machine import machine_record
from textgen.model.network import variable_arrays
from textgen.text.base import Tokenizer
from textgen.training.state import TrainState

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
        "distribute", "peer_timeout", "batch_size", "anneal",
    )
)  # fmt: skip


@dataclass(frozen=True)
class Checkpoint:
    """Saves and restores one run: where it lives and what it was trained on."""

    run_dir: Path
    config: Config
    prepared: Prepared
    global_batch: int  # rows per step over all replicas (a mid-epoch position depends on it)
    params: int  # the model's parameter count, recorded in metadata.json

    def save(
        self, model: Any, optimizer: Any, state: TrainState, *, best: bool, averaged: Any = None
    ) -> None:
        """Commit one snapshot: ``last.npz`` (the variables as they are and every field of
        ``state``), history.csv and, when ``best``, the bundle. ``averaged`` (a context
        manager factory, NT-ASGD) swaps the averaged weights in while the bundle is written."""
        info, arrays = state.saved()
        model_vars = variable_arrays(model)  # the weights training goes on from
        with rundir.Commit(self.run_dir) as commit:
            if best:
                with averaged() if averaged is not None else contextlib.nullcontext():
                    rundir.write_bundle(commit, model, state.config, self._bundle_metadata(state))
            else:  # config.toml shows the config in force (a --resume --set, say)
                rundir.write_config(commit, state.config)
            commit.write_text(rundir.HISTORY, history_csv(state.history))
            rundir.write_state(
                commit, model_vars, [np.asarray(v) for v in optimizer.variables], info, arrays
            )

    @cached_property
    def valid_sha256(self) -> str:
        """The sha256 of the separate validation file ("" without one), so that a moved
        one can be recognised on resume."""
        from textgen.corpus.read import scan

        data = self.config.data
        if not data.valid_corpus:
            return ""
        return scan(data.valid_corpus, data.encoding, count_chars=False)[0]

    def restore(self, model: Any, optimizer: Any) -> TrainState:
        """Load ``last.npz`` into ``model`` and ``optimizer`` and return the state it holds,
        every field as saved (:meth:`identified` gives it this run's config and sums)."""
        model_vars, opt_vars, info = rundir.load_state(self.run_dir)
        arrays = info.pop("arrays", {})
        history = None if "history" in info else history_rows(info.pop("history_csv", ""))
        state = TrainState.restored(info, arrays, history)
        saved_sha = state.corpus_sha256 or (rundir.load_metadata(self.run_dir) or {}).get(
            "corpus_sha256"
        )
        if saved_sha and saved_sha != self.prepared.corpus_sha256:
            raise DataError(
                f"the corpus changed since {self.run_dir} was trained (sha256 differs); "
                "cannot resume"
            )
        for name, mine, theirs in (
            ("model", model.variables, model_vars),
            ("optimizer", optimizer.variables, opt_vars),
        ):
            if [tuple(v.shape) for v in mine] != [a.shape for a in theirs]:
                raise DataError(f"{self.run_dir / rundir.STATE} does not match this {name}")
            for variable, value in zip(mine, theirs, strict=True):
                variable.assign(value)
        saved_batch = state.global_batch or self.config.train.batch_size
        if state.step and saved_batch != self.global_batch:
            raise DataError(
                f"{self.run_dir} stopped mid-epoch with a global batch of {saved_batch} rows; "
                f"resume it with the same batch_size x replicas (now {self.global_batch})"
            )
        return state

    def identified(self, state: TrainState) -> TrainState:
        """``state`` with what identifies this run now: the config in force, the global
        batch, the sha256 of the corpus and of the validation file."""
        return replace(
            state,
            config=self.config.to_toml(),
            global_batch=self.global_batch,
            corpus_sha256=self.prepared.corpus_sha256,
            valid_sha256=self.valid_sha256,
        )

    def _bundle_metadata(self, state: TrainState) -> dict[str, Any]:
        data, prepared = self.config.data, self.prepared
        parent = {"parent": state.parent} if state.parent else {}
        return {
            "run_id": state.run_id,
            **parent,
            "versions": _versions(),
            "machine": machine_record(),  # of the latest save: a resume may move machines
            "parameters": self.params,
            "vocab_size": len(prepared.tokenizer.vocab),
            "corpus": data.corpus,
            "corpus_sha256": prepared.corpus_sha256,
            "valid_sha256": self.valid_sha256,
            "train_sequences": len(prepared.train),
            "train_tokens": prepared.train.num_tokens,
            "best_epoch": state.best_epoch,
            "best_loss": state.best_loss,
            "created": state.created,
            "updated": datetime.now(UTC).isoformat(timespec="seconds"),
        }


def history_csv(rows: list[dict[str, float]]) -> str:
    """history.csv's text: a header of :data:`HISTORY_FIELDS`, one row per epoch."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=HISTORY_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return buf.getvalue()


def history_rows(text: str) -> list[dict[str, float]]:
    """history.csv's rows back as the state's history (epochs as integers)."""
    rows = rundir.parse_history(text)
    for number, row in enumerate(rows, start=2):
        if not math.isfinite(row.get("epoch", math.nan)):
            raise DataError(f"{rundir.HISTORY} line {number} has no epoch; it cannot be resumed")
        row["epoch"] = int(row["epoch"])
    return rows


def _versions() -> dict[str, str]:
    tf, k = tensorflow(), keras()
    return {
        "textgen": __version__,
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": k.__version__,
        "numpy": np.__version__,
    }


def saved_tokenizer(run_dir: Path) -> Tokenizer:
    """The tokenizer of a run that can be resumed (a clear error when it has no state)."""
    rundir.load_state(run_dir, info_only=True)
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
    saved, config = _moved_corpus(run_dir, saved, config, info)
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


def _moved_corpus(
    run_dir: Path, saved: Config, config: Config, info: dict[str, Any]
) -> tuple[Config, Config]:
    """Accept ``--set data.corpus=NEW`` (or ``data.valid_corpus``) on resume when the file
    there has the sha256 the run recorded: the same text, moved or on another machine.
    A file whose content differs is refused, saying so."""
    from textgen.corpus.read import scan

    changes = {}
    for key, sha_key in (("corpus", "corpus_sha256"), ("valid_corpus", "valid_sha256")):
        old, new = getattr(saved.data, key), getattr(config.data, key)
        if new == old or not new:
            continue
        recorded = info.get(sha_key)
        if not recorded:
            raise UsageError(
                f"--set data.{key} cannot change when resuming: {run_dir} recorded no sha256 "
                f"of its {key.replace('_', ' ')} to check {new} against"
            )
        sha, _ = scan(new, saved.data.encoding, count_chars=False)
        if sha != recorded:
            raise DataError(
                f"--set data.{key}={new}: that file is not the one {run_dir} was trained on "
                f"(sha256 {sha[:12]}…, the run recorded {recorded[:12]}…); cannot resume"
            )
        changes[key] = str(Path(new).resolve())
    if not changes:
        return saved, config
    moved = replace(saved, data=replace(saved.data, **changes))
    return moved, replace(config, data=replace(config.data, **changes))
