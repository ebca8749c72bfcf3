"""Signals during training: the first SIGINT/SIGTERM becomes a flag the loop checks after
each step (so the state is saved whole), and the error that reports the stop."""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any

from textgen.errors import TextgenError


class Interrupted(TextgenError):
    """Training stopped by a signal after saving its resumable state."""

    def __init__(self, message: str, exit_code: int = 130) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Signals:
    """Turns the first SIGINT/SIGTERM into a flag checked after each step.

    A second signal exits at once: every file is written by atomic rename, so stopping
    anywhere leaves the last good files in place.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._saved: dict[int, Any] = {}

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.received is not None:
            os._exit(128 + signum)
        self.received = signum
        print("stopping after this step (press Ctrl-C again to quit at once)", file=sys.stderr)

    def __enter__(self) -> Signals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._saved[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)
