"""What a snapshot holds: the bundle (config, model, weights, metadata), the resumable
state (``last.npz``), the history and the tokenizer; written into a
:class:`~textgen.rundir.store.Commit`, read through :func:`~textgen.rundir.store.read_run`.

Nothing is pickled. Loading a bundle for generation needs only numpy (see :class:`Bundle`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from textgen import config as config_mod
from textgen.config import Config
from textgen.decoding.numpy_lm import NumpyLM
from textgen.errors import DataError, TextgenError
from textgen.model.network import save_keras
from textgen.rundir.names import (
    CONFIG,
    HISTORY,
    METADATA,
    MODEL,
    NEEDED,
    RUN_FORMAT_VERSION,
    STATE,
    TOKENIZER,
    WEIGHTS,
)
from textgen.rundir.store import Commit, Snapshot, is_run, read_run
from textgen.text import load_tokenizer
from textgen.text.base import Tokenizer


def write_bundle(commit: Commit, model: Any, config_text: str, metadata: dict[str, Any]) -> None:
    """Add the best model to ``commit``: config.toml, model.keras, weights.npz, metadata.json.

    metadata.json records the sha256 of the bundle files, so a bundle copied on its own
    (without the snapshot's manifest) is still checked on load.
    """

    commit.write_text(CONFIG, config_text)
    commit.write(MODEL, partial(save_keras, model))
    commit.write(WEIGHTS, NumpyLM.from_model(model).save)
    files = {
        n: commit.digests[n] for n in (CONFIG, TOKENIZER, MODEL, WEIGHTS) if n in commit.digests
    }
    data = {"format_version": RUN_FORMAT_VERSION, **metadata, "files": files}
    commit.write_text(METADATA, json.dumps(data, ensure_ascii=False, indent=1))


def write_config(commit: Commit, config_text: str) -> None:
    """Replace config.toml in ``commit`` by the config in force (after a ``--resume --set``),
    keeping metadata.json's record of its sha256 true."""
    commit.write_text(CONFIG, config_text)
    path = commit.staged(METADATA)
    if path is None:
        return
    data = json.loads(path.read_text(encoding="utf-8"))
    data.setdefault("files", {})[CONFIG] = commit.digests[CONFIG]
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
    # UTF-8 bytes: a numpy string would be UTF-32, four times the size
    text = json.dumps({"format_version": RUN_FORMAT_VERSION, **info}, ensure_ascii=False)
    arrays["info"] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)

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
    if not is_run(run_dir):
        raise DataError(f"{run_dir} has no resumable state ({STATE}); it cannot be resumed")
    return read_run(run_dir, _state_reader(info_only))


def _state_reader(info_only: bool) -> Callable[[Snapshot], Any]:
    def read(snap: Snapshot) -> tuple[list[np.ndarray], list[np.ndarray], dict[str, Any]]:
        if not snap.has(STATE):
            raise DataError(
                f"{snap.run_dir} has no resumable state ({STATE}); it cannot be resumed"
            )
        state = _read_state(snap.path(STATE), snap.run_dir / STATE, info_only)
        info = state[2]
        if "history" not in info:  # the history lives in history.csv of the same snapshot
            info["history_csv"] = (
                snap.path(HISTORY).read_text(encoding="utf-8") if snap.has(HISTORY) else ""
            )
        return state

    return read


def _read_state(
    path: Path, shown: Path, info_only: bool
) -> tuple[list[np.ndarray], list[np.ndarray], dict[str, Any]]:
    model_vars: list[np.ndarray] = []
    opt_vars: list[np.ndarray] = []
    try:
        with np.load(path, allow_pickle=False) as data:
            raw = data["info"]
            text = raw.tobytes().decode("utf-8") if raw.dtype == np.uint8 else str(raw)
            info = json.loads(text)
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
