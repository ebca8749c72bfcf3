"""Train a language model from a config and write its run directory.

Teacher forcing: the model sees ``tokens[:-1]`` and is scored on ``tokens[1:]`` at every
position at once. This is the same objective as the tutorial's prefix expansion (one
example per prefix, scored on its last token) at O(L) instead of O(L²) cost per line.

Progress goes to stderr (a tqdm bar on a terminal, one line per epoch otherwise); nothing
here prints to stdout, so the CLI's stdout stays clean for pipes.
"""

from __future__ import annotations

import csv
import io
import math
import platform
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from textgen import __version__, checkpoint
from textgen._tf import keras, tensorflow
from textgen.config import Config
from textgen.data import Prepared, dataset, prepare
from textgen.errors import TextgenError, UsageError
from textgen.model import build_model, count_params

HISTORY_FIELDS = (
    "epoch",
    "loss",
    "val_loss",
    "perplexity",
    "bits_per_token",
    "tokens_per_s",
    "seconds",
)


class Interrupted(TextgenError):
    """Training stopped by Ctrl-C; the best model so far has been saved."""

    exit_code = 130


@dataclass
class TrainResult:
    """What a finished run reports back."""

    run_dir: Path
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_loss: float = math.inf
    stopped_early: bool = False
    params: int = 0
    metric: str = "loss"  # what "best" is judged by: val_loss, or loss without validation


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
    import numpy

    tf, k = tensorflow(), keras()
    return {
        "textgen": __version__,
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": k.__version__,
        "numpy": numpy.__version__,
    }


def _prepare_run_dir(run_dir: Path, overwrite: bool) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"--out {run_dir} exists and is not a folder")
    if run_dir.is_dir() and any(run_dir.iterdir()):
        if not overwrite:
            raise UsageError(
                f"run directory {run_dir} already exists; pass --overwrite to replace it "
                "or --out to choose another"
            )
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)


