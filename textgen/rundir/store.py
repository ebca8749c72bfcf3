"""The snapshot store: atomic writes, one commit per save, and readers that see one snapshot.

See :mod:`textgen.rundir` for the layout. A save builds the next numbered snapshot in a
temporary folder, renames it into ``.snapshots/`` and repoints ``current`` at it (the
commit); a reader resolves ``current`` once and checks every file against the manifest.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from textgen.errors import DataError
from textgen.rundir.names import (
    CURRENT,
    FILES,
    MANIFEST,
    METADATA,
    READ_RETRIES,
    SNAPSHOT_FORMAT_VERSION,
    SNAPSHOTS,
    WRITTEN,
)

T = TypeVar("T")
MAX_MANIFEST = 1 << 20  # a manifest lists a handful of names and digests


# -- files -------------------------------------------------------------------------------
def current_umask() -> int:
    """The process' umask (reading it means setting it, so it is set back at once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(path: Path) -> None:
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
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; give the usual permissions
        _write_synced(tmp, write)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def replace_link(link: Path, target: str) -> None:
    """Point the symlink ``link`` at ``target`` in one rename (whatever ``link`` was)."""
    tmp = link.with_name(f".{link.name}.link.{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(target, tmp)
    try:
        os.replace(tmp, link)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def sha256_file(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


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


def manifest_digests(folder: Path) -> dict[str, str] | None:
    """The file → sha256 record of the snapshot ``folder``; None when it has no readable
    manifest."""
    try:  # the reader's own checks: a FIFO or a huge file is not read
        return {str(k): str(v) for k, v in _read_manifest(folder, folder).items()}
    except (OSError, DataError, AttributeError):
        return None


def current_snapshot(run_dir: Path) -> Snapshot | None:
    """The run's committed snapshot; ``None`` when ``run_dir`` holds no textgen files.

    Three layouts are read: snapshots with ``current`` a link (as written, or copied with
    ``cp -r``/``tar``); a copy that followed the links (``cp -rL``, an unpacked zip), where
    ``current`` is a folder and the top-level names are files, checked against its
    manifest; and a run from before snapshots (plain files, checked against the digests
    metadata.json records). A snapshot or manifest that vanished raises
    ``FileNotFoundError`` (a reader retries: a save may have removed it).
    """
    link = _snapshots(run_dir) / CURRENT
    if link.is_symlink():
        folder = _snapshots(run_dir) / os.readlink(link)
        return Snapshot(run_dir, folder, _read_manifest(folder, run_dir))
    if link.is_dir():  # a copy that followed the links: the top-level files are the copies
        return Snapshot(run_dir, run_dir, _read_manifest(link, run_dir))
    return _legacy_snapshot(run_dir)


def _read_manifest(folder: Path, run_dir: Path) -> dict[str, str]:
    path = folder / MANIFEST
    if path.exists() and (not path.is_file() or path.stat().st_size > MAX_MANIFEST):
        raise DataError(f"{path} is not a manifest textgen wrote; the run cannot be read")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
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
    return digests


def _legacy_snapshot(run_dir: Path) -> Snapshot | None:
    names = [n for n in FILES if (run_dir / n).is_file() and not (run_dir / n).is_symlink()]
    if not names:
        return None
    return Snapshot(run_dir, run_dir, _metadata_digests(run_dir))


def _metadata_digests(run_dir: Path) -> dict[str, str]:
    """The sha256 of the bundle files metadata.json records (a run from before snapshots)."""
    with contextlib.suppress(OSError, ValueError, AttributeError, TypeError):
        files = json.loads((run_dir / METADATA).read_text(encoding="utf-8")).get("files", {})
        return {str(n): str(d) for n, d in dict(files).items() if n in FILES}
    return {}


def current_digests(run_dir: Path) -> dict[str, str]:
    """What the top-level names of ``run_dir`` must hash to, by the current record
    (``{}`` when there is none)."""
    try:
        snap = current_snapshot(run_dir)
    except (FileNotFoundError, DataError):
        return {}
    return dict(snap.digests) if snap is not None else {}


def read_run(run_dir: Path, read: Callable[[Snapshot], T]) -> T:
    """``read(snapshot)`` on the run's current snapshot, retried if a save removed it.

    A snapshot lives until the save after the next one; a reader slower than two saves
    sees a file (or the manifest) vanish and starts over on the newer snapshot. A file
    still missing after the retries is a damaged run: one clear error naming it.
    """
    for attempt in range(READ_RETRIES):
        try:
            snap = current_snapshot(run_dir)
            if snap is None:
                raise DataError(f"{run_dir} holds no textgen run")
            return read(snap)
        except FileNotFoundError as err:
            legacy = not (_snapshots(run_dir) / CURRENT).is_symlink()
            if legacy or attempt == READ_RETRIES - 1:
                raise DataError(_missing(run_dir, err)) from None
    raise AssertionError("unreachable")


def _missing(run_dir: Path, err: FileNotFoundError) -> str:
    name = Path(err.filename) if err.filename else None
    if name is not None:
        with contextlib.suppress(ValueError):
            name = name.relative_to(run_dir)
    what = f"{name} is missing" if name is not None else "a file is missing"
    return f"run directory {run_dir} is damaged: {what}"


# -- what textgen wrote outside the snapshots --------------------------------------------
def read_written(run_dir: Path) -> dict[str, dict[str, Any]]:
    """The record of files textgen wrote outside the snapshots (path relative to the run
    → size, sha256 and whether it may grow), ``{}`` when there is none."""
    try:
        data = json.loads((_snapshots(run_dir) / WRITTEN).read_text(encoding="utf-8"))
        return {str(k): dict(v) for k, v in dict(data["files"]).items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def record_written(run_dir: Path, paths: list[Path], *, grows: bool = False) -> None:
    """Add ``paths`` (files under ``run_dir`` that textgen just wrote) to the record.

    ``grows``: an append-only file (a TensorBoard event file); the record then holds its
    size and the sha256 of that many bytes, and the file may only have grown since.
    """
    record = read_written(run_dir)
    for path in paths:
        key = path.relative_to(run_dir).as_posix()
        size = path.stat().st_size
        record[key] = {"size": size, "sha256": _prefix_sha256(path, size), "grows": grows}
    text = json.dumps({"format_version": 1, "files": record}, indent=1, sort_keys=True)
    atomic_write(_snapshots(run_dir) / WRITTEN, lambda p: p.write_text(text, encoding="utf-8"))


def written_unchanged(path: Path, record: dict[str, Any] | None) -> bool:
    """Whether ``path`` is as the record says textgen wrote it (or only grew, where the
    record allows)."""
    if not record:
        return False
    try:
        size, actual = int(record["size"]), path.stat().st_size
        if actual < size or (actual > size and not record.get("grows")):
            return False
        return _prefix_sha256(path, size) == record["sha256"]
    except (OSError, KeyError, TypeError, ValueError):
        return False


def _prefix_sha256(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        left = size
        while left > 0:
            chunk = fh.read(min(left, 1 << 20))
            if not chunk:
                break
            digest.update(chunk)
            left -= len(chunk)
    return digest.hexdigest()


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
        os.chmod(self.tmp, 0o777 & ~current_umask())
        try:
            self._carry_over()
        except BaseException:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise
        return self

    def _carry_over(self) -> None:
        """Link the current snapshot's files into the new one (checked, in a copy)."""
        assert self.tmp is not None
        try:
            previous = current_snapshot(self.run_dir)
        except FileNotFoundError as err:
            raise DataError(_missing(self.run_dir, err)) from None
        if previous is not None:
            self.previous = previous.folder.name
            copied = previous.folder == self.run_dir  # files, not an immutable snapshot
            for name in FILES:
                if previous.has(name):
                    # a copy's files are checked before they are carried into a snapshot
                    source = previous.path(name) if copied else previous.folder / name
                    _link_or_copy(source, self.tmp / name)
                    digest = previous.digests.get(name)
                    self.digests[name] = digest or sha256_file(self.tmp / name)

    def write(self, name: str, write: Callable[[Path], None]) -> None:
        """Write the file ``name`` of the new snapshot with ``write(path)``."""
        assert self.tmp is not None, "use Commit as a context manager"
        path = self.tmp / name
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a carried hard link: never write through it
        _write_synced(path, write)
        self.digests[name] = sha256_file(path)

    def staged(self, name: str) -> Path | None:
        """The file ``name`` of the snapshot being built (carried or written), if any."""
        assert self.tmp is not None, "use Commit as a context manager"
        path = self.tmp / name
        return path if path.is_file() else None

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
        fsync_dir(self.tmp)
        numbers = [int(p.name) for p in store.iterdir() if p.name.isdigit()]
        name = f"{max(numbers, default=0) + 1:08d}"
        os.rename(self.tmp, store / name)
        fsync_dir(store)
        try:
            if (store / CURRENT).is_dir() and not (store / CURRENT).is_symlink():
                shutil.rmtree(store / CURRENT)  # a copy that followed links (cp -L, copytree)
            replace_link(store / CURRENT, name)  # the commit
        except BaseException:
            if _link_target(store / CURRENT) != name:  # not committed: the folder goes again
                shutil.rmtree(store / name, ignore_errors=True)
            raise
        fsync_dir(store)
        _link_top_level(self.run_dir, sorted(self.digests))
        _prune(store, keep={name, self.previous})


def _link_target(link: Path) -> str | None:
    try:
        return os.readlink(link)
    except OSError:
        return None


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
        replace_link(path, target)  # also replaces a file of a run from before snapshots
        changed = True
    if changed:
        fsync_dir(run_dir)


def _prune(store: Path, keep: set[str]) -> None:
    """Remove snapshots but those in ``keep``, and folders of saves that never committed."""
    for path in store.iterdir():
        if path.is_dir() and not path.is_symlink() and path.name not in keep:
            shutil.rmtree(path, ignore_errors=True)


def is_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a textgen run (snapshots, or files of an older run)."""
    current = _snapshots(run_dir) / CURRENT
    return current.is_symlink() or current.is_dir() or _legacy_snapshot(run_dir) is not None
