"""Regression tests for defects a review found in ``textgen serve``: each request here
was a 500, a hang, a silent drop or a wrong answer before its fix."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.test_serve_support import LiveServer, char_loader
from textgen.serve.app import Settings

GOOD = {"model": "chars", "prompt": "ab", "max_tokens": 4, "temperature": 0}


@pytest.fixture(scope="module")
def live():
    server = LiveServer({"chars": char_loader()}, Settings(max_tokens_limit=64))
    yield server
    server.close()


def _post(live: LiveServer, body: bytes | dict, path: str = "/v1/completions", **kw):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} | kw.pop("headers", {})
    return httpx.post(live.url + path, content=raw, headers=headers, timeout=30, **kw)


def _error(r: httpx.Response, status: int, param: str | None, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json"), r.text
    error = r.json()["error"]
    assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    return error


@pytest.mark.parametrize(
    "name", ["temperature", "top_p", "frequency_penalty", "presence_penalty", "length_penalty"]
)
def test_a_number_too_large_for_a_float_is_a_400_naming_it(live, name):
    raw = json.dumps(GOOD)[:-1] + f', "{name}": {"9" * 400}}}'
    _error(_post(live, raw.encode()), 400, name)


def test_an_integer_over_the_digit_limit_is_invalid_json(live):
    raw = json.dumps(GOOD)[:-1].replace('"max_tokens": 4', '"max_tokens": ' + "9" * 5000) + "}"
    _error(_post(live, raw.encode()), 400, None, "invalid_json")


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (r'{"model":"chars","prompt":"ab \ud800","echo":true,"max_tokens":2}', "prompt"),
        (r'{"model":"chars","prompt":"ab \udfff","max_tokens":2,"stream":true}', "prompt"),
        (r'{"model":"chars","prompt":["ab","x\uDA00y"],"max_tokens":2}', "prompt[1]"),
        (r'{"model":"chars","prompt":"ab","\ud800":1}', "body"),
        (r'{"model":"chars","prompt":"ab","stop":["\ud800"]}', "stop[0]"),
    ],
)
def test_a_lone_surrogate_anywhere_is_a_400(live, raw, param):
    error = _error(_post(live, raw.encode()), 400, param)
    error["message"].encode("utf-8")  # the message itself is UTF-8 encodable


def test_a_pair_of_surrogates_is_a_character(live):
    raw = r'{"model":"chars","prompt":"ab \ud83d\ude00","max_tokens":2,"temperature":0}'
    assert _post(live, raw.encode()).status_code == 200
