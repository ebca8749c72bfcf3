"""Generation without TensorFlow: the numpy twin of a trained network
(:mod:`textgen.decoding.numpy_lm`), the strategies that pick the next token from a
``next(ids, state)`` callable (:mod:`textgen.decoding.sampling`), the generator that
carries the recurrent state from a seed (:mod:`textgen.decoding.generate`), and the
thread count of the BLAS under numpy's products (:mod:`textgen.decoding.blas`), and the
LSTM step compiled with numba across the cores (:mod:`textgen.decoding.native`, its
kernels in :mod:`textgen.decoding.native_kernels`)."""
