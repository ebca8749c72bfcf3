"""Training on several GPUs or machines through TensorFlow's own ``tf.distribute``.

``train.distribute`` picks the strategy:

* ``none``: the default single-device path (no strategy object at all).
* ``mirrored``: :class:`tf.distribute.MirroredStrategy` over the GPUs of one machine (or
  the CPU when there are none).
* ``multiworker``: :class:`tf.distribute.MultiWorkerMirroredStrategy` across machines,
  each started with its own ``TF_CONFIG`` (the cluster's addresses and this worker's
  index). Worker 0 (or the task named ``chief``) is the chief.

``train.batch_size`` is the batch of one replica; a step takes ``batch_size × replicas``
rows of the epoch's order, every worker reads that global batch (a few kilobytes of ids),
and replica ``r`` (counted over the whole cluster) trains on part ``r`` of it split in
equal consecutive parts (:func:`replica_rows`). So a run resumed at (epoch, step) sees the
same batches whatever worker restarted.

Only the chief writes the run directory. Every worker reads it back on a restart: the
resumable state there plays the part of ``keras.callbacks.BackupAndRestore`` (the training
loop is textgen's own, not ``fit``, so that callback cannot be attached).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from textgen.errors import UsageError


def make_strategy(kind: str, peer_timeout: float = 0.0) -> Any:
    """The ``tf.distribute`` strategy for ``train.distribute`` (None for ``none``).

    Must run before TensorFlow executes anything else: a multi-worker strategy sets up
    the collective runtime it shares with its peers. ``peer_timeout`` > 0 bounds how long
    a collective waits for a peer: a worker whose peer died stops with an error instead
    of waiting forever (TensorFlow's own failure detection did not end the wait here).
    """
    if kind == "none":
        return None
    cluster = _tf_config() if kind == "multiworker" else ""
    from textgen._tf import tensorflow

    tf = tensorflow()
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy()
    options = tf.distribute.experimental.CommunicationOptions(  # multiworker (config-checked)
        timeout_seconds=peer_timeout or None,
        implementation=tf.distribute.experimental.CommunicationImplementation.RING,
    )
    try:
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    except (ValueError, RuntimeError) as err:
        raise UsageError(f"cannot start multi-worker training ({cluster}): {err}") from None


def _tf_config() -> str:
    """Check ``TF_CONFIG`` and describe this worker, or say what is missing."""
    raw = os.environ.get("TF_CONFIG")
    example = (
        'TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
        '"task": {"type": "worker", "index": 0}}\''
    )
    if not raw:
        raise UsageError(f"train.distribute = multiworker needs TF_CONFIG, e.g. {example}")
    try:
        spec = json.loads(raw)
        workers = spec["cluster"]["worker"]
        task = spec["task"]
        kind, index = task["type"], int(task["index"])
    except (ValueError, KeyError, TypeError):
        raise UsageError(f"TF_CONFIG is not valid; it should look like {example}") from None
    return f"{kind} {index} of {len(workers)} workers"


def is_chief(strategy: Any) -> bool:
    """Whether this process writes the run directory."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if strategy is None or resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def replicas(strategy: Any) -> int:
    """Replicas over the whole cluster (1 without a strategy)."""
    return 1 if strategy is None else int(strategy.num_replicas_in_sync)


def describe(strategy: Any) -> str:
    """One line for the log: what trains where."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is not None and resolver.task_type:
        name = "MultiWorkerMirroredStrategy"
        where = f", this is {resolver.task_type} {resolver.task_id}"
        where += " (chief, writes the run directory)" if is_chief(strategy) else ""
    else:
        name, where = "MirroredStrategy", ""
    return f"{name}, {replicas(strategy)} replicas in sync{where}"


def replica_rows(rows: int, count: int) -> list[np.ndarray]:
    """Which rows of a global batch of ``rows`` rows each of ``count`` replicas trains on:
    nearly equal consecutive parts. A replica left without a row gets index -1, the
    all-padding row the caller appends (padding is masked out of the loss), because every
    replica must take part in each step's all-reduce."""
    return [
        part if len(part) else np.array([-1]) for part in np.array_split(np.arange(rows), count)
    ]
