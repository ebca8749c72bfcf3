"""The compiled LSTM cell (``lstm_cell.cc``): one TensorFlow op for a time step's gate
arithmetic forward, one for its backward, used by :mod:`textgen.model.fastrnn` where the
training step is not XLA-compiled (the bf16 step).

Why: outside XLA each time step's elementwise work was a dozen TensorFlow kernels or one
small XLA cluster per step, and on a 2-core AMD EPYC those took longer than the step's
bf16 matrix product (BENCHMARKS.md). The ops do it in one pass over the rows.

The source ships with the package and is compiled once per machine, TensorFlow version
and source, with the system's C++ compiler (``$CXX``, else ``g++``) against the installed
TensorFlow's headers (``tf.sysconfig``), into ``<textgen cache>/ops/``; a later process
loads the cached library. Where there is no compiler or the build fails, :func:`cell_ops`
returns None after one line on stderr, and the step uses TensorFlow's own kernels: slower,
the same numbers up to rounding. ``TEXTGEN_CELL_OP=0`` turns the ops off.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from textgen._tf import cache_folder, tensorflow
from textgen.machine import cpu_flags, cpu_model

SOURCE = Path(__file__).with_name("lstm_cell.cc")
ENV = "TEXTGEN_CELL_OP"  # "0": do not build or use the compiled cell
FLAGS = ("-shared", "-fPIC", "-O3", "-march=native", "-w")


def enabled() -> bool:
    """Whether the compiled cell may be used (``TEXTGEN_CELL_OP`` is not ``0``)."""
    return os.environ.get(ENV, "1") != "0"


def compiler() -> str | None:
    """The C++ compiler to build with: ``$CXX`` or ``g++`` if it is on the path."""
    return shutil.which(os.environ.get("CXX") or "g++")


def library_path() -> Path:
    """Where this machine's build of the ops is cached: the key covers the source, the
    TensorFlow version, the compiler flags and the CPU (the build is ``-march=native``)."""
    tf = tensorflow()
    key = hashlib.sha256()
    for part in (
        SOURCE.read_bytes(),
        tf.__version__.encode(),
        " ".join(FLAGS).encode(),
        cpu_model().encode(),
        " ".join(sorted(cpu_flags())).encode(),
    ):
        key.update(part + b"\0")
    return cache_folder() / "ops" / f"lstm_cell-{key.hexdigest()[:16]}.so"


def build(target: Path) -> None:
    """Compile the ops into ``target`` (atomically: a half-written library is never seen).

    Raises ``RuntimeError`` saying why when there is no compiler or the build fails."""
    tf = tensorflow()
    cxx = compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler (set CXX or install g++)")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    command = [
        cxx, *FLAGS, str(SOURCE), "-o", tmp,
        *tf.sysconfig.get_compile_flags(), *tf.sysconfig.get_link_flags(),
    ]  # fmt: skip
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise RuntimeError(f"{Path(cxx).name} failed: {last}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@functools.cache
def cell_ops() -> Any | None:
    """The loaded ops module (``textgen_lstm_cell``, ``textgen_lstm_cell_grad``), built on
    first use; None when turned off or when it cannot be built or loaded (said once on
    stderr: the step then uses TensorFlow's own kernels)."""
    if not enabled():
        return None
    tf = tensorflow()
    try:
        target = library_path()
        if not target.exists():
            print("building the compiled LSTM cell (once for this machine, ~10 s)", file=sys.stderr)
            build(target)
        return tf.load_op_library(str(target))
    except (OSError, RuntimeError, subprocess.SubprocessError, tf.errors.OpError) as err:
        print(
            f"note: the compiled LSTM cell is not available ({err}); "
            "the step uses TensorFlow's own kernels (slower)",
            file=sys.stderr,
        )
        return None


def main() -> int:
    """``python -m textgen.model.cell_op``: build (or find) this machine's ops, say where."""
    ops = cell_ops()
    if ops is None:
        return 1
    print(library_path())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
