"""``textgen serve``: an OpenAI-compatible HTTP server on the numpy decoder, with
continuous batching of concurrent requests and a web page. It never imports TensorFlow."""
