"""The decoding loop in a process of its own (``textgen serve``'s default, ``--decoder
process``): the same tokens as the in-process batcher, a request's output independent of
its neighbours, a closed stream freeing its row, a full queue and a client that reads
nothing handled as in a thread, and a decoding process that cannot load or that dies
reported, never a hang."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.test_serve_process import _start, _wait_ready
from tests.test_serve_support import LiveServer, char_run
from textgen.decoding.sampling import sampler
from textgen.serve.batcher import Batcher, End, Job, QueueFull, Tokens
from textgen.serve.runs import Service, Settings, load_run
from textgen.serve.worker import DecodingProcess, _Live


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return char_run(tmp_path_factory.mktemp("worker") / "chars", units=32, layers=2)


@pytest.fixture(scope="module")
def live(run_dir: Path):
    server = LiveServer(
        {"chars": run_dir}, Settings(max_tokens_limit=10_000_000, decode_process=True)
    )
    yield server
    server.close()


def _jobs() -> list[Job]:
    """Greedy, seeded sampling, two rows, logprobs, and an end token to stop at."""
    common = {"max_tokens": 40, "stop_id": None, "created": 0.0}
    return [
        Job(np.array([3, 4, 5]), 1, pick=None, rng=np.random.default_rng(0), **common),
        Job(np.array([7]), 1, pick=sampler(0.9, 5, 0.95), rng=np.random.default_rng(3), **common),
        Job(np.array([8, 9]), 2, pick=sampler(1.2), rng=np.random.default_rng(4), **common),
        Job(np.array([2]), 1, pick=None, rng=np.random.default_rng(0), logprobs=2, **common),
        Job(np.array([6]), 1, pick=None, rng=np.random.default_rng(0), **common | {"stop_id": 10}),
    ]


def _decode(batcher, jobs: list[Job]) -> dict[int, list]:
    """Every event of ``jobs`` through ``batcher``, per job: ids (and logprobs) per step."""
    got: dict[int, list] = {k: [] for k in range(len(jobs))}
    index = {id(job): k for k, job in enumerate(jobs)}
    ended = threading.Event()
    left = [len(jobs)]

    def deliver(events):
        for job, event in events:
            k = index[id(job)]
            if isinstance(event, Tokens):
                lp = None if event.logprob is None else np.asarray(event.logprob).tolist()
                got[k].append((list(map(int, event.ids)), lp))
                job.taken += 1  # a client that keeps up
            else:
                got[k].append(event)
                left[0] -= 1
                if left[0] == 0:
                    ended.set()

    batcher.deliver = deliver
    batcher.start()
    try:
        batcher.submit_all(jobs)
        assert ended.wait(60), "the jobs never ended"
    finally:
        batcher.stop()
    return got


def test_same_events_as_the_batcher_in_this_process(run_dir: Path) -> None:
    loaded = load_run(run_dir)
    here = _decode(Batcher(loaded.lm, None, max_batch=8), _jobs())  # type: ignore[arg-type]
    loader = partial(load_run, run_dir)
    there = _decode(DecodingProcess(loader, loaded.lm, None, max_batch=8), _jobs())  # type: ignore[arg-type]
    assert there == here
    assert len(here[0]) == 41 and here[0][-1] == End("length")  # 40 tokens, then its end
    assert here[3][0][1] is not None  # the logprobs came through
    assert all(len(ids) == 2 for ids, _ in here[2][:-1])


@pytest.mark.parametrize(
    "target",
    [
        {"prompt": "the cat", "max_tokens": 50, "temperature": 0},
        {"prompt": "a b", "max_tokens": 50, "temperature": 0.8, "top_k": 9, "seed": 77},
    ],
    ids=["greedy", "seeded-sample"],
)
def test_same_output_alone_and_among_31_others(live: LiveServer, target: dict) -> None:
    def post(body: dict) -> list:
        r = httpx.post(live.url + "/v1/completions", json={"model": "chars"} | body, timeout=300)
        assert r.status_code == 200, r.text
        return r.json()["choices"]

    alone = post(target)
    with ThreadPoolExecutor(32) as pool:
        others = [
            pool.submit(
                post,
                {
                    "prompt": "xyz"[: 1 + k % 3],
                    "max_tokens": 3_000 + k,
                    "temperature": 0.5 + k / 40,
                    "seed": k,
                },
            )
            for k in range(31)
        ]
        deadline = time.monotonic() + 120  # a wait, not a timing
        while live.metric("textgen_requests_running", model="chars") < 31:
            assert time.monotonic() < deadline, "the 31 neighbours never ran together"
            time.sleep(0.005)
        mine = pool.submit(post, target).result()
        for f in others:
            f.result()
    assert [c["text"] for c in mine] == [c["text"] for c in alone]
    assert len(alone[0]["text"]) > 10


def test_disconnect_frees_the_row(live: LiveServer) -> None:
    body = {"model": "chars", "prompt": "a", "max_tokens": 900_000, "temperature": 0}
    body["stream"] = True
    with (
        httpx.Client(timeout=30) as client,
        client.stream("POST", live.url + "/v1/completions", json=body) as r,
    ):
        lines = r.iter_lines()
        assert any(next(lines).startswith("data: ") for _ in range(6))
        deadline = time.monotonic() + 30  # a wait: the count comes from the child
        while live.metric("textgen_requests_running", model="chars") != 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    deadline = time.monotonic() + 30
    while live.metric("textgen_requests_running", model="chars") != 0:
        assert time.monotonic() < deadline, "the row of a closed stream was not freed"
        time.sleep(0.02)


def test_a_token_is_handed_over_after_the_counts_of_its_message() -> None:
    """A client that reads its first token may send its next request at once: by then the
    queue's bound must count its job as running, not waiting (a 503 with room)."""
    seen: list[int] = []
    process = DecodingProcess(lambda: None, None, lambda events: seen.append(process.waiting))
    process.max_waiting = 1
    job = Job(np.array([3]), 1, 10, None, np.random.default_rng(0), None)
    process._live[0] = _Live(job, 0, False, [False])
    process._submitted = 1  # sent; the child's last count had it waiting
    process._waiting, process._seen = 1, 1
    process._take(("events", [(0, [5])], [1], (1, 0, 1)))  # admitted, stepped: one token
    assert seen == [0]


