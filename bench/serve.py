"""Serving speed: concurrent streaming clients against ``textgen serve`` on loopback.

One 2x256 char LSTM (embedding 64, vocabulary 65: the sizes of ``bench/generate.py``)
with random weights (speed does not depend on what the weights say; greedy decoding of
random weights never meets an end token, so every stream runs its full length) is
written as a run directory and served by a ``textgen serve`` process. For each level of
concurrency, that many clients each stream one completion of ``--tokens`` tokens at the
same moment, through a minimal asyncio HTTP client (so the clients' own cost, on the
same 2 cores, stays small). Reported per level: aggregate tokens/s, p50 / p99 time to
first token, p99 time between tokens, and the fraction of the GEMM roofline: tokens/s x
FLOPs per token / sgemm FLOP/s, the sgemm rate measured in the same run (FLOPs per token
= 2·4H·(H+E) + 2·4H·2H + 2·H·V, the forward of ``bench/train_throughput.py``). Also
reported, for the same model in this process: the bare decoding step's rate at each
batch size (``NumpyLM.step`` plus an argmax), the ceiling the server's loop works under.

``--profile`` runs the batcher alone (no HTTP) with 32 jobs and prints where a step
spends its time. ``--profile-server`` serves the model from a child process whose
decoding thread (in that process: ``textgen serve --decoder thread``) and event-loop
thread each run under their own cProfile, drives 32
streaming clients from this process, and prints each thread's CPU time per token (also
measured once without the profiler, whose own cost inflates the Python parts) and the
functions that spend it.

    .venv/bin/python bench/serve.py                      # 1, 8, 32, 64 clients x 200 tokens
    .venv/bin/python bench/serve.py --clients 1 8 --tokens 50
    .venv/bin/python bench/serve.py --native             # on the compiled step (--native)
    .venv/bin/python bench/serve.py --decoder thread     # the decoding loop in a thread
    .venv/bin/python bench/serve.py --profile
    .venv/bin/python bench/serve.py --profile-server
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.machine import sgemm_gflops  # noqa: E402
from textgen.decoding.numpy_lm import NumpyLM, RNNWeights  # noqa: E402
from textgen.machine import machine_line  # noqa: E402

CHARS = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"  # 65
UNITS, EMBED, LAYERS = 256, 64, 2


def flops_per_token(vocab: int) -> float:
    h, e = UNITS, EMBED
    return 2 * 4 * h * (h + e) + 2 * 4 * h * (2 * h) + 2 * h * vocab


def model() -> tuple[NumpyLM, object]:
    from textgen.text import CharTokenizer

    tok = CharTokenizer.fit([CHARS], "char", eos=False)
    rng = np.random.default_rng(0)
    vocab = len(tok.vocab)
    layers, width = [], EMBED
    for _ in range(LAYERS):
        layers.append(
            RNNWeights(
                rng.normal(0, 0.3, (width, 4 * UNITS)).astype(np.float32),
                rng.normal(0, 0.1, (UNITS, 4 * UNITS)).astype(np.float32),
                np.zeros(4 * UNITS, np.float32),
            )
        )
        width = UNITS
    bias = np.zeros(vocab, np.float32)
    bias[:2] = -1e4  # never <pad> or <unk>: every token has a text
    lm = NumpyLM(
        "lstm",
        rng.normal(0, 1, (vocab, EMBED)).astype(np.float32),
        layers,
        rng.normal(0, 0.5, (UNITS, vocab)).astype(np.float32),
        bias,
    )
    return lm, tok


def write_run(folder: Path) -> Path:
    from textgen.rundir.names import RUN_FORMAT_VERSION

    lm, tok = model()
    run = folder / "char-2x256"
    run.mkdir()
    (run / "config.toml").write_text(
        f'[data]\nlevel = "char"\nmode = "stream"\n[model]\nembedding_dim = {EMBED}\n'
        f"units = {UNITS}\nlayers = {LAYERS}\n"
    )
    (run / "tokenizer.json").write_text(tok.to_json(), encoding="utf-8")
    lm.save(run / "weights.npz")
    (run / "metadata.json").write_text(json.dumps({"format_version": RUN_FORMAT_VERSION}))
    return run


def step_rates(batches: list[int], seconds: float = 0.5, native: bool = False) -> dict[int, float]:
    """Tokens/s of the bare batched step (NumpyLM.step + argmax) at each batch size
    (``native``: the compiled step, ``NumpyLM.use_native``)."""
    lm, _ = model()
    if native:
        lm.use_native()  # compiled (or loaded from numba's cache) there, before the timing
    out = {}
    for batch in batches:
        state = lm.initial_state(batch)
        ids = np.zeros(batch, np.int64)
        steps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            logits, state = lm.step(ids, state)
            ids = np.argmax(logits, axis=-1)
            steps += 1
        out[batch] = steps * batch / (time.perf_counter() - start)
    return out


async def stream_one(port: int, prompt: str, tokens: int) -> tuple[float, list[float]]:
    """One streamed completion; returns its start time and the arrival time of each token."""
    body = json.dumps(
        {"prompt": prompt, "max_tokens": tokens, "temperature": 0, "stream": True}
    ).encode()
    start = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    arrivals: list[float] = []
    while True:
        line = await reader.readline()
        if not line:
            break
        if line.startswith(b"data: "):
            if b'"finish_reason":null' in line:
                arrivals.append(time.perf_counter())
            elif line.startswith(b"data: [DONE]"):
                break
    writer.close()
    return start, arrivals


async def level(port: int, clients: int, tokens: int) -> dict[str, float]:
    prompts = [CHARS[10 + i % 50 : 14 + i % 50] for i in range(clients)]
    begin = time.perf_counter()
    results = await asyncio.gather(*(stream_one(port, p, tokens) for p in prompts))
    end = time.perf_counter()
    ttft = [arr[0] - start for start, arr in results if arr]
    gaps = [b - a for _, arr in results for a, b in itertools.pairwise(arr)]
    got = sum(len(arr) for _, arr in results)
    if got != clients * tokens:
        raise SystemExit(f"expected {clients * tokens} tokens, got {got}")
    return {
        "tokens_s": got / (end - begin),
        "ttft_p50": float(np.percentile(ttft, 50)),
        "ttft_p99": float(np.percentile(ttft, 99)),
        "tbt_p99": float(np.percentile(gaps, 99)) if gaps else 0.0,
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its children (the server's decoding
    processes) so far (from /proc)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as fh:
        children = [int(child) for child in fh.read().split()]
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return own + sum(cpu_seconds(child) for child in children)


def start_server(
    run: Path,
    max_batch: int,
    tokens: int,
    blas_threads: int,
    native: bool = False,
    decoder: str = "process",
) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "textgen", "serve", "--model", str(run), "--port", "0",
         "--max-batch", str(max_batch), "--max-tokens-limit", str(tokens),
         "--blas-threads", str(blas_threads), "--decoder", decoder,
         *(["--native"] if native else [])],
        stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    return proc, _wait_ready(proc)


def _wait_ready(proc: subprocess.Popen) -> int:
    """The port a server child printed on stderr, once its /health answers 200."""
    import urllib.request

    line = proc.stderr.readline()
    found = re.search(r"127\.0\.0\.1:(\d+)", line)
    if not found:
        proc.kill()
        raise SystemExit(f"the server did not start: {line}{proc.stderr.read()}")
    port = int(found.group(1))

    deadline = time.monotonic() + 180  # a first --native start compiles its step
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health") as r:
                if r.status == 200:
                    return port
        except OSError:
            time.sleep(0.02)
    proc.kill()
    raise SystemExit("the server did not become ready")


def profile(jobs: int = 32, steps: int = 300) -> None:
    """cProfile of the batcher alone: ``jobs`` greedy jobs decoded for ``steps`` steps."""
    import cProfile
    import pstats
    import threading

    from textgen.serve.batcher import Batcher, End, Job

    lm, _ = model()
    done = threading.Event()
    left = [jobs]

    def deliver(events: list) -> None:
        for _job, event in events:
            if isinstance(event, End):
                left[0] -= 1
                if left[0] == 0:
                    done.set()

    batcher = Batcher(lm, deliver, max_batch=jobs)
    for k in range(jobs):
        job = Job(np.array([k % 60 + 1]), 1, steps, None, np.random.default_rng(k), None)
        job.sent = job.taken = 0
        batcher.submit(job)
    prof = cProfile.Profile()
    start = time.perf_counter()
    prof.enable()
    while not done.is_set():  # run the loop's body here, in the profiled thread
        with batcher._cond:
            batcher._admit()
        batcher._step()
        for job in batcher._running:
            job.taken = job.sent  # a client that keeps up
    prof.disable()
    took = time.perf_counter() - start
    print(f"batcher alone, {jobs} jobs x {steps} tokens: {jobs * steps / took:,.0f} tokens/s")
    pstats.Stats(prof).sort_stats("tottime").print_stats(12)


def profiled_server(run: Path, out: Path, use_profiler: bool, native: bool = False) -> None:
    """The child of ``--profile-server``: ``textgen serve``'s app under uvicorn on a free
    port (printed on stderr); with ``use_profiler``, a cProfile of the decoding thread and
    one of the event loop, written to ``out`` on SIGTERM; ``native``: on the compiled
    step, loaded as ``textgen serve --native`` loads it."""
    import cProfile

    from textgen.decoding.blas import set_blas_threads
    from textgen.serve.app import create_app
    from textgen.serve.batcher import Batcher
    from textgen.serve.runs import load_run
    from textgen.serve.server import bind, make_server

    set_blas_threads(1)
    profiles = {}
    original = Batcher._loop

    def loop(self: Batcher) -> None:
        prof = cProfile.Profile() if use_profiler else None
        profiles["decoding thread"] = prof
        if prof is not None:
            prof.enable()
        try:
            original(self)
        finally:
            if prof is not None:
                prof.disable()

    Batcher._loop = loop  # type: ignore[method-assign]
    app = create_app({"char-2x256": lambda: load_run(run, native=native)})
    sock = bind("127.0.0.1", 0)
    server = make_server(app, shutdown_timeout=5)
    print(f"listening on 127.0.0.1:{sock.getsockname()[1]}", file=sys.stderr, flush=True)
    main_prof = cProfile.Profile() if use_profiler else None
    if main_prof is not None:
        main_prof.enable()
    server.run(sockets=[sock])
    if main_prof is not None:
        main_prof.disable()
    profiles["event loop"] = main_prof
    out.mkdir(exist_ok=True)
    for name, prof in profiles.items():
        if prof is not None:
            prof.dump_stats(str(out / f"{name.replace(' ', '_')}.prof"))


def thread_seconds(pid: int) -> dict[int, float]:
    """User + system CPU time of each thread of a process so far (from /proc)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            fields = (task / "stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()
            out[int(task.name)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def profile_server(
    clients: int = 32, tokens: int = 200, rounds: int = 3, native: bool = False
) -> None:
    """Where the server's CPU goes per token at ``clients`` streams (see the module doc):
    the event loop is the process's main thread, the decoding thread the other thread
    that spent the most, both measured from /proc over the timed rounds only."""
    import pstats

    with tempfile.TemporaryDirectory() as tmp:
        run = write_run(Path(tmp))
        for use in (False, True):
            out = Path(tmp) / ("prof" if use else "plain")
            proc = subprocess.Popen(
                [sys.executable, __file__, "--_child", str(run), str(out), str(int(use)),
                 str(int(native))],
                stderr=subprocess.PIPE, text=True, cwd=ROOT,
            )  # fmt: skip
            port = _wait_ready(proc)
            asyncio.run(level(port, 2, 10))  # warm up
            before = thread_seconds(proc.pid)
            for _ in range(rounds):
                asyncio.run(asyncio.wait_for(level(port, clients, tokens), 300))
            after = thread_seconds(proc.pid)
            proc.terminate()
            proc.wait(60)
            made = clients * tokens * rounds
            spent = {tid: after[tid] - before.get(tid, 0.0) for tid in after}
            loop_s = spent.pop(proc.pid)
            decode_s = max(spent.values(), default=0.0)
            label = "with cProfile" if use else "no profiler"
            print(f"\n{clients} clients x {tokens} tokens x {rounds}, {label}: CPU µs/token: "
                  f"decoding thread {decode_s / made * 1e6:.1f}, event loop "
                  f"{loop_s / made * 1e6:.1f}, other threads "
                  f"{(sum(spent.values()) - decode_s) / made * 1e6:.1f}")  # fmt: skip
            if use:
                for name in ("decoding_thread", "event_loop"):
                    print(f"\n--- {name} (tottime: wall seconds, the warm-up's 20 tokens too)")
                    stats = pstats.Stats(str(out / f"{name}.prof"))
                    stats.sort_stats("tottime").print_stats(18)


def main() -> None:
    if len(sys.argv) == 6 and sys.argv[1] == "--_child":
        profiled_server(
            Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4] == "1", sys.argv[5] == "1"
        )
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--profile-server", action="store_true")
    parser.add_argument(
        "--blas-threads", type=int, default=1, help="OpenBLAS threads, here and in the server"
    )
    parser.add_argument(
        "--native", action="store_true", help="the server and the bare step on the compiled step"
    )
    parser.add_argument(
        "--decoder",
        choices=["process", "thread"],
        default="process",
        help="textgen serve --decoder: the decoding loop in a process of its own or a thread",
    )
    args = parser.parse_args()
    if not 1 <= args.tokens <= 2000 or not all(1 <= c <= 256 for c in args.clients):
        raise SystemExit("--tokens must be in [1, 2000] and --clients in [1, 256]")

    print(machine_line())
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}; "
          f"python {platform.python_version()}, numpy {np.__version__}")  # fmt: skip
    if args.profile:
        profile()
        return
    if args.profile_server:
        profile_server(native=args.native)
        return
    from textgen.decoding.blas import set_blas_threads

    rates = {}
    for count in sorted({1, 2, os.cpu_count() or 1}):
        set_blas_threads(count)
        rates[count] = sgemm_gflops()
    set_blas_threads(args.blas_threads or os.cpu_count() or 1)
    gflops = max(rates.values())  # the most this machine gave, whatever the thread count
    lm, _ = model()
    fpt = flops_per_token(lm.vocab_size)
    roof = gflops * 1e9 / fpt
    shown = ", ".join(f"{rate:.0f} with {count}" for count, rate in rates.items())
    print(f"sgemm GFLOP/s (numpy, 1024^3, by BLAS threads): {shown}; {fpt / 1e6:.2f} MFLOP "
          f"per token; roofline {roof:,.0f} tokens/s; server and bare step with "
          f"{args.blas_threads or 'default'} BLAS threads; "
          f"decoder in a {args.decoder}")  # fmt: skip
    bare = step_rates(sorted(set(args.clients)), native=args.native)
    with tempfile.TemporaryDirectory() as tmp:
        run = write_run(Path(tmp))
        proc, port = start_server(
            run,
            max(args.clients),
            args.tokens,
            args.blas_threads,
            native=args.native,
            decoder=args.decoder,
        )
        try:
            asyncio.run(level(port, 2, 10))  # warm up
            print(f"\n{args.tokens} tokens per client, greedy, streamed over loopback\n")
            print(
                "| clients | tokens/s | roofline | TTFT p50 | TTFT p99 | TBT p99 | bare step "
                "| CPU µs/token server, clients |"
            )
            print("|---:|---:|---:|---:|---:|---:|---:|---:|")
            for clients in args.clients:
                server_cpu, client_cpu = cpu_seconds(proc.pid), time.process_time()
                r = asyncio.run(asyncio.wait_for(level(port, clients, args.tokens), 300))
                made = clients * args.tokens / 1e6
                server_cpu = (cpu_seconds(proc.pid) - server_cpu) / made
                client_cpu = (time.process_time() - client_cpu) / made
                print(
                    f"| {clients} | {r['tokens_s']:,.0f} | {r['tokens_s'] / roof:.1%} | "
                    f"{r['ttft_p50'] * 1e3:.0f} ms | {r['ttft_p99'] * 1e3:.0f} ms | "
                    f"{r['tbt_p99'] * 1e3:.1f} ms | {bare[clients]:,.0f} | "
                    f"{server_cpu:.0f}, {client_cpu:.0f} |",
                    flush=True,
                )
        finally:
            proc.terminate()
            proc.wait(30)
    print(f"\nload average after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
