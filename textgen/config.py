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

LEVELS = ("word", "char", "subword", "morpheme")
MODES = ("lines", "stream")
CELLS = ("lstm", "gru", "rnn")
NORMALIZATIONS = ("nfc", "nfd")
SUBWORD_MODELS = ("bpe", "unigram")
OPTIMIZERS = ("adam", "sgd")
PRECISIONS = ("float32", "bfloat16")
ANNEALS = ("none", "budget")


@dataclass(frozen=True)
class DataConfig:
    """Where the text comes from and how it becomes id sequences."""

    corpus: str = ""
    encoding: str = "utf-8"
    level: str = "word"
    mode: str = "lines"
    normalize: str = "nfc"  # "nfd" at the char level: Hangul as conjoining jamo
    subword_model: str = "unigram"  # subword level: sentencepiece "bpe" or "unigram"
    vocab_size: int = 1000  # subword level: sentencepiece vocabulary, specials included
    lowercase: bool = False
    strip_punctuation: bool = False
    max_vocab: int = 0
    min_freq: int = 1
    max_len: int = 0
    seq_len: int = 100
    val_split: float = 0.1
    valid_corpus: str = ""  # a separate validation file (then val_split is not used)


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of the Embedding → RNN×N → Dense language model."""

    cell: str = "lstm"
    embedding_dim: int = 64
    units: int = 128
    layers: int = 1
    dropout: float = 0.0  # between recurrent layers
    input_dropout: float = 0.0  # on the embeddings, before the first recurrent layer
    output_dropout: float = 0.0  # on the last recurrent layer's outputs, before the logits
    tie_weights: bool = False  # output projection = embedding matrix (embedding_dim == units)
    init_scale: float = 0.0  # > 0: every weight uniform in [-init_scale, init_scale]
    # the regularizers of AWD-LSTM (Merity et al. 2017); each default changes nothing
    weight_drop: float = 0.0  # DropConnect on the LSTM's hidden-to-hidden weights, per batch
    embedding_dropout: float = 0.0  # drop whole embedding rows (word types), per batch
    locked_dropout: bool = False  # input_dropout, dropout, output_dropout: one mask per sequence


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings."""

    seed: int = 42
    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 0.002
    optimizer: str = "adam"
    momentum: float = 0.0  # sgd only
    lr_decay: float = 1.0  # multiply the learning rate by this every epoch ...
    lr_decay_after: int = 0  # ... after this many epochs
    plateau_factor: float = 1.0  # multiply it by this when the validation loss does not improve
    clipnorm: float = 5.0
    patience: int = 0
    max_minutes: float = 0.0  # stop after this much training time (0 = no limit)
    carry_state: bool = False  # stream mode: batches continue each other, state carried (TBPTT)
    save_every_steps: int = 0
    log_every_steps: int = 50  # TensorBoard scalars every this many steps (0 = epochs only)
    jit_compile: bool = True
    distribute: str = "none"  # none | mirrored (GPUs of one machine) | multiworker (TF_CONFIG)
    peer_timeout: float = 120.0  # multiworker: seconds a step waits for a silent peer (0 = forever)
    precision: str = "float32"  # "bfloat16": bf16 compute, float32 weights, loss and optimizer
    ar: float = 0.0  # activation regularization: ar * mean(h²) of the last layer's outputs
    tar: float = 0.0  # temporal activation regularization: tar * mean((h_t - h_{t-1})²)
    # NT-ASGD: > 0 averages the SGD iterates once validation has not improved for this
    # many checks; validation, best.keras, eval and generate then use the averaged weights
    asgd_nonmono: int = 0
    # "budget": the learning rate follows a cosine from its value to 0 over max_minutes of
    # training time, so the schedule spends the whole budget whatever the machine's speed
    anneal: str = "none"


