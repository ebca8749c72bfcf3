"""Corpora: read, decode and check a file, hold out validation text, and turn it into
training examples (``lines``: pre-padded sentences; ``stream``: windows over the id cache).

:mod:`textgen.corpus.cache` tokenizes stream corpora once into id files on disk;
:mod:`textgen.corpus.examples` builds what the training loop reads.
"""
