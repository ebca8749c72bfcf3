"""The regularizers of AWD-LSTM (Merity et al. 2017, "Regularizing and Optimizing LSTM
Language Models"), each a small named piece that :func:`textgen.model.network.training_forward`
composes, as salesforce/awd-lstm-lm's ``WeightDrop``, ``LockedDropout`` and
``embedded_dropout`` are composed in its model:

* :func:`weight_drop`: DropConnect on an LSTM layer's hidden-to-hidden kernel, one mask
  per batch (the same dropped weights at every time step and for every sequence);
* :func:`locked_dropout`: one dropout mask per sequence, shared over its time steps;
* :func:`embedding_dropout`: whole rows of the embedding (word types) dropped per batch,
  so every occurrence of a type in the batch is dropped together.

All scale what they keep by ``1 / (1 - rate)`` (inverted dropout), so evaluation, which
uses none of them, needs no rescaling. They draw from Keras random ops seeded by a
``keras.random.SeedGenerator`` whose state is a variable of the model
(:func:`seed_generator`; locked dropout uses its Dropout layer's own generator), so the
random state is in ``model.variables`` and therefore in ``last.npz``: a run interrupted
and resumed draws the same masks as one that was not.
"""

from __future__ import annotations

from typing import Any

from textgen._tf import keras, tensorflow

SEED_ATTRIBUTE = "regularizer_seed"  # the model attribute holding the generator


def needs_seed(cfg: Any) -> bool:
    """Whether ``cfg`` (a ModelConfig) turns on a regularizer that draws from the model's
    own generator (weight drop or embedding dropout)."""
    return cfg.weight_drop > 0 or cfg.embedding_dropout > 0


def attach_seed_generator(model: Any) -> None:
    """Give ``model`` the generator the regularizers draw from (a tracked attribute, so
    its state is one more entry of ``model.variables``). Seeded from Keras' global seed,
    which training sets from ``train.seed`` before it builds the model."""
    setattr(model, SEED_ATTRIBUTE, keras().random.SeedGenerator(name="regularizers"))


def seed_generator(model: Any) -> Any:
    """The generator :func:`attach_seed_generator` gave ``model``."""
    generator = getattr(model, SEED_ATTRIBUTE, None)
    if generator is None:
        raise ValueError("the model was built without the regularizers' seed generator")
    return generator


def drop_mask(shape: Any, rate: float, seed: Any, dtype: Any = "float32") -> Any:
    """A mask of ``shape``: 0 with probability ``rate``, else ``1 / (1 - rate)``."""
    k = keras()
    keep = k.random.uniform(shape, seed=seed) >= rate
    return k.ops.cast(keep, dtype) / (1.0 - rate)


def weight_drop(recurrent: Any, rate: float, seed: Any) -> Any:
    """``recurrent`` (units, 4·units) with DropConnect: one mask for the whole batch.
    The product goes through autodiff, so the kept weights get their gradients scaled
    by ``1 / (1 - rate)`` and the dropped ones none."""
    if rate <= 0:
        return recurrent
    return recurrent * drop_mask(tensorflow().shape(recurrent), rate, seed, recurrent.dtype)


def locked_dropout(x: Any, rate: float, seed: Any, *, time_axis: int) -> Any:
    """``x`` (3-D, time on ``time_axis``) with one mask per sequence and feature, shared
    over the time steps (variational dropout, Gal & Ghahramani 2016)."""
    if rate <= 0:
        return x
    tf = tensorflow()
    shape = tf.unstack(tf.shape(x))
    shape[time_axis] = 1
    return x * drop_mask(tf.stack(shape), rate, seed, x.dtype)


def embedding_dropout(embeddings: Any, rate: float, seed: Any) -> Any:
    """``embeddings`` (vocab, dim) with whole rows zeroed, the kept rows scaled: a token
    type is dropped at every place it occurs in the batch."""
    if rate <= 0:
        return embeddings
    tf = tensorflow()
    return embeddings * drop_mask([tf.shape(embeddings)[0], 1], rate, seed, embeddings.dtype)