DISTRIBUTE = ("none", "mirrored", "multiworker")
# tokenizer settings a level has no use for: setting one is an error, never ignored
UNUSED_BY_LEVEL = {
    "word": ("subword_model", "vocab_size"),
    "char": ("subword_model", "vocab_size", "lowercase", "strip_punctuation"),
    "subword": ("lowercase", "strip_punctuation", "max_vocab", "min_freq"),  # lossless pieces
    "morpheme": ("lowercase", "strip_punctuation", "subword_model", "vocab_size"),
}


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
    ("data", "subword_model"): SUBWORD_MODELS,
    ("model", "cell"): CELLS,
    ("train", "optimizer"): OPTIMIZERS,
    ("train", "precision"): PRECISIONS,
    ("train", "anneal"): ANNEALS,
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
        (d.vocab_size >= 8, "data.vocab_size must be >= 8"),
        (
            d.normalize == "nfc" or d.level == "char",
            'data.normalize = "nfd" (jamo) applies to data.level = "char" only',
        ),
        (m.embedding_dim >= 1, "model.embedding_dim must be >= 1"),
        (m.units >= 1, "model.units must be >= 1"),
        (m.layers >= 1, "model.layers must be >= 1"),
        (0.0 <= m.dropout < 1.0, "model.dropout must be in [0, 1)"),
        (0.0 <= m.input_dropout < 1.0, "model.input_dropout must be in [0, 1)"),
        (0.0 <= m.output_dropout < 1.0, "model.output_dropout must be in [0, 1)"),
        (m.init_scale >= 0, "model.init_scale must be >= 0 (0 = Keras defaults)"),
        (0.0 <= m.weight_drop < 1.0, "model.weight_drop must be in [0, 1)"),
        (0.0 <= m.embedding_dropout < 1.0, "model.embedding_dropout must be in [0, 1)"),
        (
            m.weight_drop == 0.0 or m.cell == "lstm",
            'model.weight_drop is implemented for model.cell = "lstm" only',
        ),
        (
            not m.tie_weights or m.embedding_dim == m.units,
            f"model.tie_weights needs embedding_dim == units (got {m.embedding_dim} and {m.units})",
        ),
        (0.0 <= t.momentum < 1.0, "train.momentum must be in [0, 1)"),
        (0.0 < t.lr_decay <= 1.0, "train.lr_decay must be in (0, 1]"),
        (t.lr_decay_after >= 0, "train.lr_decay_after must be >= 0"),
        (0.0 < t.plateau_factor <= 1.0, "train.plateau_factor must be in (0, 1] (1 = off)"),
        (t.max_minutes >= 0, "train.max_minutes must be >= 0 (0 = no limit)"),
        (t.log_every_steps >= 0, "train.log_every_steps must be >= 0"),
        (
            not t.carry_state or d.mode == "stream",
            'train.carry_state needs data.mode = "stream" (lines start from a zero state)',
        ),
        (
            not t.carry_state or m.cell == "lstm",
            'train.carry_state is implemented for model.cell = "lstm" only',
        ),
        (
            t.distribute in DISTRIBUTE,
            f"train.distribute must be one of {', '.join(DISTRIBUTE)} (got {t.distribute!r})",
        ),
        (
            not t.carry_state or t.distribute == "none",
            "train.carry_state is not supported with train.distribute yet",
        ),
        (t.peer_timeout >= 0, "train.peer_timeout must be >= 0 (0 = wait forever)"),
        (0 <= t.seed < 2**32, "train.seed must be in [0, 2**32)"),
        (t.epochs >= 1, "train.epochs must be >= 1"),
        (t.batch_size >= 1, "train.batch_size must be >= 1"),
        (t.learning_rate > 0, "train.learning_rate must be > 0"),
        (t.clipnorm >= 0, "train.clipnorm must be >= 0 (0 = no clipping)"),
        (t.patience >= 0, "train.patience must be >= 0 (0 = no early stopping)"),
        (t.save_every_steps >= 0, "train.save_every_steps must be >= 0 (0 = every epoch only)"),
        (t.ar >= 0, "train.ar must be >= 0 (0 = off)"),
        (t.tar >= 0, "train.tar must be >= 0 (0 = off)"),
        (t.asgd_nonmono >= 0, "train.asgd_nonmono must be >= 0 (0 = plain SGD, no averaging)"),
    ]
    defaults = DataConfig()
    # settings that the rest of the config makes unused: an error, never silently ignored
    rules += [
        (
            t.momentum == TrainConfig.momentum or t.optimizer == "sgd",
            f'train.momentum applies to train.optimizer = "sgd" only (got {t.optimizer!r}: '
            "it would be ignored); remove it",
        ),
        (
            t.asgd_nonmono == 0 or t.distribute == "none",
            'train.asgd_nonmono works with train.distribute = "none" only (its average is '
            "kept on one replica); remove one of them",
        ),
        (
            t.anneal == "none" or t.max_minutes > 0,
            'train.anneal = "budget" needs train.max_minutes > 0 (the budget it anneals to)',
        ),
        (
            t.asgd_nonmono == 0 or t.optimizer == "sgd",
            f'train.asgd_nonmono applies to train.optimizer = "sgd" only (got {t.optimizer!r}: '
            "it would be ignored); remove it",
        ),
        (
            not m.locked_dropout
            or max(m.dropout, m.input_dropout, m.output_dropout, m.embedding_dropout) > 0,
            "model.locked_dropout needs a dropout rate above 0 (model.input_dropout, "
            "model.dropout or model.output_dropout; it would be ignored); set one or remove it",
        ),
        (
            d.seq_len == defaults.seq_len or d.mode == "stream",
            'data.seq_len applies to data.mode = "stream" only (lines are cut at '
            "data.max_len; it would be ignored); remove it",
        ),
        (
            not d.valid_corpus or d.val_split in (0.0, defaults.val_split),
            "data.val_split is not used beside data.valid_corpus (the validation text is "
            "that file; it would be ignored); remove it",
        ),
    ]
    for ok, message in rules:
        if not ok:
            raise UsageError(message)
    for key in UNUSED_BY_LEVEL[d.level]:
        if getattr(d, key) != getattr(defaults, key):
            raise UsageError(
                f'data.{key} does not apply to data.level = "{d.level}" (it would be '
                "ignored); remove it"
            )


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
    """Parse TOML text into a :class:`Config`; corpus paths resolve against ``base_dir``."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise UsageError(f"{source}: not valid TOML: {err}") from None
    config = from_dict(raw)
    if base_dir is not None:
        paths = {}
        for key in ("corpus", "valid_corpus"):
            value = getattr(config.data, key)
            if value and not Path(value).is_absolute():
                paths[key] = str(base_dir / value)
        config = replace(config, data=replace(config.data, **paths))
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


def explicit_keys(path: str | Path | None, overrides: list[str]) -> dict[str, str]:
    """The ``section.key`` names a config file and ``--set`` give explicitly, each with
    where it was given (the file's path, or ``--set``): what a fine-tuning run checks
    against the run it starts from, where a default is no contradiction."""
    keys: dict[str, str] = {}
    if path is not None:
        raw = load_raw(path)
        for section, values in raw.items():
            if isinstance(values, dict):
                keys |= {f"{section}.{key}": str(path) for key in values}
    for item in overrides:
        section, key, _ = _parse_override(item)
        keys[f"{section}.{key}"] = "--set"
    return keys


def load_raw(path: str | Path) -> dict[str, Any]:
    """The TOML tables of a config file as written (no defaults, no checks beyond TOML)."""
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise UsageError(f"cannot read config {path}: {err}") from None


def with_corpus(config: Config, corpus: str | Path) -> Config:
    """Return ``config`` reading ``corpus`` (a path relative to the working directory)."""
    return replace(config, data=replace(config.data, corpus=str(Path(corpus))))
