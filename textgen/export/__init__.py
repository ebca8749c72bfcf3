"""Export a finished run for programs without textgen: a TensorFlow SavedModel with
``generate`` and ``step`` signatures, and a LiteRT one-step model."""
