"""The compiled steps: one optimizer step (for one replica or for many, through a
``tf.distribute`` strategy), the evaluation step, and gradient clipping.

The step minimises the mean cross-entropy per token plus, when ``train.ar`` / ``train.tar``
are set, AWD-LSTM's activation regularizers (:func:`activation_penalties`); the loss it
reports (and the history records) is the cross-entropy alone."""

from __future__ import annotations

from typing import Any

import numpy as np

from textgen._tf import tensorflow, traced
from textgen.corpus.examples import Examples
from textgen.training import distribute
from textgen.training.batches import batches


def clip_by_global_norm(grads: list[Any], clipnorm: float) -> list[Any]:
    """Scale ``grads`` so that their global L2 norm is at most ``clipnorm``.

    The embedding's gradient arrives as ``IndexedSlices``, one row per token of the batch,
    so a token that occurs twice has two rows. Keras' ``global_clipnorm`` squares those
    rows as they come, which is not the norm of the gradient (the test of one clipped
    step measured 0.99987 of the intended update). Made dense first, the rows of a token
    are summed, and the norm is the gradient's; Keras' clipping made them dense too.
    """
    tf = tensorflow()
    dense = [tf.convert_to_tensor(g) for g in grads]
    clipped, _ = tf.clip_by_global_norm(dense, clipnorm)
    return clipped


def activation_penalties(
    raw: Any, dropped: Any, mask: Any, *, time_axis: int = 1, compiled: bool = False
) -> tuple[Any, Any, Any, Any]:
    """The sums AR and TAR (Merity et al. 2017) are made of, padding masked out.

    ``raw`` and ``dropped`` are the last recurrent layer's outputs before and after the
    output dropout, (batch, time, units), or (time, batch, units) with ``time_axis`` 0 (the
    LSTM layers' own layout, which spares the step two transposes); ``mask`` (batch, time)
    is 1 where a token is real. Returns (sum of ``dropped``², the number of its real
    entries, sum of ``(raw[t] - raw[t-1])``² over pairs of real neighbours, the number of
    those entries): AR is ``ar * first / second`` and TAR ``tar * third / fourth``, means
    over every unit of every real position. Sums rather than means, so that replicas can
    add theirs up.

    ``compiled`` runs the sums as their own XLA computation, forward and backward: for a
    step that is not XLA-compiled as a whole (the bf16 step), where each of their passes
    over the (time, batch, units) outputs would be a separate TensorFlow kernel. Inside an
    XLA-compiled step it changes nothing.
    """
    if time_axis not in (0, 1):
        raise ValueError(f"time_axis must be 0 or 1, got {time_axis}")
    if compiled:
        key = f"penalties_{time_axis}"
        if key not in _COMPILED:
            _COMPILED[key] = traced(
                lambda r, d, m: _penalty_sums(r, d, m, time_axis), jit_compile=True
            )
        return _COMPILED[key](raw, dropped, mask)
    return _penalty_sums(raw, dropped, mask, time_axis)


_COMPILED: dict[str, Any] = {}  # activation_penalties' XLA computations, one per layout


def _penalty_sums(raw: Any, dropped: Any, mask: Any, time_axis: int) -> tuple[Any, Any, Any, Any]:
    """:func:`activation_penalties`' four values, uncompiled."""
    tf = tensorflow()
    units = tf.cast(tf.shape(raw)[-1], tf.float32)
    mask = tf.cast(mask, tf.float32)
    if time_axis == 0:  # the outputs are time-major: so is the mask
        mask = tf.transpose(mask)
    ar_sum = tf.reduce_sum(tf.square(dropped) * mask[:, :, None])
    if time_axis == 0:
        pairs = mask[1:] * mask[:-1]  # both neighbours real
        step = raw[1:] - raw[:-1]
    else:
        pairs = mask[:, 1:] * mask[:, :-1]
        step = raw[:, 1:] - raw[:, :-1]
    tar_sum = tf.reduce_sum(tf.square(step) * pairs[:, :, None])
    return ar_sum, tf.reduce_sum(mask) * units, tar_sum, tf.reduce_sum(pairs) * units


