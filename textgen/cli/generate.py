"""``textgen generate``: seeds from an option, a file, stdin or a prompt, one result each."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import click

from textgen.cli.common import (
    STRATEGY_NAMES,
    _friendly,
    main,
)
from textgen.errors import TextgenError

MAX_SEED_BYTES = 16 << 20  # one line of a seeds file is held whole; a longer one is refused


@main.command()
@click.option("--seed", "seed", default=None, help="Text to continue.")
@click.argument("seeds_file", required=False, metavar="[SEEDS_FILE | -]")
@click.option("--model", "model_dir", default=None, help="Run directory [default: runs/latest].")
@click.option("--length", default=50, show_default=True, type=int, help="Maximum new tokens.")
@click.option("-n", "--num-samples", default=1, show_default=True, type=int, help="Texts per seed.")
@click.option(
    "--strategy",
    type=click.Choice(STRATEGY_NAMES),
    default="greedy",
    show_default=True,
    help="greedy (argmax), sample (temperature/top-k/top-p) or beam search.",
)
@click.option(
    "--temperature", default=1.0, show_default=True, type=float, help="Sampling temperature."
)
@click.option(
    "--top-k", default=0, show_default=True, type=int, help="Sample among the k best (0 = all)."
)
@click.option("--top-p", default=1.0, show_default=True, type=float, help="Nucleus mass in (0, 1].")
@click.option(
    "--beam-width",
    default=4,
    show_default=True,
    type=int,
    help="Beams for --strategy beam (at most 1,000; -n at most this).",
)
@click.option(
    "--length-penalty",
    default=1.0,
    show_default=True,
    type=float,
    help="Beam score = log-prob / length**penalty (0 = raw sum).",
)
@click.option("--rng-seed", default=None, type=int, help="Random seed: same seed, same text.")
@click.option(
    "--stop",
    default=None,
    help="End each text just before this string in the new text (e.g. $'\\n').",
)
@click.option(
    "--format", "fmt", type=click.Choice(["text", "jsonl"]), default="text", show_default=True
)
@click.option("--interactive", "-i", is_flag=True, help="Prompt for seeds until an empty line.")
@_friendly
def generate(
    seed: str | None,
    seeds_file: str | None,
    model_dir: str | None,
    length: int,
    num_samples: int,
    strategy: str,
    temperature: float,
    top_k: int,
    top_p: float,
    beam_width: int,
    length_penalty: float,
    rng_seed: int | None,
    stop: str | None,
    fmt: str,
    interactive: bool,
) -> None:
    """Continue seed texts with a trained model.

    Prints one generated text per line on stdout (on a terminal, a single text streams
    token by token), starting with the seed as the model reads it (normalized, single
    spaces between words). A line-mode model stops at the end of a sentence, so --length
    is a maximum; --stop ends a text just before the first occurrence of a string in the
    new text, at every level and with every strategy. --length times -n (or
    --beam-width) is at most 10,000,000 tokens.

    Give SEEDS_FILE, or - for stdin, to continue one seed per line: each line gets its
    -n results in order, written as soon as they are ready, so generate can sit in a
    pipeline. A line that cannot be used (empty, not UTF-8, no known token) gets its
    error on stderr and empty lines (jsonl: records with an "error" field) in the
    output, and the command exits with 1 after the last line. --interactive prompts for
    seeds instead. The default is greedy decoding, like the classic sentence_generation;
    --strategy sample or beam for more varied or more likely text.

    \b
    Examples:
      textgen generate --seed "경마장에"
      textgen generate --model runs/shakespeare-char --seed "ROMEO:" --length 200 \\
          --strategy sample --temperature 0.8 --top-k 20 -n 3 --rng-seed 1
      printf '그의\\n가는\\n' | textgen generate - --format jsonl
      textgen generate --model runs/shakespeare-char --seed "ROMEO:" --stop $'\\n\\n'
    """
    from textgen.decoding.generate import Generator, Strategy, check_sizes
    from textgen.errors import UsageError
    from textgen.rundir import load_bundle, resolve_run

    if sum(x is not None and x is not False for x in (seed, seeds_file, interactive or None)) != 1:
        raise UsageError("give exactly one of --seed TEXT, - (seeds from stdin) or --interactive")
    if seed is not None and not _is_utf8(seed):
        raise UsageError("--seed is not valid UTF-8")
    plan = Strategy(strategy, temperature, top_k, top_p, beam_width, length_penalty)
    check_sizes(length, num_samples, plan)
    if rng_seed is not None and not 0 <= rng_seed < 2**63:
        raise UsageError(f"--rng-seed must be in [0, 2**63), got {rng_seed}")
    if not math.isfinite(length_penalty):
        raise UsageError(f"--length-penalty must be a finite number, got {length_penalty}")
    source = _open_seeds(seeds_file) if seeds_file is not None else None
    bundle = load_bundle(resolve_run(model_dir))
    generator = Generator(bundle.lm, bundle.tokenizer)
    stream = fmt == "text" and num_samples == 1 and strategy != "beam" and _terminal()

    def run(text_seed: str, line: int | None = None) -> None:
        on_token = None
        if stream:
            on_token = generator.printer(text_seed, partial(click.echo, nl=False), stop)

        decoded = generator.continue_ids(
            text_seed,
            length=length,
            num=num_samples,
            strategy=plan,
            rng_seed=rng_seed,
            stop=stop,
            on_token=on_token,
        )
        if stream:
            on_token.finish(generator.join(text_seed, decoded.ids[0], stop))
            click.echo()
            return
        for ids, logp in zip(decoded.ids, decoded.mean_logprob, strict=True):
            text, kept = generator.finish(text_seed, ids, stop)
            if fmt == "jsonl":
                record = {"seed": text_seed, "text": text, "tokens": kept, "mean_logprob": logp}
                click.echo(json.dumps(record | _line(line), ensure_ascii=False))
            else:
                click.echo(text)

    if interactive:
        while True:
            try:
                text_seed = click.prompt("seed", default="", show_default=False, err=True)
            except (EOFError, click.Abort):
                break
            except UnicodeDecodeError as err:  # the session goes on, as after a bad seed
                click.echo(f"error: the seed is not valid UTF-8 (byte {err.start})", err=True)
                continue
            if not text_seed.strip():
                break
            try:
                run(text_seed)
            except TextgenError as err:  # a bad seed should not end the session
                click.echo(f"error: {err}", err=True)
        return
    if source is None:
        run(seed)
        return
    name, lines = source
    failed = False
    for number, text_seed, problem in lines:
        if problem is None:
            try:
                run(text_seed, number)
                continue
            except TextgenError as err:
                problem = str(err)
        failed = True  # the line's error on stderr, its place in the output kept
        click.echo(f"error: {name} line {number}: {problem}", err=True)
        for _ in range(num_samples):
            if fmt == "jsonl":
                record = {"seed": text_seed} | _line(number) | {"error": problem}
                click.echo(json.dumps(record, ensure_ascii=False))
            else:
                click.echo()
    if failed:
        sys.exit(1)


def _terminal() -> bool:
    """Whether stdout is a terminal (a single text then streams token by token)."""
    return sys.stdout.isatty()


def _is_utf8(text: str) -> bool:
    """False for text with lone surrogates (bytes of an argument that were not UTF-8)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _line(number: int | None) -> dict[str, int]:
    return {} if number is None else {"line": number}


