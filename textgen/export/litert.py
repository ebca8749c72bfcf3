"""The LiteRT (TensorFlow Lite) one-step model: ``ids`` + ``state`` → ``logits`` + ``state``.

The step (:func:`textgen.export.step_graph.step_module`) is saved as a SavedModel in a
temporary folder and converted with ``TFLiteConverter.from_saved_model``: in TensorFlow
2.21 ``from_concrete_functions`` fails (``AttributeError`` in ``get_debug_info``).
``quantize="dynamic"`` is the converter's dynamic-range quantization: weights stored as
int8 with a scale per tensor, activations float32, so it runs anywhere float32 does.

The model has one signature, ``step``, with inputs ``ids`` (int32, ``(batch,)``) and
``state`` (float32, ``(batch, state_size)``) and outputs ``logits`` and ``state``; the
batch dimension is dynamic (``interpreter.resize_tensor_input``). It is read with
``ai_edge_litert.interpreter.Interpreter`` (the ``ai-edge-litert`` package) or
``tf.lite.Interpreter``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from textgen.errors import DataError, UsageError

QUANTIZE = ("dynamic",)
# A .tflite file is one FlatBuffer, whose offsets are 32-bit: 2 GiB is the most it holds
# (the converter refuses larger models); leave room for the graph around the weights.
MAX_BYTES = (2 << 30) - (16 << 20)


def weight_arrays(source: Any) -> dict[str, np.ndarray]:
    """The ``weights.npz`` arrays (with ``cell``) of a run directory, a
    :class:`~textgen.decoding.numpy_lm.NumpyLM` (anything with ``cell`` and ``arrays()``)
    or a mapping of those arrays."""
    if isinstance(source, (str, os.PathLike)):
        from textgen.rundir import load_bundle

        source = load_bundle(Path(source)).lm
    if isinstance(source, Mapping):
        arrays = dict(source)
    elif hasattr(source, "arrays") and hasattr(source, "cell"):
        arrays = dict(source.arrays())
        arrays["cell"] = np.array(source.cell)
    else:
        raise TypeError(f"not a run directory, NumpyLM or weight arrays: {type(source).__name__}")
    if "cell" not in arrays:
        raise ValueError("weight arrays need a 'cell' entry (lstm, gru or rnn)")
    return arrays


def check_fits(arrays: Mapping[str, np.ndarray], limit: int | None = None) -> None:
    """Refuse a model whose float32 weights a single .tflite FlatBuffer cannot hold."""
    limit = MAX_BYTES if limit is None else limit
    size = sum(int(np.prod(np.shape(v))) * 4 for k, v in arrays.items() if k != "cell")
    if size > limit:
        raise DataError(
            f"the model's weights are {size:,} bytes of float32 and a LiteRT file holds at "
            f"most {limit:,} (one FlatBuffer with 32-bit offsets); "
            "export it with --format savedmodel"
        )


def convert_step(arrays: Mapping[str, np.ndarray], quantize: str | None = None) -> bytes:
    """The .tflite bytes of the step of ``arrays`` (float32, or int8 weights)."""
    if quantize is not None and quantize not in QUANTIZE:
        raise UsageError(f"--quantize must be one of {', '.join(QUANTIZE)}, got {quantize!r}")
    check_fits(arrays)
    from textgen._tf import tensorflow
    from textgen.export.step_graph import step_module

    tf = tensorflow()
    module = step_module(arrays)
    with tempfile.TemporaryDirectory(prefix="textgen-litert-") as tmp:
        saved = Path(tmp) / "step"
        tf.saved_model.save(module, str(saved), signatures={"step": module.step})
        converter = tf.lite.TFLiteConverter.from_saved_model(str(saved), signature_keys=["step"])
        if quantize == "dynamic":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        try:
            return _quietly(converter.convert)
        except Exception as err:  # the converter raises many types, with pages of detail
            first = (str(err).strip().splitlines() or [""])[0][:300]
            raise DataError(
                f"LiteRT's converter cannot hold this model ({type(err).__name__}: {first})"
            ) from None


def _quietly(call: Any) -> Any:
    """Run ``call()`` with file descriptor 2 silenced: the converter's C++ code prints
    its passes there whatever the log level."""
    import sys

    if os.environ.get("TEXTGEN_TF_VERBOSE"):
        return call()
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        return call()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def write_litert_step(source: Any, path: str | os.PathLike, *, quantize: str | None = None) -> Path:
    """Write the LiteRT one-step model of ``source`` to the file ``path`` and return it.

    ``source`` is a run directory, a :class:`~textgen.decoding.numpy_lm.NumpyLM` or its
    weight arrays (``weights.npz`` names plus ``cell``). ``quantize="dynamic"`` stores the
    weights as int8. The file is written whole or not at all (a temporary file beside
    it, renamed). The model's signature is ``step``: ``ids`` int32 ``(batch,)`` and
    ``state`` float32 ``(batch, state_size)`` in, ``logits`` and ``state`` out; zeros are
    the initial state; the batch dimension can be resized. Example::

        path = write_litert_step("runs/ko-toy", "/tmp/toy.tflite")
        runner = Interpreter(model_path=str(path)).get_signature_runner("step")
        out = runner(ids=np.array([3], np.int32), state=np.zeros((1, 64), np.float32))
    """
    from textgen.rundir import atomic_write

    data = convert_step(weight_arrays(source), quantize)
    path = Path(path)
    atomic_write(path, lambda tmp: tmp.write_bytes(data))
    return path
