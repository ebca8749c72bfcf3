"""Running the app under uvicorn: a socket bound before the server starts (so a port in
use is one line, not a log), and a graceful stop on SIGTERM or Ctrl-C.

On SIGTERM uvicorn stops accepting connections, lets the responses in flight finish
(streams included, up to ``shutdown_timeout`` seconds), then the decoding loops stop and
the process exits 0. uvicorn re-raises the signal once it has shut down, which would
turn a clean stop into a kill; :class:`_Server` keeps the signal handling and drops
that.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn

from textgen.errors import UsageError

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _Server(uvicorn.Server):
    on_started: Callable[[], None] | None = None
    on_deadline: Callable[[], None] | None = None

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and self.on_started is not None:
            self.on_started()

    async def shutdown(self, sockets: Any = None) -> None:
        """uvicorn's shutdown, with ``on_deadline`` called a little before its graceful
        timeout cancels the responses in flight, so that they can end properly (a
        stream with an error event and ``[DONE]``, a request with a 503) instead of
        being cut off."""
        timeout = self.config.timeout_graceful_shutdown or 0.0
        handle = None
        if self.on_deadline is not None:
            early = timeout - min(0.5, timeout / 2)
            handle = asyncio.get_running_loop().call_later(max(0.0, early), self.on_deadline)
        try:
            await super().shutdown(sockets=sockets)
        finally:
            if handle is not None:
                handle.cancel()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: any free port), or a one-line error."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise UsageError(f"--host {host}: {err.strerror}") from None
    family, kind, proto, _name, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as err:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {err.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def make_server(
    app: Any, *, shutdown_timeout: float = 30.0, on_started: Callable[[], None] | None = None
) -> _Server:
    """A uvicorn server for ``app``; ``server.run(sockets=[sock])`` serves until a signal
    or until ``server.should_exit`` is set (as a model that fails to load does). For an
    app of :func:`~textgen.serve.app.create_app`, the requests still running when the
    shutdown timeout is near are ended with a 503 (streams: an error event, ``[DONE]``)."""
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=shutdown_timeout,
        lifespan="on",
    )
    server = _Server(config)
    server.on_started = on_started
    state = getattr(getattr(app, "state", None), "server", None)
    server.on_deadline = getattr(state, "interrupt", None)
    return server