def test_full_queue_is_503_and_a_client_that_reads_nothing_is_parked(run_dir: Path) -> None:
    settings = Settings(
        max_batch=1, max_waiting=1, max_tokens_limit=10_000_000, decode_process=True
    )
    server = LiveServer({"chars": run_dir}, settings)
    long = {"model": "chars", "prompt": "a", "max_tokens": 10_000_000, "temperature": 0}
    try:
        with (
            httpx.Client(timeout=30) as c1,
            httpx.Client(timeout=30) as c2,
            c1.stream("POST", server.url + "/v1/completions", json=long | {"stream": True}) as r1,
        ):
            lines = r1.iter_lines()  # kept: a dropped iterator closes the connection
            next(lines)
            with c2.stream(
                "POST", server.url + "/v1/completions", json=long | {"stream": True}
            ) as r2:  # its headers come at once; it waits in the queue (1 place)
                assert r2.status_code == 200, r2.read()
                deadline = time.monotonic() + 30  # a wait, not a timing
                while server.metric("textgen_requests_waiting", model="chars") != 1:
                    assert time.monotonic() < deadline
                    time.sleep(0.01)
                r3 = httpx.post(server.url + "/v1/completions", json=long)
                assert r3.status_code == 503 and r3.headers["retry-after"] == "1"
                assert r3.json()["error"]["code"] == "queue_full"
                # r1 reads nothing: once its job is far enough ahead of what this side
                # took, the child parks it and the tokens stop coming
                made = [-1.0, server.metric("textgen_tokens_generated_total", model="chars")]
                deadline = time.monotonic() + 60
                while made[-1] != made[-2]:
                    assert time.monotonic() < deadline, "a job far ahead was not parked"
                    time.sleep(0.5)
                    made.append(server.metric("textgen_tokens_generated_total", model="chars"))
                assert made[-1] < 1_000_000
                # r1 reads again: the child hears what it took, and the job goes on
                for _ in range(5_000):
                    next(lines)
                deadline = time.monotonic() + 60
                while server.metric("textgen_tokens_generated_total", model="chars") <= made[-1]:
                    assert time.monotonic() < deadline, (
                        "a parked job whose client read stayed parked"
                    )
                    time.sleep(0.05)
    finally:
        server.close()


