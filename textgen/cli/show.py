"""``textgen plot`` and ``textgen info``: look at a finished or running run."""

from __future__ import annotations

import click

from textgen.cli.common import (
    _friendly,
    main,
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
