"""textgen: recurrent language models from the command line and from Python.

The public names are imported lazily so that ``import textgen`` (and ``textgen --help``)
stays fast; TensorFlow loads only when training or a Keras model is used.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "sentence_generation": "textgen.generate",
    "Generator": "textgen.generate",
    "train": "textgen.train",
    "load_bundle": "textgen.checkpoint",
    "Tokenizer": "textgen.tokenizers",
    "Config": "textgen.config",
    "load_config": ("textgen.config", "load"),
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    target = _EXPORTS.get(name)
    if target is None:
        raise AttributeError(f"module 'textgen' has no attribute {name!r}")
    module, attr = target if isinstance(target, tuple) else (target, name)
    return getattr(import_module(module), attr)
