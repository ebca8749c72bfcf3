"""Training: the loop that turns a config into a run directory
(:mod:`textgen.training.loop`), the ``tf.distribute`` strategies
(:mod:`textgen.training.distribute`) and the progress output
(:mod:`textgen.training.progress`)."""
