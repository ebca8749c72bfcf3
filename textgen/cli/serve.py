"""``textgen serve``: the OpenAI-compatible HTTP server and its web page."""

from __future__ import annotations

import ipaddress
import time

import click

from textgen.cli.common import _friendly, main


@main.command()
@click.option(
    "--model",
    "models",
    multiple=True,
    help="Run directory to serve; repeat for several [default: runs/latest]. A request "
    "picks one by its folder name in the 'model' field.",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=int, help="Port (0: any free one).")
@click.option(
    "--api-key",
    default=None,
    envvar="TEXTGEN_API_KEY",
    help="Require 'Authorization: Bearer KEY' on the API (also $TEXTGEN_API_KEY).",
)
@click.option(
    "--max-tokens-limit",
    default=4096,
    show_default=True,
    type=int,
    help="Largest max_tokens a request may ask for.",
)
@click.option(
    "--max-batch",
    default=64,
    show_default=True,
    type=int,
    help="Rows decoded together per model (a request takes n rows).",
)
@click.option(
    "--max-waiting",
    default=256,
    show_default=True,
    type=int,
    help="Prompts that may wait for room; more get 503 with Retry-After.",
)
@click.option(
    "--max-body-bytes",
    default=1 << 20,
    show_default=True,
    type=int,
    help="Largest request body; a larger one gets 413.",
)
@click.option(
    "--cors-origin",
    "cors_origins",
    multiple=True,
    help="Allow cross-origin requests from this origin (repeatable; off by default).",
)
@click.option(
    "--shutdown-timeout",
    default=30.0,
    show_default=True,
    type=float,
    help="Seconds SIGTERM waits for the streams in flight to finish.",
)
@click.option(
    "--blas-threads",
    default=1,
    show_default=True,
    type=int,
    help="Threads of numpy's BLAS (0: its default). One leaves the other cores to the "
    "server's own threads.",
)
@click.option(
    "--native/--no-native",
    default=False,
    show_default=True,
    help="Decode LSTM runs with the compiled step split across the cores (needs numba, "
    "in the serve extra): about twice the numpy step's rate at batch 1 alone, but slower "
    "in a server on 2 cores, where its second thread has no core of its own. Its first "
    "start compiles it (about 25 s; cached).",
)
@click.option(
    "--decoder",
    type=click.Choice(["process", "thread"]),
    default="process",
    show_default=True,
    help="Where each model's decoding loop runs: a process of its own (its step never "
    "waits for the HTTP side's interpreter lock: at 32 streams on 2 cores, more tokens/s) "
    "or a thread of the server (one process, one copy of the weights in memory).",
)
@_friendly
def serve(
    models: tuple[str, ...],
    host: str,
    port: int,
    api_key: str | None,
    max_tokens_limit: int,
    max_batch: int,
    max_waiting: int,
    max_body_bytes: int,
    cors_origins: tuple[str, ...],
    shutdown_timeout: float,
    blas_threads: int,
    native: bool,
    decoder: str,
) -> None:
    """Serve trained runs over HTTP in the OpenAI completions API, with a web page.

    POST /v1/completions and /v1/chat/completions (streaming with "stream": true),
    GET /v1/models, /health, /metrics, and the page at /. Concurrent requests share one
    batched decoding step per model, run in a process of its own (--decoder). It
    listens on 127.0.0.1 unless --host says otherwise; use --api-key before listening
    anywhere else. SIGTERM or Ctrl-C stops
    accepting, lets the streams in flight finish (up to --shutdown-timeout) and exits 0.

    \b
    Examples:
      textgen serve --model runs/ko-toy
      textgen serve --model runs/shakespeare --native
      textgen serve --model runs/ko-toy --decoder thread
      curl -s localhost:8000/v1/completions -H 'Content-Type: application/json' \\
          -d '{"prompt": "경마장에", "max_tokens": 20, "temperature": 0}'
    """
    started = time.monotonic()
    from pathlib import Path

    from textgen.errors import DataError, UsageError
    from textgen.rundir import resolve_run

    for name, value, low in (
        ("--max-tokens-limit", max_tokens_limit, 1),
        ("--max-batch", max_batch, 1),
        ("--max-waiting", max_waiting, 1),
        ("--max-body-bytes", max_body_bytes, 1024),
    ):
        if value < low:
            raise UsageError(f"{name} must be at least {low}, got {value}")
    if not 0 <= port <= 65535:
        raise UsageError(f"--port must be in [0, 65535], got {port}")
    if not shutdown_timeout >= 0:
        raise UsageError(f"--shutdown-timeout must be >= 0, got {shutdown_timeout}")
    if blas_threads < 0:
        raise UsageError(f"--blas-threads must be >= 0, got {blas_threads}")
    if api_key is not None and not api_key.strip():
        raise UsageError("--api-key is empty")
    paths: dict[str, Path] = {}
    for given in models or (None,):
        path = resolve_run(given)
        name = path.resolve().name if path.name in ("latest", ".", "..") else path.name
        if name in paths:
            raise UsageError(
                f"two runs are named {name!r} ({paths[name]} and {path}); "
                "a request picks a run by its folder name"
            )
        paths[name] = path

    from functools import partial

    from textgen.serve.app import create_app
    from textgen.serve.runs import Settings, load_run
    from textgen.serve.server import bind, make_server

    if blas_threads:
        from textgen.decoding.blas import set_blas_threads

        set_blas_threads(blas_threads)  # without OpenBLAS (another BLAS) this does nothing
    settings = Settings(
        api_key=api_key,
        max_tokens_limit=max_tokens_limit,
        max_batch=max_batch,
        max_waiting=max_waiting,
        max_body_bytes=max_body_bytes,
        cors_origins=list(cors_origins),
        decode_process=decoder == "process",
        blas_threads=blas_threads,
    )
    failure: list[str] = []
    server = None

    def load_failed(message: str) -> None:  # called by the loading thread
        failure.append(message)
        if server is not None:
            server.should_exit = True

    app = create_app(
        {name: partial(load_run, path, native=native) for name, path in paths.items()},
        settings,
        on_load_error=load_failed,
    )
    sock = bind(host, port)
    bound = sock.getsockname()
    if api_key is None and not ipaddress.ip_address(bound[0].split("%")[0]).is_loopback:
        click.echo(
            f"warning: listening on {bound[0]}, beyond this machine, without --api-key: "
            "anyone who can reach it can use it",
            err=True,
        )
    shown_host = f"[{bound[0]}]" if ":" in bound[0] else bound[0]

    def listening() -> None:
        ms = (time.monotonic() - started) * 1000
        click.echo(
            f"serving {', '.join(paths)} on http://{shown_host}:{bound[1]} "
            f"(listening after {ms:.0f} ms; Ctrl-C to stop)",
            err=True,
        )

    server = make_server(app, shutdown_timeout=shutdown_timeout, on_started=listening)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    if failure:
        raise DataError(failure[0])
    click.echo("stopped", err=True)
