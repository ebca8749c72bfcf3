"""The Starlette application: routes, the API key, body limits, CORS, and the models.

Routes (the API surface the web page and other clients rely on):

* ``POST /v1/completions`` and ``POST /v1/chat/completions`` in the OpenAI shapes (see
  :mod:`textgen.serve.api`), streaming as server-sent events when ``"stream": true``;
* ``GET /v1/models``: ``{"object": "list", "data": [{"id", "object": "model", "created",
  "owned_by", "level", "cell", "layers", "units", "vocab_size", "parameters"}]}``;
* ``GET /health``: 503 ``{"status": "loading"}`` while the models load, then 200
  ``{"status": "ok"}`` (open without the API key);
* ``GET /metrics``: Prometheus text format;
* ``GET /`` serves ``static/index.html`` and ``GET /static/<file>`` the other files of
  that folder (open without the API key: the page holds no secret).

Models are loaded in a background thread after the server starts listening, so it
answers (``/health`` 503) within a fraction of a second whatever the models' size.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import threading
import time
import unicodedata
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request as HttpRequest
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from textgen.serve import api
from textgen.serve.api import ApiError, Request
from textgen.serve.batcher import Batcher, End, Failed, Job, QueueFull, Tokens
from textgen.serve.choices import ChoiceText
from textgen.serve.metrics import CONTENT_TYPE, Metrics

News = tuple[int, str, Any, "str | None"]  # choice index, delta, logprob entry, finish
STATIC = Path(__file__).resolve().parent / "static"
RETRY_AFTER = "1"
# the least time between two hand-overs of the decoding threads' events to the requests:
# each hand-over wakes every stream and writes to its socket once (a loopback send costs
# about as much CPU as a token's decoding step at 32 streams), so a stream gets the tokens
# of the steps of this interval in one write (each token still its own event)
DRAIN_INTERVAL = 0.004


@dataclass
class Settings:
    """What ``textgen serve``'s options set."""

    api_key: str | None = None
    max_tokens_limit: int = 4096
    max_batch: int = 64
    max_waiting: int = 256
    max_body_bytes: int = 1 << 20
    cors_origins: list[str] = field(default_factory=list)


@dataclass
class Loaded:
    """A model ready to serve: the numpy LM, its tokenizer and what /v1/models shows."""

    lm: Any
    tokenizer: Any
    info: dict[str, Any]


def load_run(path: Path) -> Loaded:
    """Load a run directory (checksums checked, no TensorFlow)."""
    from textgen.rundir import load_bundle

    bundle = load_bundle(path)
    return Loaded(bundle.lm, bundle.tokenizer, describe(bundle.lm, bundle.tokenizer))


def describe(lm: Any, tokenizer: Any) -> dict[str, Any]:
    """The model's sizes, for /v1/models."""
    params = sum(int(a.size) for key, a in lm.arrays().items() if key != "cell")
    return {
        "level": tokenizer.level,
        "cell": lm.cell,
        "layers": len(lm.layers),
        "units": lm.layers[0].units,
        "vocab_size": lm.vocab_size,
        "parameters": params,
    }


class Served:
    """One model being served: its generator (seed encoding) and its decoding loop."""

    def __init__(self, name: str, loaded: Loaded, settings: Settings, app: ServerState) -> None:
        from textgen.decoding.generate import Generator

        self.name = name
        self.loaded = loaded
        self.tokenizer = loaded.tokenizer
        self.generator = Generator(loaded.lm, loaded.tokenizer, warn=lambda _m: None)
        self.created = int(time.time())
        metrics = app.metrics
        self.batcher = Batcher(
            loaded.lm,
            app.deliver,
            max_batch=settings.max_batch,
            max_waiting=settings.max_waiting,
            on_step=metrics.batch.labels(name).observe,
            on_counts=lambda running, waiting: (
                metrics.running.labels(name).set(running),
                metrics.waiting.labels(name).set(waiting),
            ),
        )
        self.beams = asyncio.Semaphore(1)  # beam searches run one at a time, off the batch
        self.beams_waiting = 0


