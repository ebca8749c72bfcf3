"""Training curves: a run's ``history.csv`` → a PNG of train and validation loss.

matplotlib is an optional extra (``pip install 'textgen[plot]'``); without it the command
says how to install it. Nothing here needs TensorFlow.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

from textgen.errors import DataError, UsageError
from textgen.rundir import (
    HISTORY,
    PLOT,
    Snapshot,
    atomic_write,
    is_run,
    parse_history,
    read_run,
    record_written,
)

X_AXES = {"epoch": ("epoch", "epoch"), "time": ("elapsed", "training time (minutes)")}


def read_history(run_dir: Path) -> list[dict[str, float]]:
    """The rows of ``run_dir/history.csv`` as floats (NaN where a value is missing)."""
    path = run_dir / HISTORY

    def read(snap: Snapshot) -> str:
        if not snap.has(HISTORY):
            raise DataError(f"{path} not found: the run has not finished an epoch yet")
        return snap.path(HISTORY).read_text(encoding="utf-8")

    if not is_run(run_dir):
        raise DataError(f"{path} not found: the run has not finished an epoch yet")
    try:
        rows = parse_history(read_run(run_dir, read))
    except (UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"{path} is not a readable history file ({err})") from None
    if not rows or "train_loss" not in rows[0]:
        raise DataError(f"{path} has no epochs recorded")
    return rows


def out_path(out: str | None, run_dir: Path) -> Path:
    """The file ``--out`` names: ``RUN/loss.png`` without one, ``loss.png`` inside a folder
    (one that exists, or a name ending in a slash, which is created), else the path."""
    if out is None:
        return run_dir / PLOT
    if not out:
        raise UsageError("--out is empty; give a PNG file or a folder")
    path = Path(out)
    if path.is_dir() or out.endswith(("/", os.sep)):
        return path / PLOT
    return path


def _write_error(out: Path, err: OSError) -> DataError:
    """One line for a PNG that cannot be written: a file where a folder must be, or the
    system's reason (permission denied, no space left)."""
    for parent in out.parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                return DataError(f"cannot write {out}: {parent} is a file, not a folder")
            break
    if out.is_dir():
        return DataError(f"cannot write {out}: it is a folder")
    reason = (err.strerror or str(err)).lower()
    return DataError(f"cannot write {out}: {reason}")


def plot_history(run_dir: Path, out: Path, x_axis: str = "epoch") -> Path:
    """Draw loss and validation loss per epoch (or per minute of training) into ``out``."""
    rows = read_history(run_dir)
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, never a window
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError(
            "textgen plot needs matplotlib: pip install 'textgen[plot]' (or pip install matplotlib)"
        ) from None
    key, label = X_AXES[x_axis]
    xs = [row.get(key, math.nan) / (60.0 if x_axis == "time" else 1.0) for row in rows]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    ax.plot(xs, [row["train_loss"] for row in rows], marker="o", markersize=3, label="train loss")
    val = [row.get("val_loss", math.nan) for row in rows]
    if any(math.isfinite(v) for v in val):
        ax.plot(xs, val, marker="o", markersize=3, label="validation loss")
    ax.set_xlabel(label)
    ax.set_ylabel("cross-entropy (nats per token)")
    ax.set_title(run_dir.name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    try:  # a unique temporary name (mkstemp): a planted link cannot redirect the write
        atomic_write(out, lambda tmp: fig.savefig(tmp, format="png"))
    except OSError as err:
        raise _write_error(out, err) from None
    finally:
        plt.close(fig)
    _record_if_inside(run_dir, out)
    return out


def _record_if_inside(run_dir: Path, out: Path) -> None:
    """A plot written into the run is recorded as textgen's (``--overwrite`` may then
    delete it); one written elsewhere is the user's."""
    try:
        inside = out.resolve().parent == run_dir.resolve() and out.name == PLOT
    except OSError:
        return
    if inside:
        record_written(run_dir, [run_dir / PLOT])