def _open_seeds(path: str) -> tuple[str, Iterator[tuple[int, str | None, str | None]]]:
    """The name of a seeds file (``stdin`` for ``-``) and its lines as they arrive:
    ``(line number, seed, None)``, or ``(line number, seed or None, problem)`` for a line
    that cannot be a seed. Nothing is read ahead, so each seed is answered before the
    next line is read."""
    from textgen.errors import DataError, UsageError

    if path == "-":
        stdin = getattr(sys.stdin, "buffer", None)
        if stdin is None:
            raise DataError("stdin is closed; pipe the seeds in, one per line")
        return "stdin", _seed_lines(stdin)
    if not path:
        raise UsageError("the seeds file name is empty; give a file, or - for stdin")
    file = Path(path)
    if file.is_dir():
        raise DataError(f"seeds file {path} is a folder, not a text file")
    try:
        handle = file.open("rb")
    except FileNotFoundError:
        raise DataError(f"seeds file not found: {path}") from None
    except OSError as err:
        raise DataError(f"cannot read seeds file {path}: {err.strerror}") from None

    def lines() -> Iterator[tuple[int, str | None, str | None]]:
        with handle:
            yield from _seed_lines(handle)

    return path, lines()


def _seed_lines(stream: Any) -> Iterator[tuple[int, str | None, str | None]]:
    offset = 0
    for number in range(1, sys.maxsize):
        raw = stream.readline(MAX_SEED_BYTES + 1)
        if not raw:
            return
        start, offset = offset, offset + len(raw)
        if len(raw) > MAX_SEED_BYTES and not raw.endswith(b"\n"):
            while (rest := stream.readline(1 << 20)) and not rest.endswith(b"\n"):
                offset += len(rest)  # skip the rest of the line, a block at a time
            offset += len(rest)
            yield number, None, f"longer than {MAX_SEED_BYTES:,} bytes; a seed is one line"
            continue
        raw = raw.removesuffix(b"\n").removesuffix(b"\r")
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):  # a byte-order mark is no text
            raw, start = raw[3:], start + 3
        try:
            yield number, raw.decode("utf-8"), None
        except UnicodeDecodeError as err:
            yield (
                number,
                None,
                f"not valid UTF-8 at byte {start + err.start} (0x{raw[err.start]:02x})",
            )
