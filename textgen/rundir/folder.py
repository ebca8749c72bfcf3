"""The run directory as a whole: the training lock, a new run, ``--overwrite``, ``latest``.

``--overwrite`` deletes only the names textgen writes (:data:`~textgen.rundir.names.OWNED`),
and only in a folder that holds a run.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from textgen.errors import DataError, UsageError
from textgen.rundir.names import LOCK, OWNED
from textgen.rundir.store import current_umask, fsync_dir, is_run, replace_link


class RunLock:
    """An exclusive OS lock on a run directory, held while one process trains into it.

    ``flock`` locks belong to the open file: the kernel releases them when the process
    exits, however it exits (SIGKILL included), so a lock is never left stale.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        import fcntl

        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o666 & ~current_umask())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 64).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise DataError(
                f"{self.run_dir} is in use by another textgen process (pid {holder}); "
                "wait for it to finish or stop it first"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *_: Any) -> None:
        if self.fd is not None:
            os.close(self.fd)  # releases the lock
            self.fd = None


def foreign_entries(run_dir: Path) -> list[str]:
    """Names in ``run_dir`` that textgen did not write (what --overwrite must not delete)."""
    return sorted(p.name for p in run_dir.iterdir() if p.name not in OWNED)


def clear_run(run_dir: Path) -> None:
    """Delete what textgen wrote in ``run_dir`` (the lock file stays: it is held)."""
    for name in sorted(OWNED - {LOCK}):
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.is_symlink() or path.exists():
            path.unlink()
    fsync_dir(run_dir)


def set_latest(run_dir: Path) -> bool:
    """Point ``latest`` beside ``run_dir`` at it (a relative symlink, replaced atomically).

    A ``latest`` that is not a link (a user's own file or folder) is left alone: returns
    False then.
    """
    run_dir = run_dir.resolve()
    link = run_dir.parent / "latest"
    if link.exists() and not link.is_symlink():
        return False
    replace_link(link, run_dir.name)
    return True


def resolve_run(model: str | Path | None, runs_root: str | Path = "runs") -> Path:
    """The run directory named by ``--model``, or the latest run under ``runs_root``.

    A ``latest`` link is resolved to the run it names.
    """
    if model is None:
        latest = Path(runs_root) / "latest"
        if not latest.exists():
            raise DataError(
                f"no trained run found ({latest} does not exist); train one with "
                "'textgen train --config FILE' or pass --model RUN_DIR"
            )
        return latest.resolve()
    path = Path(model)
    if not path.exists() and not path.is_absolute() and (Path(runs_root) / path).exists():
        path = Path(runs_root) / path
    if not path.is_dir():
        raise DataError(f"run directory not found: {model}")
    return path.resolve() if path.is_symlink() else path


def check_out(run_dir: Path) -> None:
    """Refuse an ``--out`` that cannot be a run directory, before anything is written."""
    if run_dir.name == "latest" or (run_dir.is_symlink() and not run_dir.is_dir()):
        raise UsageError(
            f"--out {run_dir}: 'latest' is the link to the most recent run; choose another name"
        )
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"--out {run_dir} exists and is not a folder")


def prepare_new(run_dir: Path, overwrite: bool) -> None:
    """Make ``run_dir`` an empty run (the caller holds its lock).

    ``--overwrite`` deletes only what textgen wrote, and only in a folder that holds a run;
    anything else in the folder refuses the whole overwrite, naming it.
    """
    entries = [p.name for p in run_dir.iterdir() if p.name != LOCK]
    if not entries:
        return
    if not overwrite:
        raise UsageError(
            f"run directory {run_dir} already exists; pass --overwrite to replace it, "
            f"--resume {run_dir} to continue it, or --out to choose another"
        )
    if not is_run(run_dir):
        raise UsageError(
            f"{run_dir} is not empty and is not a textgen run directory; "
            "refusing to delete it with --overwrite"
        )
    foreign = foreign_entries(run_dir)
    if foreign:
        shown = ", ".join(foreign[:3]) + (
            f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        )
        raise UsageError(
            f"{run_dir} holds {shown}, which textgen did not write; refusing to delete it "
            "with --overwrite (move them away or choose another --out)"
        )
    clear_run(run_dir)
