"""The Keras language model: Embedding → N stacked RNN layers → Dense logits.

The recurrent layers use the library defaults that keep the fused kernels usable (tanh /
sigmoid, no recurrent dropout, no unrolling), so a GPU gets cuDNN. Dropout sits on the
non-recurrent connections only (Zaremba et al. 2014): on the embeddings
(``input_dropout``), between recurrent layers (``dropout``) and before the logits
(``output_dropout``). With ``tie_weights`` the output projection is the embedding matrix:
training uses the embedding's transpose, and the Dense kernel (not trainable) holds a copy
of it in everything exported, so a saved model stays a plain Keras model. The exports are
the three functions below, and each of them ties by construction: :func:`save_keras`
(model.keras), :func:`variable_arrays` (the resumable state) and :func:`weight_arrays`
(weights.npz); nothing else needs to remember to copy the embedding.

In ``lines`` mode the embedding masks id 0, so the pre-padding neither changes the
recurrent state nor counts in the loss: a padded line and the same line fed alone from a
zero state give the same outputs, which is what lets generation run statefully without
any padding.

:func:`weight_arrays` copies a trained model's weights out as named numpy arrays, the
layout of a run's ``weights.npz`` that the numpy twin
(:class:`textgen.decoding.numpy_lm.NumpyLM`) reads.
"""

from __future__ import annotations

from typing import Any

from textgen._tf import keras, traced
from textgen.config import ModelConfig
from textgen.model import regularizers

_LAYERS = {"lstm": "LSTM", "gru": "GRU", "rnn": "SimpleRNN"}


def build_model(cfg: ModelConfig, vocab_size: int, *, mask_padding: bool) -> Any:
    """A functional Keras model mapping int ids (batch, time) to logits (batch, time, vocab)."""
    k = keras()
    ids = k.Input(shape=(None,), dtype="int32", name="ids")
    x = k.layers.Embedding(vocab_size, cfg.embedding_dim, mask_zero=mask_padding, name="embedding")(
        ids
    )
    rnn = getattr(k.layers, _LAYERS[cfg.cell])
    # locked dropout: one mask per sequence, shared over time (batch, 1, features)
    noise = {"noise_shape": (None, 1, None)} if cfg.locked_dropout else {}
    for i in range(cfg.layers):
        rate = cfg.input_dropout if i == 0 else cfg.dropout
        if rate > 0:
            x = k.layers.Dropout(rate, name=f"dropout_{i}", **noise)(x)
        x = rnn(cfg.units, return_sequences=True, name=f"rnn_{i}")(x)
    if cfg.output_dropout > 0:
        x = k.layers.Dropout(cfg.output_dropout, name="dropout_out", **noise)(x)
    logits = k.layers.Dense(vocab_size, name="logits")(x)
    model = k.Model(ids, logits, name="textgen_lm")
    if regularizers.needs_seed(cfg):  # weight drop, embedding dropout: resumable masks
        regularizers.attach_seed_generator(model)
    if cfg.tie_weights:
        dense = model.get_layer("logits")
        dense.kernel.trainable = False  # training uses the embedding; see _sync_tied()
        _sync_tied(model)
    return model


def is_tied(model: Any) -> bool:
    """Whether the output projection is the embedding (its Dense kernel is a frozen copy)."""
    return model.get_layer("logits").kernel.trainable is False


def _sync_tied(model: Any) -> None:
    """Copy the embedding's transpose into the output kernel of a tied model."""
    if is_tied(model):
        dense = model.get_layer("logits")
        dense.kernel.assign(model.get_layer("embedding").embeddings.value.numpy().T)


def save_keras(model: Any, path: Any) -> None:
    """Write ``model.keras`` (a tied output kernel holds the embedding's transpose)."""
    _sync_tied(model)
    model.save(path)


def variable_arrays(model: Any) -> list[Any]:
    """Every variable of ``model`` as a numpy array, in ``model.variables`` order: the
    model's part of the resumable state (a tied output kernel holds the embedding's
    transpose)."""
    import numpy as np

    _sync_tied(model)
    return [np.asarray(v) for v in model.variables]


def init_uniform(model: Any, scale: float, seed: int) -> None:
    """Set every weight uniform in [-scale, scale], the initialisation of Zaremba et al."""
    import numpy as np

    rng = np.random.default_rng(seed)
    for variable in model.trainable_variables:
        shape = tuple(variable.shape)
        variable.assign(rng.uniform(-scale, scale, shape).astype(variable.dtype))
    _sync_tied(model)


