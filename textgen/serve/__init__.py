"""``textgen serve``: an OpenAI-compatible HTTP server on the numpy decoder, with
continuous batching of concurrent requests and a web page. It never imports TensorFlow.

Modules: :mod:`~textgen.serve.app` (the app: routes, API key, CORS, error handlers),
:mod:`~textgen.serve.completions` (the completion routes: read, check, submit, answer or
stream), :mod:`~textgen.serve.beam` (beam search off the batch),
:mod:`~textgen.serve.responses` (the OpenAI response and chunk shapes),
:mod:`~textgen.serve.feed` (a request's tokens from the decoding thread to its coroutine),
:mod:`~textgen.serve.runs` (loading runs, the served models, what the routes share),
:mod:`~textgen.serve.api` (request checking, error shape), :mod:`~textgen.serve.batcher`
(the decoding loop), :mod:`~textgen.serve.worker` (the decoding loop in a process of its
own, ``textgen serve``'s default), :mod:`~textgen.serve.choices` (streamed text and stop strings),
:mod:`~textgen.serve.metrics` and :mod:`~textgen.serve.server` (uvicorn, signals).

The API surface a page or client may rely on:

* ``GET /`` is ``static/index.html``; ``GET /static/<file>`` any other file of
  ``textgen/serve/static/``. Both are open without the API key.
* ``GET /health``: 503 ``{"status": "loading"}`` while loading, then 200
  ``{"status": "ok"}``; 503 ``{"status": "error", "message"}`` when a model failed to
  load or its decoding process died; open without the API key.
* ``GET /v1/models``: ``{"object": "list", "data": [{"id", "object": "model", "created",
  "owned_by": "textgen", "level", "cell", "layers", "units", "vocab_size",
  "parameters"}]}``; ``id`` is the run's folder name, the ``model`` of a request.
* ``POST /v1/completions``: ``model`` (optional with one model served), ``prompt``
  (string or list of strings), ``max_tokens`` (default 16), ``temperature`` (default 1;
  0 means greedy), ``top_p``, ``top_k``, ``strategy`` (``greedy``/``sample``/``beam``;
  default ``sample``, or ``greedy`` at temperature 0), ``beam_width`` (1..64),
  ``length_penalty``, ``n``, ``stop`` (string or up to 4), ``seed``, ``logprobs`` (0..20),
  ``echo``, ``stream``, ``stream_options: {"include_usage"}``, ``user``. Greedy and beam
  accept and do not use the sampling fields. Any other field is a 400 naming it.
  Response: ``{"id", "object": "text_completion", "created", "model", "choices": [{"index",
  "text", "logprobs", "finish_reason": "stop"|"length"}], "usage"}``. With ``echo`` the
  text starts with the seed as the model reads it (normalized, as ``textgen generate``
  prints it).
* Streaming (``"stream": true``): ``text/event-stream``, events ``data: {chunk}`` of the
  same shape with one choice each (``text`` the new piece, ``finish_reason`` null until
  a last event of that choice with ``""`` and its reason), then ``data: [DONE]``. With
  ``stream_options.include_usage`` a chunk with ``"choices": []`` and ``usage`` comes
  before ``[DONE]``. A failure mid-stream is ``event: error`` with ``data: {"error":
  {...}}``, then ``data: [DONE]``. Beam search streams each text as one piece at its end.
* ``POST /v1/chat/completions``: ``messages`` (their contents joined by newlines are the
  seed: an RNN LM has no chat template), the same fields (``logprobs`` true with
  ``top_logprobs``; ``max_completion_tokens``), ``object: "chat.completion"`` with
  ``message: {"role": "assistant", "content"}``; streamed as ``chat.completion.chunk`` with
  ``delta`` (``{"role": "assistant", "content": ""}`` first, then ``{"content"}``).
* Errors: ``{"error": {"message", "type", "param", "code"}}`` with 400 (malformed JSON, a
  bad or unsupported field), 401 (API key), 404 (unknown model or path), 413 (body over
  the limit), 422 (a prompt with no token in the vocabulary, or empty), 503 (loading, or
  the queue full; with ``Retry-After``).
* ``GET /metrics``: Prometheus text (``textgen_requests_total``,
  ``textgen_tokens_generated_total``, ``textgen_requests_running``,
  ``textgen_requests_waiting``, ``textgen_batch_size``,
  ``textgen_time_to_first_token_seconds``).
"""
