"""Export a finished run for programs without textgen: a TensorFlow SavedModel with
``generate`` and ``step`` signatures, and a LiteRT one-step model.

The run is read through :mod:`textgen.rundir` (checked against its checksums) and its
weights are those of ``weights.npz`` (the numpy twin's, which are the Keras model's);
TensorFlow comes through :mod:`textgen._tf`. The rooms: :mod:`~textgen.export.step_graph`
(one step of the network as TensorFlow ops), :mod:`~textgen.export.graph` (the generate
loop around it: tokenization, sampling, jamo recomposition), :mod:`~textgen.export.savedmodel`,
:mod:`~textgen.export.litert` and :mod:`~textgen.export.folder` (the output folder:
written whole in a temporary folder beside it, then renamed into place).

Every export folder holds, beside the model, ``export.json`` (what was exported, from
which run, the state layout, the special ids and what normalization is left to the
caller) and ``vocab.json`` (the tokens, index = id); a subword run's
``sentencepiece.model`` too. A SavedModel's ``generate`` signature is written for the
word and char (and jamo) levels; subword and morpheme runs get ``step`` only, since
their tokenizers (sentencepiece, Kiwi) are not TensorFlow operations.

:func:`write_litert_step` is the small stable entry point for other code (benchmarks):
it writes the LiteRT step model of a run or a NumpyLM to one file and returns its path.
"""

from textgen.export.folder import FORMATS, export_run
from textgen.export.litert import write_litert_step

__all__ = ["FORMATS", "export_run", "write_litert_step"]
