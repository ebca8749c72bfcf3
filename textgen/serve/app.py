"""The Starlette application: its routes, the API key, CORS and the error handlers.

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

The work of the routes lives in the modules they call: :mod:`~textgen.serve.completions`
(the two completion routes, with :mod:`~textgen.serve.beam` for beam search) and
:mod:`~textgen.serve.runs` (the models, their loading, what the routes share); this module
wires them into one app.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request as HttpRequest
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from textgen.serve import api, completions
from textgen.serve.api import ApiError
from textgen.serve.metrics import CONTENT_TYPE
from textgen.serve.runs import RETRY_AFTER, Loaded, Service, Settings

STATIC = Path(__file__).resolve().parent / "static"


def create_app(
    models: dict[str, Callable[[], Loaded]],
    settings: Settings | None = None,
    *,
    on_load_error: Callable[[str], None] | None = None,
) -> Starlette:
    """The server for ``models`` (name → loader); ``app.state.server`` is its service."""
    settings = settings or Settings()
    service = Service(models, settings)
    service.on_load_error = on_load_error

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        service.loop = asyncio.get_running_loop()
        loader = threading.Thread(target=service.load, name="textgen-load", daemon=True)
        loader.start()
        try:
            yield
        finally:
            await asyncio.to_thread(loader.join)
            service.stop()

    routes = [
        Route("/v1/completions", completions.route(service, chat=False), methods=["POST"]),
        Route("/v1/chat/completions", completions.route(service, chat=True), methods=["POST"]),
        Route("/v1/models", _models(service), methods=["GET"]),
        Route("/health", _health(service), methods=["GET"]),
        Route("/metrics", _metrics(service), methods=["GET"]),
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
    middleware.append(Middleware(_Guard, service=service))
    app = Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_error, ApiError: _api_error},
    )
    app.state.server = service
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

    def __init__(self, app: Any, service: Service) -> None:
        self.app = app
        self.service = service

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
            key = self.service.settings.api_key
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
            self.service.metrics.requests.labels(counted, str(status[0])).inc()


async def _index(_request: HttpRequest) -> Response:
    page = STATIC / "index.html"
    if not page.is_file():
        raise ApiError(404, "the web page is not installed (textgen/serve/static/index.html)")
    return FileResponse(page)


def _health(service: Service) -> Callable[[HttpRequest], Any]:
    async def health(_request: HttpRequest) -> Response:
        if service.load_error is not None:
            return JSONResponse({"status": "error", "message": service.load_error}, 503)
        if not service.ready:
            return JSONResponse({"status": "loading"}, 503, {"Retry-After": RETRY_AFTER})
        failed = service.decoder_failure()
        if failed is not None:  # a decoding process died: this server cannot generate
            return JSONResponse({"status": "error", "message": failed}, 503)
        return JSONResponse({"status": "ok"})

    return health


def _metrics(service: Service) -> Callable[[HttpRequest], Any]:
    async def metrics(_request: HttpRequest) -> Response:
        return Response(service.metrics.render(), media_type=CONTENT_TYPE)

    return metrics


def _models(service: Service) -> Callable[[HttpRequest], Any]:
    async def models(_request: HttpRequest) -> Response:
        service.check_ready()
        data = [
            {"id": m.name, "object": "model", "created": m.created, "owned_by": "textgen"}
            | m.loaded.info
            for m in service.models.values()
        ]
        return JSONResponse({"object": "list", "data": data})

    return models
