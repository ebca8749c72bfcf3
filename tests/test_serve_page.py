"""The web page of ``textgen serve``, driven in a real headless browser.

A real ``textgen serve`` process serves the toy run (word level, lines: greedy ends at
``<eos>``) and a tiny char-level stream model trained here (no ``<eos>``, so a sampled
stream runs as long as it is asked to, and Stop has something to stop). Debian's chromium
is driven through Playwright for Python; Playwright cannot download its own browsers here,
so the system browser is named with ``executable_path``. Without chromium or Playwright
the tests skip and say which is missing.

Every browser context routes all its requests through a recorder that lets through only
the server's own address and aborts (and records) anything else, and records what the
page's Content-Security-Policy refused; each test asserts that nothing else was asked for.

The README's screenshot is the greedy test's page:
``TEXTGEN_PAGE_SCREENSHOT=docs/serve-page.png pytest tests/test_serve_page.py -k greedy``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tests.conftest import TOY_CORPUS, small_config

CHROMIUM = "/usr/bin/chromium"
SERVE = [sys.executable, "-m", "textgen", "serve"]  # the real command line
TOY_SEED = "경마장에"
TOY_TEXT = "경마장에 있는 말이 뛰고 있다"  # README: textgen generate --seed "경마장에"
STARTUP_S = 30.0

sync_api = pytest.importorskip(
    "playwright.sync_api",
    reason="Playwright for Python is not installed (pip install playwright; it is in [test])",
)
if not (os.path.exists(CHROMIUM) or shutil.which("chromium")):
    pytest.skip(
        f"no chromium browser at {CHROMIUM} or on PATH (apt-get install chromium): "
        "the page's browser tests need one",
        allow_module_level=True,
    )


def _chromium_path() -> str:
    return CHROMIUM if os.path.exists(CHROMIUM) else str(shutil.which("chromium"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A ``textgen serve`` subprocess on a free loopback port, up once /health says ok."""

    def __init__(self, args: list[str]) -> None:
        import httpx

        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = Path(os.environ.get("TMPDIR", "/tmp")) / f"textgen-serve-page-{self.port}.log"
        self._log_file = self.log.open("wb")
        self.proc = subprocess.Popen(
            [*SERVE, *args, "--port", str(self.port)],
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        deadline = time.monotonic() + STARTUP_S
        while True:
            if self.proc.poll() is not None:
                self.close()
                pytest.fail(f"textgen serve exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(f"{self.base}/health", timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.close()
                pytest.fail(f"textgen serve not up after {STARTUP_S:.0f} s:\n{self.output()}")
            time.sleep(0.05)

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")[-4000:]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()
        self.log.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def char_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny char-level stream model: it never emits ``<eos>``, so streams run long."""
    from textgen.training.loop import train

    config = small_config(
        TOY_CORPUS,
        data={"level": "char", "mode": "stream", "seq_len": 8},
        train={"epochs": 1, "jit_compile": False},
    )
    run_dir = tmp_path_factory.mktemp("page-runs") / "ko-char"
    train(config, run_dir, progress=False, log=lambda _m: None)
    return run_dir


@pytest.fixture(scope="module")
def server(toy_run: Path, char_run: Path) -> Iterator[Server]:
    srv = Server(["--model", str(toy_run), "--model", str(char_run)])
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=_chromium_path(), headless=True)
        yield chromium
        chromium.close()


class Page:
    """A browser page on one server, with every request recorded and foreign ones refused."""

    def __init__(self, browser: Any, base: str, **context_options: Any) -> None:
        self.base = base
        self.requests: list[str] = []
        self.foreign: list[str] = []
        self.errors: list[str] = []
        self.context = browser.new_context(service_workers="block", **context_options)
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.on("pageerror", lambda err: self.errors.append(str(err)))
        self.page.on("console", self._console)

    def _console(self, message: Any) -> None:
        # the page's Content-Security-Policy refuses other hosts before any request is made
        if "Content Security Policy" in message.text:
            self.foreign.append(message.text)

    def _route(self, route: Any) -> None:
        url = route.request.url
        self.requests.append(url)
        if url == self.base or url.startswith(self.base + "/"):
            route.continue_()
        else:
            self.foreign.append(url)
            route.abort()

    def open(self, models: tuple[str, ...] = ("ko-toy", "ko-char")) -> Any:
        page = self.page
        page.goto(self.base + "/")
        for name in models:
            page.wait_for_selector(f"#model option[value='{name}']", state="attached")
        return page

    def generate(self, seed: str, *, model: str = "ko-toy", **fields: str) -> None:
        page = self.page
        page.select_option("#model", model)
        page.fill("#seed", seed)
        for selector, value in fields.items():
            if selector == "strategy":
                page.select_option("#strategy", value)
            else:
                page.fill(f"#{selector.replace('_', '-')}", value)
        page.click("#generate")

    def wait_state(self, *states: str, timeout_ms: int = 15_000) -> str:
        self.page.wait_for_function(
            "states => states.includes(document.getElementById('output').dataset.state)",
            arg=list(states),
            timeout=timeout_ms,
        )
        return self.state()

    def state(self) -> str:
        return self.page.get_attribute("#output", "data-state")

    def chunks(self) -> int:
        return int(self.page.get_attribute("#output", "data-chunks"))

    def completion(self) -> str:
        return self.page.text_content("#completion")

    def close(self) -> None:
        assert not self.errors, f"JavaScript errors on the page: {self.errors}"
        assert not self.foreign, f"the page asked for other hosts than the server: {self.foreign}"
        self.context.close()


@pytest.fixture
def page(browser: Any, server: Server) -> Iterator[Page]:
    p = Page(browser, server.base, viewport={"width": 1000, "height": 820})
    yield p
    p.close()


def _complete(server: Server, body: dict[str, Any], **kwargs: Any) -> Any:
    import httpx

    return httpx.post(f"{server.base}/v1/completions", json=body, timeout=30.0, **kwargs)


def _streamed_text(server: Server, body: dict[str, Any]) -> tuple[str, int]:
    """The text of a streaming request read by httpx, and how many chunks carried text."""
    import httpx

    text, chunks, done = "", 0, False
    with httpx.stream(
        "POST", f"{server.base}/v1/completions", json={**body, "stream": True}, timeout=30.0
    ) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                done = True
                break
            choices = json.loads(data)["choices"]
            if choices and choices[0].get("text"):
                text += choices[0]["text"]
                chunks += 1
    assert done, "the stream did not end with data: [DONE]"
    return text, chunks


def test_greedy_stream_shows_what_the_api_and_the_cli_give(
    page: Page, server: Server, toy_run: Path, tmp_path: Path
) -> None:
    from textgen.cli import main

    p = page.open()
    assert p.title() == "textgen"
    assert p.evaluate("document.characterSet") == "UTF-8"
    page.generate(TOY_SEED, max_tokens="50")
    assert page.wait_state("done", "error", "stopped") == "done", p.text_content("#error")
    shown = page.completion()
    assert p.text_content("#seed-echo") == TOY_SEED

    body = {"model": "ko-toy", "prompt": TOY_SEED, "max_tokens": 50, "strategy": "greedy"}
    response = _complete(server, body)
    assert response.status_code == 200, response.text
    assert shown == response.json()["choices"][0]["text"]
    streamed, chunks = _streamed_text(server, body)
    assert shown == streamed
    assert page.chunks() == chunks >= 4  # one chunk a token, each appended as it came

    cli = CliRunner().invoke(main, ["generate", "--model", str(toy_run), "--seed", TOY_SEED])
    assert cli.exit_code == 0, cli.output
    assert TOY_SEED + shown == cli.output.rstrip("\n") == TOY_TEXT
    tokens = response.json()["usage"]["completion_tokens"]
    assert p.text_content("#status").startswith(f"Done: {tokens} tokens in ")
    assert p.is_enabled("#generate") and not p.is_enabled("#stop")

    shot = Path(os.environ.get("TEXTGEN_PAGE_SCREENSHOT", tmp_path / "page.png"))
    p.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # beam search: the page shows the text the API and the CLI give
    page.generate("가는", strategy="beam", beam_width="3")
    assert page.wait_state("done", "error") == "done", p.text_content("#error")
    beam = {"model": "ko-toy", "prompt": "가는", "max_tokens": 50, "strategy": "beam"}
    response = _complete(server, beam | {"beam_width": 3})
    assert page.completion() == response.json()["choices"][0]["text"]
    args = ["--seed", "가는", "--strategy", "beam", "--beam-width", "3"]
    cli = CliRunner().invoke(main, ["generate", "--model", str(toy_run), *args])
    assert cli.exit_code == 0, cli.output
    assert "가는" + page.completion() == cli.output.rstrip("\n")

    assert page.requests[0] == server.base + "/"
    paths = {url.removeprefix(server.base) for url in page.requests}
    assert {"/", "/v1/models", "/v1/completions"} <= paths
    assert any(path.startswith("/static/") for path in paths)


def test_stop_ends_a_long_sampled_stream(page: Page, server: Server) -> None:
    """Stop aborts the request mid-stream: the text stops growing at a prefix of the
    seeded sample the API gives, and the page is ready for the next request."""
    p = page.open()
    # The browser reads slowly (about 100 chunks a second), so the stream is still running
    # whatever the speed of the server or the machine when Stop is pressed.
    cdp = page.context.new_cdp_session(p)
    cdp.send("Network.enable")
    cdp.send(
        "Network.emulateNetworkConditions",
        {"offline": False, "latency": 0, "downloadThroughput": 16_000, "uploadThroughput": -1},
    )
    max_tokens = 1000
    p.evaluate(
        """() => {
          const completion = document.getElementById('completion');
          window.__lengths = [];
          new MutationObserver(() => window.__lengths.push(completion.textContent.length))
            .observe(completion, {childList: true, characterData: true, subtree: true});
        }"""
    )
    page.generate(
        "경마",
        model="ko-char",
        strategy="sample",
        max_tokens=str(max_tokens),
        temperature="1.0",
        rng_seed="7",
    )
    p.wait_for_function(
        "() => Number(document.getElementById('output').dataset.chunks) >= 60", timeout=15_000
    )
    assert page.state() == "streaming"
    # every change of the shown text, recorded in the page: the text grows in many steps
    grown = p.evaluate("window.__lengths")
    assert len(grown) >= 4 and grown == sorted(set(grown)), grown
    assert p.is_enabled("#stop") and not p.is_enabled("#generate")
    p.click("#stop")
    assert page.wait_state("stopped", "done", "error") == "stopped"
    stopped_at, text = page.chunks(), page.completion()
    time.sleep(0.5)
    assert (page.chunks(), page.completion()) == (stopped_at, text)
    assert 60 <= stopped_at < max_tokens
    assert p.text_content("#status").startswith("Stopped")
    assert p.is_enabled("#generate") and not p.is_enabled("#stop")
    assert p.is_hidden("#error")

    body = {
        "model": "ko-char",
        "prompt": "경마",
        "max_tokens": max_tokens,
        "strategy": "sample",
        "temperature": 1.0,
        "top_k": 0,
        "top_p": 1.0,
        "seed": 7,
    }
    full = _complete(server, body)
    assert full.status_code == 200, full.text
    assert full.json()["choices"][0]["text"].startswith(text)


def test_server_errors_are_shown_with_the_servers_message(page: Page, server: Server) -> None:
    p = page.open()
    cases = [
        # (page fields, the same request for the API)
        (
            {"strategy": "sample", "temperature": "-1"},
            {"strategy": "sample", "temperature": -1.0, "top_k": 0, "top_p": 1.0},
        ),
        (
            {"strategy": "sample", "temperature": "1.0", "top_p": "0"},
            {"strategy": "sample", "temperature": 1.0, "top_k": 0, "top_p": 0.0},
        ),
    ]
    for fields, api_fields in cases:
        page.generate(TOY_SEED, max_tokens="5", **fields)
        assert page.wait_state("done", "error", "stopped") == "error"
        body = {"model": "ko-toy", "prompt": TOY_SEED, "max_tokens": 5, **api_fields}
        response = _complete(server, {**body, "stream": True})
        assert 400 <= response.status_code < 500, response.text
        message = response.json()["error"]["message"]
        assert message and message in p.text_content("#error")
        assert str(response.status_code) in p.text_content("#error")
        assert p.is_enabled("#generate") and not p.is_enabled("#stop")
    # a seed none of whose words the toy knows: the server says so, the page shows it
    page.generate("zzzz", max_tokens="5", strategy="greedy")
    assert page.wait_state("done", "error") == "error"
    unknown = {"model": "ko-toy", "prompt": "zzzz", "max_tokens": 5, "strategy": "greedy"}
    response = _complete(server, {**unknown, "stream": True})
    assert 400 <= response.status_code < 500
    assert response.json()["error"]["message"] in p.text_content("#error")
    # the page's own checks, before any request: nothing to continue, no length
    posted = page.requests.count(server.base + "/v1/completions")
    page.generate("   ")
    assert p.text_content("#error") == "Type a seed text first"
    assert p.evaluate("document.activeElement.id") == "seed"
    page.generate(TOY_SEED, max_tokens="")
    assert p.text_content("#error") == "Length must be a whole number"
    assert p.evaluate("document.activeElement.id") == "max-tokens"
    assert p.is_visible("#error")
    assert page.requests.count(server.base + "/v1/completions") == posted


def test_phone_width_has_no_horizontal_scroll(browser: Any, server: Server) -> None:
    phone = Page(
        browser,
        server.base,
        viewport={"width": 375, "height": 740},
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
    )
    try:
        p = phone.open()

        def overflow() -> dict[str, Any]:
            return p.evaluate(
                """() => {
                  const doc = document.documentElement;
                  const wide = [...document.querySelectorAll('main *')]
                    .filter(el => el.getClientRects().length
                                  && el.getBoundingClientRect().right > doc.clientWidth + 0.5)
                    .map(el => el.id || el.tagName);
                  return {scroll: doc.scrollWidth, client: doc.clientWidth, wide};
                }"""
            )

        first = overflow()
        assert first["client"] == 375
        assert first["scroll"] <= first["client"] and not first["wide"], first
        for strategy in ("sample", "beam", "greedy"):  # each shows its own fields
            p.select_option("#strategy", strategy)
            after = overflow()
            assert after["scroll"] <= after["client"] and not after["wide"], (strategy, after)
        phone.generate(TOY_SEED)
        assert phone.wait_state("done") == "done"
        # one 400-character word with no space: the seed echo and the server's error
        # message must wrap inside the screen too
        phone.generate("경마장에" * 100)
        assert phone.wait_state("done", "error") == "error"
        after = overflow()
        assert after["scroll"] <= after["client"] and not after["wide"], after
        for control in ("#model", "#seed", "#max-tokens", "#strategy", "#generate", "#stop"):
            box = p.locator(control).bounding_box()
            assert box and box["x"] >= 0 and box["x"] + box["width"] <= 375, (control, box)
        unlabelled = p.evaluate(
            """() => [...document.querySelectorAll('input, select, textarea, button')]
                .filter(el => el.tagName === 'BUTTON' ? !el.textContent.trim()
                              : ![...el.labels].some(l => l.textContent.trim()))
                .map(el => el.id || el.outerHTML)"""
        )
        assert unlabelled == []
        assert p.locator("#error").get_attribute("role") == "alert"
        assert p.locator("#status").get_attribute("role") == "status"
    finally:
        phone.close()


def test_utf8_split_anywhere_in_the_stream_decodes_whole(page: Page) -> None:
    """The page's SSE parser fed a Korean event stream cut at every byte: the same events,
    with CRLF, LF or CR line ends and a keep-alive comment; the control decode (each piece
    on its own, as a decoder without stream mode would) shows the cuts split syllables."""
    page.open()
    result = page.page.evaluate(
        """() => {
          const texts = [' 있는', ' 말이', ' 뛰고', ' 있다', '가는 말이 고와야', '😀é'];
          const chunks = texts.map(t => JSON.stringify({choices: [{index: 0, text: t}]}));
          const expected = [...chunks, '[DONE]'];
          const failures = [];
          let splitSyllables = 0;
          for (const eol of ['\\r\\n', '\\n', '\\r']) {
            const source = ':ping' + eol + eol
              + chunks.map(c => 'data: ' + c + eol + eol).join('') + 'data: [DONE]' + eol + eol;
            const bytes = new TextEncoder().encode(source);
            for (let cut = 0; cut <= bytes.length; cut++) {
              const got = [];
              const parser = window.textgenPage.createSSEParser(e => got.push(e.data));
              parser.push(bytes.slice(0, cut));
              parser.push(bytes.slice(cut));
              parser.end();
              if (JSON.stringify(got) !== JSON.stringify(expected)) failures.push([eol, cut, got]);
              const naive = new TextDecoder().decode(bytes.slice(0, cut))
                + new TextDecoder().decode(bytes.slice(cut));
              if (naive.includes('\\ufffd')) splitSyllables += 1;
            }
            const got = [];  // one byte at a time
            const parser = window.textgenPage.createSSEParser(e => got.push(e.data));
            for (let i = 0; i < bytes.length; i++) parser.push(bytes.slice(i, i + 1));
            parser.end();
            if (JSON.stringify(got) !== JSON.stringify(expected)) {
              failures.push([eol, 'bytes', got]);
            }
          }
          return {failures: failures.slice(0, 3), count: failures.length, splitSyllables};
        }"""
    )
    assert result["count"] == 0, result["failures"]
    assert result["splitSyllables"] > 50


def test_models_still_loading_are_asked_for_again(browser: Any, server: Server) -> None:
    """A 503 from /v1/models (the server's answer while its models load) is shown with its
    message, and the page asks again after Retry-After instead of staying empty. The first
    answer is made here, the real one follows."""
    loading = Page(browser, server.base, viewport={"width": 1000, "height": 820})
    asked: list[str] = []

    def first_loading(route: Any) -> None:
        asked.append(route.request.url)
        if len(asked) > 1:
            route.fallback()  # to the recorder, and on to the server
            return
        error = {"message": "the models are still loading", "type": "server_error"}
        route.fulfill(
            status=503,
            headers={"Retry-After": "1"},
            content_type="application/json",
            body=json.dumps({"error": error | {"param": None, "code": "loading"}}),
        )

    try:
        loading.context.route(server.base + "/v1/models", first_loading)
        p = loading.page
        p.goto(server.base + "/")
        p.wait_for_selector("#error:not([hidden])")
        assert "503" in p.text_content("#error")
        assert "the models are still loading" in p.text_content("#error")
        assert "Trying again in 1 s" in p.text_content("#error")
        started = time.monotonic()
        p.wait_for_selector("#model option[value='ko-toy']", state="attached", timeout=10_000)
        assert time.monotonic() - started >= 0.5
        assert p.is_hidden("#error")
        assert len(asked) == 2
    finally:
        loading.close()


def test_api_key_is_sent_and_kept(browser: Any, toy_run: Path) -> None:
    """With --api-key the page's model list and generation need the key: without it the
    server's 401 message is shown; typed once, it is sent as a bearer token and is still
    there after a reload (localStorage)."""
    srv = Server(["--model", str(toy_run), "--api-key", "s3cret-key"])
    keyed = Page(browser, srv.base, viewport={"width": 1000, "height": 820})
    try:
        p = keyed.page
        p.goto(srv.base + "/")
        p.wait_for_selector("#error:not([hidden])")
        assert "401" in p.text_content("#error")
        p.click("#key-box summary")
        p.fill("#api-key", "s3cret-key")
        p.dispatch_event("#api-key", "change")
        p.wait_for_selector("#model option[value='ko-toy']", state="attached")
        assert p.is_hidden("#error")
        keyed.generate(TOY_SEED)
        assert keyed.wait_state("done", "error") == "done", p.text_content("#error")
        assert TOY_SEED + keyed.completion() == TOY_TEXT
        p.reload()
        p.wait_for_selector("#model option[value='ko-toy']", state="attached")
        assert p.input_value("#api-key") == "s3cret-key"
        assert p.evaluate("localStorage.getItem('textgen.apiKey')") == "s3cret-key"
    finally:
        keyed.close()
        srv.close()
