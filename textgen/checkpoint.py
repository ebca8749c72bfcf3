"""The run directory: everything needed to use or inspect a trained model.

::

    runs/NAME/
      config.toml      the resolved config that trained it
      tokenizer.json   format version, level, normalization, vocabulary
      model.keras      best weights by validation loss (plain keras.saving.load_model)
      weights.npz      the same weights as numpy arrays, for TensorFlow-free generation
      history.csv      one row per epoch
      metadata.json    format version, package versions, parameter count, corpus sha256,
                       dates, and the sha256 of every bundle file (checked on load)
      last.npz         resumable state: every model and optimizer variable, and the
                       position (epoch, step), history and early-stopping counters
    runs/latest        a symlink to the most recent run

Every file is written under a temporary name in the same folder and renamed into place,
so an interrupted save leaves the previous good file untouched. Nothing is pickled.
Loading a bundle for generation needs only numpy (see :class:`Bundle`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from textgen import config as config_mod
from textgen.config import Config
from textgen.errors import DataError
from textgen.stepper import NumpyLM
from textgen.tokenizers import Tokenizer

RUN_FORMAT_VERSION = 1
CONFIG, TOKENIZER, MODEL, WEIGHTS = "config.toml", "tokenizer.json", "model.keras", "weights.npz"
HISTORY, METADATA, STATE = "history.csv", "metadata.json", "last.npz"
NEEDED = (CONFIG, TOKENIZER, WEIGHTS, METADATA)


def _stage(path: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a new temporary file next to ``path``; return the synced file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(
        prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent
    )
    os.close(fd)
    tmp = Path(name)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
    except BaseException:
        _discard([tmp])
        raise
    return tmp


def _discard(paths: list[Path]) -> None:
    for tmp in paths:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file next to ``path``, then rename it into place."""
    tmp = _stage(path, write)
    try:
        os.replace(tmp, path)
    except BaseException:
        _discard([tmp])
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_bundle(run_dir: Path, model: Any, config_text: str, metadata: dict[str, Any]) -> None:
    """Write config.toml, model.keras, weights.npz and metadata.json as one unit.

    Every file is first written in full under a temporary name; only when all of them
    succeeded are they renamed into place, metadata (with the checksums) last. A failure
    while writing (a full disk, say) leaves the previous bundle exactly as it was.
    """
    from textgen.model import to_numpy

    writers: dict[str, Callable[[Path], None]] = {
        CONFIG: lambda tmp: tmp.write_text(config_text, encoding="utf-8"),
        MODEL: lambda tmp: model.save(tmp),
        WEIGHTS: to_numpy(model).save,
    }
    staged: dict[str, Path] = {}
    try:
        for name, write in writers.items():
            staged[name] = _stage(run_dir / name, write)
        files = {name: sha256_file(tmp) for name, tmp in staged.items()}
        if (run_dir / TOKENIZER).exists():
            files[TOKENIZER] = sha256_file(run_dir / TOKENIZER)
        data = {"format_version": RUN_FORMAT_VERSION, **metadata, "files": files}
        text = json.dumps(data, ensure_ascii=False, indent=1)
        staged[METADATA] = _stage(
            run_dir / METADATA, lambda tmp: tmp.write_text(text, encoding="utf-8")
        )
    except BaseException:
        _discard(list(staged.values()))
        raise
    for name in (*writers, METADATA):
        os.replace(staged[name], run_dir / name)


def set_latest(run_dir: Path) -> None:
    """Point ``<runs>/latest`` at ``run_dir`` (an atomically replaced relative symlink)."""
    link = run_dir.parent / "latest"
    tmp = run_dir.parent / f".latest.{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(run_dir.name, tmp)
    os.replace(tmp, link)


def resolve_run(model: str | Path | None, runs_root: str | Path = "runs") -> Path:
    """The run directory named by ``--model``, or the latest run under ``runs_root``."""
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
    return path


