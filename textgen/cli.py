"""The ``textgen`` command line: parse options, call one function, print the result.

Results go to stdout, progress and warnings to stderr. Errors the user can fix are one
line on stderr and a non-zero exit code (2 usage, 1 data, 130 interrupted), never a
traceback. TensorFlow is imported only by the commands that train, so ``--help`` is fast.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any

import click

from textgen import __version__
from textgen.errors import TextgenError


def _friendly(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn :class:`TextgenError` into one line on stderr and its exit code."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except TextgenError as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(err.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="textgen")
def main() -> None:
    """Train recurrent language models on text and generate new text with them.

    \b
    Example:
      textgen train --config configs/ko-toy.toml
      textgen generate --seed "경마장에"
    """


@main.command()
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=True, path_type=Path),
    help="TOML config file ([data], [model], [train]).",
)
@click.option(
    "--corpus", type=click.Path(path_type=Path), help="Corpus file (overrides data.corpus)."
)
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
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
@_friendly
def train(
    config_path: Path,
    corpus: Path | None,
    out: Path | None,
    overrides: tuple[str, ...],
    overwrite: bool,
    quiet: bool,
) -> None:
    """Train a language model and write its run directory.

    The run directory (default runs/<config name>) gets the resolved config, the
    tokenizer, the best model, history.csv and metadata.json; runs/latest points at it.
    Relative paths inside the config resolve against the config file's folder.

    \b
    Examples:
      textgen train --config configs/ko-toy.toml
      textgen train --config configs/shakespeare-char.toml \\
          --corpus ../shared/data/tinyshakespeare/input.txt --set train.epochs=1
    """
    from textgen import config as config_mod
    from textgen.train import train as run_training

    cfg = config_mod.load(config_path)
    if corpus is not None:
        cfg = config_mod.with_corpus(cfg, corpus)
    cfg = cfg.with_overrides(list(overrides))
    run_dir = out or Path("runs") / config_path.stem
    log = (lambda _msg: None) if quiet else (lambda msg: click.echo(msg, err=True))
    result = run_training(
        cfg, run_dir, overwrite=overwrite, progress=None if not quiet else False, log=log
    )
    best = f"best epoch {result.best_epoch}, {result.metric} {result.best_loss:.4f}"
    log(f"saved {result.run_dir} ({best})")


@main.command()
@click.option("--seed", "seed", default=None, help="Text to continue.")
@click.argument("seeds_file", required=False, type=click.File("r", encoding="utf-8"))
@click.option("--model", "model_dir", default=None, help="Run directory [default: runs/latest].")
@click.option(
    "--length", default=50, show_default=True, type=int, help="Maximum number of new tokens."
)
@click.option("-n", "--num-samples", default=1, show_default=True, type=int, help="Texts per seed.")
@click.option(
    "--format", "fmt", type=click.Choice(["text", "jsonl"]), default="text", show_default=True
)
@_friendly
def generate(
    seed: str | None,
    seeds_file: Any,
    model_dir: str | None,
    length: int,
    num_samples: int,
    fmt: str,
) -> None:
    """Continue a seed text with a trained model (greedy decoding).

    Prints one generated text per line on stdout. A line-mode model stops at the end of
    a sentence, so --length is a maximum. Give - instead of --seed to read one seed per
    line from stdin.

    \b
    Examples:
      textgen generate --seed "경마장에"
      textgen generate --model runs/shakespeare-char --seed "ROMEO:" --length 200
      printf '그의\\n가는\\n' | textgen generate -
    """
    from textgen.checkpoint import load_bundle, resolve_run
    from textgen.errors import UsageError
    from textgen.generate import Generator

    if num_samples < 1:
        raise UsageError(f"-n/--num-samples must be at least 1, got {num_samples}")
    if length < 1:
        raise UsageError(f"--length must be at least 1, got {length}")
    if (seed is None) == (seeds_file is None):
        raise UsageError("give exactly one of --seed TEXT or - (seeds from stdin)")
    seeds = (
        [seed] if seed is not None else [line.rstrip("\n") for line in seeds_file if line.strip()]
    )
    bundle = load_bundle(resolve_run(model_dir))
    generator = Generator(bundle.lm, bundle.tokenizer)
    for text_seed in seeds:
        decoded = generator.continue_ids(text_seed, length=length, num=num_samples)
        for ids, logp in zip(decoded.ids, decoded.mean_logprob, strict=True):
            text = generator.join(text_seed, ids)
            if fmt == "jsonl":
                record = {"seed": text_seed, "text": text, "tokens": len(ids), "mean_logprob": logp}
                click.echo(json.dumps(record, ensure_ascii=False))
            else:
                click.echo(text)


@main.command()
@click.argument("run", required=False)
@_friendly
def info(run: str | None) -> None:
    """Show a run's config, vocabulary size, parameters and training history.

    \b
    Example:
      textgen info runs/ko-toy
    """
    from textgen.checkpoint import HISTORY, load_bundle, resolve_run

    bundle = load_bundle(resolve_run(run))
    meta = bundle.metadata
    click.echo(f"run: {bundle.run_dir}")
    tok, m = bundle.tokenizer, bundle.config.model
    click.echo(f"level: {tok.level}, mode: {bundle.config.data.mode}, vocab: {len(tok.vocab)}")
    click.echo(
        f"model: {m.layers}x{m.units} {m.cell}, embedding {m.embedding_dim}, "
        f"{meta.get('parameters')} parameters"
    )
    click.echo(f"corpus: {meta.get('corpus')} (sha256 {str(meta.get('corpus_sha256'))[:12]})")
    click.echo(f"best epoch: {meta.get('best_epoch')}, loss {meta.get('best_loss')}")
    history = bundle.run_dir / HISTORY
    if history.exists():
        click.echo(history.read_text(encoding="utf-8").rstrip())
