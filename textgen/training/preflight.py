"""What :func:`textgen.training.loop.train` checks and reads before it trains.

Everything a user can get wrong is found here, before the run directory is touched (a
new run) or before training goes on (a resumed one): a corpus that moved, a model too big
for this machine's memory, a damaged file of the run, a run that has finished its epochs.
The corpus is read and tokenized here too, so that a bad corpus also fails first. Kept
apart from the loop, which only trains what it is given.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from textgen import rundir
from textgen.config import Config
from textgen.corpus.examples import Prepared, prepare
from textgen.errors import DataError, UsageError
from textgen.text.base import Tokenizer
from textgen.training.progress import ByteBar


def check_corpus_is_there(config: Config, run_dir: Path) -> None:
    """A run whose corpus moved (or that was copied to another machine) says how to
    point it at the same text elsewhere."""
    for key in ("corpus", "valid_corpus"):
        path = getattr(config.data, key)
        if path and not Path(path).exists():
            raise DataError(
                f"{key.replace('_', ' ')} not found: {path}; if the same text is elsewhere, "
                f"resume with --set data.{key}=PATH (its sha256 must match the run's record)"
            )


def restarted_worker(config: Config, run_dir: Path, resuming_or_overwriting: bool) -> bool:
    """A multi-worker run restarted with the same command: every worker continues from
    the chief's backup (``last.npz``) instead of starting over."""
    return (
        config.train.distribute == "multiworker"
        and not resuming_or_overwriting
        and (run_dir / rundir.STATE).is_file()
    )


def read_corpus(
    config: Config, given: Tokenizer | None, progress: bool, log: Callable[[str], None]
) -> tuple[Config, Prepared]:
    """Read and tokenize the corpus (with ``given``: the saved tokenizer of the run being
    resumed, or the one a fine-tuning starts from), before the run directory is touched;
    the config gets the corpus' absolute path."""
    with ByteBar(config.data.corpus, "tokenizing", enabled=progress) as bar:
        prepared = prepare(config.data, tokenizer=given, progress=bar.update)
    absolute = {"corpus": str(Path(config.data.corpus).resolve())}
    if config.data.valid_corpus:
        absolute["valid_corpus"] = str(Path(config.data.valid_corpus).resolve())
    if prepared.split_lines:
        log(
            f"note: {prepared.split_lines} lines longer than data.max_len were cut "
            "into overlapping pieces"
        )
    return replace(config, data=replace(config.data, **absolute)), prepared


def check_every_file(snap: rundir.Snapshot) -> None:
    """Read every file of the snapshot against its checksum (raises on the first bad one)."""
    for name in rundir.FILES:
        if snap.has(name):
            snap.path(name)


def check_fits(config: Config, vocab: int) -> None:
    """Refuse a model whose weights, gradients and Adam moments (four copies of float32)
    cannot fit in this machine's memory: one line instead of an out-of-memory."""
    m = config.model
    params = vocab * m.embedding_dim + m.units * vocab + vocab  # embedding, output layer
    width = m.embedding_dim
    for _ in range(m.layers):
        params += 4 * m.units * (width + m.units + 1)  # the largest cell (LSTM)
        width = m.units
    need = params * 4 * 4
    try:
        have = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return
    if need > have:
        raise DataError(
            f"the model has about {params:,} parameters and needs about {need / 2**30:,.1f} GiB "
            f"to train, more than this machine's {have / 2**30:,.1f} GiB; lower model.units, "
            "model.embedding_dim, model.layers or the vocabulary"
        )


def check_not_finished(run_dir: Path, epoch: int, epochs: int) -> None:
    """A resumed run at ``epoch`` that has already trained its ``epochs`` says how to go
    on (raise them)."""
    if epoch > epochs:
        reached = epoch - 1
        now = f" (train.epochs is now {epochs})" if epochs != reached else ""
        raise UsageError(
            f"{run_dir} has already trained its {reached} epochs{now}; to go on, raise them: "
            f"textgen train --resume {run_dir} --set train.epochs={reached + 10}"
        )
