"""Regression tests for defects a review found in ``textgen serve``: each request here
was a 500, a hang, a silent drop or a wrong answer before its fix."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.test_serve_support import LiveServer, char_loader, sse_events
from textgen.serve.runs import Settings

GOOD = {"model": "chars", "prompt": "ab", "max_tokens": 4, "temperature": 0}


@pytest.fixture(scope="module")
def live():
    server = LiveServer({"chars": char_loader()}, Settings(max_tokens_limit=64))
    yield server
    server.close()


def _post(live: LiveServer, body: bytes | dict, path: str = "/v1/completions", **kw):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} | kw.pop("headers", {})
    kw.setdefault("timeout", 30)
    return httpx.post(live.url + path, content=raw, headers=headers, **kw)


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


def _patched_loader(delay: float = 0.0, fail_at: int | None = None, **kwargs):
    """A char model whose decoding step sleeps ``delay`` s, or raises at step ``fail_at``."""
    import time

    def load():
        loaded = char_loader(**kwargs)()
        lm, real = loaded.lm, loaded.lm.step
        calls = [0]

        def step(ids, state):
            calls[0] += 1
            if fail_at is not None and calls[0] == fail_at:
                raise RuntimeError("injected fault")
            time.sleep(delay)
            return real(ids, state)

        lm.step = step
        return loaded

    return load


@pytest.fixture(scope="module")
def slow():
    settings = Settings(max_tokens_limit=4000, max_batch=1, max_waiting=2)
    server = LiveServer({"slow": _patched_loader(delay=0.005)}, settings)
    yield server
    server.close()


def _wait_until(check, seconds: float = 3.0) -> bool:
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return check()


def test_a_failed_decoding_step_is_a_500_in_the_error_shape():
    server = LiveServer({"bad": _patched_loader(fail_at=2)})
    try:
        r = _post(server, {"prompt": "ab", "max_tokens": 8, "temperature": 0})
        _error(r, 500, None, "generation_failed")
        assert _post(server, {"prompt": "ab", "max_tokens": 3}).status_code == 200
    finally:
        server.close()


def test_a_non_streamed_request_is_cancelled_when_its_client_leaves(slow):
    batcher = slow.state.models["slow"].batcher
    body = {"prompt": "ab", "max_tokens": 4000, "temperature": 0}
    with pytest.raises(httpx.TimeoutException):
        _post(slow, body, timeout=0.3)
    assert _wait_until(lambda: batcher.running == 0 and batcher.waiting == 0), batcher.running
    # a queued one too: one stream holds the only batch row, the second request waits
    with httpx.stream(
        "POST", slow.url + "/v1/completions", json=body | {"stream": True}, timeout=30
    ) as stream:
        next(stream.iter_lines())
        with pytest.raises(httpx.TimeoutException):
            _post(slow, body, timeout=0.3)
        assert batcher.running == 1
        assert _wait_until(lambda: batcher.waiting == 0), batcher.waiting
    assert _wait_until(lambda: batcher.running == 0)


ORIGIN = "http://page.test"
KEY = "schlüssel-키"


@pytest.fixture(scope="module")
def keyed():
    settings = Settings(api_key=KEY, cors_origins=[ORIGIN])
    server = LiveServer({"chars": char_loader()}, settings)
    yield server
    server.close()


def test_a_non_ascii_api_key_matches_its_utf8_bytes(keyed):
    good = {"Authorization": f"Bearer {KEY}".encode()}
    assert _post(keyed, GOOD | {"model": "chars"}, headers=good).status_code == 200
    wrong = {"Authorization": "Bearer schlüssel-x".encode()}
    _error(_post(keyed, GOOD, headers=wrong), 401, None, "invalid_api_key")


def test_a_401_carries_cors_headers_and_a_preflight_allows_any_header(keyed):
    r = _post(keyed, GOOD, headers={"Origin": ORIGIN})
    _error(r, 401, None, "invalid_api_key")
    assert r.headers["access-control-allow-origin"] == ORIGIN
    asked = "authorization,content-type,x-stainless-os,x-stainless-lang"
    r = httpx.options(
        keyed.url + "/v1/completions",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": asked,
        },
    )
    assert r.status_code == 200, r.text
    allowed = {h.strip().lower() for h in r.headers["access-control-allow-headers"].split(",")}
    assert set(asked.split(",")) <= allowed
    # another origin still gets nothing
    r = _post(keyed, GOOD, headers={"Origin": "http://elsewhere.test"})
    assert "access-control-allow-origin" not in r.headers


def test_unknown_paths_do_not_grow_the_metrics(live):
    from prometheus_client.parser import text_string_to_metric_families

    for i in range(20):
        assert httpx.get(f"{live.url}/v1/x{i}").status_code == 404
        assert httpx.get(f"{live.url}/nothing{i}").status_code == 404
    text = httpx.get(live.url + "/metrics").text
    counts = {
        (sample.labels["path"], sample.labels["status"]): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "textgen_requests_total"
    }
    known = {"/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics", "/"}
    assert {path for path, _ in counts} <= known | {"other"}, counts
    assert counts[("other", "404")] >= 40


def test_a_prompt_list_longer_than_the_queue_is_a_400_not_a_503_forever(slow):
    body = {"prompt": ["ab", "ba", "a"], "max_tokens": 2, "temperature": 0}
    error = _error(_post(slow, body), 400, "prompt")
    assert "at most 2 prompts" in error["message"]
    assert _post(slow, body | {"prompt": ["ab", "ba"]}).status_code == 200


def test_max_waiting_0_is_refused_at_start_up(tmp_path):
    from click.testing import CliRunner

    from tests.test_serve_support import char_run
    from textgen.cli import main

    run_dir = char_run(tmp_path / "run")
    result = CliRunner().invoke(main, ["serve", "--model", str(run_dir), "--max-waiting", "0"])
    assert result.exit_code != 0
    assert result.output.strip() == "error: --max-waiting must be at least 1, got 0"


def _streamed_and_final(tokenizer, seed: str, stops: list[str], ids: list[int]) -> tuple[str, str]:
    """The deltas a stream sends joined, and the text a non-streamed answer holds."""
    from textgen.serve.choices import ChoiceText

    choice = ChoiceText(tokenizer, seed, stops)
    sent = []
    for token in ids:
        if choice.push(token):
            break
        sent.append(choice.delta())
    choice.finish = "stop"
    sent.append(choice.flush())
    return "".join(sent), choice.text


WORDS = "경마장에 있는 말이 뛰고 있다 그의 눈"


def test_a_stream_at_word_level_joins_to_the_non_streamed_text_at_a_multi_word_stop():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from textgen.text.word import WordTokenizer

    tok = WordTokenizer.fit([WORDS], "word", eos=False)
    ids = [int(i) for i in tok.encode(WORDS)]
    streamed, final = _streamed_and_final(tok, "경마장에", ["말이 뛰"], ids[1:])
    assert (streamed, final) == (final, " 있는")

    @settings(max_examples=60, deadline=None)
    @given(
        st.lists(st.sampled_from(ids), min_size=1, max_size=12),
        st.lists(st.sampled_from(["말이 뛰", "있는 말이", "눈", " 그의"]), max_size=2),
    )
    def same(picked, stops):
        streamed, final = _streamed_and_final(tok, "경마장에", stops, picked)
        assert streamed == final

    same()


def _parse(body: dict, chat: bool = False):
    from textgen.serve import api

    return api.parse(body, chat=chat, max_tokens_limit=512, max_n=8)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"strategy": "greedy", "temperature": 0.5}, "temperature"),
        ({"strategy": "greedy", "top_k": 5}, "top_k"),
        ({"strategy": "greedy", "top_p": 0.9}, "top_p"),
        ({"strategy": "greedy", "seed": 3}, "seed"),
        ({"strategy": "greedy", "beam_width": 3}, "beam_width"),
        ({"strategy": "sample", "beam_width": 3}, "beam_width"),
        ({"strategy": "sample", "length_penalty": 0.5}, "length_penalty"),
        ({"strategy": "beam", "temperature": 0.7}, "temperature"),
        ({"strategy": "beam", "top_p": 0.5}, "top_p"),
        ({"strategy": "beam", "seed": 1}, "seed"),
        ({"strategy": "sample", "temperature": 1e-320}, "temperature"),
        ({"echo": True, "logprobs": 1}, "echo"),
    ],
)
def test_a_field_the_strategy_cannot_honour_is_a_400_naming_it(body, param):
    from textgen.serve.api import ApiError

    with pytest.raises(ApiError) as err:
        _parse({"prompt": "ab"} | body)
    assert err.value.status == 400 and err.value.param == param, err.value.message


def test_neutral_values_and_an_absent_strategy_are_accepted():
    # OpenAI clients send temperature 1 and top_p 1 by default; temperature 0 = greedy
    assert _parse({"prompt": "ab", "strategy": "beam", "temperature": 1, "top_p": 1}).strategy
    assert _parse({"prompt": "ab", "temperature": 0, "top_p": 0.9, "seed": 1}).strategy == "greedy"
    assert _parse({"prompt": "ab", "strategy": "sample", "seed": 1, "top_k": 3}).seed == 1
    # a temperature too small for a softmax is 0: greedy
    req = _parse({"prompt": "ab", "temperature": 1e-320})
    assert (req.strategy, req.temperature) == ("greedy", 0.0)


def test_chat_max_tokens_defaults_to_the_server_limit():
    messages = [{"role": "user", "content": "ab"}]
    assert _parse({"messages": messages}, chat=True).max_tokens == 512
    assert _parse({"prompt": "ab"}).max_tokens == 16


@pytest.fixture(scope="module")
def ko(toy_run):
    server = LiveServer({"ko-toy": toy_run}, Settings(max_tokens_limit=64))
    yield server
    server.close()


def test_logprob_tokens_join_to_the_text_and_stream_offsets_are_real(ko):
    body = {"prompt": "경마장에", "max_tokens": 6, "temperature": 0, "logprobs": 1}
    choice = _post(ko, body).json()["choices"][0]
    lp = choice["logprobs"]
    assert "".join(lp["tokens"]) == choice["text"] and choice["text"].startswith(" ")
    count = len(lp["tokens"])
    assert count > 1 and len(lp["token_logprobs"]) == count
    assert lp["text_offset"] == [sum(map(len, lp["tokens"][:i])) for i in range(count)]
    with httpx.stream(
        "POST", ko.url + "/v1/completions", json=body | {"stream": True}, timeout=30
    ) as r:
        events = [json.loads(e) for e in sse_events(r) if e != "[DONE]"]
    chunks = [c for e in events for c in e["choices"] if c["logprobs"]]
    assert [c["logprobs"]["text_offset"][0] for c in chunks] == lp["text_offset"]
    assert [c["logprobs"]["tokens"][0] for c in chunks] == [c["text"] for c in chunks]


def _tokenizers():
    from tests.conftest import TOY_SENTENCES
    from textgen.text import CharTokenizer
    from textgen.text.subword import SubwordTokenizer

    jamo = CharTokenizer.fit(TOY_SENTENCES, "char", eos=True, normalize="nfd")
    subword = SubwordTokenizer.fit(TOY_SENTENCES, eos=True, vocab_size=320)
    return {"jamo": jamo, "subword": subword}


@pytest.fixture(scope="module")
def tokenizers():
    return _tokenizers()


@pytest.mark.parametrize("level", ["jamo", "subword"])
def test_the_windowed_text_equals_the_whole_continuation(tokenizers, level):
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from textgen.serve.choices import ChoiceText

    tok = tokenizers[level]
    seed = "경마장에"

    @settings(max_examples=25, deadline=None)
    @given(st.lists(st.integers(1, len(tok.vocab) - 1), min_size=1, max_size=100))
    def same(ids):
        choice = ChoiceText(tok, seed, [])
        for k, token in enumerate(ids, 1):
            choice.push(token)
            assert choice.text == tok.continuation(seed, ids[:k])

    same()


@pytest.mark.parametrize("level", ["jamo", "subword"])
def test_a_token_decodes_a_bounded_window_not_the_whole_text(tokenizers, level):
    from textgen.serve.choices import ChoiceText

    tok = tokenizers[level]
    ids = [int(i) for i in tok.encode("경마장에 있는 말이 뛰고 있다 그의 눈 " * 120)][:3000]
    decoded, whole = [0], tok.continuation

    def counting(seed, part):
        part = list(part)
        decoded[0] += len(part)
        return whole(seed, part)

    choice = ChoiceText(tok, "경마장에", [])
    tok.continuation = counting  # on this instance only
    try:
        for token in ids:
            choice.push(token)
    finally:
        del tok.continuation
    assert choice.text == whole("경마장에", ids)
    # recomputing over all ids decoded len(ids)**2 / 2 = 4.5 million ids here
    assert decoded[0] < 80 * len(ids), decoded[0]


def test_a_shutdown_ends_the_requests_in_flight_properly_before_its_timeout():
    import threading
    import time

    server = LiveServer(
        {"slow": _patched_loader(delay=0.005)},
        Settings(max_tokens_limit=4000, max_batch=4),
        shutdown_timeout=1,
    )
    body = {"prompt": "ab", "max_tokens": 4000, "temperature": 0}
    got: dict[str, Any] = {}

    def stream():
        with httpx.stream(
            "POST", server.url + "/v1/completions", json=body | {"stream": True}, timeout=30
        ) as r:
            got["stream"] = r.read().decode()

    def plain():
        got["plain"] = _post(server, body)

    threads = [threading.Thread(target=stream), threading.Thread(target=plain)]
    for t in threads:
        t.start()
    assert _wait_until(lambda: server.state.models["slow"].batcher.running == 2)
    started = time.monotonic()
    server.close()
    for t in threads:
        t.join(10)
    assert time.monotonic() - started < 5
    _error(got["plain"], 503, None, "shutting_down")
    lines = [line for line in got["stream"].split("\n") if line]
    assert lines[-3:-1] == ["event: error", lines[-2]] and '"shutting_down"' in lines[-2]
    assert lines[-1] == "data: [DONE]"


def test_a_beam_search_stops_when_its_client_leaves(slow):
    model = slow.state.models["slow"]
    body = {"prompt": "ab", "max_tokens": 4000, "strategy": "beam", "beam_width": 2}
    with pytest.raises(httpx.TimeoutException):
        _post(slow, body, timeout=0.3)
    assert model.beams.locked()  # it was running
    assert _wait_until(lambda: not model.beams.locked() and model.beams_waiting == 0)
    # and the next search runs (to a short end)
    from textgen.decoding.generate import Strategy

    r = _post(slow, body | {"max_tokens": 6})
    assert r.status_code == 200, r.text
    plan = Strategy("beam", beam_width=2, length_penalty=1.0)
    want = model.generator.continue_ids("ab", length=6, num=1, strategy=plan)
    texts = [model.tokenizer.continuation("ab", ids) for ids in want.ids]
    assert [c["text"] for c in r.json()["choices"]] == texts  # as textgen generate finds
