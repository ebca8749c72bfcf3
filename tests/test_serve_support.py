"""Helpers for the server tests (no tests here): a random-weight char model, and a real
uvicorn server on 127.0.0.1 (a free port) in a thread of the test process."""

from __future__ import annotations

import string
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from textgen.decoding.numpy_lm import NumpyLM, RNNWeights
from textgen.serve.app import create_app
from textgen.serve.runs import Loaded, Settings, describe, load_run
from textgen.serve.server import bind, make_server
from textgen.text import CharTokenizer

CHARS = string.ascii_lowercase + " .,\n"


def char_model(
    units: int = 32, layers: int = 1, seed: int = 0, cell: str = "lstm"
) -> tuple[NumpyLM, CharTokenizer]:
    """A char-level LM over ``CHARS`` with random weights (scaled so that sampling is
    varied and greedy is not stuck on one token)."""
    tok = CharTokenizer.fit([CHARS], "char", eos=False)
    rng = np.random.default_rng(seed)
    vocab, emb, gates = len(tok.vocab), 16, {"lstm": 4, "gru": 3, "rnn": 1}[cell]
    stack, width = [], emb
    for _ in range(layers):
        bias_shape = (2, gates * units) if cell == "gru" else (gates * units,)
        stack.append(
            RNNWeights(
                rng.normal(0, 0.5, (width, gates * units)).astype(np.float32),
                rng.normal(0, 0.3, (units, gates * units)).astype(np.float32),
                rng.normal(0, 0.1, bias_shape).astype(np.float32),
            )
        )
        width = units
    bias = np.zeros(vocab, np.float32)
    bias[:2] = -1e4  # never <pad> or <unk>: every token has a text
    lm = NumpyLM(
        cell,
        rng.normal(0, 1.0, (vocab, emb)).astype(np.float32),
        stack,
        rng.normal(0, 1.0, (units, vocab)).astype(np.float32),
        bias,
    )
    return lm, tok


def loader_of(lm: Any, tok: Any):
    """A model loader for ``LiveServer`` that serves the given decoder and tokenizer."""
    return lambda: Loaded(lm, tok, describe(lm, tok))


def char_loader(**kwargs: Any):
    def load() -> Loaded:
        lm, tok = char_model(**kwargs)
        return Loaded(lm, tok, describe(lm, tok))

    return load


class LiveServer:
    """``create_app(models, settings)`` served by uvicorn on a free port of 127.0.0.1."""

    def __init__(
        self, models: dict[str, Any], settings: Settings | None = None, shutdown_timeout: float = 5
    ) -> None:
        loaders = {
            name: partial(load_run, value) if isinstance(value, Path) else value
            for name, value in models.items()
        }
        self.app = create_app(loaders, settings)
        self.state = self.app.state.server
        sock = bind("127.0.0.1", 0)
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = make_server(self.app, shutdown_timeout=shutdown_timeout)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [sock]}, daemon=True
        )
        self.thread.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.02)
        raise RuntimeError("the test server did not become ready")

    def metric(self, name: str, **labels: str) -> float:
        """The value of one sample of /metrics."""
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(self.url + "/metrics", headers=self.headers()).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    return sample.value
        raise KeyError(name)

    def headers(self) -> dict[str, str]:
        key = self.state.settings.api_key
        return {"Authorization": f"Bearer {key}"} if key else {}

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def sse_events(response: httpx.Response) -> list[str]:
    """The ``data:`` payloads of a streamed response, in order."""
    return [line[6:] for line in response.iter_lines() if line.startswith("data: ")]


def char_run(run_dir: Path, **kwargs: Any) -> Path:
    """A run directory holding :func:`char_model` (no training, no TensorFlow): the four
    files a run needs, in the layout of a run from before snapshots."""
    import json

    from textgen.rundir.names import RUN_FORMAT_VERSION

    lm, tok = char_model(**kwargs)
    run_dir.mkdir(parents=True, exist_ok=True)
    units, layers = lm.layers[0].units, len(lm.layers)
    (run_dir / "config.toml").write_text(
        f'[data]\nlevel = "char"\nmode = "stream"\n[model]\nunits = {units}\nlayers = {layers}\n'
    )
    (run_dir / "tokenizer.json").write_text(tok.to_json(), encoding="utf-8")
    lm.save(run_dir / "weights.npz")
    (run_dir / "metadata.json").write_text(json.dumps({"format_version": RUN_FORMAT_VERSION}))
    return run_dir
