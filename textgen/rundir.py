"""The run directory: everything needed to use or inspect a trained model.

::

    runs/NAME/
      config.toml      the resolved config that trained it
      tokenizer.json   format version, level, normalization, vocabulary
      model.keras      best weights by validation loss (plain keras.saving.load_model)
      weights.npz      the same weights as numpy arrays, for TensorFlow-free generation
      history.csv      one row per epoch
      metadata.json    format version, package versions, parameter count, corpus sha256,
                       dates, and the sha256 of the bundle files
      last.npz         resumable state: every model and optimizer variable, and the
                       position (epoch, step), history and early-stopping counters
      logs/            TensorBoard event files
      .snapshots/      where the files above really live (they are symbolic links)
      .lock            held by the one process that trains into the run
    runs/latest        a symlink to the most recent run

**One save is one commit.** The files live in numbered snapshot folders,
``.snapshots/00000007/``, each a complete, immutable set with a ``manifest.json`` of every
file's sha256. A save builds the next snapshot in a temporary folder (hard links for the
files it does not change, new files written and synced), renames it into place, and then
atomically repoints the ``.snapshots/current`` link at it: that rename is the commit. A
crash before it leaves the previous snapshot current, a crash after it the new one; never a
mix. The top-level names are links through ``current``, so plain tools (and Keras) open
them as usual. Readers resolve ``current`` once and read every file from that snapshot,
so a run that is training is read whole, as its last save left it. The previous snapshot
is kept until the next save, so a reader that resolved it just before a commit still
finishes (and one that lost it retries).

Runs written before snapshots (plain files at the top level) are read as they are and
converted by their next save. Nothing is pickled. Loading a bundle for generation needs
only numpy (see :class:`Bundle`).
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import io
import json
import math
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from textgen import config as config_mod
from textgen.config import Config
from textgen.decoding.numpy_lm import NumpyLM
from textgen.errors import DataError, TextgenError, UsageError
from textgen.text import load_tokenizer
from textgen.text.base import Tokenizer

RUN_FORMAT_VERSION = 1
SNAPSHOT_FORMAT_VERSION = 1
CONFIG, TOKENIZER, MODEL, WEIGHTS = "config.toml", "tokenizer.json", "model.keras", "weights.npz"
HISTORY, METADATA, STATE = "history.csv", "metadata.json", "last.npz"
NEEDED = (CONFIG, TOKENIZER, WEIGHTS, METADATA)
FILES = (CONFIG, TOKENIZER, MODEL, WEIGHTS, HISTORY, METADATA, STATE)
SNAPSHOTS, CURRENT, MANIFEST, LOCK, LOGS = ".snapshots", "current", "manifest.json", ".lock", "logs"
PLOT = "loss.png"  # textgen plot's default output
# every name textgen writes at the top of a run directory: all --overwrite may delete
OWNED = frozenset({*FILES, SNAPSHOTS, LOCK, LOGS, PLOT})
READ_RETRIES = 5  # a reader whose snapshot two later saves removed starts over this often

T = TypeVar("T")


# -- files -------------------------------------------------------------------------------
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(path: Path) -> None:
    """Make a rename or new entry in ``path`` durable (a no-op where folders can't be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_synced(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(path)`` for a new file and flush it to disk."""
    write(path)
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a new temporary file next to ``path``, then rename it into place.

    The temporary name is unique (``mkstemp``), so a planted file or link cannot redirect
    the write, and a failed write leaves ``path`` as it was.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        _write_synced(tmp, write)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def _replace_link(link: Path, target: str) -> None:
    """Point the symlink ``link`` at ``target`` in one rename (whatever ``link`` was)."""
    tmp = link.with_name(f".{link.name}.link.{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# -- snapshots: reading ------------------------------------------------------------------
@dataclass(frozen=True)
class Snapshot:
    """One committed, immutable set of a run's files, and their recorded checksums."""

    run_dir: Path  # the run as the user named it (for messages)
    folder: Path  # where the files are
    digests: dict[str, str]  # name → sha256, for every file the snapshot holds

    def has(self, name: str) -> bool:
        return (self.folder / name).is_file()

    def path(self, name: str) -> Path:
        """The file ``name``, after checking it against its recorded sha256."""
        path = self.folder / name
        if not path.is_file():
            raise FileNotFoundError(errno.ENOENT, "missing", str(path))
        expected = self.digests.get(name)
        if expected is not None and sha256_file(path) != expected:
            raise DataError(
                f"{self.run_dir / name} does not match its checksum; the file is corrupt"
            )
        return path


def _snapshots(run_dir: Path) -> Path:
    return run_dir / SNAPSHOTS


def current_snapshot(run_dir: Path) -> Snapshot | None:
    """The run's committed snapshot; a run from before snapshots reads its top-level files.

    ``None`` when ``run_dir`` holds no textgen files at all.
    """
    try:
        name = os.readlink(_snapshots(run_dir) / CURRENT)
    except OSError:
        return _legacy_snapshot(run_dir)
    folder = _snapshots(run_dir) / name
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        digests = dict(manifest["files"])
        version = manifest["format_version"]
    except FileNotFoundError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(
            f"{folder / MANIFEST} is corrupt ({type(err).__name__}); the run cannot be read"
        ) from None
    if not isinstance(version, int) or version > SNAPSHOT_FORMAT_VERSION:
        raise DataError(f"{run_dir} was written by a newer textgen; upgrade textgen")
    return Snapshot(run_dir, folder, digests)


def _legacy_snapshot(run_dir: Path) -> Snapshot | None:
    names = [n for n in FILES if (run_dir / n).is_file() and not (run_dir / n).is_symlink()]
    if not names:
        return None
    digests: dict[str, str] = {}
    with contextlib.suppress(OSError, ValueError, AttributeError):
        files = json.loads((run_dir / METADATA).read_text(encoding="utf-8")).get("files", {})
        digests = {n: d for n, d in files.items() if n in NEEDED}
    return Snapshot(run_dir, run_dir, digests)


def read_run(run_dir: Path, read: Callable[[Snapshot], T]) -> T:
    """``read(snapshot)`` on the run's current snapshot, retried if a save removed it.

    A snapshot lives until the save after the next one; a reader slower than two saves
    sees a file vanish and starts over on the newer snapshot.
    """
    for attempt in range(READ_RETRIES):
        snap = current_snapshot(run_dir)
        if snap is None:
            raise DataError(f"{run_dir} holds no textgen run")
        try:
            return read(snap)
        except FileNotFoundError:
            if snap.folder == run_dir or attempt == READ_RETRIES - 1:
                raise
    raise AssertionError("unreachable")


# -- snapshots: writing ------------------------------------------------------------------
class Commit:
    """Build the next snapshot of ``run_dir`` and commit it as one unit.

    ::

        with Commit(run_dir) as c:          # the current files are carried over
            c.write(WEIGHTS, lambda p: ...)  # new or replaced files
            c.write_text(HISTORY, text)
        # committed here; an exception inside the block commits nothing

    Files are never written through a carried hard link: a replaced name is unlinked
    first, so the previous snapshot's copy stays as it was.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.tmp: Path | None = None
        self.digests: dict[str, str] = {}
        self.previous = ""  # the snapshot folder this commit follows (kept for readers)

    def __enter__(self) -> Commit:
        store = _snapshots(self.run_dir)
        store.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=store))
        os.chmod(self.tmp, 0o777 & ~_umask())
        previous = current_snapshot(self.run_dir)
        if previous is not None:
            self.previous = previous.folder.name
            for name in FILES:
                if previous.has(name):
                    _link_or_copy(previous.folder / name, self.tmp / name)
                    digest = previous.digests.get(name)
                    self.digests[name] = digest or sha256_file(self.tmp / name)
        return self

    def write(self, name: str, write: Callable[[Path], None]) -> None:
        """Write the file ``name`` of the new snapshot with ``write(path)``."""
        assert self.tmp is not None, "use Commit as a context manager"
        path = self.tmp / name
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a carried hard link: never write through it
        _write_synced(path, write)
        self.digests[name] = sha256_file(path)

    def write_text(self, name: str, text: str) -> None:
        self.write(name, lambda path: path.write_text(text, encoding="utf-8"))

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        assert self.tmp is not None
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        try:
            self._commit()
        except BaseException:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise

    def _commit(self) -> None:
        assert self.tmp is not None
        store = _snapshots(self.run_dir)
        manifest = {"format_version": SNAPSHOT_FORMAT_VERSION, "files": self.digests}
        _write_synced(self.tmp / MANIFEST, lambda p: p.write_text(json.dumps(manifest, indent=1)))
        _fsync_dir(self.tmp)
        numbers = [int(p.name) for p in store.iterdir() if p.name.isdigit()]
        name = f"{max(numbers, default=0) + 1:08d}"
        os.rename(self.tmp, store / name)
        _fsync_dir(store)
        if (store / CURRENT).is_dir() and not (store / CURRENT).is_symlink():
            shutil.rmtree(store / CURRENT)  # a copy that followed links (cp -L, copytree)
        _replace_link(store / CURRENT, name)  # the commit
        _fsync_dir(store)
        _link_top_level(self.run_dir, sorted(self.digests))
        _prune(store, keep={name, self.previous})


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # a filesystem without hard links
        shutil.copy2(source, target)


def _link_top_level(run_dir: Path, names: list[str]) -> None:
    """Make each top-level name a link into ``.snapshots/current`` (once per name)."""
    changed = False
    for name in names:
        target = f"{SNAPSHOTS}/{CURRENT}/{name}"
        path = run_dir / name
        if path.is_symlink() and os.readlink(path) == target:
            continue
        _replace_link(path, target)  # also replaces a file of a run from before snapshots
        changed = True
    if changed:
        _fsync_dir(run_dir)


def _prune(store: Path, keep: set[str]) -> None:
    """Remove snapshots but those in ``keep``, and folders of saves that never committed."""
    for path in store.iterdir():
        if path.is_dir() and not path.is_symlink() and path.name not in keep:
            shutil.rmtree(path, ignore_errors=True)


# -- the run directory as a whole -----------------------------------------------------------
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
        fd = os.open(self.run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
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


def is_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a textgen run (snapshots, or files of an older run)."""
    return (_snapshots(run_dir) / CURRENT).is_symlink() or _legacy_snapshot(run_dir) is not None


def clear_run(run_dir: Path) -> None:
    """Delete what textgen wrote in ``run_dir`` (the lock file stays: it is held)."""
    for name in sorted(OWNED - {LOCK}):
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.is_symlink() or path.exists():
            path.unlink()
    _fsync_dir(run_dir)


def set_latest(run_dir: Path) -> bool:
    """Point ``latest`` beside ``run_dir`` at it (a relative symlink, replaced atomically).

    A ``latest`` that is not a link (a user's own file or folder) is left alone: returns
    False then.
    """
    run_dir = run_dir.resolve()
    link = run_dir.parent / "latest"
    if link.exists() and not link.is_symlink():
        return False
    _replace_link(link, run_dir.name)
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


# -- what a snapshot holds -----------------------------------------------------------------
def write_bundle(commit: Commit, model: Any, config_text: str, metadata: dict[str, Any]) -> None:
    """Add the best model to ``commit``: config.toml, model.keras, weights.npz, metadata.json.

    metadata.json records the sha256 of the bundle files, so a bundle copied on its own
    (without the snapshot's manifest) is still checked on load.
    """

    commit.write_text(CONFIG, config_text)
    commit.write(MODEL, model.save)
    commit.write(WEIGHTS, NumpyLM.from_model(model).save)
    files = {
        n: commit.digests[n] for n in (CONFIG, TOKENIZER, MODEL, WEIGHTS) if n in commit.digests
    }
    data = {"format_version": RUN_FORMAT_VERSION, **metadata, "files": files}
    commit.write_text(METADATA, json.dumps(data, ensure_ascii=False, indent=1))


def write_state(
    commit: Commit,
    model_vars: list[np.ndarray],
    opt_vars: list[np.ndarray],
    info: dict[str, Any],
    extra: dict[str, np.ndarray] | None = None,
) -> None:
    """Add the resumable state (``last.npz``) to ``commit``.

    ``extra`` holds further named arrays (the carried recurrent state); :func:`load_state`
    returns them in ``info["arrays"]``.
    """
    arrays = {f"model_{i}": v for i, v in enumerate(model_vars)}
    arrays |= {f"opt_{i}": v for i, v in enumerate(opt_vars)}
    arrays |= {f"extra_{name}": v for name, v in (extra or {}).items()}
    arrays["info"] = np.array(json.dumps({"format_version": RUN_FORMAT_VERSION, **info}))

    def write(path: Path) -> None:
        with open(path, "wb") as fh:
            np.savez(fh, **arrays)

    commit.write(STATE, write)


def load_state(
    run_dir: Path, *, info_only: bool = False
) -> tuple[list[np.ndarray], list[np.ndarray], dict[str, Any]]:
    """Read ``last.npz``: (model variables, optimizer variables, info).

    ``info_only`` reads just the position and config (the arrays come back empty).
    """
    if not run_dir.is_dir():
        raise DataError(f"run directory not found: {run_dir}")
    if current_snapshot(run_dir) is None:
        raise DataError(f"{run_dir} has no resumable state ({STATE}); it cannot be resumed")
    return read_run(run_dir, _state_reader(info_only))


def _state_reader(info_only: bool) -> Callable[[Snapshot], Any]:
    def read(snap: Snapshot) -> tuple[list[np.ndarray], list[np.ndarray], dict[str, Any]]:
        if not snap.has(STATE):
            raise DataError(
                f"{snap.run_dir} has no resumable state ({STATE}); it cannot be resumed"
            )
        return _read_state(snap.path(STATE), snap.run_dir / STATE, info_only)

    return read


def _read_state(
    path: Path, shown: Path, info_only: bool
) -> tuple[list[np.ndarray], list[np.ndarray], dict[str, Any]]:
    model_vars: list[np.ndarray] = []
    opt_vars: list[np.ndarray] = []
    try:
        with np.load(path, allow_pickle=False) as data:
            info = json.loads(str(data["info"]))
            if not info_only:
                model_vars = [data[f"model_{i}"] for i in range(_count(data.files, "model_"))]
                opt_vars = [data[f"opt_{i}"] for i in range(_count(data.files, "opt_"))]
                info["arrays"] = {
                    name.removeprefix("extra_"): data[name]
                    for name in data.files
                    if name.startswith("extra_")
                }
    except FileNotFoundError:
        raise
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(
            f"{shown} is corrupt ({type(err).__name__}); it cannot be resumed"
        ) from None
    if not isinstance(info, dict) or info.get("format_version", 0) > RUN_FORMAT_VERSION:
        raise DataError(f"{shown} was written by a newer textgen; upgrade textgen")
    return model_vars, opt_vars, info


def _count(names: list[str], prefix: str) -> int:
    return sum(1 for name in names if name.startswith(prefix))


@dataclass
class Bundle:
    """A loaded run: config, tokenizer and the numpy model, without TensorFlow."""

    run_dir: Path
    config: Config
    tokenizer: Tokenizer
    lm: NumpyLM
    metadata: dict[str, Any]
    history: str = ""  # history.csv as text ("" when the run has none yet)

    @property
    def line_mode(self) -> bool:
        return self.config.data.mode == "lines"


def load_bundle(run_dir: str | Path) -> Bundle:
    """Load a run directory for generation, checking format version and checksums."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"run directory not found: {run_dir}")
    return read_run(run_dir, _read_bundle)


def _read_bundle(snap: Snapshot) -> Bundle:
    run_dir = snap.run_dir
    missing = [name for name in NEEDED if not snap.has(name)]
    if missing:
        raise DataError(f"run directory {run_dir} is incomplete: missing {', '.join(missing)}")
    metadata = _read_metadata(snap)
    version = metadata.get("format_version") if isinstance(metadata, dict) else None
    if not isinstance(version, int) or version > RUN_FORMAT_VERSION:
        raise DataError(
            f"{run_dir} has run format version {version!r}; this textgen reads up to "
            f"{RUN_FORMAT_VERSION}: upgrade textgen"
        )
    config = config_mod.load(snap.path(CONFIG))
    tokenizer = load_tokenizer(snap.path(TOKENIZER))
    try:
        lm = NumpyLM.load(snap.path(WEIGHTS))
    except FileNotFoundError:
        raise
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"{run_dir / WEIGHTS} is not a readable weights file ({err})") from None
    if lm.vocab_size != len(tokenizer.vocab):
        raise DataError(
            f"{run_dir}: weights have {lm.vocab_size} outputs but the tokenizer has "
            f"{len(tokenizer.vocab)} tokens"
        )
    history = snap.path(HISTORY).read_text(encoding="utf-8") if snap.has(HISTORY) else ""
    return Bundle(run_dir, config, tokenizer, lm, metadata, history)


def parse_history(text: str) -> list[dict[str, float]]:
    """The rows of a history.csv text as floats (NaN where a value is missing).

    An older run's history called the running training loss ``loss``: it is read as
    ``train_loss``.
    """
    rows = [
        {key: _number(value) for key, value in row.items() if key is not None}
        for row in csv.DictReader(io.StringIO(text, newline=""))
    ]
    for row in rows:
        if "train_loss" not in row and "loss" in row:
            row["train_loss"] = row.pop("loss")
    return rows


def _number(value: str | None) -> float:
    try:
        return float(value) if value not in (None, "") else math.nan
    except ValueError:
        return math.nan


def run_tokenizer(run_dir: Path) -> Tokenizer:
    """The run's saved tokenizer (checked against its checksum)."""
    return read_run(run_dir, lambda snap: load_tokenizer(snap.path(TOKENIZER)))


def load_metadata(run_dir: Path) -> dict[str, Any] | None:
    """The run's metadata.json, or None before its first best model."""

    def read(snap: Snapshot) -> dict[str, Any] | None:
        data = _read_metadata(snap) if snap.has(METADATA) else None
        return data if isinstance(data, dict) else None

    return read_run(run_dir, read)


def _read_metadata(snap: Snapshot) -> Any:
    """metadata.json of ``snap``, parsed (checked against its checksum first)."""
    try:
        return json.loads(snap.path(METADATA).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{snap.run_dir / METADATA} is corrupt ({err})") from None


def load_keras_model(run_dir: str | Path) -> Any:
    """Load ``model.keras`` with Keras ``safe_mode`` (no code from the run directory runs).

    The file is checked against its recorded sha256 first.
    """
    from textgen._tf import keras

    run_dir = Path(run_dir)
    path = run_dir / MODEL

    def read(snap: Snapshot) -> Any:
        if not snap.has(MODEL):
            raise DataError(f"model file not found: {path}")
        try:
            return keras().saving.load_model(snap.path(MODEL), safe_mode=True)
        except (TextgenError, FileNotFoundError):
            raise
        except Exception as err:  # Keras raises many types for a damaged zip
            raise DataError(
                f"{path} is not a loadable Keras model ({type(err).__name__})"
            ) from None

    if not run_dir.is_dir():
        raise DataError(f"model file not found: {path}")
    return read_run(run_dir, read)


# -- a new run ---------------------------------------------------------------------------
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