def count_params(model: Any) -> int:
    return int(model.count_params())


def weight_arrays(model: Any) -> dict[str, Any]:
    """A Keras LM's weights as the named arrays of ``weights.npz`` (layers found by type,
    in order): ``cell``, ``embedding``, ``rnn_{i}_kernel/_recurrent/_bias``, ``out_kernel``,
    ``out_bias``. A tied model's ``out_kernel`` is the embedding's transpose, whatever its
    Dense kernel holds."""
    import numpy as np

    k = keras()
    embedding, dense, layers, cell = None, None, [], None
    kinds = {k.layers.LSTM: "lstm", k.layers.GRU: "gru", k.layers.SimpleRNN: "rnn"}
    for layer in model.layers:
        if isinstance(layer, k.layers.Embedding):
            embedding = layer.get_weights()[0]
        elif type(layer) in kinds:
            cell = kinds[type(layer)]
            layers.append(layer.get_weights())  # kernel, recurrent kernel, bias
        elif isinstance(layer, k.layers.Dense):
            kernel, bias = layer.get_weights()
            tied = layer.kernel.trainable is False  # the kernel is the embedding's copy
            dense = (kernel, bias, tied)
    if embedding is None or dense is None or cell is None:
        raise ValueError("model is not an Embedding → RNN → Dense language model")
    out_kernel = np.ascontiguousarray(embedding.T) if dense[2] else dense[0]
    arrays = {"cell": np.array(cell), "embedding": embedding}
    for i, (kernel, recurrent, bias) in enumerate(layers):
        arrays |= {
            f"rnn_{i}_kernel": kernel,
            f"rnn_{i}_recurrent": recurrent,
            f"rnn_{i}_bias": bias,
        }
    return arrays | {"out_kernel": out_kernel, "out_bias": dense[1]}


def set_weight_arrays(model: Any, arrays: dict[str, Any]) -> None:
    """Load the named arrays of ``weights.npz`` (:func:`weight_arrays`' layout) into
    ``model``, the inverse of :func:`weight_arrays`: a fine-tuning run starts from them.

    Shapes must match the model exactly (a wrong one is a ``ValueError`` naming the array);
    a tied model's output kernel is re-derived from the embedding."""
    import numpy as np

    k = keras()
    kinds = {k.layers.LSTM: "lstm", k.layers.GRU: "gru", k.layers.SimpleRNN: "rnn"}
    rnns = [layer for layer in model.layers if type(layer) in kinds]
    cell = str(np.asarray(arrays["cell"])) if "cell" in arrays else kinds[type(rnns[0])]
    if cell != kinds[type(rnns[0])]:
        raise ValueError(f"the arrays are of a {cell} model, this one is {kinds[type(rnns[0])]}")
    targets = [(model.get_layer("embedding").embeddings, "embedding")]
    for i, layer in enumerate(rnns):
        weights = layer.cell.kernel, layer.cell.recurrent_kernel, layer.cell.bias
        names = (f"rnn_{i}_kernel", f"rnn_{i}_recurrent", f"rnn_{i}_bias")
        targets += zip(weights, names, strict=True)
    dense = model.get_layer("logits")
    targets += [(dense.bias, "out_bias")]
    if not is_tied(model):
        targets += [(dense.kernel, "out_kernel")]
    for variable, name in targets:
        value = np.asarray(arrays[name], dtype=np.float32)
        if tuple(variable.shape) != value.shape:
            raise ValueError(f"{name} has shape {value.shape}, the model wants {variable.shape}")
        variable.assign(value)
    _sync_tied(model)


PATHS = ("auto", "fast", "keras")  # training_forward's path: see its docstring


