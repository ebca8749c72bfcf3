"""The ``textgen`` command line: parse options, call one function, print the result.

Results go to stdout, progress and warnings to stderr. Errors the user can fix are one
line on stderr and a non-zero exit code (2 usage, 1 data, 130 interrupted), never a
traceback. TensorFlow is imported only by the commands that train, so ``--help`` is fast.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from functools import partial, wraps
from pathlib import Path
from typing import Any

import click

from textgen import __version__
from textgen.errors import TextgenError

STRATEGY_NAMES = ("greedy", "sample", "beam")  # decoding.generate.STRATEGIES, without numpy


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every ``finally`` and cleanup runs."""


def _terminate(_signum: int, _frame: Any) -> None:
    raise Terminated


def _friendly(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn :class:`TextgenError` into one line on stderr and its exit code.

    SIGTERM stops a command the way Ctrl-C does (exit 143): temporary files and folders
    are removed on the way out instead of being left behind by the default handler. An
    output pipe whose reader has gone (``textgen generate - | head -1``) ends the command
    quietly with 141, the code of a command stopped by SIGPIPE.
    """

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, _terminate)
        try:
            return func(*args, **kwargs)
        except TextgenError as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(err.exit_code)
        except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as `yes` does
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # the final flush at exit writes nowhere
            sys.exit(141)
        except Terminated:
            click.echo("terminated", err=True)
            sys.exit(143)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    return wrapper


def _corpus_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--corpus and --encoding, the options of every command that reads a config's corpus."""
    func = click.option(
        "--encoding", help="Corpus encoding (overrides data.encoding, default utf-8)."
    )(func)
    return click.option(
        "--corpus", type=click.Path(path_type=Path), help="Corpus file (overrides data.corpus)."
    )(func)


class _OneLineErrors(click.Group):
    """click's own usage errors (a bad option value, a missing argument, an unknown
    command) as one ``error:`` line with exit code 2, like every other error here."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.pop("standalone_mode", None)
        try:
            return super().main(*args, standalone_mode=False, **kwargs)
        except click.UsageError as err:
            where = f"; see '{err.ctx.command_path} --help'" if err.ctx is not None else ""
            click.echo(f"error: {err.format_message().rstrip('.')}{where}", err=True)
            sys.exit(err.exit_code)
        except click.ClickException as err:
            click.echo(f"error: {err.format_message()}", err=True)
            sys.exit(err.exit_code)
        except click.Abort:
            click.echo("interrupted", err=True)
            sys.exit(130)


@click.group(cls=_OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
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

    \b
    Examples:
      textgen train --config configs/ko-toy.toml
      textgen train --config configs/shakespeare-char.toml \\
          --corpus ../shared/data/tinyshakespeare/input.txt --set train.epochs=1
      textgen train --resume runs/shakespeare-char --set train.epochs=3
      TF_CONFIG='{"cluster": {"worker": ["host1:12345", "host2:12345"]},
        "task": {"type": "worker", "index": 0}}' textgen train \\
          --config configs/shakespeare-char.toml --distribute multiworker

    With --distribute multiworker every worker runs the same command with its own
    TF_CONFIG and the same --out on a shared filesystem; only the chief (worker 0)
    writes it, and a restarted cluster continues from its last saved state.
    """
    from textgen.errors import UsageError
    from textgen.report import best_summary
    from textgen.training.checkpoint import resume_config
    from textgen.training.loop import train as run_training

    if resume_dir is not None:
        if config_path or corpus or encoding or out or overwrite:
            raise UsageError("--resume takes the run's own config; only --set may go with it")
        cfg, run_dir = resume_config(resume_dir, list(overrides)), resume_dir
    elif config_path is None:
        raise UsageError("give --config FILE (or --resume RUN_DIR)")
    else:
        cfg = _config(config_path, corpus, encoding, overrides)
        run_dir = out or Path("runs") / _run_name(config_path)
    if distribute is not None:
        cfg = cfg.with_overrides([f"train.distribute={distribute}"])
    log = (lambda _msg: None) if quiet else (lambda msg: click.echo(msg, err=True))
    result = run_training(
        cfg,
        run_dir,
        overwrite=overwrite,
        resume=resume_dir is not None,
        progress=False if quiet else None,
        log=log,
    )
    best = best_summary(result.metric, result.best_epoch, result.best_loss)
    if result.chief:
        log(f"saved {result.run_dir} ({best})")
    else:
        log(f"worker done; the chief saved {result.run_dir} ({best})")


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


def _config(
    config_path: Path, corpus: Path | None, encoding: str | None, overrides: tuple[str, ...]
) -> Any:
    """The config of --config, with --corpus, --encoding and --set applied in that order."""
    from textgen import config as config_mod

    cfg = config_mod.load(config_path)
    if corpus is not None:
        cfg = config_mod.with_corpus(cfg, corpus)
    if encoding is not None:
        cfg = replace(cfg, data=replace(cfg.data, encoding=encoding))
    return cfg.with_overrides(list(overrides))


def _run_name(config_path: Path) -> str:
    """The default run name: the config file's stem, which must be a plain folder name."""
    from textgen.errors import UsageError

    name = config_path.stem
    if not name or name.startswith(".") or "/" in name or "\\" in name:
        raise UsageError(f"cannot name a run after {config_path}; pass --out runs/NAME")
    return name


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


@main.command()
@click.argument("run", required=False)
@click.option(
    "--out",
    "out",
    metavar="PATH",
    help="PNG to write, or a folder (an existing one, or a name ending in /) to write "
    "loss.png in [default: RUN/loss.png].",
)
@click.option(
    "--x", "x_axis", type=click.Choice(["epoch", "time"]), default="epoch", show_default=True
)
@_friendly
def plot(run: str | None, out: str | None, x_axis: str) -> None:
    """Draw a run's train and validation loss per epoch (or per minute) as a PNG.

    Needs matplotlib (pip install 'textgen[plot]'). Live curves of a run in progress:
    tensorboard --logdir runs.

    \b
    Examples:
      textgen plot runs/ptb-small
      textgen plot runs/shakespeare-char --x time --out curves.png
      textgen plot runs/ptb-small --out plots/
    """
    from textgen.plot import out_path, plot_history
    from textgen.rundir import resolve_run

    run_dir = resolve_run(run)
    click.echo(plot_history(run_dir, out_path(out, run_dir), x_axis))


@main.command()
@click.argument("run", required=False)
@click.option("--history", "show_history", is_flag=True, help="Print every row of history.csv.")
@_friendly
def info(run: str | None, show_history: bool) -> None:
    """Show a run: its config, vocabulary, parameters and the first, best and last epochs.

    The losses are named as in history.csv: train loss is the mean over an epoch's steps
    (each measured before its update), val loss the held-out text after the epoch, and
    check loss (runs without validation) a fixed sample of the training set after the
    epoch; the best epoch is judged by val loss, else check loss.

    \b
    Examples:
      textgen info runs/ko-toy
      textgen info runs/ko-toy --history
    """
    from textgen.report import run_summary
    from textgen.rundir import load_bundle, resolve_run

    bundle = load_bundle(resolve_run(run))
    if show_history:
        click.echo(bundle.history.rstrip() or "no epoch finished yet")
        return
    for line in run_summary(bundle):
        click.echo(line)
