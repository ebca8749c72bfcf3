"""Fine-tuning: a new run that starts from another run's weights and tokenizer.

``textgen train --config NEW.toml --init-from RUN [--extend-vocab]`` goes through here
before the loop starts:

1. :func:`load_parent` reads RUN's best bundle (config, tokenizer, ``weights.npz``, each
   checked against its sha256) and refuses a folder that is not a run or a run with no
   weights yet.
2. :func:`merge_config` takes the model's shape and every tokenizer key from RUN. A key
   the new config or ``--set`` gives explicitly with another value is an error naming
   the key and both values; the training keys, the dropout rates and the data keys that
   are not the tokenizer's (corpus, mode, lengths, split) are the user's. With
   ``--extend-vocab``, ``data.min_freq`` and ``data.max_vocab`` bound the growth (RUN's
   values unless given).
3. :func:`start_from` counts the new corpus' training part against RUN's vocabulary (the
   coverage, logged before the first step, with a warning above :data:`WARN_ABOVE`),
   grows the vocabulary (:meth:`textgen.text.base.Tokenizer.grown`) and the rows
   (:func:`textgen.model.grow.grow_arrays`) when asked, and returns the :class:`Start`
   the loop begins from, with the parent record that every later ``metadata.json`` of
   the new run holds (it lives in the resumable state, so a ``--resume`` keeps it).

The optimizer starts fresh: only weights and tokenizer come from RUN.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from textgen import config as config_mod
from textgen import rundir
from textgen.config import Config, DataConfig
from textgen.corpus.examples import hold_out_lines
from textgen.corpus.read import read_corpus, scan, split_blocks, tail_start, text_blocks
from textgen.errors import DataError, UsageError
from textgen.model.grow import INIT, grow_arrays
from textgen.text.base import Tokenizer
from textgen.text.vocab import Coverage

# the model's shape comes from the parent; its dropout rates are training keys (the user's)
MODEL_KEYS = ("cell", "embedding_dim", "units", "layers", "tie_weights", "init_scale")
TOKENIZER_KEYS = ("level", "normalize", "lowercase", "strip_punctuation", "subword_model",
                  "vocab_size")  # fmt: skip
GROWTH_KEYS = ("max_vocab", "min_freq")  # the parent's, or the growth's bounds
WARN_ABOVE = 0.05  # warn when more of the new corpus than this is not in the vocabulary
SHOWN_MISSING = 10  # how many of the most frequent missing tokens the coverage line names


@dataclass(frozen=True)
class Parent:
    """The run a fine-tuning starts from, as read once (checked against its checksums)."""

    run_dir: Path
    config: Config
    tokenizer: Tokenizer
    arrays: dict[str, np.ndarray]  # weights.npz's named arrays
    run_id: str
    weights_sha256: str


@dataclass(frozen=True)
class Start:
    """What a new run begins from instead of fresh weights: the tokenizer, the weights
    (weights.npz's layout, for that tokenizer's vocabulary) and the parent record."""

    tokenizer: Tokenizer
    arrays: dict[str, np.ndarray]
    parent: dict[str, Any]


def load_parent(run: str | Path) -> Parent:
    """The run ``--init-from`` names (a ``latest`` link is followed), read whole."""
    run_dir = rundir.resolve_run(run)
    if not rundir.is_run(run_dir):
        raise DataError(f"--init-from {run}: {run_dir} is not a textgen run")
    if not rundir.read_run(run_dir, lambda snap: snap.has(rundir.WEIGHTS)):
        raise DataError(
            f"--init-from {run}: {run_dir} has no trained weights yet ({rundir.WEIGHTS} is "
            "written when an epoch ends); resume it for an epoch first"
        )
    bundle = rundir.load_bundle(run_dir)
    sha = bundle.metadata.get("files", {}).get(rundir.WEIGHTS) or rundir.sha256_file(
        run_dir / rundir.WEIGHTS
    )
    arrays = {"cell": np.array(bundle.lm.cell)} | bundle.lm.arrays()
    run_id = str(bundle.metadata.get("run_id") or "")
    return Parent(run_dir, bundle.config, bundle.tokenizer, arrays, run_id, sha)


def merge_config(
    parent: Parent, config: Config, explicit: dict[str, str], *, extend: bool
) -> Config:
    """``config`` with the model shape and tokenizer keys of ``parent``.

    ``explicit`` names the keys the user gave (``section.key`` → where: the config file or
    ``--set``); one of them that contradicts the parent is an error naming it and both
    values, where an unset key simply takes the parent's value.
    """
    run = parent.run_dir
    if extend and parent.tokenizer.cannot_grow is not None:
        raise UsageError(parent.tokenizer.cannot_grow)
    taken: dict[str, dict[str, Any]] = {"model": {}, "data": {}}
    keys = [("model", k) for k in MODEL_KEYS] + [("data", k) for k in TOKENIZER_KEYS]
    keys += [("data", k) for k in GROWTH_KEYS]
    for section, key in keys:
        name = f"{section}.{key}"
        theirs = getattr(getattr(parent.config, section), key)
        mine = getattr(getattr(config, section), key)
        growth = key in GROWTH_KEYS and extend
        if name in explicit and mine != theirs and not growth:
            why = (
                "; data.max_vocab and data.min_freq bound the new tokens of --extend-vocab only"
                if key in GROWTH_KEYS
                else ""
            )
            raise UsageError(
                f"{name} = {mine!r} ({explicit[name]}) contradicts --init-from {run}, which "
                f"was trained with {name} = {theirs!r}: [model] and tokenizer keys come from "
                f"the run; leave {name} out{why}"
            )
        if not (growth and name in explicit):
            taken[section][key] = theirs
    merged = replace(
        config,
        model=replace(config.model, **taken["model"]),
        data=replace(config.data, **taken["data"]),
    )
    merged = config_mod.from_dict(merged.to_dict())  # the combination is checked as a whole
    if merged.data.mode == "lines" and parent.tokenizer.eos_id is None:
        raise UsageError(
            f"--init-from {run}: its char model was trained in stream mode and has no <eos>, "
            'which data.mode = "lines" ends every line with; fine-tune it with '
            'data.mode = "stream"'
        )
    return merged


def training_texts(data: DataConfig) -> Iterator[str]:
    """The training part of the corpus as the loop will see it: the non-blank lines that
    are not held out (lines mode), or the text before the held-out tail (stream mode),
    split off by the same rules as :func:`textgen.corpus.examples.prepare`."""
    if data.mode == "lines":
        text, _ = read_corpus(data.corpus, data.encoding)
        lines = [line for line in text.splitlines() if line.strip()]
        yield from lines if data.valid_corpus else hold_out_lines(lines, data)[0]
        return
    cut = None
    if not data.valid_corpus and data.val_split > 0:
        cut = tail_start(scan(data.corpus, data.encoding)[1], data.val_split)
    for train, _ in split_blocks(text_blocks(data.corpus, data.encoding), cut, data.level):
        if train:
            yield train


def start_from(
    parent: Parent, config: Config, *, extend: bool, log: Callable[[str], None]
) -> Start:
    """Count the new corpus against the parent's vocabulary (logged), grow vocabulary and
    rows when ``extend``, and return what the loop starts from. ``config`` is the merged
    one (:func:`merge_config`)."""
    tokenizer, arrays = parent.tokenizer, parent.arrays
    coverage = tokenizer.coverage(training_texts(config.data))
    for line in coverage_lines(coverage, parent.run_dir, len(tokenizer.vocab), extend):
        log(line)
    record: dict[str, Any] = {
        "path": str(parent.run_dir.resolve()),
        "run_id": parent.run_id or None,
        "weights_sha256": parent.weights_sha256,
        "vocab_size": len(tokenizer.vocab),
        "corpus_tokens": coverage.total,
        "missing_tokens": coverage.missing_total,
    }
    if extend:
        data = config.data
        tokenizer = tokenizer.grown(coverage, max_vocab=data.max_vocab, min_freq=data.min_freq)
        specials = 3 if tokenizer.eos_id is not None else 2
        old, new = len(parent.tokenizer.vocab), len(tokenizer.vocab)
        arrays = grow_arrays(arrays, new, specials=specials, tied=config.model.tie_weights)
        left = sum(n for tok, n in coverage.missing.items() if tok not in tokenizer.vocab)
        record |= {"extended_to": new, "new_rows": INIT}
        log(growth_line(old, new, data, left, coverage.total))
        if coverage.total and left / coverage.total > WARN_ABOVE:
            log(
                f"warning: {left / coverage.total:.2%} of the new corpus still trains as <unk> "
                f"(below data.min_freq = {data.min_freq} or past data.max_vocab = "
                f"{data.max_vocab})"
            )
    return Start(tokenizer, arrays, record)


def coverage_lines(coverage: Coverage, run: Path, vocab: int, extend: bool) -> list[str]:
    """What fine-tuning prints before its first step: how much of the new corpus the
    parent's vocabulary covers, the most frequent tokens it lacks, and a warning past
    :data:`WARN_ABOVE` (with the way out when ``--extend-vocab`` was not given)."""
    missing, share = coverage.missing_total, coverage.missing_fraction
    line = (
        f"coverage: {run}'s vocabulary ({vocab:,} tokens) lacks {missing:,} of the new "
        f"corpus' {coverage.total:,} training tokens ({share:.2%}, {len(coverage.missing):,} "
        "distinct)"
    )
    if missing:
        shown = ", ".join(f"{tok!r} {n:,}" for tok, n in coverage.most_common(SHOWN_MISSING))
        line += f"; most frequent: {shown}"
    lines = [line]
    if share > WARN_ABOVE and not extend:
        lines.append(
            f"warning: {share:.2%} of the new corpus is not in {run}'s vocabulary and trains "
            "as <unk>; --extend-vocab gives those tokens rows of their own"
        )
    return lines


def growth_line(old: int, new: int, data: DataConfig, left: int, total: int) -> str:
    """The vocabulary growth of ``--extend-vocab``, as printed."""
    bound = f"{data.max_vocab:,}" if data.max_vocab else "none"
    ids = f"ids {old:,}-{new - 1:,}" if new > old else "no new ids"
    share = f"{left / total:.2%}" if total else "0.00%"
    return (
        f"--extend-vocab: {old:,} -> {new:,} tokens ({new - old:,} new, {ids}; min_freq "
        f"{data.min_freq}, max_vocab {bound}); new rows start from {INIT}; {left:,} tokens "
        f"({share}) stay <unk>"
    )