def _make_callback(
    state: TrainResult,
    *,
    run_dir: Path,
    prepared: Prepared,
    steps: int,
    epochs: int,
    patience: int,
    progress: bool,
    log: Callable[[str], None],
    save: Callable[[], None],
) -> Any:
    """The Keras callback that shows progress, keeps the best weights, writes history."""
    from tqdm.auto import tqdm

    k = keras()
    train_tokens = prepared.train.num_tokens
    per_epoch_bars = steps > 1
    log_every = 1 if epochs <= 20 else math.ceil(epochs / 10)

    class Progress(k.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.bar = None
            self.best_weights = None
            self.wait = 0
            if progress and not per_epoch_bars:
                self.bar = tqdm(total=epochs, desc="training", unit="epoch", file=sys.stderr)

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.t0 = time.perf_counter()
            if progress and per_epoch_bars:
                self.bar = tqdm(
                    total=steps, desc=f"epoch {epoch + 1}/{epochs}", unit="step", file=sys.stderr
                )

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            if self.bar is None or not per_epoch_bars:
                return
            self.bar.update(batch + 1 - self.bar.n)
            rate = train_tokens * (batch + 1) / steps / max(time.perf_counter() - self.t0, 1e-9)
            self.bar.set_postfix(
                loss=f"{float(logs['loss']):.4f}", tok_s=f"{rate:,.0f}", refresh=False
            )

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            seconds = time.perf_counter() - self.t0
            loss = float(logs["loss"])
            val = float(logs["val_loss"]) if "val_loss" in logs else math.nan
            score = val if prepared.val is not None else loss
            row = {
                "epoch": epoch + 1,
                "loss": loss,
                "val_loss": val,
                "perplexity": math.exp(min(score, 700.0)),
                "bits_per_token": score / math.log(2),
                "tokens_per_s": train_tokens / seconds,
                "seconds": seconds,
            }
            state.history.append(row)
            improved = score < state.best_loss
            if improved:
                state.best_loss, state.best_epoch, self.wait = score, epoch + 1, 0
                self.best_weights = self.model.get_weights()
            else:
                self.wait += 1
            checkpoint.atomic_write_text(run_dir / checkpoint.HISTORY, _history_csv(state.history))
            if improved and per_epoch_bars:
                save()
            summary = f"loss {loss:.4f}" + (f", val_loss {val:.4f}" if not math.isnan(val) else "")
            summary += f", {row['tokens_per_s']:,.0f} tok/s"
            if self.bar is not None:
                if per_epoch_bars:
                    self.bar.set_postfix_str(summary, refresh=False)
                    self.bar.close()
                else:
                    self.bar.update(1)
                    self.bar.set_postfix_str(summary, refresh=False)
            elif (epoch + 1) % log_every == 0 or epoch + 1 == epochs:
                log(f"epoch {epoch + 1}/{epochs}: {summary}")
            if patience and self.wait >= patience:
                state.stopped_early = True
                self.model.stop_training = True
                log(
                    f"early stop: no improvement for {patience} epochs "
                    f"(best epoch {state.best_epoch})"
                )

        def on_train_end(self, logs: Any = None) -> None:
            if self.bar is not None:
                self.bar.close()

    return Progress()


def train(
    config: Config,
    run_dir: str | Path,
    *,
    overwrite: bool = False,
    progress: bool | None = None,
    log: Callable[[str], None] = _stderr,
) -> TrainResult:
    """Train ``config`` and write its run directory; return the history and best epoch.

    ``progress=None`` shows tqdm bars only when stderr is a terminal (one summary line per
    epoch is logged otherwise). Deterministic for a given ``train.seed``.
    """
    run_dir = Path(run_dir)
    prepared = prepare(config.data)  # data errors surface before the run dir is touched
    config = replace(
        config, data=replace(config.data, corpus=str(Path(config.data.corpus).resolve()))
    )
    _prepare_run_dir(run_dir, overwrite)
    if progress is None:
        progress = sys.stderr.isatty()
    if prepared.split_lines:
        log(
            f"note: {prepared.split_lines} lines longer than data.max_len were cut "
            "into overlapping pieces"
        )

    tf, k = tensorflow(), keras()
    k.utils.set_random_seed(config.train.seed)
    tf.config.experimental.enable_op_determinism()
    mask = config.data.mode == "lines"
    model = build_model(config.model, len(prepared.tokenizer.vocab), mask_padding=mask)
    optimizer = k.optimizers.Adam(
        learning_rate=config.train.learning_rate, clipnorm=config.train.clipnorm or None
    )
    model.compile(
        optimizer=optimizer,
        loss=k.losses.SparseCategoricalCrossentropy(from_logits=True),
        steps_per_execution=config.train.steps_per_execution,
    )
    metric = "val_loss" if prepared.val is not None else "loss"
    result = TrainResult(run_dir, params=count_params(model), metric=metric)
    created = datetime.now(UTC).isoformat(timespec="seconds")
    checkpoint.atomic_write_text(run_dir / checkpoint.CONFIG, config.to_toml())
    checkpoint.atomic_write_text(run_dir / checkpoint.TOKENIZER, prepared.tokenizer.to_json())

    def save() -> None:
        current = model.get_weights()
        model.set_weights(callback.best_weights)
        checkpoint.save_model(run_dir, model)
        model.set_weights(current)
        checkpoint.write_metadata(
            run_dir,
            {
                "versions": _versions(),
                "parameters": result.params,
                "vocab_size": len(prepared.tokenizer.vocab),
                "corpus": config.data.corpus,
                "corpus_sha256": prepared.corpus_sha256,
                "train_sequences": len(prepared.train),
                "train_tokens": prepared.train.num_tokens,
                "best_epoch": result.best_epoch,
                "best_loss": result.best_loss,
                "created": created,
                "updated": datetime.now(UTC).isoformat(timespec="seconds"),
            },
        )

    steps = math.ceil(len(prepared.train) / config.train.batch_size)
    callback = _make_callback(
        result,
        run_dir=run_dir,
        prepared=prepared,
        steps=steps,
        epochs=config.train.epochs,
        patience=config.train.patience if prepared.val is not None else 0,
        progress=progress,
        log=log,
        save=save,
    )
    seed = config.train.seed
    train_ds = dataset(prepared.train, config.train.batch_size, shuffle=True, seed=seed)
    val_ds = (
        dataset(prepared.val, config.train.batch_size, shuffle=False, seed=seed)
        if prepared.val
        else None
    )
    try:
        model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=config.train.epochs,
            callbacks=[callback],
            shuffle=False,
            verbose=0,
        )
    except KeyboardInterrupt:
        if callback.best_weights is not None:
            save()
            checkpoint.set_latest(run_dir)
            raise Interrupted(
                f"training interrupted; best model so far (epoch {result.best_epoch}) "
                f"saved in {run_dir}"
            ) from None
        raise Interrupted(
            f"training interrupted before the first epoch ended; nothing saved in {run_dir}"
        ) from None
    save()
    checkpoint.set_latest(run_dir)
    return result
