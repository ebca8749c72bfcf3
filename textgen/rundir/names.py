"""The names of a run directory's files and folders, and the format versions it is written in."""

from __future__ import annotations

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