def training_forward(
    model: Any,
    cfg: ModelConfig,
    *,
    mask_padding: bool,
    precision: str = "float32",
    path: str = "auto",
) -> Any:
    """A function ``forward(ids, training, state=None, *, hidden=False)`` for the training
    step, returning ``(logits, state)``, or ``(logits, state, (raw, dropped))`` with
    ``hidden=True``.

    It computes what ``model(ids)`` computes, over the model's own variables, with two
    additions the Keras graph cannot express: the tied output projection and a recurrent
    state carried in and out (``state`` is a list of ``(h, c)`` per layer, LSTM only; None
    starts from zeros and returns None). LSTM layers run through
    :func:`textgen.model.fastrnn.lstm_layer` (input projections hoisted out of the time
    loop, hand-written backward pass) on ``path="fast"``, through
    :func:`textgen.model.keras_rnn.keras_lstm` (Keras' cuDNN LSTM on a GPU, Keras' own
    recurrence elsewhere) on ``path="keras"``; ``"auto"`` is the Keras path when
    TensorFlow sees a GPU, else the fast one. GRU and SimpleRNN layers are the Keras layers.

    ``precision="bfloat16"`` runs the LSTM's and the output layer's products in bf16 over
    the float32 variables (cast at use); logits, loss and gradients stay float32.

    With ``training`` the regularizers of AWD-LSTM apply (:mod:`textgen.model.regularizers`;
    each off by default): ``model.weight_drop`` on each LSTM layer's recurrent kernel,
    ``model.embedding_dropout`` on the embedding rows the lookup reads (a tied output
    projection uses the whole matrix), and with ``model.locked_dropout`` the three dropout
    rates draw one mask per sequence, shared over time. Evaluation uses none of them.

    With ``labels`` (batch, time) the first value returned is each position's
    cross-entropy (batch, time) instead of the logits: for bf16, the bias and the loss over
    the bf16 logits are then one XLA computation forward and one backward
    (:func:`_bias_cross_entropy`), where the logits alone and the loss after them were
    four, each a pass over a (time, batch, vocab) float32 array.

    ``hidden=True`` also returns the last recurrent layer's outputs before (``raw``) and
    after (``dropped``) the output dropout, both (batch, time, units) float32: what
    activation regularization (AR) and temporal AR (TAR) penalise. ``hidden="native"``
    returns them in the layers' own layout instead, time-major for LSTM layers (the
    function's attribute ``hidden_time_axis`` says which axis is time), which spares the
    training step two transposes. Logits are float32.
    """
    from textgen._tf import tensorflow
    from textgen.model.fastrnn import lstm_layer
    from textgen.model.keras_rnn import gpu_available, keras_lstm
    from textgen.model.precision import compute_dtype

    if path not in PATHS:
        raise ValueError(f"path must be one of {', '.join(PATHS)}, got {path!r}")
    tf = tensorflow()
    low = tf.as_dtype(compute_dtype(precision))
    on_keras = path == "keras" or (path == "auto" and gpu_available())
    run_layer = keras_lstm if on_keras else lstm_layer
    names = {layer.name for layer in model.layers}
    embedding = model.get_layer("embedding")
    dense = model.get_layer("logits")
    layers = [model.get_layer(f"rnn_{i}") for i in range(cfg.layers)]
    drop = {
        i: model.get_layer(f"dropout_{i}") for i in range(cfg.layers) if f"dropout_{i}" in names
    }
    drop_out = model.get_layer("dropout_out") if "dropout_out" in names else None
    lstm = cfg.cell == "lstm"
    seed = regularizers.seed_generator(model) if regularizers.needs_seed(cfg) else None

    def batch_major(t: Any) -> Any:
        return tf.transpose(t, [1, 0, 2]) if lstm else t

    def dropout(layer: Any, x: Any, training: bool) -> Any:
        """``layer``'s dropout; locked: one mask per sequence, from the layer's own seed."""
        if not (training and cfg.locked_dropout):
            return layer(x, training=training)
        time_axis = 0 if lstm else 1
        return regularizers.locked_dropout(x, layer.rate, layer.seed_generator, time_axis=time_axis)

    def forward(
        ids: Any,
        training: bool,
        state: list[Any] | None = None,
        *,
        hidden: bool | str = False,
        labels: Any = None,
    ) -> tuple[Any, ...]:
        # LSTM layers work time-major (time, batch, features); Keras layers batch-major
        table = embedding.embeddings
        if training and cfg.embedding_dropout > 0:  # the lookup only; a tied output is whole
            table = regularizers.embedding_dropout(table, cfg.embedding_dropout, seed)
        x = tf.gather(table, tf.transpose(ids) if lstm else ids)
        mask = None
        if mask_padding:
            mask = tf.not_equal(tf.transpose(ids) if lstm else ids, 0)
        new_state = [] if state is not None else None
        for i, layer in enumerate(layers):
            if i in drop:
                x = dropout(drop[i], x, training)
            if not lstm:
                x = layer(x, mask=mask, training=training)
                continue
            cell = layer.cell
            weights = (cell.kernel, cell.bias, cell.recurrent_kernel)  # lstm_layer's order
            weights = [tf.convert_to_tensor(w) for w in weights]
            if training and cfg.weight_drop > 0:  # DropConnect, one mask per batch
                weights[2] = regularizers.weight_drop(weights[2], cfg.weight_drop, seed)
            m = None if mask is None else tf.cast(mask, x.dtype)[:, :, None]
            if state is None:
                x = run_layer(x, *weights, m, compute_dtype=low)
            else:
                x, carried = run_layer(x, *weights, m, initial=state[i], compute_dtype=low)
                new_state.append(carried)
        raw = x
        if drop_out is not None:
            x = dropout(drop_out, x, training)
        kernel = tf.transpose(embedding.embeddings) if cfg.tie_weights else dense.kernel
        logits = tf.tensordot(tf.cast(x, low), tf.cast(kernel, low), 1)
        if low == tf.float32:
            logits = batch_major(logits + dense.bias)
            if labels is not None:
                logits = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
        elif labels is not None:  # the bias and the loss in one XLA computation
            logits = _bias_cross_entropy()(labels, logits, tf.convert_to_tensor(dense.bias), lstm)
        else:  # bf16 products in oneDNN, the elementwise pass after them under XLA
            logits = _widen_add_bias()(logits, tf.convert_to_tensor(dense.bias), lstm)
        if not hidden:
            return logits, new_state
        if hidden == "native":  # the layers' own layout (forward.hidden_time_axis)
            return logits, new_state, (tf.cast(raw, tf.float32), tf.cast(x, tf.float32))
        floats = (tf.cast(batch_major(raw), tf.float32), tf.cast(batch_major(x), tf.float32))
        return logits, new_state, floats

    forward.hidden_time_axis = 0 if lstm else 1  # of hidden="native"'s outputs
    return forward


