"""The SavedModel export: ``tf.saved_model.save`` of a module with input signatures.

Signatures:

* ``generate`` (word and char levels, jamo included): ``seed`` (string), ``max_tokens``
  (int32, 1 … 1,000,000), ``temperature`` (float32; 0 = greedy, the argmax that
  ``textgen generate`` uses by default) and ``rng_seed`` (int64) → ``text`` (string): the
  seed as the model reads it followed by the generated text, ending at ``<eos>`` for a
  line-mode model. The seed is fed once and every new token is one step of a
  ``tf.while_loop`` that carries the state. Sampling (temperature > 0) draws from
  ``softmax(logits / temperature)`` with ``tf.random.stateless_categorical`` seeded by
  ``(rng_seed, step)``: repeatable for a given ``rng_seed``, but not the same draws as
  ``textgen generate --rng-seed`` (numpy's generator). At the jamo level it picks only
  jamo that may follow the previous token in a syllable, as ``textgen generate`` does
  (:mod:`textgen.text.hangul`), so its text holds no loose jamo; ``export.json`` says so
  under ``syllables``.
* ``step``: ``ids`` (int32, ``(batch,)``) and ``state`` (float32, ``(batch, state_size)``)
  → ``logits`` (``(batch, vocab)``) and ``state``, for callers that decode themselves (the
  LiteRT export has only this step: a jamo caller applies the syllable rules itself).

What normalization is left to the caller is said in :mod:`textgen.export.graph`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

IN_GRAPH_LEVELS = ("word", "char")  # tokenizers the graph can run; subword/morpheme cannot


def signatures_for(level: str) -> list[str]:
    """The signatures a run of this level gets."""
    return ["generate", "step"] if level in IN_GRAPH_LEVELS else ["step"]


def write(folder: Path, arrays: dict[str, np.ndarray], tokenizer: Any) -> list[str]:
    """Save the SavedModel of ``arrays`` and ``tokenizer`` into the (empty) ``folder``;
    return the signature names."""
    from textgen._tf import tensorflow
    from textgen.export.graph import generate_module
    from textgen.export.step_graph import step_module

    tf = tensorflow()
    names = signatures_for(tokenizer.level)
    if "generate" in names:
        module = generate_module(arrays, tokenizer)
        signatures = {"generate": module.generate, "step": module.step}
        signatures["serving_default"] = module.generate
    else:
        module = step_module(arrays)
        signatures = {"step": module.step, "serving_default": module.step}
    tf.saved_model.save(module, str(folder), signatures=signatures)
    return names
