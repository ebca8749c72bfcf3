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


def interrupted(signum: int | None, where: str, run_dir: object, role: str) -> Interrupted:
    """The error that ends a run stopped by ``signum`` (None: another worker was
    signalled), saying how to go on. ``role`` is ``alone``, ``chief`` or ``worker``."""
    name = signal.Signals(signum).name if signum else "another worker was interrupted"
    restart = "Restart every worker with the same command to continue"
    how = {
        "alone": f"state saved. Resume with: textgen train --resume {run_dir}",
        "chief": f"state saved in {run_dir}. {restart}",
        "worker": f"the chief worker saved the state. {restart}",
    }[role]
    return Interrupted(f"{name}: {where}; {how}", exit_code=128 + (signum or signal.SIGINT))


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
