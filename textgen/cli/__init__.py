"""The ``textgen`` command line: parse options, call one function, print the result.

Results go to stdout, progress and warnings to stderr. Errors the user can fix are one
line on stderr and a non-zero exit code (2 usage, 1 data, 130 interrupted), never a
traceback. TensorFlow is imported only by the commands that train, so ``--help`` is fast.
Each command lives in a module of its own; importing them here registers them on
:data:`main`, in the order ``--help`` lists them.
"""

from textgen.cli import evaluate, export, generate, serve, show, train
from textgen.cli.common import main

__all__ = ["evaluate", "export", "generate", "main", "serve", "show", "train"]
