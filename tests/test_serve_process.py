"""``textgen serve`` as a process: it starts in well under a second without importing
TensorFlow, its option errors are one line, and SIGTERM stops accepting, lets the
stream in flight finish and exits 0."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from tests.test_serve_support import char_run
from textgen.cli import main

ROOT = Path(__file__).resolve().parent.parent
TEXTGEN = [sys.executable, "-m", "textgen"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return char_run(tmp_path_factory.mktemp("serve") / "chars")


def _start(*args: str, **popen: Any) -> tuple[subprocess.Popen, str]:
    """Start ``textgen serve --port 0 ARGS`` (``popen``: more ``Popen`` options); return
    it and its URL (from its first line)."""
    proc = subprocess.Popen(
        [*TEXTGEN, "serve", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        **popen,
    )
    seen = ""
    for _ in range(3):  # a warning may come first
        line = proc.stderr.readline()
        seen += line
        found = re.search(r"on (http://\S+) \(listening after (\d+) ms", line)
        if found is not None:
            proc.seen = seen  # type: ignore[attr-defined]
            return proc, found.group(1)
    proc.kill()
    raise AssertionError(f"no listening line: {seen!r} {proc.stderr.read()}")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` and its children (its decoding
    processes) so far (Linux /proc; 0 elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            fields = fh.read().rpartition(")")[2].split()
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as fh:
            children = [int(child) for child in fh.read().split()]
    except OSError:
        return 0.0
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    return own + sum(_cpu_seconds(child) for child in children)


def _wait_ready(url: str) -> None:
    deadline = time.monotonic() + 60  # a wait, not a timing
    while httpx.get(url + "/health").status_code != 200:
        assert time.monotonic() < deadline, "the server never became ready"
        time.sleep(0.01)


def test_starts_fast_without_tensorflow(run_dir: Path) -> None:
    started = time.monotonic()
    proc, url = _start("--model", str(run_dir))
    try:
        listening = time.monotonic() - started
        while httpx.get(url + "/health").status_code != 200:
            time.sleep(0.01)
        ready = time.monotonic() - started
        cpu = _cpu_seconds(proc.pid)
        print(f"listening after {listening:.3f} s, ready after {ready:.3f} s (process start), "
              f"{cpu:.3f} s of CPU")  # fmt: skip
        # the start's cost is its CPU time, which other work on the machine does not change
        # (its wall time does: ~0.5 s on 2 busy cores, over 3 s once at load 8)
        assert cpu < 1.5, f"the server used {cpu:.2f} s of CPU to start"
        assert ready < 30.0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    code = (
        "import sys, threading, httpx\n"
        "from textgen.serve.app import create_app\n"
        "from textgen.serve.runs import load_run\n"
        "from textgen.serve.server import bind, make_server\n"
        f"app = create_app({{'chars': lambda: load_run({str(run_dir)!r})}})\n"
        "sock = bind('127.0.0.1', 0); url = 'http://127.0.0.1:%d' % sock.getsockname()[1]\n"
        "server = make_server(app)\n"
        "threading.Thread(target=server.run, kwargs={'sockets': [sock]}, daemon=True).start()\n"
        "import time\n"
        "while True:\n"
        "    try:\n"
        "        if httpx.get(url + '/health').status_code == 200: break\n"
        "    except httpx.TransportError: pass\n"
        "    time.sleep(0.01)\n"
        "r = httpx.post(url + '/v1/completions', json={'prompt': 'ab', 'stream': True})\n"
        "assert r.status_code == 200 and r.text.endswith('data: [DONE]\\n\\n'), r.text\n"
        "server.should_exit = True\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_sigterm_finishes_the_stream_in_flight_and_exits_0(run_dir: Path) -> None:
    proc, url = _start("--model", str(run_dir), "--max-tokens-limit", "100000")
    _wait_ready(url)
    body = {"prompt": "a", "max_tokens": 20000, "temperature": 0, "stream": True}
    with (
        httpx.Client(timeout=30) as client,
        client.stream("POST", url + "/v1/completions", json=body) as r,
    ):
        lines = r.iter_lines()
        first = next(lines)
        assert first.startswith("data: ")
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        with pytest.raises(httpx.TransportError):
            httpx.get(url + "/health", timeout=2)  # no longer accepting
        rest = [line for line in lines if line.startswith("data: ")]
    assert rest[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in [first, *rest[:-1]]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    # the whole stream, more than the sockets hold: the server kept generating after SIGTERM
    assert sum(bool(c["choices"][0]["text"]) for c in chunks) == 20000
    assert proc.wait(15) == 0
    err = proc.stderr.read()
    assert "Traceback" not in err and err.strip().endswith("stopped")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-batch", "0"], "error: --max-batch must be at least 1, got 0"),
        (["--port", "70000"], "error: --port must be in [0, 65535], got 70000"),
        (["--api-key", " "], "error: --api-key is empty"),
        (["--blas-threads", "-1"], "error: --blas-threads must be >= 0, got -1"),
        (["--model", "/nonexistent/run"], "error: run directory not found: /nonexistent/run"),
    ],
)
def test_option_errors_are_one_line(run_dir: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["serve", "--model", str(run_dir), *args])
    assert result.exit_code != 0
    assert result.output.strip() == message


def test_port_in_use_is_one_line(run_dir: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(main, ["serve", "--model", str(run_dir), "--port", str(port)])
    assert result.exit_code != 0
    assert result.output.strip() == (
        f"error: cannot listen on 127.0.0.1:{port}: Address already in use"
    )


def test_a_run_that_fails_to_load_is_one_line(tmp_path: Path, run_dir: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.toml", "tokenizer.json", "metadata.json"):
        (broken / name).write_bytes((run_dir / name).read_bytes())
    (broken / "weights.npz").write_bytes(b"not a zip")
    proc = subprocess.run(
        [*TEXTGEN, "serve", "--port", "0", "--model", str(broken)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
        env=os.environ | {"PYTHONWARNINGS": "ignore"},
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith("serving broken on http://127.0.0.1:")
    assert len(lines) == 2 and lines[1].startswith("error: ") and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "settings",
    [
        {"strategy": "greedy"},
        {"strategy": "sample", "temperature": 0.8, "top_k": 10, "top_p": 0.9, "seed": 5},
        {"strategy": "sample", "temperature": 1.3, "seed": 11, "stop": "e"},
    ],
    ids=["greedy", "sample-topk-topp", "sample-stop"],
)
def test_same_text_as_textgen_generate(run_dir: Path, settings: dict) -> None:
    """A request gives the text `textgen generate` prints for the same settings."""
    from tests.test_serve_support import LiveServer

    args = ["generate", "--model", str(run_dir), "--seed", "the ", "--length", "60",
            "--strategy", settings["strategy"]]  # fmt: skip
    options = {"temperature": "--temperature", "top_k": "--top-k", "top_p": "--top-p",
               "seed": "--rng-seed", "stop": "--stop"}  # fmt: skip
    for key, option in options.items():
        if key in settings:
            args += [option, str(settings[key])]
    cli = CliRunner().invoke(main, args)
    assert cli.exit_code == 0, cli.output
    server = LiveServer({"chars": run_dir})
    try:
        body = {"prompt": "the ", "max_tokens": 60, "echo": True} | settings
        r = httpx.post(server.url + "/v1/completions", json=body, timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["text"] == cli.output[:-1]  # print's newline
    finally:
        server.close()


def test_listening_beyond_loopback_without_a_key_warns(run_dir: Path) -> None:
    proc, _url = _start("--model", str(run_dir), "--host", "0.0.0.0")
    try:
        assert proc.seen.startswith(  # type: ignore[attr-defined]
            "warning: listening on 0.0.0.0, beyond this machine, without --api-key"
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    proc, _url = _start("--model", str(run_dir))  # loopback: no warning
    try:
        assert proc.seen.startswith("serving chars on http://127.0.0.1:")  # type: ignore[attr-defined]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0


def test_native_serves_the_same_greedy_text_on_the_compiled_step(run_dir: Path) -> None:
    """``--native``: /v1/models says the run decodes on the compiled step once it is
    ready (its first start compiles it: /health is 503 meanwhile), and greedy text is
    the numpy step's (the two agree to float32 rounding; this model has no near-tie)."""
    pytest.importorskip("numba", reason="--native needs numba (the serve extra)")
    cli = CliRunner().invoke(
        main, ["generate", "--model", str(run_dir), "--seed", "the ", "--length", "60",
               "--strategy", "greedy"],
    )  # fmt: skip
    assert cli.exit_code == 0, cli.output
    proc, url = _start("--model", str(run_dir), "--native")
    try:
        deadline = time.monotonic() + 300
        while httpx.get(url + "/health", timeout=30).status_code != 200:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"not ready: {proc.stderr.read()}")
            time.sleep(0.1)
        models = httpx.get(url + "/v1/models", timeout=30).json()["data"]
        assert [m["step"] for m in models] == ["native"]
        body = {"prompt": "the ", "max_tokens": 60, "echo": True, "temperature": 0}
        r = httpx.post(url + "/v1/completions", json=body, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["text"] == cli.output[:-1]
    finally:
        proc.terminate()
        assert proc.wait(timeout=60) == 0
