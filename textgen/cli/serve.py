"""``textgen serve``: the OpenAI-compatible HTTP server and its web page."""
