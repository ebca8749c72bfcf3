"""textgen: recurrent language models from the command line and from Python.

The public names are imported lazily so that ``import textgen`` (and ``textgen --help``)
stays fast; TensorFlow loads only when training or a Keras model is used.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "sentence_generation": "textgen.decoding.generate",
    "Generator": "textgen.decoding.generate",
    "train": "textgen.training.loop",
    "load_bundle": "textgen.rundir",
    "Tokenizer": "textgen.text.base",
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
