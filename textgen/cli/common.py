"""What every command shares: the ``textgen`` group, one-line errors, signals, the
corpus options and reading a config with its overrides."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import replace
from functools import wraps
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
