"""Experiment configuration: TOML file → frozen dataclasses.

A config has three sections, ``[data]``, ``[model]`` and ``[train]``. Every key has a
default, so a config file only names what it changes. Unknown keys and values of the
wrong type are errors that name the key (and suggest the nearest known one), because a
typo that silently falls back to a default wastes a whole training run.

Relative paths inside a config resolve against the config file's folder, so a config
works from any working directory.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from textgen.errors import UsageError

LEVELS = ("word", "char")
MODES = ("lines", "stream")
CELLS = ("lstm", "gru", "rnn")
NORMALIZATIONS = ("nfc",)


@dataclass(frozen=True)
class DataConfig:
    """Where the text comes from and how it becomes id sequences."""

    corpus: str = ""
    encoding: str = "utf-8"
    level: str = "word"
    mode: str = "lines"
    normalize: str = "nfc"
    lowercase: bool = False
    strip_punctuation: bool = False
    max_vocab: int = 0
    min_freq: int = 1
    max_len: int = 0
    seq_len: int = 100
    val_split: float = 0.1


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of the Embedding → RNN×N → Dense language model."""

    cell: str = "lstm"
    embedding_dim: int = 64
    units: int = 128
    layers: int = 1
    dropout: float = 0.0


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings."""

    seed: int = 42
    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 0.002
    clipnorm: float = 5.0
    patience: int = 0
    save_every_steps: int = 0
    jit_compile: bool = True


@dataclass(frozen=True)
class Config:
    """A whole experiment: data, model and training settings."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The config as nested plain dicts (section → key → value)."""
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        """The config as TOML text that :func:`loads` reads back to an equal config."""
        lines: list[str] = []
        for section, values in self.to_dict().items():
            lines.append(f"[{section}]")
            lines.extend(f"{key} = {_toml_value(value)}" for key, value in values.items())
            lines.append("")
        return "\n".join(lines)

    def with_overrides(self, overrides: list[str]) -> Config:
        """Apply ``section.key=value`` strings; values parse as TOML, bare words as strings."""
        raw = self.to_dict()
        for item in overrides:
            section, key, value = _parse_override(item)
            raw.setdefault(section, {})[key] = value
        return from_dict(raw)


_SECTIONS: dict[str, type] = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}
_CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("data", "level"): LEVELS,
    ("data", "mode"): MODES,
    ("data", "normalize"): NORMALIZATIONS,
    ("model", "cell"): CELLS,
}


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    # JSON's string escapes are valid TOML basic-string escapes; TOML also wants DEL escaped
    return json.dumps(str(value), ensure_ascii=False).replace("\x7f", "\\u007f")


def _suggest(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _check_value(section: str, key: str, value: Any, expected: Any) -> Any:
    where = f"{section}.{key}"
    if expected is bool:
        ok = isinstance(value, bool)
    elif expected is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif expected is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, str)
    if not ok:
        raise UsageError(
            f"config key '{where}' must be {expected.__name__}, got {type(value).__name__} "
            f"{value!r}"
        )
    choices = _CHOICES.get((section, key))
    if choices and value not in choices:
        raise UsageError(f"config key '{where}' must be one of {', '.join(choices)}; got {value!r}")
    return value


def from_dict(raw: dict[str, Any]) -> Config:
    """Build a validated :class:`Config` from nested dicts (section → key → value)."""
    sections: dict[str, Any] = {}
    for section, values in raw.items():
        if section not in _SECTIONS:
            raise UsageError(
                f"unknown config section '[{section}]'{_suggest(section, list(_SECTIONS))}"
            )
        if not isinstance(values, dict):
            raise UsageError(f"config '{section}' must be a [section] table")
        cls = _SECTIONS[section]
        types = {f.name: f.type for f in fields(cls)}
        checked = {}
        for key, value in values.items():
            if key not in types:
                known = [f"{section}.{k}" for k in types] + [
                    f"{s}.{f.name}" for s, c in _SECTIONS.items() for f in fields(c)
                ]
                hint = _suggest(f"{section}.{key}", known)
                raise UsageError(f"unknown config key '{section}.{key}'{hint}")
            expected = {"str": str, "int": int, "float": float, "bool": bool}[types[key]]
            checked[key] = _check_value(section, key, value, expected)
        sections[section] = cls(**checked)
    config = Config(**sections)
    _check_ranges(config)
    return config


def _check_ranges(config: Config) -> None:
    d, m, t = config.data, config.model, config.train
    rules = [
        (0.0 <= d.val_split < 1.0, "data.val_split must be in [0, 1)"),
        (d.max_vocab >= 0, "data.max_vocab must be >= 0 (0 = no limit)"),
        (d.min_freq >= 1, "data.min_freq must be >= 1"),
        (d.max_len == 0 or d.max_len >= 2, "data.max_len must be 0 (longest line) or >= 2"),
        (d.seq_len >= 1, "data.seq_len must be >= 1"),
        (m.embedding_dim >= 1, "model.embedding_dim must be >= 1"),
        (m.units >= 1, "model.units must be >= 1"),
        (m.layers >= 1, "model.layers must be >= 1"),
        (0.0 <= m.dropout < 1.0, "model.dropout must be in [0, 1)"),
        (t.epochs >= 1, "train.epochs must be >= 1"),
        (t.batch_size >= 1, "train.batch_size must be >= 1"),
        (t.learning_rate > 0, "train.learning_rate must be > 0"),
        (t.clipnorm >= 0, "train.clipnorm must be >= 0 (0 = no clipping)"),
        (t.patience >= 0, "train.patience must be >= 0 (0 = no early stopping)"),
        (t.save_every_steps >= 0, "train.save_every_steps must be >= 0 (0 = every epoch only)"),
    ]
    for ok, message in rules:
        if not ok:
            raise UsageError(message)


def _parse_override(item: str) -> tuple[str, str, Any]:
    name, sep, text = item.partition("=")
    section, dot, key = name.strip().partition(".")
    if not sep or not dot or not section or not key:
        raise UsageError(f"--set expects section.key=value, got {item!r}")
    text = text.strip()
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text  # a bare word such as `cell=gru` is a string
    return section, key.strip(), value


def loads(text: str, base_dir: Path | None = None, source: str = "<string>") -> Config:
    """Parse TOML text into a :class:`Config`; ``data.corpus`` resolves against ``base_dir``."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise UsageError(f"{source}: not valid TOML: {err}") from None
    config = from_dict(raw)
    corpus = config.data.corpus
    if corpus and base_dir is not None and not Path(corpus).is_absolute():
        config = replace(config, data=replace(config.data, corpus=str(base_dir / corpus)))
    return config


def load(path: str | Path) -> Config:
    """Read a TOML config file; relative paths in it resolve against its folder."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"config {path} is a folder, not a TOML file")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"config file not found: {path}") from None
    except OSError as err:
        raise UsageError(f"cannot read config {path}: {err.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UsageError(f"config {path} is not UTF-8 (byte {err.start})") from None
    return loads(text, base_dir=path.resolve().parent, source=str(path))


def with_corpus(config: Config, corpus: str | Path) -> Config:
    """Return ``config`` reading ``corpus`` (a path relative to the working directory)."""
    return replace(config, data=replace(config.data, corpus=str(Path(corpus))))
