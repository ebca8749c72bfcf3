"""The run directory as a whole: the training lock, a new run, ``--overwrite``, ``latest``.

``--overwrite`` deletes only the files textgen recorded writing (snapshot manifests, the
links into them, :data:`~textgen.rundir.names.WRITTEN`), and only when that is all the
folder holds.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from textgen.errors import DataError, UsageError
from textgen.rundir.names import (
    CURRENT,
    FILES,
    LATEST,
    LOCK,
    LOGS,
    MANIFEST,
    PLOT,
    SNAPSHOTS,
    WRITTEN,
)
from textgen.rundir.store import (
    current_digests,
    current_umask,
    fsync_dir,
    is_run,
    manifest_digests,
    read_written,
    replace_link,
    sha256_file,
    written_unchanged,
)


class RunLock:
    """An exclusive OS lock on a run directory, held while one process trains into it.

    ``flock`` locks belong to the open file: the kernel releases them when the process
    exits, however it exits (SIGKILL included), so a lock is never left stale. When the
    block fails before the run's first commit (a refused ``--out``, a bad corpus), the
    lock file, and the folder if the lock made it, are removed again: a refusal leaves
    the user's folder as it was.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.fd: int | None = None
        self.made: list[Path] = []  # what __enter__ created (folders, then the lock file)
        self.mark: str | None = None

    def __enter__(self) -> RunLock:
        import fcntl

        missing = [p for p in (self.run_dir, *self.run_dir.parents) if not p.exists()]
        self.run_dir.mkdir(parents=True, exist_ok=True)
        lock = self.run_dir / LOCK
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666 & ~current_umask())
            made = [*missing, lock]
        except FileExistsError:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666 & ~current_umask())
            made = list(missing)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 64).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            self.made = [p for p in made if p != lock]  # the holder's file is not ours
            self._remove_made()
            raise DataError(
                f"{self.run_dir} is in use by another textgen process (pid {holder}); "
                "wait for it to finish or stop it first"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd, self.made, self.mark = fd, made, self._commit_mark()
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is not None and self._commit_mark() == self.mark:
            self._remove_made()  # nothing was committed: leave the folder as it was
        if self.fd is not None:
            os.close(self.fd)  # releases the lock
            self.fd = None

    def _commit_mark(self) -> str | None:
        """The snapshot ``current`` names now (None before a run's first commit)."""
        try:
            return os.readlink(self.run_dir / SNAPSHOTS / CURRENT)
        except OSError:
            return None

    def _remove_made(self) -> None:
        for path in sorted(self.made, key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                path.rmdir() if path.is_dir() and not path.is_symlink() else path.unlink()
        self.made = []


def foreign_entries(run_dir: Path) -> list[str]:
    """What in ``run_dir`` textgen did not record writing, at every depth: what
    ``--overwrite`` must not delete (paths relative to ``run_dir``; a file textgen wrote
    but that changed since says so)."""
    return _survey(run_dir)[1]


def clear_run(run_dir: Path) -> None:
    """Delete what textgen recorded writing in ``run_dir``, only if that is everything in
    it (the lock file stays: it is held); otherwise delete nothing and name the rest."""
    owned, foreign = _survey(run_dir)
    if foreign:
        raise UsageError(_refusal(run_dir, foreign))
    for path in owned:
        path.unlink()
    for folder in sorted(
        {p.parent for p in owned} | {run_dir / SNAPSHOTS, run_dir / LOGS},
        key=lambda p: len(p.parts),
        reverse=True,
    ):
        if folder != run_dir and folder.is_dir() and not folder.is_symlink():
            with contextlib.suppress(OSError):  # emptied above; anything left stays
                folder.rmdir()
    fsync_dir(run_dir)


def _refusal(run_dir: Path, foreign: list[str]) -> str:
    shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
    return (
        f"{run_dir} holds {shown}, which textgen did not write; refusing to delete "
        "anything with --overwrite (move them away or choose another --out)"
    )


def _survey(run_dir: Path) -> tuple[list[Path], list[str]]:
    """(the files and links textgen recorded writing, everything else) in ``run_dir``.

    A file counts as textgen's only where a record says so: a snapshot's files by its
    manifest, the top-level names as links into ``current`` (or, in a copy that followed
    the links, as files equal to the snapshot's), TensorBoard files and the plot by
    :data:`~textgen.rundir.names.WRITTEN` (event files may only have grown).
    """
    owned: list[Path] = []
    foreign: list[str] = []
    current = current_digests(run_dir)
    written = read_written(run_dir)
    for entry in sorted(run_dir.iterdir()):
        name = entry.name
        if name == LOCK and entry.is_file() and not entry.is_symlink():
            continue  # held by the caller; RunLock removes it when it made it
        if name in FILES:
            linked = entry.is_symlink() and os.readlink(entry) == f"{SNAPSHOTS}/{CURRENT}/{name}"
            if linked or _matches(entry, current.get(name)):  # a link, or a copy of the file
                owned.append(entry)
            else:
                foreign.append(_changed(entry, name, current.get(name)))
        elif name == SNAPSHOTS and entry.is_dir() and not entry.is_symlink():
            _survey_snapshots(entry, owned, foreign)
        elif name in (LOGS, PLOT) or name.startswith(f".{PLOT}."):
            _survey_written(run_dir, entry, written, owned, foreign)
        else:
            foreign.append(name + ("/" if entry.is_dir() and not entry.is_symlink() else ""))
    return owned, foreign


def _survey_snapshots(store: Path, owned: list[Path], foreign: list[str]) -> None:
    for entry in sorted(store.iterdir()):
        name, shown = entry.name, f"{SNAPSHOTS}/{entry.name}"
        if entry.is_symlink():
            target = os.readlink(entry)
            # current, or a link replace_link left half-made
            if (name == CURRENT or name.startswith(f".{CURRENT}.link.")) and target.isdigit():
                owned.append(entry)
            else:
                foreign.append(shown)
        elif name == WRITTEN and entry.is_file():
            owned.append(entry)
        elif entry.is_dir() and (name.isdigit() or name == CURRENT):
            _survey_snapshot(entry, shown, owned, foreign)
        elif entry.is_dir() and name.startswith(".tmp-"):  # a save that never committed
            for path in sorted(entry.iterdir()):
                if path.name in (*FILES, MANIFEST) and path.is_file() and not path.is_symlink():
                    owned.append(path)
                else:
                    foreign.append(f"{shown}/{path.name}")
        else:
            foreign.append(shown)


def _survey_snapshot(folder: Path, shown: str, owned: list[Path], foreign: list[str]) -> None:
    """One snapshot folder: its manifest and the files the manifest lists, unchanged."""
    digests = manifest_digests(folder)
    for path in sorted(folder.iterdir()):
        name = path.name
        if path.is_symlink() or not path.is_file():
            foreign.append(f"{shown}/{name}")
        elif digests is not None and (name == MANIFEST or _matches(path, digests.get(name))):
            owned.append(path)
        else:
            foreign.append(_changed(path, f"{shown}/{name}", (digests or {}).get(name)))


def _survey_written(
    run_dir: Path, entry: Path, written: dict[str, dict[str, Any]], owned: list[Path],
    foreign: list[str],
) -> None:  # fmt: skip
    """The TensorBoard files and the plot: each file as :data:`WRITTEN` records it
    (folders are not judged: one that is not empty afterwards is left in place)."""
    paths = sorted(entry.rglob("*")) if entry.is_dir() and not entry.is_symlink() else [entry]
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            continue
        shown = path.relative_to(run_dir).as_posix()
        record = written.get(shown)
        if path.is_file() and not path.is_symlink() and written_unchanged(path, record):
            owned.append(path)
        else:
            foreign.append(f"{shown} (changed since textgen wrote it)" if record else shown)


def _matches(path: Path, digest: str | None) -> bool:
    return (
        digest is not None and path.is_file() and not path.is_symlink()
        and sha256_file(path) == digest
    )  # fmt: skip


def _changed(path: Path, shown: str, digest: str | None) -> str:
    return f"{shown} (changed since textgen wrote it)" if digest is not None else shown


def latest_link(run_dir: Path) -> Path | None:
    """Where the ``latest`` link of ``run_dir`` goes: beside it, in the folder the user
    named as its parent, links not followed (``--out runs/C`` → ``runs/latest`` even when
    ``runs/C`` is a link to another disk). None for ``--out .`` or ``..``: their parent
    is outside what the user named, so nothing is written there."""
    if run_dir.name in ("", ".", ".."):
        return None
    return run_dir.parent / LATEST


def set_latest(run_dir: Path) -> bool:
    """Point ``latest`` beside ``run_dir`` at it (a relative symlink, replaced atomically).

    A ``latest`` that is not a link (a user's own file or folder) is left alone: returns
    False then. Nothing is written for a run named ``.`` or ``..`` (see :func:`latest_link`).
    """
    link = latest_link(run_dir)
    if link is None:
        return True
    if link.exists() and not link.is_symlink():
        return False
    if link.is_symlink() and os.readlink(link) == run_dir.name:
        return True
    replace_link(link, run_dir.name)
    return True


def _follow_latest(link: Path) -> Path:
    """The run a ``latest`` link names: its target, one level, relative to its folder."""
    return link.parent / os.readlink(link)


def resolve_run(model: str | Path | None, runs_root: str | Path = "runs") -> Path:
    """The run directory named by ``--model``, or the latest run under ``runs_root``.

    A ``latest`` link is followed one level to the run it names; any other path is kept
    as given (a run that is itself a link keeps the name the user gave it).
    """
    if model is None:
        path = Path(runs_root) / LATEST
        if not path.is_symlink() and not path.exists():
            raise DataError(
                f"no trained run found ({path} does not exist); train one with "
                "'textgen train --config FILE' or pass --model RUN_DIR"
            )
    else:
        path = Path(model)
        if not path.exists() and not path.is_absolute() and (Path(runs_root) / path).exists():
            path = Path(runs_root) / path
    if path.name == LATEST and path.is_symlink():
        path = _follow_latest(path)
    if not path.is_dir():
        raise DataError(f"run directory not found: {model if model is not None else path}")
    return path


def check_out(run_dir: Path) -> None:
    """Refuse an ``--out`` that cannot be a run directory, before anything is written."""
    if run_dir.name == LATEST:
        raise UsageError(
            f"--out {run_dir}: 'latest' is the link to the most recent run; choose another name"
        )
    if run_dir.is_symlink() and not run_dir.exists():
        raise UsageError(
            f"--out {run_dir} is a link to {os.readlink(run_dir)}, which does not exist; "
            "create that folder or choose another --out"
        )
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"--out {run_dir} exists and is not a folder")
    for parent in run_dir.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"--out {run_dir}: {parent} is a file, not a folder")
            break
    check_links(run_dir)


def check_links(run_dir: Path) -> None:
    """Refuse a run whose lock file or ``logs/`` is a link: writes would leave the run."""
    for name in (LOCK, LOGS):
        if (run_dir / name).is_symlink():
            raise DataError(f"{run_dir / name} is a link; textgen writes it itself: remove it")


def prepare_new(run_dir: Path, overwrite: bool) -> None:
    """Make ``run_dir`` an empty run (the caller holds its lock).

    ``--overwrite`` deletes only what textgen recorded writing, at every depth; anything
    else in the folder, or a file of textgen's changed since, refuses the whole overwrite
    before anything is deleted, naming it.
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
    clear_run(run_dir)
