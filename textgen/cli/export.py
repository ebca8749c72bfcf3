"""``textgen export``: write a run as a TensorFlow SavedModel or a LiteRT model."""

from __future__ import annotations

from pathlib import Path

import click

from textgen.cli.common import _friendly, main

FORMAT_NAMES = ("savedmodel", "litert")  # textgen.export.FORMATS, without importing it
QUANTIZE_NAMES = ("dynamic",)


@main.command()
@click.argument("run", metavar="RUN")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMAT_NAMES),
    required=True,
    help="savedmodel (TensorFlow Serving, tf.saved_model.load) or litert (one-step model).",
)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder to write.")
@click.option(
    "--quantize",
    type=click.Choice(QUANTIZE_NAMES),
    default=None,
    help="litert: store the weights as int8 (dynamic-range quantization).",
)
@click.option("--force", is_flag=True, help="Replace an earlier export in --out.")
@_friendly
def export(run: str, fmt: str, out: Path, quantize: str | None, force: bool) -> None:
    """Export the trained run RUN for programs without textgen.

    --format savedmodel writes a TensorFlow SavedModel with two signatures: generate
    (seed, max_tokens, temperature with 0 = greedy, rng_seed → text; the tokenizer runs
    in the graph for word, char and jamo models) and step (ids and the recurrent state →
    logits and the new state). Subword and morpheme models get step only, with their
    tokenizer files beside it. --format litert writes model.tflite, the one-step model
    (float32, or int8 weights with --quantize dynamic). Each folder also holds
    export.json (state layout, special ids, what normalization is left to the caller)
    and vocab.json.

    The export is written into a temporary folder beside --out and renamed into place.
    An existing --out that is not empty is refused; --force replaces an earlier export
    (a folder with export.json), never other files.

    \b
    Examples:
      textgen export runs/ko-toy --format savedmodel --out exported/ko-toy/1
      textgen export runs/shakespeare-char --format litert --out exported/char-int8 \\
          --quantize dynamic
    """
    from textgen.export import export_run
    from textgen.rundir import resolve_run

    report = export_run(resolve_run(run), fmt, out, quantize=quantize, force=force)
    for note in report.notes:
        click.echo(f"note: {note}", err=True)
    click.echo(
        f"wrote {report.out} ({report.format}: {', '.join(report.signatures)}; "
        f"{_size(report.size)}) in {report.seconds:.1f} s"
    )


def _size(nbytes: int) -> str:
    for unit in ("bytes", "KB", "MB"):
        if nbytes < 1000 or unit == "MB":
            return f"{nbytes:,} {unit}" if unit == "bytes" else f"{nbytes:,.1f} {unit}"
        nbytes /= 1000
    return f"{nbytes:,.1f} GB"