def test_a_killed_decoding_process_fails_its_streams_and_what_comes_after(run_dir: Path) -> None:
    settings = Settings(max_tokens_limit=10_000_000, decode_process=True)
    server = LiveServer({"chars": run_dir}, settings)
    body = {"model": "chars", "prompt": "a", "max_tokens": 9_000_000, "temperature": 0}
    try:
        with httpx.stream(
            "POST", server.url + "/v1/completions", json=body | {"stream": True}, timeout=30
        ) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data: ")
            os.kill(server.state.models["chars"].batcher._proc.pid, signal.SIGKILL)
            rest = list(lines)
        events = [line[6:] for line in rest if line.startswith("data: ")]
        assert "event: error" in rest and events[-1] == "[DONE]"
        message = json.loads(events[-2])["error"]["message"]
        assert "decoding process ended" in message
        after = httpx.post(server.url + "/v1/completions", json=body | {"max_tokens": 5})
        assert after.status_code == 500 and "decoding process ended" in after.text
        health = httpx.get(server.url + "/health")
        assert health.status_code == 503 and "decoding process ended" in health.json()["message"]
    finally:
        server.close()


class _FailsInTheChild:
    """A loader that works in the process that made it and fails in any other."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir, self.parent = run_dir, os.getpid()

    def __call__(self):
        if os.getpid() != self.parent:
            raise ValueError("weights.npz: injected failure in the decoding process")
        return load_run(self.run_dir)


def test_a_model_the_decoding_process_cannot_load_is_a_load_error(run_dir: Path) -> None:
    service = Service({"chars": _FailsInTheChild(run_dir)}, Settings(decode_process=True))
    service.load()
    assert not service.ready
    assert service.load_error == "weights.npz: injected failure in the decoding process"


def test_the_cli_serves_with_either_decoder(run_dir: Path) -> None:
    texts = []
    for decoder in ("process", "thread"):
        proc, url = _start("--model", str(run_dir), "--decoder", decoder)
        try:
            _wait_ready(url)
            body = {"prompt": "the ", "max_tokens": 12, "temperature": 0}
            r = httpx.post(url + "/v1/completions", json=body, timeout=30)
            assert r.status_code == 200 and len(r.json()["choices"][0]["text"]) == 12
            texts.append(r.json()["choices"][0]["text"])
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
    assert texts[0] == texts[1]


def test_a_loader_that_cannot_be_pickled_is_a_load_error(run_dir: Path) -> None:
    service = Service({"chars": lambda: load_run(run_dir)}, Settings(decode_process=True))
    service.load()
    assert not service.ready
    assert "cannot be sent to a decoding process" in service.load_error
    assert "--decoder thread" in service.load_error


def _events_until_ended(jobs: list[Job]):
    """A ``deliver`` that counts ``jobs``' ends, and the event set when all have ended."""
    ended, left = threading.Event(), [len(jobs)]

    def deliver(events):
        for job, event in events:
            if isinstance(event, Tokens):
                job.taken += 1
            else:
                left[0] -= 1
                if left[0] == 0:
                    ended.set()

    return deliver, ended


