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
only numpy (see :class:`~textgen.rundir.contents.Bundle`).

The package's rooms: :mod:`~textgen.rundir.names` (the file and folder names),
:mod:`~textgen.rundir.store` (snapshots: atomic writes, commits, reads),
:mod:`~textgen.rundir.contents` (what a snapshot holds: the bundle, the resumable state,
the history) and :mod:`~textgen.rundir.folder` (the folder as a whole: the lock, a new run,
``--overwrite``, ``latest``). The names below are the run directory's public interface.
"""

from textgen.rundir.contents import (
    Bundle,
    load_bundle,
    load_keras_model,
    load_metadata,
    load_state,
    parse_history,
    run_tokenizer,
    write_bundle,
    write_config,
    write_state,
)
from textgen.rundir.folder import (
    RunLock,
    check_links,
    check_out,
    clear_run,
    foreign_entries,
    latest_link,
    prepare_new,
    resolve_run,
    set_latest,
)
from textgen.rundir.names import (
    CONFIG,
    CURRENT,
    FILES,
    HISTORY,
    LATEST,
    LOCK,
    LOGS,
    MANIFEST,
    METADATA,
    MODEL,
    NEEDED,
    PLOT,
    SNAPSHOTS,
    STATE,
    TOKENIZER,
    WEIGHTS,
    WRITTEN,
)
from textgen.rundir.store import (
    Commit,
    Snapshot,
    atomic_write,
    current_snapshot,
    is_run,
    read_run,
    record_written,
    sha256_file,
)

__all__ = [
    "CONFIG", "CURRENT", "FILES", "HISTORY", "LATEST", "LOCK", "LOGS", "MANIFEST", "METADATA",
    "MODEL", "NEEDED", "PLOT", "SNAPSHOTS", "STATE", "TOKENIZER", "WEIGHTS", "WRITTEN",
    "Bundle", "Commit", "RunLock", "Snapshot",
    "atomic_write", "check_links", "check_out", "clear_run", "current_snapshot",
    "foreign_entries", "is_run",
    "latest_link", "load_bundle", "load_keras_model", "load_metadata", "load_state",
    "parse_history", "prepare_new", "read_run", "record_written", "resolve_run",
    "run_tokenizer", "set_latest", "sha256_file", "write_bundle", "write_config", "write_state",
]  # fmt: skip
