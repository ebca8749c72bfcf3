"""Training: the loop that turns a config into a run directory
(:mod:`textgen.training.loop`), where it stands (:mod:`~textgen.training.state`), what it
saves and resumes from (:mod:`~textgen.training.checkpoint`), the batches, the compiled
steps and the optimizer, signals, the ``tf.distribute`` strategies
(:mod:`~textgen.training.distribute`), and what it reports (:mod:`~textgen.training.progress`
on stderr, :mod:`~textgen.training.scalars` for TensorBoard)."""