def test_the_queue_bound_counts_jobs_the_child_has_not_reported_yet(run_dir: Path) -> None:
    loaded = load_run(run_dir)
    common = {"n": 1, "pick": None, "rng": np.random.default_rng(0), "stop_id": None}
    jobs = [Job(np.array([3]), max_tokens=10_000_000, **common) for _ in range(3)]
    deliver, _ = _events_until_ended(jobs)
    decoder = DecodingProcess(
        partial(load_run, run_dir), loaded.lm, deliver, max_batch=1, max_waiting=1
    )
    decoder.start()
    try:
        decoder.submit(jobs[0])
        deadline = time.monotonic() + 30  # a wait: the child reports it running
        while decoder.running != 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        decoder.submit(jobs[1])  # the one waiting place, before the child says so
        with pytest.raises(QueueFull):
            decoder.submit(jobs[2])
    finally:
        for job in jobs:
            job.cancel()
        decoder.stop()


def test_submitting_never_waits_for_a_child_that_does_not_read(run_dir: Path) -> None:
    """The child stopped (SIGSTOP) while prompts bigger than the pipe's buffer are
    submitted: each submit returns at once (a thread of its own writes to the pipe), and
    once the child goes on, every job ends."""
    loaded = load_run(run_dir)
    common = {"n": 1, "pick": None, "rng": np.random.default_rng(0), "stop_id": None}
    jobs = [Job(np.full(20_000, 3), max_tokens=5, **common) for _ in range(8)]  # 160 kB each
    deliver, ended = _events_until_ended(jobs)
    decoder = DecodingProcess(partial(load_run, run_dir), loaded.lm, deliver, max_batch=8)
    decoder.start()
    pid = decoder._proc.pid
    try:
        os.kill(pid, signal.SIGSTOP)
        submitter = threading.Thread(target=lambda: [decoder.submit(job) for job in jobs])
        submitter.start()
        submitter.join(10)
        assert not submitter.is_alive(), "a submit waited for the stopped child"
        os.kill(pid, signal.SIGCONT)
        assert ended.wait(120), "the jobs never ended"
    finally:
        os.kill(pid, signal.SIGCONT)
        decoder.stop()


def test_a_stop_string_found_by_the_server_ends_the_row_in_the_child(live: LiveServer) -> None:
    """Two rows, each ended by a stop string (found on the server's side, sent to the
    child as a finished row): the request ends long before its max_tokens."""
    body = {"model": "chars", "prompt": "the", "n": 2, "max_tokens": 5_000_000,
            "temperature": 1.0, "seed": 3, "stop": [" ", "e"]}  # fmt: skip
    r = httpx.post(live.url + "/v1/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    assert [c["finish_reason"] for c in r.json()["choices"]] == ["stop", "stop"]
    assert r.json()["usage"]["completion_tokens"] < 10_000


def test_ctrl_c_to_the_process_group_lets_the_stream_in_flight_finish(run_dir: Path) -> None:
    """SIGINT to the whole group (a terminal's Ctrl-C) reaches the decoding process too:
    it ignores it, and the server finishes the stream, then exits 0."""
    proc, url = _start(
        "--model", str(run_dir), "--max-tokens-limit", "100000", start_new_session=True
    )
    try:
        _wait_ready(url)
        body = {"prompt": "a", "max_tokens": 20_000, "temperature": 0, "stream": True}
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as r:
            lines = r.iter_lines()
            first = next(lines)
            os.killpg(proc.pid, signal.SIGINT)
            rest = [line for line in lines if line.startswith("data: ")]
        assert first.startswith("data: ") and rest[-1] == "data: [DONE]"
        chunks = [json.loads(line[6:]) for line in [first, *rest[:-1]]]
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"
        assert sum(bool(c["choices"][0]["text"]) for c in chunks) == 20_000
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
