"""The Keras language model: Embedding → N stacked RNN layers → Dense logits.

The recurrent layers use the library defaults that keep the fused kernels usable (tanh /
sigmoid, no recurrent dropout, no unrolling), so a GPU gets cuDNN. Dropout, when set, sits
between recurrent layers only. In ``lines`` mode the embedding masks id 0, so the
pre-padding neither changes the recurrent state nor counts in the loss: a padded line and
the same line fed alone from a zero state give the same outputs, which is what lets
generation run statefully without any padding.

:func:`to_numpy` turns a trained model into its one-step twin (:class:`NumpyLM`).
"""

from __future__ import annotations

from typing import Any

from textgen._tf import keras
from textgen.config import ModelConfig
from textgen.stepper import NumpyLM, RNNWeights

_LAYERS = {"lstm": "LSTM", "gru": "GRU", "rnn": "SimpleRNN"}


def build_model(cfg: ModelConfig, vocab_size: int, *, mask_padding: bool) -> Any:
    """A functional Keras model mapping int ids (batch, time) to logits (batch, time, vocab)."""
    k = keras()
    ids = k.Input(shape=(None,), dtype="int32", name="ids")
    x = k.layers.Embedding(vocab_size, cfg.embedding_dim, mask_zero=mask_padding, name="embedding")(
        ids
    )
    rnn = getattr(k.layers, _LAYERS[cfg.cell])
    for i in range(cfg.layers):
        if i > 0 and cfg.dropout > 0:
            x = k.layers.Dropout(cfg.dropout, name=f"dropout_{i}")(x)
        x = rnn(cfg.units, return_sequences=True, name=f"rnn_{i}")(x)
    logits = k.layers.Dense(vocab_size, name="logits")(x)
    return k.Model(ids, logits, name="textgen_lm")


def count_params(model: Any) -> int:
    return int(model.count_params())


def to_numpy(model: Any) -> NumpyLM:
    """Copy a Keras LM's weights into a :class:`NumpyLM` (layers found by type, in order)."""
    k = keras()
    embedding, dense, layers, cell = None, None, [], None
    kinds = {k.layers.LSTM: "lstm", k.layers.GRU: "gru", k.layers.SimpleRNN: "rnn"}
    for layer in model.layers:
        if isinstance(layer, k.layers.Embedding):
            embedding = layer.get_weights()[0]
        elif type(layer) in kinds:
            cell = kinds[type(layer)]
            kernel, recurrent, bias = layer.get_weights()
            layers.append(RNNWeights(kernel, recurrent, bias))
        elif isinstance(layer, k.layers.Dense):
            kernel, bias = layer.get_weights()
            dense = (kernel, bias)
    if embedding is None or dense is None or cell is None:
        raise ValueError("model is not an Embedding → RNN → Dense language model")
    return NumpyLM(cell, embedding, layers, dense[0], dense[1])


def training_forward(model: Any, cfg: ModelConfig, *, mask_padding: bool) -> Any:
    """A function ``(ids, training) → logits`` for the training step.

    For LSTM models it computes the same outputs as ``model(ids)`` through
    :func:`textgen.fastrnn.lstm_recurrence` (input projections hoisted out of the time
    loop, hand-written backward pass) over the model's own variables; for GRU and
    SimpleRNN it is the Keras model itself.
    """
    if cfg.cell != "lstm":
        return lambda ids, training: model(ids, training=training)
    from textgen._tf import tensorflow
    from textgen.fastrnn import lstm_recurrence

    tf = tensorflow()
    embedding = model.get_layer("embedding")
    dense = model.get_layer("logits")
    cells = [model.get_layer(f"rnn_{i}").cell for i in range(cfg.layers)]
    dropouts = {i: model.get_layer(f"dropout_{i}") for i in range(1, cfg.layers) if cfg.dropout > 0}

    def forward(ids: Any, training: bool) -> Any:
        time_major = tf.transpose(ids)
        x = tf.gather(embedding.embeddings, time_major)  # (time, batch, embedding)
        mask = tf.cast(tf.not_equal(time_major, 0), x.dtype)[:, :, None] if mask_padding else None
        for i, cell in enumerate(cells):
            if i in dropouts:
                x = dropouts[i](x, training=training)
            xw = tf.tensordot(x, cell.kernel, 1) + cell.bias  # all time steps in one product
            x = lstm_recurrence(xw, tf.convert_to_tensor(cell.recurrent_kernel), mask)
        logits = tf.tensordot(x, dense.kernel, 1) + dense.bias
        return tf.transpose(logits, [1, 0, 2])

    return forward
