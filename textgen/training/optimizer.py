"""The optimizer of a run and its learning-rate schedule.

The step clips the gradient itself (:func:`textgen.training.steps.clip_by_global_norm`),
so the Keras optimizers are built without ``clipnorm``.
"""

from __future__ import annotations

import math
from typing import Any

from textgen._tf import keras
from textgen.config import TrainConfig


def make_optimizer(cfg: TrainConfig, variables: list[Any]) -> Any:
    """SGD (with ``momentum``) or Adam at ``learning_rate``, built for ``variables``
    (inside the strategy's scope when there is one, so its slots are mirrored too)."""
    k = keras()
    if cfg.optimizer == "sgd":
        optimizer = k.optimizers.SGD(learning_rate=cfg.learning_rate, momentum=cfg.momentum)
    else:
        optimizer = k.optimizers.Adam(learning_rate=cfg.learning_rate)
    optimizer.build(variables)
    return optimizer


def scheduled_learning_rate(cfg: TrainConfig, epoch: int, plateau_scale: float) -> float:
    """The learning rate of ``epoch`` (from 1): multiplied by ``lr_decay`` once per epoch
    after the first ``lr_decay_after`` epochs, times the reduce-on-plateau factor so far."""
    decays = max(0, epoch - cfg.lr_decay_after) if cfg.lr_decay < 1.0 else 0
    return cfg.learning_rate * cfg.lr_decay**decays * plateau_scale


def budget_factor(elapsed: float, limit: float) -> float:
    """``train.anneal = "budget"``: the factor on the learning rate after ``elapsed`` of
    ``limit`` training seconds, a cosine from 1 to 0 (0 from the budget's end on)."""
    if limit <= 0:
        return 1.0
    done = min(max(elapsed / limit, 0.0), 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * done))