class Steps:
    """The compiled training and evaluation steps for one model and optimizer.

    With a carried state every step takes the state ``(layers, 2, batch, units)`` the
    previous batch left and returns the new one; otherwise each batch starts from zeros.

    ``precision`` is the step's ``train.precision``. A bf16 step is not XLA-compiled
    (``jit`` False, :func:`textgen.model.precision.step_jit`), so two of its pieces are
    compiled on their own when there is no strategy: the output bias with the cross-entropy
    (``training_forward``'s ``labels``; TensorFlow's kernel of the loss was the largest
    single cost of the word model's bf16 step) and the update (dense gradients, clipping and
    ``optimizer.apply`` in one XLA computation instead of some ten kernels per variable).
    Measured on the word 2x200 model at batch 64, load 7-8: 1.19x → 1.43x float32's step.

    ``width``, when given, is the number of inputs in every training batch's row (the
    examples' :attr:`~textgen.corpus.examples.Examples.width`): the training step's graph
    then knows its number of time steps, and the compiled LSTM cell's loops are unrolled
    (:func:`textgen.model.fastrnn.lstm_layer`). The evaluation step keeps any width.
    A float32 step, compiled or not, and any step under a strategy are built as before, so
    their values do not change, except that AR/TAR's sums of every step run over the LSTM
    layers' time-major outputs (no transposes), which can change the sums' last bits; in
    the bf16 step the sums are a third compiled piece (:func:`activation_penalties`).
    """

    def __init__(
        self,
        model: Any,
        optimizer: Any,
        forward: Any,
        jit: bool,
        state_shape: tuple | None,
        strategy: Any = None,
        clipnorm: float = 0.0,
        ar: float = 0.0,
        tar: float = 0.0,
        precision: str = "float32",
        width: int | None = None,
    ) -> None:
        tf = tensorflow()
        spec = tf.TensorSpec([None, None], tf.int32)
        train_spec = tf.TensorSpec([None, width or None], tf.int32)
        self.model, self.optimizer, self.state_shape = model, optimizer, state_shape
        carry = state_shape is not None
        state_spec = tf.TensorSpec([state_shape[0], 2, None, state_shape[1]] if carry else [])

        regularized = bool(ar or tar)
        # the bf16 step on one replica: its loss and its update compiled on their own
        pieces = precision == "bfloat16" and not jit and strategy is None

        def update(grads: list[Any]) -> None:
            """Clip (when set) and apply ``grads``, dense, to the trainable variables."""
            if clipnorm:
                grads = clip_by_global_norm(grads, clipnorm)
            optimizer.apply(grads, model.trainable_variables)

        compiled_update = traced(update, jit_compile=True) if pieces else None

        def token_loss(
            x: Any, y: Any, state: Any, training: bool, penalties: list | None = None
        ) -> tuple[Any, Any, Any]:
            """The summed cross-entropy, its token count and the state after the batch;
            with ``penalties`` (a list) also AR/TAR's sums, appended to it."""
            layers = [(state[i, 0], state[i, 1]) for i in range(state_shape[0])] if carry else None
            labels = y if pieces else None  # bf16: the loss comes with the logits' bias
            if penalties is None:
                logits, new = forward(x, training, layers, labels=labels)
            else:
                logits, new, (raw, dropped) = forward(
                    x, training, layers, hidden="native", labels=labels
                )
            if pieces:
                ce = logits  # forward's cross-entropy (training_forward's ``labels``)
            else:
                ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
            mask = tf.cast(tf.not_equal(x, 0), ce.dtype)  # padding predicts nothing
            if penalties is not None:
                time_axis = getattr(forward, "hidden_time_axis", 1)  # "native": its layout
                penalties.extend(
                    activation_penalties(raw, dropped, mask, time_axis=time_axis, compiled=pieces)
                )
            new_state = tf.stack([tf.stack(pair) for pair in new]) if carry else state
            return tf.reduce_sum(ce * mask), tf.reduce_sum(mask), new_state

        sum_ = tf.distribute.ReduceOp.SUM

        def descend(x: Any, y: Any, state: Any, ctx: Any = None) -> tuple[Any, Any, Any, Any]:
            """One optimizer step on the mean loss over the global batch's tokens.

            Alone (``ctx`` None) that is this batch. On a replica, the token count and
            the gradients are summed over the replicas (``ctx``) first: the replicas'
            gradients then sum to the gradient of the global mean, which is clipped as
            one gradient and handed to the optimizer divided by the replica count,
            because the optimizer sums it once more across replicas.
            """
            variables = model.trainable_variables

            def all_(value: Any) -> Any:  # summed over the replicas
                return value if ctx is None else ctx.all_reduce(sum_, value)

            with tf.GradientTape() as tape:
                penalties: list | None = [] if regularized else None
                total, count, new_state = token_loss(x, y, state, True, penalties)
                loss = total / tf.maximum(all_(count), 1.0)
                if penalties:  # training only: the reported loss stays the cross-entropy
                    ar_sum, ar_n, tar_sum, tar_n = penalties
                    if ar:
                        loss += ar * ar_sum / tf.maximum(all_(ar_n), 1.0)
                    if tar:
                        loss += tar * tar_sum / tf.maximum(all_(tar_n), 1.0)
            grads = tape.gradient(loss, variables)
            if compiled_update is not None and ctx is None:  # the bf16 step, one replica
                compiled_update([tf.convert_to_tensor(g) for g in grads])
            else:
                if ctx is not None:
                    grads = ctx.all_reduce(sum_, [tf.convert_to_tensor(g) for g in grads])
                if clipnorm:
                    grads = clip_by_global_norm(grads, clipnorm)
                if ctx is not None:
                    grads = [g / ctx.num_replicas_in_sync for g in grads]
                optimizer.apply(grads, variables)
            # the loss is measured before the update; a step can still leave bad weights
            finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(v)) for v in variables])
            return total, count, finite, new_state

        @traced(input_signature=[train_spec, train_spec, state_spec], jit_compile=jit)
        def train_step(x: Any, y: Any, state: Any) -> tuple[Any, Any, Any, Any]:
            return descend(x, y, state)

        @traced(input_signature=[spec, spec, state_spec], jit_compile=jit)
        def eval_step(x: Any, y: Any, state: Any) -> tuple[Any, Any, Any]:
            return token_loss(x, y, state, False)

        self.train_step, self.eval_step = train_step, eval_step
        # with a strategy the workers agree on stopping: each step all-reduces whether
        # this process was signalled (stop_here), and all stop after the same step
        self.stop_here = self.stop_all = False
        if strategy is not None:
            self.train_step = self._distributed(strategy, descend)

    def _distributed(self, strategy: Any, descend: Any) -> Any:
        """A train step that splits the global batch over the replicas of ``strategy``:
        each replica takes its rows through ``descend`` (the single step, summed over the
        replicas), and the workers exchange whether one of them was signalled."""
        tf = tensorflow()
        count = strategy.num_replicas_in_sync
        sum_ = tf.distribute.ReduceOp.SUM

        def replica_step(x: Any, y: Any, stop: Any) -> tuple[Any, Any, Any, Any]:
            ctx = tf.distribute.get_replica_context()
            total, tokens, finite, _ = descend(x, y, tf.zeros([]), ctx)
            return total, tokens, tf.cast(finite, tf.float32), stop

        @traced(reduce_retracing=True)
        def step(xs: Any, ys: Any, stops: Any) -> tuple[Any, Any, Any, Any]:
            total, tokens, finite, stop = strategy.run(replica_step, args=(xs, ys, stops))
            return (
                strategy.reduce(sum_, total, axis=None),
                strategy.reduce(sum_, tokens, axis=None),
                strategy.reduce(sum_, finite, axis=None) >= count,  # finite on every replica
                strategy.reduce(sum_, stop, axis=None) > 0,  # some worker was signalled
            )

        def train_step(x: Any, y: Any, state: Any) -> tuple[Any, Any, Any, Any]:
            x, y = np.asarray(x), np.asarray(y)
            parts = distribute.replica_rows(len(x), count)

            def rows(of: np.ndarray) -> Any:
                return strategy.experimental_distribute_values_from_function(
                    lambda ctx: of[parts[ctx.replica_id_in_sync_group]]
                )

            padded_x = np.concatenate([x, np.zeros((1, x.shape[1]), x.dtype)])
            padded_y = np.concatenate([y, np.zeros((1, y.shape[1]), y.dtype)])
            flag = np.float32(self.stop_here)
            stops = strategy.experimental_distribute_values_from_function(lambda _ctx: flag)
            total, tokens, finite, stop_all = step(rows(padded_x), rows(padded_y), stops)
            self.stop_all = bool(stop_all)
            return total, tokens, finite, state

        return train_step

    def zero_state(self, batch: int) -> np.ndarray:
        """The state a stream starts from (a placeholder when no state is carried)."""
        if self.state_shape is None:
            return np.zeros((), np.float32)
        layers, units = self.state_shape
        return np.zeros((layers, 2, batch, units), np.float32)

    def evaluate(self, examples: Examples, batch_size: int) -> float:
        """Mean loss per predicted token over ``examples`` (exact, not a mean of batches)."""
        total = count = 0.0
        if self.state_shape is not None:  # parallel streams, state carried through each
            state = self.zero_state(min(batch_size, len(examples)))
            for _, x, y in batches(examples, batch_size, 0, 0, 0, carry=True):
                loss_sum, tokens, state = self.eval_step(x, y, state)
                total, count = total + float(loss_sum), count + float(tokens)
            return total / max(count, 1.0)
        none = self.zero_state(0)
        for start in range(0, len(examples), batch_size):
            x, y = examples.rows(np.arange(start, min(start + batch_size, len(examples))))
            loss_sum, tokens, _ = self.eval_step(x, y, none)
            total, count = total + float(loss_sum), count + float(tokens)
        return total / max(count, 1.0)
