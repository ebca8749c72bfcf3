"""Continuous batching in a real server: a request's output does not depend on the
requests decoded beside it (greedy and seeded sampling), a client that goes away frees
its row at the next step, a full queue answers 503 with Retry-After, and the official
``openai`` client works against it (completions and chat, with and without streaming)."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from tests.test_serve_support import LiveServer, char_loader
from textgen.serve.batcher import MAX_BACKLOG
from textgen.serve.runs import Settings


@pytest.fixture(scope="module")
def live():
    server = LiveServer({"chars": char_loader()}, Settings(max_tokens_limit=10_000_000))
    yield server
    server.close()


TOKENS = "textgen_tokens_generated_total"


def _text(live: LiveServer, body: dict) -> str:
    r = httpx.post(live.url + "/v1/completions", json={"model": "chars"} | body, timeout=300)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["text"]


def _others(k: int) -> dict:
    """31 different neighbours: other prompts, lengths and settings, some streamed."""
    # long enough that all of them are still decoding when the target runs beside them
    body = {"prompt": "xy z"[: 1 + k % 4] * (1 + k % 7), "max_tokens": 2_000 + 10 * k}
    if k % 3:
        body |= {"temperature": 0.5 + k / 40, "top_k": k % 5, "top_p": 0.9, "seed": k}
    else:
        body |= {"temperature": 0}
    return body


def _steps_over(live: LiveServer, rows: int) -> float:
    total = live.metric("textgen_batch_size_count", model="chars")
    return total - live.metric("textgen_batch_size_bucket", model="chars", le=f"{rows:.1f}")


@pytest.mark.parametrize(
    "target",
    [
        {"prompt": "the cat sat", "max_tokens": 60, "temperature": 0},
        {
            "prompt": "a b",
            "max_tokens": 60,
            "temperature": 0.8,
            "top_k": 12,
            "top_p": 0.95,
            "seed": 1234,
        },
        {"prompt": "q", "max_tokens": 40, "temperature": 1.1, "seed": 99, "n": 3},
    ],
    ids=["greedy", "seeded-sample", "seeded-n3"],
)
def test_same_output_alone_and_among_31_others(live: LiveServer, target: dict) -> None:
    alone = httpx.post(
        live.url + "/v1/completions", json={"model": "chars"} | target, timeout=300
    ).json()["choices"]
    before = _steps_over(live, 16)
    with ThreadPoolExecutor(32) as pool:
        others = [pool.submit(_text, live, _others(k)) for k in range(31)]
        deadline = time.monotonic() + 120  # the target arrives once its neighbours decode
        while live.metric("textgen_requests_running", model="chars") < 31:
            assert time.monotonic() < deadline, "the 31 neighbours never ran together"
            time.sleep(0.005)
        mine = pool.submit(
            lambda: httpx.post(
                live.url + "/v1/completions", json={"model": "chars"} | target, timeout=300
            ).json()["choices"]
        ).result()
        for f in others:
            f.result()
    assert [c["text"] for c in mine] == [c["text"] for c in alone]
    assert len(alone[0]["text"]) > 10
    assert _steps_over(live, 16) > before  # it really ran among many others


def test_seeded_sampling_is_reproducible_and_seeds_differ(live: LiveServer) -> None:
    body = {"prompt": "hello", "max_tokens": 40, "temperature": 1.0}
    assert _text(live, body | {"seed": 5}) == _text(live, body | {"seed": 5})
    assert _text(live, body | {"seed": 5}) != _text(live, body | {"seed": 6})


def test_disconnect_frees_the_row(live: LiveServer) -> None:
    body = {"model": "chars", "prompt": "a", "max_tokens": 90_000, "temperature": 0, "stream": True}
    with (
        httpx.Client(timeout=30) as client,
        client.stream("POST", live.url + "/v1/completions", json=body) as r,
    ):
        lines = r.iter_lines()
        got = [next(lines) for _ in range(6)]
        assert any(line.startswith("data: ") for line in got)
        assert live.metric("textgen_requests_running", model="chars") == 1
    deadline = time.monotonic() + 30  # a wait, not a timing
    while live.metric("textgen_requests_running", model="chars") != 0:
        assert time.monotonic() < deadline, "the row of a closed stream was not freed"
        time.sleep(0.02)


def test_full_queue_is_503_with_retry_after() -> None:
    """One row and one waiting place: a third request is 503; a client that reads nothing
    has its job parked a bounded number of steps ahead instead of filling memory."""
    server = LiveServer(
        {"chars": char_loader()}, Settings(max_batch=1, max_waiting=1, max_tokens_limit=10_000_000)
    )
    try:
        long = {
            "model": "chars",
            "prompt": "a",
            "max_tokens": 10_000_000,
            "temperature": 0,
            "stream": True,
        }
        with (
            httpx.Client(timeout=30) as c1,
            httpx.Client(timeout=30) as c2,
            c1.stream("POST", server.url + "/v1/completions", json=long) as r1,
        ):
            lines = r1.iter_lines()  # kept: a dropped iterator closes the connection
            next(lines)  # running: the one row is taken
            with c2.stream("POST", server.url + "/v1/completions", json=long) as r2:
                assert r2.status_code == 200  # waits in the queue (1 place)
                deadline = time.monotonic() + 30  # a wait, not a timing
                while server.metric("textgen_requests_waiting", model="chars") != 1:
                    assert time.monotonic() < deadline
                    time.sleep(0.01)
                r3 = httpx.post(server.url + "/v1/completions", json=long | {"stream": False})
                assert r3.status_code == 503 and r3.headers["retry-after"] == "1"
                assert r3.json()["error"]["code"] == "queue_full"
                # r1 reads nothing: its job is parked once it is MAX_BACKLOG steps ahead of
                # what the request side took (which the unread socket holds back), so
                # the decoder never runs on into memory
                batcher = server.state.models["chars"].batcher
                deadline = time.monotonic() + 60  # a wait, not a timing
                while not batcher._parked:
                    assert time.monotonic() < deadline, "a job far ahead was not parked"
                    time.sleep(0.01)
                (job,) = batcher._parked
                assert job.backlog <= MAX_BACKLOG + 1
                assert job.produced < 100_000
    finally:
        server.close()


def test_openai_client(live: LiveServer) -> None:
    client = openai.OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0)
    direct = _text(live, {"prompt": "the ", "max_tokens": 10, "temperature": 0})
    done = client.completions.create(model="chars", prompt="the ", max_tokens=10, temperature=0)
    assert done.choices[0].text == direct and done.choices[0].finish_reason == "length"
    assert done.usage.completion_tokens == 10
    pieces = client.completions.create(
        model="chars", prompt="the ", max_tokens=10, temperature=0, stream=True
    )
    assert "".join(p.choices[0].text for p in pieces if p.choices) == direct
    chat = client.chat.completions.create(
        model="chars",
        messages=[{"role": "system", "content": "a"}, {"role": "user", "content": "the "}],
        max_tokens=10,
        temperature=0,
    )
    seed_text = _text(live, {"prompt": "a\nthe ", "max_tokens": 10, "temperature": 0})
    assert chat.choices[0].message.content == seed_text
    assert chat.choices[0].message.role == "assistant"
    stream = client.chat.completions.create(
        model="chars",
        messages=[{"role": "user", "content": "a\nthe "}],
        max_tokens=10,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == seed_text
    assert chunks[-1].usage.completion_tokens == 10
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="a")
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="chars", prompt="a", temperature=-1)
    assert err.value.body["param"] == "temperature"


def test_mid_stream_failure_is_an_error_event_then_done(live: LiveServer, monkeypatch) -> None:
    lm = live.state.models["chars"].batcher.lm
    calls = {"n": 0}
    real = lm.step

    def failing(ids, state):
        calls["n"] += 1
        if calls["n"] > 3:
            raise FloatingPointError("injected")
        return real(ids, state)

    monkeypatch.setattr(lm, "step", failing)
    with httpx.stream(
        "POST",
        live.url + "/v1/completions",
        timeout=30,
        json={"model": "chars", "prompt": "a", "max_tokens": 50, "temperature": 0, "stream": True},
    ) as r:
        raw = list(r.iter_lines())
    events = [line[6:] for line in raw if line.startswith("data: ")]
    assert "event: error" in raw and events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert "injected" in error["message"] and error["type"] == "server_error"
    monkeypatch.undo()
    assert _text(live, {"prompt": "a", "max_tokens": 5, "temperature": 0})  # still serving
