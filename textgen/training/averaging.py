"""NT-ASGD (Merity et al. 2017): plain SGD until validation stops improving, then a
running average of the weights after every step; the average is what validation, the
best-model save, ``eval`` and ``generate`` see.

The trigger is the non-monotone one of the paper: switch at a check whose loss is worse
than the best of the checks before the last ``nonmono`` ones (so a short plateau does not
switch, a lasting one does). From the switch on, after the ``n``-th step the average is
``avg += (w - avg) / n``: the mean of the iterates since the switch. The average lives in
TensorFlow variables while training and is saved with the state
(:attr:`~textgen.training.state.TrainState.asgd_average`, with the step it started after,
``asgd_start``), so a resume continues it exactly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from textgen._tf import tensorflow, traced


def nonmono_triggered(previous: Sequence[float], score: float, nonmono: int) -> bool:
    """Whether a check scoring ``score`` (lower is better), after checks that scored
    ``previous`` (oldest first), switches to averaging: it is worse than the best of the
    checks before the last ``nonmono`` ones. ``nonmono`` 0 never switches."""
    if nonmono <= 0 or len(previous) <= nonmono:
        return False
    return score > min(previous[: len(previous) - nonmono])


class Averager:
    """The running average of ``variables`` (the model's trainable variables)."""

    def __init__(self, variables: list[Any], jit: bool = False) -> None:
        self.variables = list(variables)
        self.average: list[Any] = []
        self._jit = jit
        self._update: Any = None

    @property
    def active(self) -> bool:
        return bool(self.average)

    def start(self, values: list[np.ndarray] | None = None) -> None:
        """Begin averaging from ``values`` (a saved average) or from the weights as they
        are now (the first update then replaces them by the first iterate anyway)."""
        tf = tensorflow()
        if values is None:
            values = [np.asarray(v) for v in self.variables]
        shapes = [tuple(v.shape) for v in self.variables]
        if [tuple(np.shape(v)) for v in values] != shapes:
            raise ValueError("the saved NT-ASGD average does not match this model")
        self.average = [
            tf.Variable(np.asarray(v, dtype=np.float32), trainable=False) for v in values
        ]

        @traced(jit_compile=self._jit)
        def update(n: Any) -> None:
            for avg, var in zip(self.average, self.variables, strict=True):
                avg.assign_add((tf.convert_to_tensor(var) - avg) / n)

        self._update = update

    def update(self, n: int) -> None:
        """Add the weights after the ``n``-th step since the switch (from 1)."""
        tf = tensorflow()
        self._update(tf.constant(float(n), tf.float32))

    def arrays(self) -> list[np.ndarray]:
        """The average as numpy arrays ([] before the switch): the state's field."""
        return [np.asarray(v) for v in self.average]

    @contextlib.contextmanager
    def swapped(self) -> Iterator[None]:
        """The averaged weights in the model for the duration (the trained ones back
        after, exactly); nothing changes before the switch."""
        if not self.active:
            yield
            return
        kept = [np.asarray(v) for v in self.variables]
        try:
            for var, avg in zip(self.variables, self.average, strict=True):
                var.assign(avg)
            yield
        finally:
            for var, value in zip(self.variables, kept, strict=True):
                var.assign(value)
