"""A larger vocabulary for a trained model: new embedding and output rows, old ones kept.

``--extend-vocab`` appends tokens after the old ids (:meth:`textgen.text.vocab.Vocab.extended`);
this module gives the weights the matching rows. It works on the named arrays of
``weights.npz`` (:func:`textgen.model.network.weight_arrays`), with numpy only, so the
grown arrays are the same layout every reader already takes: the numpy decoder, a Keras
model built for the larger vocabulary, and a later fine-tuning run.

The old rows are copied exactly. A new token starts as the average old token: its
embedding row is the mean of the old ordinary tokens' rows (every token but ``<pad>``,
``<unk>`` and ``<eos>``), and its output column and bias are the means of theirs, so
before any step the model gives every new token the same, typical score. With tied
weights the output kernel is the grown embedding's transpose, so the tie holds exactly.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

INIT = "the mean of the old ordinary tokens' rows (all but <pad>, <unk> and <eos>)"


def grow_arrays(
    arrays: Mapping[str, np.ndarray], new_size: int, *, specials: int, tied: bool
) -> dict[str, np.ndarray]:
    """``arrays`` (weights.npz's layout) for a vocabulary of ``new_size`` tokens whose
    first ``len(old)`` ids are the old ones; ``specials`` is how many ids at the start
    are special tokens (left out of the mean). ``new_size`` below the old size is a
    ``ValueError``: a vocabulary only grows."""
    embedding = np.asarray(arrays["embedding"], np.float32)
    kernel = np.asarray(arrays["out_kernel"], np.float32)
    bias = np.asarray(arrays["out_bias"], np.float32)
    old = embedding.shape[0]
    if new_size < old:
        raise ValueError(f"a vocabulary only grows: {old} tokens cannot become {new_size}")
    if not 0 <= specials < old:
        raise ValueError(f"{specials} special tokens leave no ordinary token of {old}")
    added = new_size - old
    grown = dict(arrays)
    rows = np.repeat(embedding[specials:].mean(axis=0, keepdims=True), added, axis=0)
    grown["embedding"] = np.concatenate([embedding, rows.astype(np.float32)])
    if tied:
        grown["out_kernel"] = np.ascontiguousarray(grown["embedding"].T)
    else:
        columns = np.repeat(kernel[:, specials:].mean(axis=1, keepdims=True), added, axis=1)
        grown["out_kernel"] = np.concatenate([kernel, columns.astype(np.float32)], axis=1)
    grown["out_bias"] = np.concatenate([bias, np.full(added, bias[specials:].mean(), np.float32)])
    return grown