def save_state(
    run_dir: Path,
    model_vars: list[np.ndarray],
    opt_vars: list[np.ndarray],
    info: dict[str, Any],
    extra: dict[str, np.ndarray] | None = None,
) -> None:
    """Write the resumable state (``last.npz``) in one atomic rename.

    ``extra`` holds further named arrays (the carried recurrent state); :func:`load_state`
    returns them in ``info["arrays"]``.
    """
    arrays = {f"model_{i}": v for i, v in enumerate(model_vars)}
    arrays |= {f"opt_{i}": v for i, v in enumerate(opt_vars)}
    arrays |= {f"extra_{name}": v for name, v in (extra or {}).items()}
    arrays["info"] = np.array(json.dumps({"format_version": RUN_FORMAT_VERSION, **info}))

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)

    atomic_write(run_dir / STATE, write)


def load_state(
    run_dir: Path, *, info_only: bool = False
) -> tuple[list[np.ndarray], list[np.ndarray], dict[str, Any]]:
    """Read ``last.npz``: (model variables, optimizer variables, info).

    ``info_only`` reads just the position and config (the arrays come back empty).
    """
    path = run_dir / STATE
    if not path.is_file():
        raise DataError(f"{run_dir} has no resumable state ({STATE}); it cannot be resumed")
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
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as err:
        raise DataError(f"{path} is corrupt ({type(err).__name__}); it cannot be resumed") from None
    if info.get("format_version", 0) > RUN_FORMAT_VERSION:
        raise DataError(f"{path} was written by a newer textgen; upgrade textgen")
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

    @property
    def line_mode(self) -> bool:
        return self.config.data.mode == "lines"


def _check_files(run_dir: Path, metadata: dict[str, Any]) -> None:
    for name, digest in metadata.get("files", {}).items():
        path = run_dir / name
        if name in NEEDED and path.exists() and sha256_file(path) != digest:
            raise DataError(
                f"{path} does not match its checksum in {METADATA}; the file is corrupt"
            )


def load_bundle(run_dir: str | Path) -> Bundle:
    """Load a run directory for generation, checking format version and checksums."""
    run_dir = Path(run_dir)
    missing = [name for name in NEEDED if not (run_dir / name).is_file()]
    if missing:
        raise DataError(f"run directory {run_dir} is incomplete: missing {', '.join(missing)}")
    try:
        metadata = json.loads((run_dir / METADATA).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{run_dir / METADATA} is corrupt ({err})") from None
    version = metadata.get("format_version")
    if not isinstance(version, int) or version > RUN_FORMAT_VERSION:
        raise DataError(
            f"{run_dir} has run format version {version!r}; this textgen reads up to "
            f"{RUN_FORMAT_VERSION}: upgrade textgen"
        )
    _check_files(run_dir, metadata)
    config = config_mod.load(run_dir / CONFIG)
    tokenizer = Tokenizer.load(run_dir / TOKENIZER)
    try:
        lm = NumpyLM.load(run_dir / WEIGHTS)
    except (OSError, ValueError, KeyError) as err:
        raise DataError(f"{run_dir / WEIGHTS} is not a readable weights file ({err})") from None
    if lm.vocab_size != len(tokenizer.vocab):
        raise DataError(
            f"{run_dir}: weights have {lm.vocab_size} outputs but the tokenizer has "
            f"{len(tokenizer.vocab)} tokens"
        )
    return Bundle(run_dir, config, tokenizer, lm, metadata)


def load_keras_model(run_dir: str | Path) -> Any:
    """Load ``model.keras`` with Keras ``safe_mode`` (no code from the run directory runs)."""
    from textgen._tf import keras

    path = Path(run_dir) / MODEL
    if not path.is_file():
        raise DataError(f"model file not found: {path}")
    try:
        return keras().saving.load_model(path, safe_mode=True)
    except Exception as err:  # Keras raises many types for a damaged zip
        raise DataError(f"{path} is not a loadable Keras model ({type(err).__name__})") from None
