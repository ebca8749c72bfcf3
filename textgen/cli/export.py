"""``textgen export``: write a run as a TensorFlow SavedModel or a LiteRT model."""
