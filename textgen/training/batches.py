"""Which rows each training step reads: the batch order of an epoch, drawn from
``(seed, epoch)`` so that a resumed run sees the same batches, or the parallel streams of
a carried state; and a read-ahead pipeline that keeps that order exactly."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np

from textgen._tf import tensorflow
from textgen.corpus.examples import Examples


def steps_per_epoch(examples: Examples, batch_size: int, carry_state: bool) -> int:
    """Batches per epoch: all examples, or whole rounds of the parallel streams (carry)."""
    if carry_state:
        return len(examples) // min(batch_size, len(examples))
    return math.ceil(len(examples) / batch_size)


def batches(
    examples: Examples, batch_size: int, seed: int, epoch: int, start: int, carry: bool = False
) -> Iterator:
    """Batches of epoch ``epoch`` (from 1) from step ``start``.

    Shuffled: a permutation fixed by ``(seed, epoch)``. Carried state (truncated BPTT):
    the consecutive windows form ``batch_size`` parallel streams, row ``b`` of batch ``i``
    is window ``i`` of stream ``b``, so each batch continues the one before; the windows
    left over when the count does not divide are not used.
    """
    steps = steps_per_epoch(examples, batch_size, carry)
    if carry:
        rows = min(batch_size, len(examples))
        for step in range(start, steps):
            yield step + 1, *examples.rows(np.arange(rows) * steps + step)
        return
    order = np.random.default_rng([seed, epoch]).permutation(len(examples))
    for step in range(start, steps):
        yield step + 1, *examples.rows(np.sort(order[step * batch_size : (step + 1) * batch_size]))


def run_batches(
    examples: Examples,
    batch_size: int,
    seed: int,
    epoch: int,
    step: int,
    epochs: int,
    carry: bool,
) -> Iterator:
    """The batches of epochs ``epoch``..``epochs``, the first from ``step`` (a resume)."""
    for e in range(epoch, epochs + 1):
        yield from batches(examples, batch_size, seed, e, step if e == epoch else 0, carry)


def prefetched(batches: Callable[[], Iterator]) -> Iterator:
    """The batches of ``batches()`` through a ``tf.data`` pipeline that reads ahead.

    The rows of the next batches are read (from the id file, for a stream corpus) in
    tf.data's background thread while the current step runs; the order and content are
    exactly those of ``batches()``, so resuming at a step still sees the same batches.
    """
    tf = tensorflow()
    ids = tf.TensorSpec([None, None], tf.int32)
    spec = (tf.TensorSpec([], tf.int64), ids, ids)
    dataset = tf.data.Dataset.from_generator(batches, output_signature=spec).prefetch(2)
    for step, x, y in dataset:
        yield int(step), x, y