class ServerState:
    """Everything the routes share: settings, metrics, models, the event loop."""

    def __init__(self, models: dict[str, Callable[[], Loaded]], settings: Settings) -> None:
        self.loaders = models
        self.settings = settings
        self.metrics = Metrics()
        self.models: dict[str, Served] = {}
        self.ready = False
        self.load_error: str | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.on_load_error: Callable[[str], None] | None = None
        self._pending: list[tuple[Job, Any]] = []
        self._pending_lock = threading.Lock()
        self._scheduled = False
        self._drained = 0.0  # when the events were last handed over (time.monotonic)
        self.feeds: set[Feed] = set()  # the requests in flight (on the batch)

    def interrupt(self) -> None:
        """End every request in flight now (the shutdown timeout is near): each gets a 503
        (a stream, an error event and ``[DONE]``) and its jobs leave the batch."""
        for feed in list(self.feeds):
            feed.closing = True
            feed.error = "the server is shutting down; retry"
            feed.ready.set()
            for job in feed.prep.jobs:
                job.cancel()

    def deliver(self, events: list[tuple[Job, Any]]) -> None:
        """Called by a decoding thread: hand each job's event to its request (in order).

        Events wait in one list that a single callback on the event loop drains; a new
        callback is scheduled only when none is pending, so a model that steps faster
        than the loop runs does not flood it with one callback per step. A drain comes at
        least :data:`DRAIN_INTERVAL` after the one before (at once when that is longer
        ago), so the streams of a busy server are written to once per interval, not once
        per step."""
        if self.loop is None or not events:
            return
        with self._pending_lock:
            self._pending.extend(events)
            if self._scheduled:
                return
            self._scheduled = True
        wait = self._drained + DRAIN_INTERVAL - time.monotonic()
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is listening any more
            if wait <= 0:
                self.loop.call_soon_threadsafe(self._drain)
            else:
                self.loop.call_soon_threadsafe(self.loop.call_later, wait, self._drain)

    def _drain(self) -> None:
        self._drained = time.monotonic()
        with self._pending_lock:
            events, self._pending = self._pending, []
            self._scheduled = False
        for job, event in events:
            feed = getattr(job, "feed", None)
            if feed is not None:
                feed.handle(job.index, event)  # type: ignore[attr-defined]

    def load(self) -> None:
        """Load every model, then start their decoding loops (in a background thread)."""
        from textgen.errors import TextgenError

        try:
            served = {}
            for name, loader in self.loaders.items():
                served[name] = Served(name, loader(), self.settings, self)
        except (TextgenError, OSError, ValueError, KeyError) as err:
            self.load_error = str(err)
            if self.on_load_error is not None:
                self.on_load_error(self.load_error)
            return
        for model in served.values():
            model.batcher.start()
        self.models = served
        self.ready = True

    def stop(self) -> None:
        for model in self.models.values():
            model.batcher.stop()


# -- the app ----------------------------------------------------------------------------------
def create_app(
    models: dict[str, Callable[[], Loaded]],
    settings: Settings | None = None,
    *,
    on_load_error: Callable[[str], None] | None = None,
) -> Starlette:
    """The server for ``models`` (name → loader); ``app.state.server`` is its state."""
    settings = settings or Settings()
    state = ServerState(models, settings)
    state.on_load_error = on_load_error

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        state.loop = asyncio.get_running_loop()
        loader = threading.Thread(target=state.load, name="textgen-load", daemon=True)
        loader.start()
        try:
            yield
        finally:
            await asyncio.to_thread(loader.join)
            state.stop()

    routes = [
        Route("/v1/completions", _completions(state, chat=False), methods=["POST"]),
        Route("/v1/chat/completions", _completions(state, chat=True), methods=["POST"]),
        Route("/v1/models", _models(state), methods=["GET"]),
        Route("/health", _health(state), methods=["GET"]),
        Route("/metrics", _metrics(state), methods=["GET"]),
        Route("/", _index, methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC, check_dir=False), name="static"),
    ]
    # CORS outside the key guard, so that a 401 carries Access-Control-Allow-Origin (a
    # browser shows the 401, not a CORS failure); any request header is allowed for the
    # named origins (the openai JavaScript client sends x-stainless-* headers)
    middleware = []
    if settings.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=settings.cors_origins,
                allow_methods=["GET", "POST"],
                allow_headers=["*"],
            )
        )
    middleware.append(Middleware(_Guard, state=state))
    app = Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_error, ApiError: _api_error},
    )
    app.state.server = state
    return app


