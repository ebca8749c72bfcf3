"""TensorBoard scalars of a run (``tensorboard --logdir runs`` shows them).

TensorFlow writes the event files itself; the ``tensorboard`` package is needed only to
view them, so it is not a dependency. The writer opens at the first scalar, so a run that
logs none leaves no ``logs/`` folder.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from textgen._tf import tensorflow


class Scalars:
    """Writes named scalars at a step into ``folder`` (nothing when not ``enabled``)."""

    def __init__(self, folder: Path, *, enabled: bool) -> None:
        self.folder, self.enabled = folder, enabled
        self.writer: Any = None
        self.metadata: Any = None
        self.before: set[Path] = set()  # what the folder held before this writer opened

    def write(self, scalars: dict[str, float], step: int) -> None:
        """Write the finite values of ``scalars`` at ``step`` (NaN, e.g. no validation,
        is left out)."""
        if not self.enabled:
            return
        tf = tensorflow()
        if self.writer is None:
            from tensorflow.core.framework import summary_pb2

            self.before = set(self.folder.iterdir()) if self.folder.is_dir() else set()
            self.writer = tf.summary.create_file_writer(str(self.folder))
            plugin = summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
            self.metadata = summary_pb2.SummaryMetadata(plugin_data=plugin)
        with self.writer.as_default():
            for name, value in scalars.items():
                if math.isfinite(value):
                    tf.summary.write(
                        name, tf.constant(value, tf.float32), step=step, metadata=self.metadata
                    )

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def files(self) -> list[Path]:
        """The event files this writer wrote (flushed first), for the run's record of
        what textgen wrote (``--overwrite`` deletes only recorded files)."""
        if self.writer is None or not self.folder.is_dir():
            return []
        self.flush()
        return sorted(p for p in set(self.folder.iterdir()) - self.before if p.is_file())
