"""``textgen serve``: a real uvicorn server on 127.0.0.1, driven by httpx and by the
official ``openai`` client: the API's shapes, streaming, the page's files, the model
list, health and metrics, and the output equal to ``textgen generate``'s."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from tests.test_serve_support import LiveServer, char_loader, sse_events
from textgen.cli import main
from textgen.serve.app import STATIC


@pytest.fixture(scope="module")
def live(toy_run: Path):
    server = LiveServer({"ko-toy": toy_run, "chars": char_loader()})
    yield server
    server.close()


def _complete(live: LiveServer, **body) -> httpx.Response:
    return httpx.post(live.url + "/v1/completions", json=body, timeout=30)


def test_completion_shape_and_greedy_equals_generate(live: LiveServer, toy_run: Path) -> None:
    r = _complete(live, model="ko-toy", prompt="경마장에", max_tokens=8, temperature=0)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "text_completion" and body["model"] == "ko-toy"
    assert body["id"].startswith("cmpl-") and isinstance(body["created"], int)
    (choice,) = body["choices"]
    assert choice["index"] == 0 and choice["logprobs"] is None
    assert choice["finish_reason"] == "stop"  # the line ends at <eos> before 8 tokens
    cli = CliRunner().invoke(
        main, ["generate", "--model", str(toy_run), "--seed", "경마장에", "--length", "8"]
    )
    assert cli.exit_code == 0, cli.output
    assert "경마장에" + choice["text"] == cli.output.strip() == "경마장에 있는 말이 뛰고 있다"
    assert body["usage"] == {"prompt_tokens": 1, "completion_tokens": 4, "total_tokens": 5}
    echoed = _complete(
        live, model="ko-toy", prompt="경마장에", max_tokens=8, temperature=0, echo=True
    ).json()
    assert echoed["choices"][0]["text"] == "경마장에 있는 말이 뛰고 있다"


def test_stream_events_and_usage(live: LiveServer) -> None:
    body = {"model": "chars", "prompt": "the ", "max_tokens": 12, "temperature": 0}
    whole = _complete(live, **body).json()["choices"][0]
    assert whole["finish_reason"] == "length"
    with httpx.stream(
        "POST", live.url + "/v1/completions", json=body | {"stream": True}, timeout=30
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "text_completion" and "usage" not in c for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole["text"]
    assert len([c for c in chunks if c["choices"][0]["text"]]) == 12  # token by token
    assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == "length"
    with httpx.stream(
        "POST",
        live.url + "/v1/completions",
        timeout=30,
        json=body | {"stream": True, "stream_options": {"include_usage": True}},
    ) as r:
        events = sse_events(r)
    usage = json.loads(events[-2])
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 12


def test_prompt_list_n_stop_and_logprobs(live: LiveServer) -> None:
    r = _complete(
        live,
        model="chars",
        prompt=["ab", "cd"],
        n=2,
        max_tokens=6,
        seed=3,
        temperature=0.9,
        logprobs=2,
        stop=["zz", "q"],
    )
    assert r.status_code == 200, r.text
    choices = r.json()["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2, 3]
    for c in choices:
        lp = c["logprobs"]
        assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"])
        assert all(v <= 0 for v in lp["token_logprobs"])
        assert all(len(top) <= 2 for top in lp["top_logprobs"])
        assert "q" not in c["text"] and "zz" not in c["text"]
        assert c["finish_reason"] in ("stop", "length")


def test_chat_and_models_and_health(live: LiveServer) -> None:
    r = httpx.post(
        live.url + "/v1/chat/completions",
        timeout=30,
        json={
            "model": "ko-toy",
            "messages": [{"role": "user", "content": "경마장에"}],
            "temperature": 0,
            "max_tokens": 8,
        },
    )
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": " 있는 말이 뛰고 있다"}
    models = httpx.get(live.url + "/v1/models").json()
    assert models["object"] == "list"
    by_id = {m["id"]: m for m in models["data"]}
    assert by_id["ko-toy"]["level"] == "word" and by_id["chars"]["level"] == "char"
    assert by_id["chars"]["vocab_size"] > 0 and by_id["chars"]["parameters"] > 0
    assert httpx.get(live.url + "/health").json() == {"status": "ok"}


def test_page_and_static_files(live: LiveServer) -> None:
    r = httpx.get(live.url + "/")
    if (STATIC / "index.html").is_file():
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert r.text == (STATIC / "index.html").read_text(encoding="utf-8")
    else:
        assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    for path in sorted(STATIC.glob("*")):
        if path.is_file() and path.name != "index.html":
            got = httpx.get(f"{live.url}/static/{path.name}")
            assert got.status_code == 200 and got.content == path.read_bytes()
    missing = httpx.get(live.url + "/static/no-such-file.js")
    assert missing.status_code == 404 and set(missing.json()["error"]) == {
        "message",
        "type",
        "param",
        "code",
    }
    assert httpx.get(live.url + "/static/../app.py").status_code == 404


def test_fast_chunks_are_the_bytes_of_the_chunk_dict() -> None:
    """The streamed text events come from a template; they must be the same bytes as the
    chunk built as a dict and encoded (completions and chat, escapes and Hangul)."""
    from textgen.serve.api import Request
    from textgen.serve.responses import Admitted, FastChunks, sse, stream_chunk

    class Model:
        name = "m"

    for chat in (False, True):
        admitted = Admitted(Request(chat=chat, model=None, prompts=["a"]), Model(), [], [], 0.0)
        fast = FastChunks(admitted)
        for text in ["a", 'é\n"x\\', "경마장에", "\x00\u2028"]:
            assert fast.text(3, text) == sse(stream_chunk(admitted, 3, text, None, None))


@pytest.mark.parametrize("level", ["char", "word"])
def test_text_grown_per_token_is_the_continuation(level: str) -> None:
    """Where ChoiceText appends each token's text, the result is the tokenizer's own
    continuation of all the ids, cut at the first stop string."""
    import numpy as np

    from textgen.serve.choices import ChoiceText
    from textgen.text import CharTokenizer, WordTokenizer

    kind = CharTokenizer if level == "char" else WordTokenizer
    tok = kind.fit(["ab c\nd", "c d e ab"], level, eos=True)
    assert tok.continuation_adds_up
    rng = np.random.default_rng(0)
    for _ in range(50):
        ids = rng.integers(0, len(tok.vocab), 30).tolist()
        choice = ChoiceText(tok, "seed", ["d e"])
        stopped = False
        for i in ids:
            if choice.push(i):
                stopped = True
                break
        whole = tok.continuation("seed", ids[: len(choice.ids)])
        cut = whole[: whole.index("d e")] if stopped else whole
        assert choice.text == (cut if level == "char" else cut.rstrip() if stopped else cut)


def test_news_that_comes_while_the_client_is_written_to_is_not_lost() -> None:
    """The last tokens and the end of a request may arrive while its stream is being
    written; they are still handed over (a bench once saw 14 of 20 tokens)."""
    import asyncio
    from types import SimpleNamespace

    from textgen.serve.feed import run

    async def scenario() -> list[str]:
        feed = SimpleNamespace(news=[(0, "a", None, None)], steps=[], live=1, error=None,
                               ready=asyncio.Event())  # fmt: skip
        feed.ready.set()
        got: list[str] = []
        async for news in run(SimpleNamespace(jobs=[], feed=feed)):
            got.extend(text for _, text, _, _ in news)
            if got == ["a"]:  # during the write: the last piece, and the job ends
                feed.news.append((0, "b", None, "length"))
                feed.live = 0
                feed.ready.set()
        return got

    assert asyncio.run(scenario()) == ["a", "b"]


def test_health_is_503_while_loading_then_ok() -> None:
    """The server answers while its models load: /health 503 loading (Retry-After), the
    API 503 in the error shape; once loaded, 200 ok; /metrics has every series."""
    import threading
    import time

    from tests.test_serve_support import char_model
    from textgen.serve.app import create_app
    from textgen.serve.runs import Loaded, describe
    from textgen.serve.server import bind, make_server

    release = threading.Event()

    def slow() -> Loaded:
        release.wait(30)
        lm, tok = char_model()
        return Loaded(lm, tok, describe(lm, tok))

    app = create_app({"chars": slow})
    sock = bind("127.0.0.1", 0)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = make_server(app, shutdown_timeout=5)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.01)
        r = httpx.get(url + "/health")
        assert r.status_code == 503 and r.json() == {"status": "loading"}
        assert r.headers["retry-after"] == "1"
        r = httpx.post(url + "/v1/completions", json={"prompt": "ab"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "loading"
        release.set()
        deadline = time.monotonic() + 60  # a wait, not a timing
        while httpx.get(url + "/health").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert httpx.get(url + "/health").json() == {"status": "ok"}
        done = httpx.post(url + "/v1/completions", json={"prompt": "ab", "temperature": 0})
        assert done.status_code == 200
        metrics = httpx.get(url + "/metrics").text
        for series in (
            'textgen_requests_total{path="/v1/completions",status="503"} 1.0',
            'textgen_requests_total{path="/v1/completions",status="200"} 1.0',
            'textgen_tokens_generated_total{model="chars"} 16.0',
            'textgen_requests_running{model="chars"} 0.0',
            'textgen_requests_waiting{model="chars"} 0.0',
            'textgen_batch_size_count{model="chars"}',
            'textgen_time_to_first_token_seconds_count{model="chars"} 1.0',
        ):
            assert series in metrics, series
    finally:
        release.set()
        server.should_exit = True
        thread.join(10)
