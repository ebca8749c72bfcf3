"""What a user reads about a run and a prepared corpus: the summaries ``textgen info`` and
``textgen prepare`` print, and the names of the losses that judge "best". Text and plain
values only; printing them is the command line's job.

The losses are named as in history.csv: ``train_loss`` is the mean over an epoch's
steps (each measured before its update), ``val_loss`` the held-out text after the epoch,
``check_loss`` (runs without validation) a fixed sample of the training set after it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textgen.config import DataConfig
from textgen.rundir import Bundle, parse_history

if TYPE_CHECKING:  # a type only: `textgen info` need not import the cache
    from textgen.corpus.cache import PreparedIds

# the losses that judge "best", as a user reads them: (name, what it is measured on)
LOSS_NAMES = {
    "val_loss": ("val loss", "the held-out text after the epoch"),
    "check_loss": ("check loss", "a fixed sample of the training set after the epoch"),
}


def best_summary(metric: str, best_epoch: int, best_loss: float) -> str:
    """``best epoch 12: val loss 1.2345, on the held-out text after the epoch``."""
    name, measured_on = LOSS_NAMES[metric]
    return f"best epoch {best_epoch}: {name} {best_loss:.4f}, on {measured_on}"


def run_summary(bundle: Bundle) -> list[str]:
    """The lines of ``textgen info``: config, vocabulary, parameters, corpus, and the
    first, best and last epochs of the history."""
    meta, cfg, tok = bundle.metadata, bundle.config, bundle.tokenizer
    model, train = cfg.model, cfg.train
    level = tok.level
    if tok.is_jamo:
        level += " (jamo: NFD)"
    if tok.level == "subword":
        level += f" ({cfg.data.subword_model})"
    lines = [
        f"run: {bundle.run_dir}",
        f"level: {level}, mode: {cfg.data.mode}, vocab: {len(tok.vocab)}",
        f"model: {model.layers}x{model.units} {model.cell}, embedding {model.embedding_dim}, "
        f"{meta.get('parameters', 0):,} parameters",
        f"train: {train.optimizer}, learning rate {train.learning_rate:g}, batch "
        f"{train.batch_size}, {train.epochs} epochs, seed {train.seed}",
        f"corpus: {meta.get('corpus')} (sha256 {str(meta.get('corpus_sha256'))[:12]})",
    ]
    if isinstance(meta.get("parent"), dict):
        lines.append(parent_summary(meta["parent"]))
    rows = parse_history(bundle.history)
    if rows:
        lines += _epochs(rows, meta.get("best_epoch"))
    return lines


def tokens_trained(history: list[dict[str, float]]) -> int:
    """The tokens a run has trained on, from history.csv's rows (each epoch's tokens/s
    times its seconds, both kept to 6 significant digits: exact to about 1e-5)."""
    total = 0.0
    for row in history:
        rate, seconds = row.get("tokens_per_s", math.nan), row.get("seconds", math.nan)
        if math.isfinite(rate) and math.isfinite(seconds):
            total += rate * seconds
    return round(total)


def training_line(
    history: list[dict[str, float]], training_seconds: float, wall_seconds: float, machine: str
) -> str:
    """The line ``textgen train`` ends with: what was trained, in how long, on what CPU (a
    record is only comparable on the same kind of CPU). ``training_seconds`` are the steps'
    time over every resume (what ``train.max_minutes`` counts), ``wall_seconds`` this
    process' since it started (TensorFlow's start-up, validation and saves included)."""
    return (
        f"trained {tokens_trained(history):,} tokens in {training_seconds / 60:.1f} min of "
        f"training steps ({wall_seconds / 60:.1f} min since this process started) on {machine}"
    )


def parent_summary(parent: dict[str, Any]) -> str:
    """The line of a fine-tuned run: the run it started from, the weights' checksum and
    how its vocabulary grew (``--init-from``, ``--extend-vocab``)."""
    run_id = parent.get("run_id") or "none recorded"
    line = (
        f"parent: {parent.get('path')} (run id {run_id}, weights sha256 "
        f"{str(parent.get('weights_sha256'))[:12]})"
    )
    old, new = parent.get("vocab_size"), parent.get("extended_to")
    if new is not None:
        return f"{line}, vocabulary extended {old:,} -> {new:,}"
    return f"{line}, vocabulary {old:,} kept"


def _epochs(rows: list[dict[str, float]], best_epoch: object) -> list[str]:
    """The first, best and last epochs, each with its train loss and judging loss."""
    has_val = any(math.isfinite(r.get("val_loss", math.nan)) for r in rows)
    judged = "val_loss" if has_val else "check_loss"
    best = next((r for r in rows if r["epoch"] == best_epoch), None)
    lines = []
    for label, row in (("first", rows[0]), ("best", best), ("last", rows[-1])):
        if row is None:
            continue
        score = row.get(judged, math.nan)  # runs of earlier versions recorded no check loss
        shown = f", {judged.replace('_', ' ')} {score:.4f}" if math.isfinite(score) else ""
        epoch = int(row["epoch"])
        lines.append(f"{label:>5} epoch {epoch}: train loss {row['train_loss']:.4f}{shown}")
    return [*lines, f"{len(rows)} epochs in history.csv (--history prints them)"]


def prepare_summary(data: DataConfig, entry: PreparedIds, seconds: float) -> dict[str, Any]:
    """What ``textgen prepare`` did, as plain values (its ``--format json``)."""
    size = Path(data.corpus).stat().st_size
    return {
        "corpus": str(data.corpus),
        "bytes": size,
        "level": data.level,
        "vocab_size": len(entry.tokenizer.vocab),
        "train_tokens": len(entry.train),
        "valid_tokens": len(entry.valid) if entry.valid is not None else 0,
        "id_dtype": entry.train.dtype.name,
        "cache": str(entry.folder),
        "cached": entry.cached,
        "seconds": round(seconds, 3),
        "mb_per_s": round(size / 1e6 / seconds, 2) if seconds > 0 else None,
    }


def prepare_lines(summary: dict[str, Any]) -> list[str]:
    """:func:`prepare_summary` as the lines a reader sees."""
    size, seconds = summary["bytes"], summary["seconds"]
    how = "found in the cache" if summary["cached"] else f"tokenized in {seconds:.1f} s"
    speed = "" if summary["cached"] else f" ({summary['mb_per_s']} MB/s)"
    return [
        f"{summary['corpus']}: {size / 1e6:.1f} MB {how}{speed}",
        f"  {summary['level']} level, vocabulary {summary['vocab_size']:,}, "
        f"{summary['train_tokens']:,} training + {summary['valid_tokens']:,} validation tokens "
        f"({summary['id_dtype']})",
        f"  cache: {summary['cache']}",
    ]
