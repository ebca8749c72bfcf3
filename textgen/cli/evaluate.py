"""``textgen eval``: score text files (and the held-out text) with a run."""

from __future__ import annotations

import json
from pathlib import Path

import click

from textgen.cli.common import (
    _friendly,
    main,
)


@main.command(name="eval")
@click.argument("files", nargs=-1, type=click.Path())
@click.option("--model", "model_dir", default=None, help="Run directory [default: runs/latest].")
@click.option(
    "--valid", is_flag=True, help="Also score the validation text the run held out in training."
)
@click.option(
    "--corpus",
    "moved",
    default=None,
    help="With --valid: where the run's corpus is now (its sha256 must be the recorded one).",
)
@click.option("--encoding", default="utf-8", show_default=True, help="Encoding of the files.")
@click.option(
    "--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True
)
@_friendly
def evaluate(
    files: tuple[str, ...],
    model_dir: str | None,
    valid: bool,
    moved: str | None,
    encoding: str,
    fmt: str,
) -> None:
    """Measure a model on held-out text: cross-entropy, perplexity, bits per character.

    Tokenizes each FILE as in training; a stream model carries its state through the
    whole file with <eos> after each line (the PTB convention), a line model reads each
    line from a zero state. Reports nats per token, perplexity, bits per character of
    the original text, the token count and the out-of-vocabulary rate.

    \b
    Examples:
      textgen eval --model runs/ptb-small ../shared/data/ptb/ptb.test.txt
      textgen eval --model runs/shakespeare-char held-out.txt --format json
      textgen eval --model runs/ko-constitution-jamo --valid
      textgen eval --model runs/ko-constitution-char --valid --corpus moved/constitution.txt
    """
    from textgen.corpus.examples import held_out_text
    from textgen.corpus.read import read_corpus
    from textgen.errors import DataError, UsageError
    from textgen.evaluate import evaluate_text
    from textgen.rundir import load_bundle, resolve_run

    if not files and not valid:
        raise UsageError("give FILES to score, or --valid for the run's own held-out text")
    if moved is not None and not valid:
        raise UsageError("--corpus goes with --valid (it says where the run's corpus is now)")
    bundle = load_bundle(resolve_run(model_dir))
    results = {}
    if valid:
        text = held_out_text(
            bundle.config.data,
            bundle.metadata.get("corpus_sha256"),
            moved=moved,
            valid_sha256=bundle.metadata.get("valid_sha256"),
        )
        if not text.strip():
            raise DataError(f"{bundle.run_dir} held out no validation text (val_split = 0)")
        results["validation"] = evaluate_text(bundle, text)
    for path in files:  # checked here: read_corpus would speak of data.corpus
        if not path:
            raise UsageError("a file name to score is empty")
        if Path(path).is_dir():
            raise DataError(f"{path} is a folder, not a text file; give the files to score")
        text, _ = read_corpus(path, encoding)
        results[path] = evaluate_text(bundle, text)
    if fmt == "json":
        click.echo(json.dumps({name: r.as_dict() for name, r in results.items()}, indent=1))
        return
    for name, r in results.items():
        click.echo(
            f"{name}: {r.tokens} tokens, cross-entropy {r.cross_entropy:.4f} nats/token, "
            f"perplexity {r.perplexity:.2f}, {r.bits_per_char:.4f} bits/char, "
            f"OOV {r.oov_rate:.2%}"
        )