_COMPILED: dict[str, Any] = {}


def _widen_add_bias() -> Any:
    """``(logits, bias, transpose) -> float32(logits) + bias`` (batch-major when
    ``transpose``: the LSTM layers are time-major), XLA-compiled.

    The bf16 step is not XLA-compiled as a whole (``model/precision.py``: XLA:CPU runs bf16
    products in float32), so the passes after the output projection over its
    (time, batch, vocab) logits would each be a separate TensorFlow kernel: XLA fuses the
    cast, the bias and the transpose into one, forward and backward (6 against 30 ms at
    1,280 tokens × 10,002 words on the benchmark machine)."""
    if "widen" not in _COMPILED:
        from textgen._tf import tensorflow

        tf = tensorflow()

        def widen(logits: Any, bias: Any, transpose: bool) -> Any:
            out = tf.cast(logits, tf.float32) + bias
            return tf.transpose(out, [1, 0, 2]) if transpose else out

        _COMPILED["widen"] = traced(widen, jit_compile=True)
    return _COMPILED["widen"]


def _bias_cross_entropy() -> Any:
    """``(labels, logits, bias, time_major) -> cross-entropy`` (batch, time) of the bf16
    ``logits`` (time-major when ``time_major``: the LSTM layers' layout) plus ``bias``,
    XLA-compiled: the cast, the bias and the loss fuse into one pass forward and one
    backward, and time-major logits are never transposed (the labels are instead). On
    20 × 20 × 10,001 logits, forward and backward: 4.5 ms against 7.3 for the logits
    (:func:`_widen_add_bias`) and the loss compiled apart, the same gradients to float32
    rounding. (TensorFlow's own kernel of the loss, uncompiled, took 163 ms against XLA's 42
    on 1,280 tokens × 10,002 words: the largest single cost of the word model's bf16 step.)"""
    if "bias_ce" not in _COMPILED:
        from textgen._tf import tensorflow

        tf = tensorflow()

        def bias_ce(labels: Any, logits: Any, bias: Any, time_major: bool) -> Any:
            wide = tf.cast(logits, tf.float32) + bias
            if not time_major:
                return tf.nn.sparse_softmax_cross_entropy_with_logits(labels, wide)
            ce = tf.nn.sparse_softmax_cross_entropy_with_logits(tf.transpose(labels), wide)
            return tf.transpose(ce)

        _COMPILED["bias_ce"] = traced(bias_ce, jit_compile=True)
    return _COMPILED["bias_ce"]
