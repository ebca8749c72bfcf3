"""The ``textgen`` command line: parse options, call one function, print the result.

Results go to stdout, progress and warnings to stderr. Errors the user can fix are one
line on stderr and a non-zero exit code (2 usage, 1 data, 130 interrupted), never a
traceback. TensorFlow is imported only by the commands that train, so ``--help`` is fast.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from collections.abc import Callable
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
    are removed on the way out instead of being left behind by the default handler.
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


@main.command()
@click.option("--seed", "seed", default=None, help="Text to continue.")
@click.argument("seeds_file", required=False, type=click.File("r", encoding="utf-8"))
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
    "--beam-width", default=4, show_default=True, type=int, help="Beams for --strategy beam."
)
@click.option(
    "--length-penalty",
    default=1.0,
    show_default=True,
    type=float,
    help="Beam score = log-prob / length**penalty (0 = raw sum).",
)
@click.option("--rng-seed", default=None, type=int, help="Random seed: same seed, same text.")
@click.option("--stop", default=None, help="Stop a text at this string (e.g. $'\\n').")
@click.option(
    "--format", "fmt", type=click.Choice(["text", "jsonl"]), default="text", show_default=True
)
@click.option("--interactive", "-i", is_flag=True, help="Prompt for seeds until an empty line.")
@_friendly
def generate(
    seed: str | None,
    seeds_file: Any,
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
    token by token). A line-mode model stops at the end of a sentence, so --length is a
    maximum. Give - instead of --seed to read one seed per line from stdin, or
    --interactive for a prompt. The default is greedy decoding, like the classic
    sentence_generation; --strategy sample or beam for more varied or more likely text.

    \b
    Examples:
      textgen generate --seed "경마장에"
      textgen generate --model runs/shakespeare-char --seed "ROMEO:" --length 200 \\
          --strategy sample --temperature 0.8 --top-k 20 -n 3 --rng-seed 1
      printf '그의\\n가는\\n' | textgen generate - --format jsonl
    """
    from textgen.decoding.generate import Generator, Strategy, check_sizes
    from textgen.errors import UsageError
    from textgen.rundir import load_bundle, resolve_run

    check_sizes(length, num_samples)
    if sum(x is not None and x is not False for x in (seed, seeds_file, interactive or None)) != 1:
        raise UsageError("give exactly one of --seed TEXT, - (seeds from stdin) or --interactive")
    plan = Strategy(strategy, temperature, top_k, top_p, beam_width, length_penalty)
    bundle = load_bundle(resolve_run(model_dir))
    generator = Generator(bundle.lm, bundle.tokenizer)
    stream = fmt == "text" and num_samples == 1 and strategy != "beam" and sys.stdout.isatty()

    def run(text_seed: str) -> None:
        on_token = None
        if stream:
            on_token = generator.printer(text_seed, partial(click.echo, nl=False))

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
            text = generator.join(text_seed, ids, stop)
            if fmt == "jsonl":
                record = {"seed": text_seed, "text": text, "tokens": len(ids), "mean_logprob": logp}
                click.echo(json.dumps(record, ensure_ascii=False))
            else:
                click.echo(text)

    if interactive:
        while True:
            try:
                text_seed = click.prompt("seed", default="", show_default=False, err=True)
            except (EOFError, click.Abort):
                break
            if not text_seed.strip():
                break
            try:
                run(text_seed)
            except TextgenError as err:  # a bad seed should not end the session
                click.echo(f"error: {err}", err=True)
        return
    seeds = [seed] if seed is not None else [ln.rstrip("\n") for ln in seeds_file if ln.strip()]
    for text_seed in seeds:
        run(text_seed)


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
@click.option("--encoding", default="utf-8", show_default=True, help="Encoding of the files.")
@click.option(
    "--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True
)
@_friendly
def evaluate(
    files: tuple[str, ...], model_dir: str | None, valid: bool, encoding: str, fmt: str
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
    """
    from textgen.corpus.examples import held_out_text
    from textgen.corpus.read import read_corpus
    from textgen.errors import DataError, UsageError
    from textgen.evaluate import evaluate_text
    from textgen.rundir import load_bundle, resolve_run

    if not files and not valid:
        raise UsageError("give FILES to score, or --valid for the run's own held-out text")
    bundle = load_bundle(resolve_run(model_dir))
    results = {}
    if valid:
        text = held_out_text(bundle.config.data, bundle.metadata.get("corpus_sha256"))
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
