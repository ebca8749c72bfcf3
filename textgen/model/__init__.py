"""The Keras language model (:mod:`textgen.model.network`) and the hand-written LSTM layer
that trains it fast on CPUs (:mod:`textgen.model.fastrnn`). TensorFlow loads only when
one of them builds or runs a model (through :mod:`textgen._tf`)."""
