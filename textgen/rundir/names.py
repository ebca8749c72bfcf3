"""The names of a run directory's files and folders, and the format versions it is written in."""

from __future__ import annotations

RUN_FORMAT_VERSION = 1
SNAPSHOT_FORMAT_VERSION = 1
CONFIG, TOKENIZER, MODEL, WEIGHTS = "config.toml", "tokenizer.json", "model.keras", "weights.npz"
HISTORY, METADATA, STATE = "history.csv", "metadata.json", "last.npz"
NEEDED = (CONFIG, TOKENIZER, WEIGHTS, METADATA)
FILES = (CONFIG, TOKENIZER, MODEL, WEIGHTS, HISTORY, METADATA, STATE)
SNAPSHOTS, CURRENT, MANIFEST, LOCK, LOGS = ".snapshots", "current", "manifest.json", ".lock", "logs"
LATEST = "latest"  # the link beside the runs to the most recent one
PLOT = "loss.png"  # textgen plot's default output
# in .snapshots/: what textgen wrote outside the snapshots (TensorBoard files, the plot),
# with checksums, so that --overwrite can tell them from a user's files
WRITTEN = "written.json"
READ_RETRIES = 5  # a reader whose snapshot two later saves removed starts over this often
