"""``textgen train`` and ``textgen prepare``: start, resume and feed a training run."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from textgen.cli.common import (
    _config,
    _corpus_options,
    _friendly,
    _run_name,
    main,
)


@main.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=True, path_type=Path),
    help="TOML config file ([data], [model], [train]).",
)
@_corpus_options
@click.option(
    "--out", type=click.Path(path_type=Path), help="Run directory [default: runs/<config name>]."
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="SECTION.KEY=VALUE",
    help="Override a config value; repeatable, e.g. --set train.epochs=3.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing run directory.")
@click.option(
    "--resume",
    "resume_dir",
    type=click.Path(path_type=Path),
    help="Continue an interrupted run from its last saved step.",
)
@click.option(
    "--init-from",
    "init_from",
    type=click.Path(path_type=Path),
    metavar="RUN",
    help="Fine-tune: start from RUN's weights and tokenizer (fresh optimizer); RUN's "
    "[model] and tokenizer keys are used.",
)
@click.option(
    "--extend-vocab",
    is_flag=True,
    help="With --init-from (word, char, jamo levels): give the new corpus' tokens that "
    "RUN's vocabulary lacks ids after the old ones (data.min_freq, data.max_vocab apply).",
)
@click.option(
    "--distribute",
    type=click.Choice(["none", "mirrored", "multiworker"]),
    default=None,
    help="tf.distribute strategy (overrides train.distribute); multiworker reads TF_CONFIG.",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
@_friendly
def train(
    config_path: Path | None,
    corpus: Path | None,
    encoding: str | None,
    out: Path | None,
    overrides: tuple[str, ...],
    overwrite: bool,
    resume_dir: Path | None,
    init_from: Path | None,
    extend_vocab: bool,
    distribute: str | None,
    quiet: bool,
) -> None:
    """Train a language model and write its run directory.

    The run directory (default runs/<config name>) gets the resolved config, the
    tokenizer, the best model, history.csv, metadata.json and the resumable state
    last.npz; runs/latest points at it. Relative paths inside the config resolve against
    the config file's folder. Ctrl-C saves the state after the current step and prints
    the command that resumes it; --resume continues exactly where it stopped (--set may
    change e.g. train.epochs).

    --init-from RUN fine-tunes: the new run starts from RUN's best weights and its
    tokenizer with a fresh optimizer, and records RUN (path, run id, sha256 of the
    weights) in its metadata.json. RUN's [model] and tokenizer keys are used; giving one
    with another value is an error, while the training keys and dropout rates are yours.
    Before the first step it prints how much of the new corpus RUN's vocabulary lacks.
    --extend-vocab (word, char and jamo levels) adds those tokens after the old ids; their
    rows start from the mean of the old rows, and the old rows are kept exactly.

    \b
    Examples:
      textgen train --config configs/ko-toy.toml
      textgen train --config configs/shakespeare-char.toml \\
          --corpus ../shared/data/tinyshakespeare/input.txt --set train.epochs=1
      textgen train --resume runs/shakespeare-char --set train.epochs=3
      textgen train --config configs/ko-constitution-char.toml \\
          --corpus data/ko-reviews/reviews.txt --out runs/ko-reviews-char \\
          --init-from runs/ko-constitution-char --extend-vocab
      TF_CONFIG='{"cluster": {"worker": ["host1:12345", "host2:12345"]},
        "task": {"type": "worker", "index": 0}}' textgen train \\
          --config configs/shakespeare-char.toml --distribute multiworker

    With --distribute multiworker every worker runs the same command with its own
    TF_CONFIG and the same --out on a shared filesystem; only the chief (worker 0)
    writes it, and a restarted cluster continues from its last saved state.
    """
    from textgen.errors import UsageError
    from textgen.machine import machine_line, process_seconds
    from textgen.report import best_summary, training_line
    from textgen.training.checkpoint import resume_config
    from textgen.training.loop import train as run_training

    if extend_vocab and init_from is None:
        raise UsageError("--extend-vocab grows the vocabulary of --init-from RUN; give --init-from")
    if resume_dir is not None:
        if init_from is not None:
            raise UsageError(
                "--init-from starts a new run and --resume continues one: a resumed "
                "fine-tuning run keeps its parent on its own, so give --resume alone"
            )
        if config_path or corpus or encoding or out or overwrite:
            raise UsageError("--resume takes the run's own config; only --set may go with it")
        cfg, run_dir = resume_config(resume_dir, list(overrides)), resume_dir
    elif config_path is None:
        with_init = " with --init-from RUN" if init_from is not None else ""
        raise UsageError(f"give --config FILE{with_init} (or --resume RUN_DIR)")
    else:
        cfg = _config(config_path, corpus, encoding, overrides)
        run_dir = out or Path("runs") / _run_name(config_path)
    if distribute is not None:
        cfg = cfg.with_overrides([f"train.distribute={distribute}"])
    log = (lambda _msg: None) if quiet else (lambda msg: click.echo(msg, err=True))
    start = None
    if init_from is not None:
        start, cfg = _fine_tuning(
            init_from, config_path, overrides, cfg, run_dir, extend_vocab, log
        )
    result = run_training(
        cfg,
        run_dir,
        overwrite=overwrite,
        resume=resume_dir is not None,
        progress=False if quiet else None,
        log=log,
        start=start,
    )
    best = best_summary(result.metric, result.best_epoch, result.best_loss)
    log(training_line(result.history, result.state.elapsed, process_seconds(), machine_line()))
    if result.chief:
        log(f"saved {result.run_dir} ({best})")
    else:
        log(f"worker done; the chief saved {result.run_dir} ({best})")


def _fine_tuning(
    init_from: Path,
    config_path: Path,
    overrides: tuple[str, ...],
    cfg: Any,
    run_dir: Path,
    extend: bool,
    log: Any,
) -> tuple[Any, Any]:
    """(what the run starts from, the config merged with RUN's model and tokenizer keys)."""
    from textgen.config import explicit_keys
    from textgen.errors import UsageError
    from textgen.training.finetune import load_parent, merge_config, start_from

    parent = load_parent(init_from)
    if run_dir.resolve() == parent.run_dir.resolve():
        raise UsageError(f"--out {run_dir} is the run --init-from reads; choose another --out")
    explicit = explicit_keys(config_path, list(overrides))
    cfg = merge_config(parent, cfg, explicit, extend=extend)
    return start_from(parent, cfg, extend=extend, log=log), cfg


@main.command()
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="TOML config file; its [data] section says what to prepare.",
)
@_corpus_options
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="SECTION.KEY=VALUE",
    help="Override a config value; repeatable, e.g. --set data.level=word.",
)
@click.option(
    "--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@_friendly
def prepare(
    config_path: Path,
    corpus: Path | None,
    encoding: str | None,
    overrides: tuple[str, ...],
    fmt: str,
    quiet: bool,
) -> None:
    """Tokenize a stream-mode corpus once into the id cache that training reads.

    One streaming pass with bounded memory (the vocabulary is counted in the same pass)
    writes the token ids and the tokenizer to a cache folder keyed by the corpus' sha256
    and every tokenizer setting ($TEXTGEN_CACHE, default ~/.cache/textgen). `textgen
    train` does the same on its own when the cache has no entry, so this command is for
    doing it ahead of time, on a machine of its own or for several runs at once.

    \b
    Examples:
      textgen prepare --config configs/shakespeare-char.toml \\
          --corpus ../shared/data/tinyshakespeare/input.txt
      textgen prepare --config configs/ptb-small.toml --format json
    """
    import time

    from textgen.corpus.cache import prepare_ids
    from textgen.errors import UsageError
    from textgen.report import prepare_lines, prepare_summary
    from textgen.training.progress import ByteBar

    cfg = _config(config_path, corpus, encoding, overrides)
    if cfg.data.mode != "stream":
        raise UsageError(
            'textgen prepare streams corpora in data.mode = "stream"; a "lines" corpus '
            "is padded sentence by sentence in memory when training starts"
        )
    t0 = time.perf_counter()
    with ByteBar(cfg.data.corpus, "tokenizing", enabled=not quiet and sys.stderr.isatty()) as bar:
        entry = prepare_ids(cfg.data, progress=bar.update)
    summary = prepare_summary(cfg.data, entry, time.perf_counter() - t0)
    if fmt == "json":
        click.echo(json.dumps(summary, ensure_ascii=False))
        return
    for line in prepare_lines(summary):
        click.echo(line)
