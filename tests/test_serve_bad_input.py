"""Bad requests to a real server: each is a 4xx in the OpenAI error shape naming the
field, never a 500 or a traceback; the API key, the body limit and CORS; and 1,000 mixed
bad requests interleaved with good ones leave the server answering, its memory flat."""

from __future__ import annotations

import json
import resource

import httpx
import pytest

from tests.test_serve_support import LiveServer, char_loader
from textgen.serve.runs import Settings

GOOD = {"model": "chars", "prompt": "ab", "max_tokens": 4, "temperature": 0}


@pytest.fixture(scope="module")
def live():
    settings = Settings(max_tokens_limit=64, max_body_bytes=64 * 1024)
    server = LiveServer({"chars": char_loader(), "other": char_loader(seed=1)}, settings)
    yield server
    server.close()


# (name, body or raw bytes, status, param): every case names its field
CASES = [
    ("malformed JSON", b'{"prompt": "ab",', 400, None),
    ("not UTF-8", b'{"prompt": "\xff"}', 400, None),
    ("not an object", b"[1, 2]", 400, None),
    ("prompt missing", {"model": "chars"}, 400, "prompt"),
    ("prompt a number", GOOD | {"prompt": 3}, 400, "prompt"),
    ("prompt token ids", GOOD | {"prompt": [1, 2, 3]}, 400, "prompt"),
    ("prompt empty list", GOOD | {"prompt": []}, 400, "prompt"),
    ("prompt no known token", GOOD | {"prompt": "ÄÖÜ"}, 422, "prompt"),
    ("prompt empty", GOOD | {"prompt": ""}, 422, "prompt"),
    ("second prompt unknown", GOOD | {"prompt": ["ab", "ÄÖ"]}, 422, "prompt[1]"),
    ("model unknown", GOOD | {"model": "nope"}, 404, "model"),
    ("model missing with two", {k: v for k, v in GOOD.items() if k != "model"}, 400, "model"),
    ("model a list", GOOD | {"model": ["chars"]}, 400, "model"),
    ("max_tokens a string", GOOD | {"max_tokens": "4"}, 400, "max_tokens"),
    ("max_tokens true", GOOD | {"max_tokens": True}, 400, "max_tokens"),
    ("max_tokens 0", GOOD | {"max_tokens": 0}, 400, "max_tokens"),
    ("max_tokens over the limit", GOOD | {"max_tokens": 65}, 400, "max_tokens"),
    ("temperature < 0", GOOD | {"temperature": -0.1}, 400, "temperature"),
    ("temperature a string", GOOD | {"temperature": "hot"}, 400, "temperature"),
    ("temperature 0 with sample", GOOD | {"strategy": "sample"}, 400, "temperature"),
    ("top_p 0", GOOD | {"top_p": 0}, 400, "top_p"),
    ("top_p above 1", GOOD | {"top_p": 1.5}, 400, "top_p"),
    ("top_k negative", GOOD | {"top_k": -1}, 400, "top_k"),
    ("n 0", GOOD | {"n": 0}, 400, "n"),
    ("n negative", GOOD | {"n": -2}, 400, "n"),
    ("n over the batch", GOOD | {"n": 65}, 400, "n"),
    ("strategy unknown", GOOD | {"strategy": "nucleus"}, 400, "strategy"),
    ("beam_width over its bound", GOOD | {"strategy": "beam", "beam_width": 65}, 400, "beam_width"),
    ("beam_width 0", GOOD | {"strategy": "beam", "beam_width": 0}, 400, "beam_width"),
    ("n over beam_width", GOOD | {"strategy": "beam", "beam_width": 2, "n": 3}, 400, "n"),
    ("logprobs with beam", GOOD | {"strategy": "beam", "logprobs": 1}, 400, "logprobs"),
    ("logprobs over 20", GOOD | {"logprobs": 21}, 400, "logprobs"),
    ("length_penalty NaN-ish", GOOD | {"length_penalty": "x"}, 400, "length_penalty"),
    ("stop a number", GOOD | {"stop": 5}, 400, "stop"),
    ("five stops", GOOD | {"stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ("seed negative", GOOD | {"seed": -1}, 400, "seed"),
    ("seed too big", GOOD | {"seed": 2**63}, 400, "seed"),
    ("echo a string", GOOD | {"echo": "yes"}, 400, "echo"),
    ("stream a string", GOOD | {"stream": "yes"}, 400, "stream"),
    (
        "stream_options without stream",
        GOOD | {"stream_options": {"include_usage": True}},
        400,
        "stream_options",
    ),
    (
        "stream_options unknown key",
        GOOD | {"stream": True, "stream_options": {"x": 1}},
        400,
        "stream_options.x",
    ),
    ("unknown field", GOOD | {"temprature": 0.5}, 400, "temprature"),
    ("logit_bias", GOOD | {"logit_bias": {"1": 5}}, 400, "logit_bias"),
    ("presence_penalty", GOOD | {"presence_penalty": 0.5}, 400, "presence_penalty"),
    ("suffix", GOOD | {"suffix": "end"}, 400, "suffix"),
    ("best_of", GOOD | {"best_of": 3}, 400, "best_of"),
    ("user a number", GOOD | {"user": 5}, 400, "user"),
]
CHAT_CASES = [
    ("messages missing", {"model": "chars"}, 400, "messages"),
    ("messages empty", {"model": "chars", "messages": []}, 400, "messages"),
    ("message not an object", {"model": "chars", "messages": ["hi"]}, 400, "messages[0]"),
    (
        "content a number",
        {"model": "chars", "messages": [{"role": "user", "content": 1}]},
        400,
        "messages[0].content",
    ),
    (
        "image part",
        {
            "model": "chars",
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
            ],
        },
        400,
        "messages[0].content[0]",
    ),
    (
        "echo in chat",
        {"model": "chars", "messages": [{"role": "user", "content": "ab"}], "echo": True},
        400,
        "echo",
    ),
    (
        "top_logprobs without logprobs",
        {"model": "chars", "messages": [{"role": "user", "content": "ab"}], "top_logprobs": 2},
        400,
        "top_logprobs",
    ),
    (
        "no known token",
        {"model": "chars", "messages": [{"role": "user", "content": "ÄÖ"}]},
        422,
        "messages",
    ),
]


def _post(live: LiveServer, path: str, body, client: httpx.Client | None = None):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return (client or httpx).post(
        live.url + path, content=raw, headers={"Content-Type": "application/json"}, timeout=30
    )


def _check(r: httpx.Response, status: int, param: str | None) -> None:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param and isinstance(error["message"], str) and error["message"]
    assert error["type"] == ("not_found_error" if status == 404 else "invalid_request_error")
    if param is not None:
        assert param.split("[")[0].split(".")[0] in error["message"]
    assert "Traceback" not in r.text


@pytest.mark.parametrize(("name", "body", "status", "param"), CASES, ids=[c[0] for c in CASES])
def test_bad_completion(live: LiveServer, name: str, body, status: int, param) -> None:
    _check(_post(live, "/v1/completions", body), status, param)


@pytest.mark.parametrize(
    ("name", "body", "status", "param"), CHAT_CASES, ids=[c[0] for c in CHAT_CASES]
)
def test_bad_chat(live: LiveServer, name: str, body, status: int, param) -> None:
    _check(_post(live, "/v1/chat/completions", body), status, param)


def test_bad_streamed_request_is_an_error_before_the_stream(live: LiveServer) -> None:
    r = _post(live, "/v1/completions", GOOD | {"stream": True, "temperature": -1})
    _check(r, 400, "temperature")
    assert r.headers["content-type"].startswith("application/json")


def test_oversized_body_is_413(live: LiveServer) -> None:
    r = _post(live, "/v1/completions", GOOD | {"prompt": "a" * 70_000})
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"

    def chunks():  # no Content-Length: the limit holds while reading
        for _ in range(100):
            yield b"a" * 1024

    r = httpx.post(live.url + "/v1/completions", content=chunks(), timeout=30)
    assert r.status_code == 413


def test_wrong_method_and_path_are_in_the_error_shape(live: LiveServer) -> None:
    r = httpx.get(live.url + "/v1/completions")
    assert r.status_code == 405 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    r = httpx.get(live.url + "/v2/nothing")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"


def test_api_key() -> None:
    server = LiveServer({"chars": char_loader()}, Settings(api_key="s3cret"))
    try:
        url = server.url
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            r = httpx.post(url + "/v1/completions", json=GOOD, headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
            assert r.headers["www-authenticate"] == "Bearer"
            assert httpx.get(url + "/v1/models", headers=headers).status_code == 401
            assert httpx.get(url + "/metrics", headers=headers).status_code == 401
        assert httpx.get(url + "/health").json() == {"status": "ok"}  # open
        ok = httpx.post(
            url + "/v1/completions", json=GOOD, headers={"Authorization": "Bearer s3cret"}
        )
        assert ok.status_code == 200
    finally:
        server.close()


def test_cors_off_unless_an_origin_is_named(live: LiveServer) -> None:
    origin = {"Origin": "http://example.test"}
    r = httpx.post(live.url + "/v1/completions", json=GOOD, headers=origin)
    assert "access-control-allow-origin" not in r.headers
    preflight = {"Access-Control-Request-Method": "POST"} | origin
    assert (
        "access-control-allow-origin"
        not in httpx.options(live.url + "/v1/completions", headers=preflight).headers
    )
    server = LiveServer({"chars": char_loader()}, Settings(cors_origins=["http://example.test"]))
    try:
        r = httpx.post(server.url + "/v1/completions", json=GOOD, headers=origin)
        assert r.headers["access-control-allow-origin"] == "http://example.test"
        r = httpx.options(server.url + "/v1/completions", headers=preflight)
        assert r.status_code == 200
        r = httpx.post(
            server.url + "/v1/completions", json=GOOD, headers={"Origin": "http://evil.test"}
        )
        assert "access-control-allow-origin" not in r.headers
    finally:
        server.close()


def _rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_thousand_bad_requests_leave_the_server_answering_with_flat_memory(
    live: LiveServer,
) -> None:
    bad = [body for _, body, _, _ in CASES] + [GOOD | {"prompt": "x" * 70_000}]
    statuses: dict[int, int] = {}
    with httpx.Client(timeout=30) as client:
        for i in range(100):  # warm up every path first
            _post(live, "/v1/completions", bad[i % len(bad)], client)
        before = _rss_mb()
        good_texts = set()
        for i in range(1000):
            r = _post(live, "/v1/completions", bad[i % len(bad)], client)
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            if i % 10 == 0:
                g = _post(live, "/v1/completions", GOOD, client)
                assert g.status_code == 200
                good_texts.add(g.json()["choices"][0]["text"])
        after = _rss_mb()
    print(f"RSS before {before:.1f} MB, after {after:.1f} MB; statuses {statuses}")
    assert set(statuses) <= {400, 404, 413, 422} and sum(statuses.values()) == 1000
    assert len(good_texts) == 1  # greedy: the same answer throughout
    assert after - before < 10
    with pytest.raises(KeyError):  # no request was ever answered with a 500
        live.metric("textgen_requests_total", path="/v1/completions", status="500")