async def _http_error(_request: HttpRequest, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = {404: "not found", 405: "method not allowed"}.get(exc.status_code, str(exc.detail))
    return JSONResponse(api.error_body(exc.status_code, message), exc.status_code, exc.headers)


async def _api_error(_request: HttpRequest, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return _error(exc)


def _error(exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), exc.status, exc.headers)


class _Guard:
    """The API key (bearer token; /health, / and /static stay open) and the request
    counter by path and status (an ASGI middleware, so it sees streamed responses too)."""

    OPEN = ("/health", "/", "/favicon.ico")
    COUNTED = frozenset(
        ("/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics", "/")
    )

    def __init__(self, app: Any, state: ServerState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        counted = path if path in self.COUNTED else "other"  # a bounded set of label values
        status = [500]

        async def counting_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            key = self.state.settings.api_key
            open_path = path in self.OPEN or path.startswith("/static/")
            if key is not None and not open_path and scope["method"] != "OPTIONS":
                headers = dict(scope["headers"])
                # the header's raw bytes against the key's UTF-8 bytes (a non-ASCII key
                # matches what a client sends for it)
                scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
                if scheme.lower() != b"bearer" or not hmac.compare_digest(
                    token.strip(), key.encode("utf-8")
                ):
                    err = ApiError(
                        401,
                        "missing or wrong API key; send 'Authorization: Bearer KEY'",
                        code="invalid_api_key",
                        headers={"WWW-Authenticate": "Bearer"},
                    )
                    await _error(err)(scope, receive, counting_send)
                    return
            await self.app(scope, receive, counting_send)
        finally:
            self.state.metrics.requests.labels(counted, str(status[0])).inc()


async def _index(_request: HttpRequest) -> Response:
    page = STATIC / "index.html"
    if not page.is_file():
        raise ApiError(404, "the web page is not installed (textgen/serve/static/index.html)")
    return FileResponse(page)


def _health(state: ServerState) -> Callable[[HttpRequest], Any]:
    async def health(_request: HttpRequest) -> Response:
        if state.load_error is not None:
            return JSONResponse({"status": "error", "message": state.load_error}, 503)
        if not state.ready:
            return JSONResponse({"status": "loading"}, 503, {"Retry-After": RETRY_AFTER})
        return JSONResponse({"status": "ok"})

    return health


def _metrics(state: ServerState) -> Callable[[HttpRequest], Any]:
    async def metrics(_request: HttpRequest) -> Response:
        return Response(state.metrics.render(), media_type=CONTENT_TYPE)

    return metrics


def _models(state: ServerState) -> Callable[[HttpRequest], Any]:
    async def models(_request: HttpRequest) -> Response:
        _check_ready(state)
        data = [
            {"id": m.name, "object": "model", "created": m.created, "owned_by": "textgen"}
            | m.loaded.info
            for m in state.models.values()
        ]
        return JSONResponse({"object": "list", "data": data})

    return models


def _check_ready(state: ServerState) -> None:
    if not state.ready:
        message = "the models are still loading" if state.load_error is None else state.load_error
        raise ApiError(503, message, code="loading", headers={"Retry-After": RETRY_AFTER})


async def _read_body(request: HttpRequest, limit: int) -> bytes:
    """The body, or a 413 as soon as it is known to be over ``limit`` bytes."""
    declared = request.headers.get("content-length")
    too_big = ApiError(
        413, f"the request body is over the limit of {limit:,} bytes", code="body_too_large"
    )
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


# -- completions ------------------------------------------------------------------------------
@dataclass
class Prepared:
    """A checked request bound to its model, with one job and ``n`` choices per prompt."""

    req: Request
    model: Served
    seeds: list[np.ndarray]
    shown: list[str]
    started: float
    jobs: list[Job] = field(default_factory=list)
    choices: list[list[ChoiceText]] = field(default_factory=list)
    feed: Any = None

    @property
    def prompt_tokens(self) -> int:
        return sum(len(s) for s in self.seeds)


def _pick_model(state: ServerState, name: str | None) -> Served:
    if name is None or name == "":
        if len(state.models) == 1:
            return next(iter(state.models.values()))
        raise api.bad(
            "model", f"is required: this server serves {', '.join(state.models)}", "missing_field"
        )
    model = state.models.get(name)
    if model is None:
        raise ApiError(
            404,
            f"model {name!r} is not served here; served: {', '.join(state.models)}",
            param="model",
            code="model_not_found",
        )
    return model


def _prepare(state: ServerState, req: Request, started: float) -> Prepared:
    from textgen.errors import TextgenError

    model = _pick_model(state, req.model)
    seeds, shown = [], []
    for i, prompt in enumerate(req.prompts):
        where = "messages" if req.chat else ("prompt" if len(req.prompts) == 1 else f"prompt[{i}]")
        try:
            seeds.append(model.generator.encode_seed(prompt))
        except TextgenError as err:
            raise ApiError(422, f"{where}: {err}", param=where, code="invalid_prompt") from None
        shown.append(model.generator.seed_text(prompt))
    req.stop = [unicodedata.normalize("NFC", s) for s in req.stop]
    return Prepared(req, model, seeds, shown, started)


def _completions(state: ServerState, *, chat: bool) -> Callable[[HttpRequest], Any]:
    async def handler(request: HttpRequest) -> Response:
        started = time.monotonic()
        body = await _read_body(request, state.settings.max_body_bytes)
        data = api.parse_json(body)
        req = api.parse(
            data,
            chat=chat,
            max_tokens_limit=state.settings.max_tokens_limit,
            max_n=state.settings.max_batch,
        )
        _check_ready(state)
        prep = _prepare(state, req, started)
        if req.strategy == "beam":
            return await _beam(state, prep, request)
        _submit(state, prep)
        if req.stream:
            return StreamingResponse(
                _stream(state, prep),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        watch = asyncio.create_task(_cancel_on_disconnect(request, prep))
        try:
            async for _ in _run(state, prep):
                pass
        except ShuttingDown as err:
            headers = {"Retry-After": RETRY_AFTER}
            raise ApiError(503, str(err), code="shutting_down", headers=headers) from None
        except GenerationFailed as err:
            raise ApiError(500, str(err), code="generation_failed") from None
        finally:
            watch.cancel()
            state.feeds.discard(prep.feed)
            for job in prep.jobs:
                job.cancel()
        return JSONResponse(_response(prep))

    return handler


async def _cancel_on_disconnect(request: HttpRequest, prep: Prepared) -> None:
    """Cancel a non-streamed request's jobs when its client goes away (the body is read,
    so the next message is the disconnect): their rows leave the batch at the next step,
    or the queue, instead of decoding up to max_tokens for nobody."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            for job in prep.jobs:
                job.cancel()
            return


def _submit(state: ServerState, prep: Prepared) -> None:
    from textgen.decoding.sampling import sampler

    req, model = prep.req, prep.model
    pick = None
    if req.strategy == "sample":
        pick = sampler(req.temperature, req.top_k, req.top_p)
    for seed_ids, shown in zip(prep.seeds, prep.shown, strict=True):
        job = Job(
            seed_ids=seed_ids,
            n=req.n,
            max_tokens=req.max_tokens,
            pick=pick,
            rng=np.random.default_rng(req.seed),
            stop_id=model.tokenizer.eos_id,
            logprobs=req.logprobs,
            created=prep.started,
            mask=model.generator.syllables,
        )
        job.index = len(prep.jobs)  # type: ignore[attr-defined]
        prep.jobs.append(job)
        prep.choices.append([ChoiceText(model.tokenizer, shown, req.stop) for _ in range(req.n)])
    limit = model.batcher.max_waiting
    if len(prep.jobs) > limit:  # it could never be queued: not a 503 to retry forever
        raise api.bad(
            "prompt", f"at most {limit} prompts per request on this server (--max-waiting)"
        )
    try:
        model.batcher.submit_all(prep.jobs)  # all the prompts or none
    except QueueFull:
        raise ApiError(
            503,
            f"the server is busy: its queue of {limit} waiting prompts is full; retry later",
            code="queue_full",
            headers={"Retry-After": RETRY_AFTER},
        ) from None
    prep.feed = Feed(state, prep)
    state.feeds.add(prep.feed)
    for job in prep.jobs:  # events are handled from here on (none can be missed: the
        job.feed = prep.feed  # type: ignore[attr-defined]  # loop runs them after this)


class GenerationFailed(Exception):
    """The decoding loop failed for a job."""


class ShuttingDown(GenerationFailed):
    """The server stopped the request: its shutdown timeout is near."""


class Feed:
    """The news of one request, made on the event loop's thread as the decoding thread's
    events arrive (:meth:`handle`, called by :meth:`ServerState._drain`, no task per job
    and no queue per token), and handed to the request's coroutine in batches by
    :func:`_run`. A job counts as read (``job.taken``) only when its news is handed over,
    so the batcher parks a job whose client does not read."""

    def __init__(self, state: ServerState, prep: Prepared) -> None:
        self.prep = prep
        self.news: list[News] = []
        self.steps = [0] * len(prep.jobs)  # token events handled, not yet handed over
        self.first = [True] * len(prep.jobs)
        self.live = len(prep.jobs)
        self.error: str | None = None
        self.closing = False  # the server is shutting down (the error says so)
        self.ready = asyncio.Event()
        self.eos = prep.model.tokenizer.eos_id
        self.tokens = state.metrics.tokens.labels(prep.model.name)
        self.ttft = state.metrics.ttft.labels(prep.model.name)

    def handle(self, k: int, event: Any) -> None:
        try:
            self._handle(k, event)
        except Exception as err:  # a bug here must reach the client as an error, not a hang
            self.error = f"internal error: {err}"
        self.ready.set()

    def _handle(self, k: int, event: Any) -> None:
        job, choices, n = self.prep.jobs[k], self.prep.choices[k], self.prep.req.n
        news = self.news
        if isinstance(event, Tokens):
            self.steps[k] += 1
            if self.first[k]:
                self.ttft.observe(time.monotonic() - job.created)
                self.first[k] = False
            count = 0
            for row, choice in enumerate(choices):
                if choice.finish is not None:
                    continue
                token = int(event.ids[row])
                if token == self.eos:
                    choice.finish = "stop"
                    news.append((k * n + row, choice.flush(), None, "stop"))
                    continue
                count += 1
                entry = _entry(choice, token, event, row) if event.logprob is not None else None
                if choice.push(token):
                    if entry is not None:
                        entry = (*entry, choice.offsets[-1])  # where its text starts
                    choice.finish = "stop"
                    job.finish_row(row)
                    news.append((k * n + row, choice.flush(), entry, "stop"))
                else:
                    if entry is not None:
                        entry = (*entry, choice.offsets[-1])
                    news.append((k * n + row, choice.delta(), entry, None))
            self.tokens.inc(count)
        elif isinstance(event, End):
            self.live -= 1
            if event.reason == "cancelled":
                return
            for row, choice in enumerate(choices):
                if choice.finish is None:
                    choice.finish = "length"  # a stop the last token completed makes it "stop"
                    news.append((k * n + row, choice.flush(), None, choice.finish))
        elif isinstance(event, Failed):
            self.live -= 1
            self.error = event.message


async def _run(state: ServerState, prep: Prepared) -> AsyncIterator[list[News]]:
    """The request's news as it comes, merged over its jobs, in batches (a client that
    lags gets several steps at once): ``(choice index, delta text, logprob entry, finish
    reason or None)``; raises :class:`GenerationFailed` after the news before a failure."""
    feed = prep.feed
    while True:
        await feed.ready.wait()
        feed.ready.clear()
        news, feed.news = feed.news, []
        for k, job in enumerate(prep.jobs):
            job.taken += feed.steps[k]
            feed.steps[k] = 0
        if news:
            yield news
        if feed.error is not None:
            raise (ShuttingDown if feed.closing else GenerationFailed)(feed.error)
        if feed.live == 0 and not feed.news:  # news that came while the client was written
            return  # to is handed over first (``ready`` is set again for it)


def _entry(choice: ChoiceText, token: int, event: Tokens, row: int) -> Any:
    """``(token text, logprob, {alternative: logprob})`` when logprobs were asked for."""
    if event.logprob is None:
        return None
    top = {}
    if event.top_ids is not None:
        for tid, lp in zip(event.top_ids[row], event.top_logprob[row], strict=True):
            top[choice.token_text(int(tid))] = float(lp)
    entry = (choice.token_text(token), float(event.logprob[row]), top)
    choice.logprobs.append(entry)
    return entry


def _pieces(choice: ChoiceText) -> list[tuple[str, int]]:
    """Each token's piece of the final text and where it starts: the text from where the
    token's text began to where the next one's did (clipped to the text and kept in
    order), so the pieces joined are the text, spaces and recomposed syllables included."""
    text, entries = choice.text, choice.logprobs
    starts, at = [], 0
    for offset in choice.offsets[: len(entries)]:
        at = max(at, min(offset, len(text)))
        starts.append(at)
    ends = [*starts[1:], len(text)]
    return [(text[a:b], a) for a, b in zip(starts, ends, strict=True)]


def _logprobs_completion(choice: ChoiceText, base: int) -> dict[str, Any]:
    entries, pieces = choice.logprobs, _pieces(choice)
    return {
        "tokens": [piece for piece, _ in pieces],
        "token_logprobs": [e[1] for e in entries],
        "top_logprobs": [e[2] for e in entries],
        "text_offset": [base + at for _, at in pieces],
    }


def _logprobs_chat(entries: list[Any], tokens: list[str] | None = None) -> dict[str, Any]:
    def item(token: str, logprob: float) -> dict[str, Any]:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}

    tokens = tokens if tokens is not None else [e[0] for e in entries]
    return {
        "content": [
            item(token, e[1]) | {"top_logprobs": [item(t, lp) for t, lp in e[2].items()]}
            for token, e in zip(tokens, entries, strict=True)
        ]
    }


def _head(prep: Prepared, *, chunk: bool) -> dict[str, Any]:
    if not hasattr(prep, "id"):
        prep.id = ("chatcmpl-" if prep.req.chat else "cmpl-") + uuid.uuid4().hex  # type: ignore[attr-defined]
        prep.created = int(time.time())  # type: ignore[attr-defined]
    if prep.req.chat:
        kind = "chat.completion.chunk" if chunk else "chat.completion"
    else:
        kind = "text_completion"
    return {"id": prep.id, "object": kind, "created": prep.created, "model": prep.model.name}  # type: ignore[attr-defined]


def _all_choices(prep: Prepared) -> list[tuple[int, ChoiceText, str]]:
    out = []
    for k, choices in enumerate(prep.choices):
        for row, choice in enumerate(choices):
            out.append((k * prep.req.n + row, choice, prep.shown[k]))
    return out


def _completion_tokens(prep: Prepared) -> int:
    return sum(len(c.ids) for _, c, _ in _all_choices(prep))


def _response(prep: Prepared) -> dict[str, Any]:
    req = prep.req
    choices = []
    for index, choice, shown in _all_choices(prep):
        if req.chat:
            item: dict[str, Any] = {
                "index": index,
                "message": {"role": "assistant", "content": choice.text},
                "logprobs": (
                    _logprobs_chat(choice.logprobs, [p for p, _ in _pieces(choice)])
                    if req.logprobs is not None
                    else None
                ),
                "finish_reason": choice.finish,
            }
        else:
            prefix = choice.tokenizer.attach(shown, "") if req.echo else ""
            text = choice.tokenizer.attach(shown, choice.text) if req.echo else choice.text
            logprobs = None
            if req.logprobs is not None:
                logprobs = _logprobs_completion(choice, len(prefix))
            item = {
                "index": index,
                "text": text,
                "logprobs": logprobs,
                "finish_reason": choice.finish,
            }
        choices.append(item)
    return _head(prep, chunk=False) | {
        "choices": choices,
        "usage": api.usage(prep.prompt_tokens, _completion_tokens(prep)),
    }


def _sse(data: Any) -> bytes:
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return b"data: " + text.encode("utf-8") + b"\n\n"


def _chunk(prep: Prepared, index: int, text: str, entry: Any, finish: str | None) -> dict:
    req = prep.req
    if req.chat:
        delta = {"content": text} if text else {}
        item = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        if entry is not None:  # the token's string is the text this chunk carries
            item["logprobs"] = _logprobs_chat([entry], [text])
    else:
        item = {"index": index, "text": text, "logprobs": None, "finish_reason": finish}
        if entry is not None:
            item["logprobs"] = {
                "tokens": [text],  # the text this chunk carries (the pieces join to it)
                "token_logprobs": [entry[1]],
                "top_logprobs": [entry[2]],
                "text_offset": [entry[3]],  # no echo with logprobs: the text starts at 0
            }
    return _head(prep, chunk=True) | {"choices": [item]}


class _FastChunks:
    """The chunk of one new piece of text without logprobs, the stream's commonest event,
    written from a template: the same bytes as ``_sse(_chunk(...))``, at a fraction of the
    cost of building and encoding its dict for every token."""

    def __init__(self, prep: Prepared) -> None:
        head = json.dumps(_head(prep, chunk=True), ensure_ascii=False, separators=(",", ":"))
        self.start = b"data: " + head[:-1].encode("utf-8") + b',"choices":[{"index":'
        if prep.req.chat:
            self.middle, self.end = b',"delta":{"content":', b'},"logprobs":null,'
        else:
            self.middle, self.end = b',"text":', b',"logprobs":null,'
        self.end += b'"finish_reason":null}]}\n\n'

    def text(self, index: int, text: str) -> bytes:
        piece = json.dumps(text, ensure_ascii=False).encode("utf-8")
        return b"".join((self.start, str(index).encode(), self.middle, piece, self.end))


async def _stream(state: ServerState, prep: Prepared) -> AsyncIterator[bytes]:
    """The server-sent events of a streamed request; the jobs are cancelled when the
    client goes away (the generator is closed), so their rows leave at the next step."""
    req = prep.req
    try:
        for index, choice, shown in _all_choices(prep):
            if req.chat:
                first = _chunk(prep, index, "", None, None)
                first["choices"][0]["delta"] = {"role": "assistant", "content": ""}
                yield _sse(first)
            elif req.echo:
                yield _sse(_chunk(prep, index, choice.tokenizer.attach(shown, ""), None, None))
        try:
            fast = _FastChunks(prep)
            async for news in _run(state, prep):
                events = []
                for index, text, entry, finish in news:
                    if entry is not None:
                        events.append(_sse(_chunk(prep, index, text, entry, None)))
                    elif text:
                        events.append(fast.text(index, text))
                    if finish is not None:
                        events.append(_sse(_chunk(prep, index, "", None, finish)))
                if events:
                    yield b"".join(events)  # one write for all the steps that are ready
                # a fast model makes news faster than a client reads it: let the other
                # requests (and the disconnect check) run between steps
                await asyncio.sleep(0)
        except GenerationFailed as err:
            status, code = (
                (503, "shutting_down")
                if isinstance(err, ShuttingDown)
                else (500, "generation_failed")
            )
            yield b"event: error\n" + _sse(api.error_body(status, str(err), code=code))
            yield b"data: [DONE]\n\n"
            return
        if req.include_usage:
            usage = api.usage(prep.prompt_tokens, _completion_tokens(prep))
            yield _sse(_head(prep, chunk=True) | {"choices": [], "usage": usage})
        yield b"data: [DONE]\n\n"
    finally:
        state.feeds.discard(prep.feed)
        for job in prep.jobs:
            job.cancel()


class _ClientGone(Exception):
    """The client of a beam search went away: the search stops at its next step."""


async def _beam(state: ServerState, prep: Prepared, request: HttpRequest) -> Response:
    """A beam search runs outside the batch, one at a time per model, in a worker thread;
    a stream gets each beam's text as one chunk when the search ends. A client that goes
    away stops the search at its next step (and frees the model's beam slot)."""
    from textgen.decoding.generate import Strategy

    req, model = prep.req, prep.model
    gone = threading.Event()
    generator = model.generator

    def step(ids: np.ndarray, st: Any) -> Any:
        if gone.is_set():
            raise _ClientGone
        return generator.lm.step(ids, st)

    def search(k: int) -> Any:
        return generator.beam(
            prep.seeds[k],
            strategy=Strategy("beam", beam_width=req.beam_width, length_penalty=req.length_penalty),
            length=req.max_tokens,
            num=req.n,
            stop=req.stop[0] if len(req.stop) == 1 else None,
            step=step,
        )

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        gone.set()

    watcher = asyncio.create_task(watch())
    try:
        return await _beam_run(state, prep, search)
    except _ClientGone:
        return Response(status_code=499)  # nobody reads it (nginx's "client closed request")
    finally:
        watcher.cancel()


async def _beam_run(state: ServerState, prep: Prepared, search: Callable[[int], Any]) -> Response:
    req, model = prep.req, prep.model
    if model.beams_waiting >= state.settings.max_waiting:
        raise ApiError(
            503,
            "the server is busy with beam searches; retry later",
            code="queue_full",
            headers={"Retry-After": RETRY_AFTER},
        )
    model.beams_waiting += 1
    try:
        async with model.beams:
            for k in range(len(req.prompts)):
                decoded = await asyncio.to_thread(search, k)
                row_choices = []
                for ids in decoded.ids:
                    choice = ChoiceText(model.tokenizer, prep.shown[k], req.stop)
                    stopped = False
                    for token in ids:
                        if choice.push(int(token)):
                            stopped = True
                            break
                    short = len(ids) < req.max_tokens
                    choice.finish = "stop" if stopped or short else "length"
                    row_choices.append(choice)
                prep.choices.append(row_choices)
                state.metrics.tokens.labels(model.name).inc(sum(len(c.ids) for c in row_choices))
    finally:
        model.beams_waiting -= 1
    if not req.stream:
        return JSONResponse(_response(prep))

    async def events() -> AsyncIterator[bytes]:
        for index, choice, shown in _all_choices(prep):
            text = choice.text
            if req.chat:
                first = _chunk(prep, index, "", None, None)
                first["choices"][0]["delta"] = {"role": "assistant", "content": ""}
                yield _sse(first)
            elif req.echo:
                text = choice.tokenizer.attach(shown, text)
            yield _sse(_chunk(prep, index, text, None, None))
            yield _sse(_chunk(prep, index, "", None, choice.finish))
        if req.include_usage:
            usage = api.usage(prep.prompt_tokens, _completion_tokens(prep))
            yield _sse(_head(prep, chunk=True) | {"choices": [], "usage": usage})
        yield b"data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")
