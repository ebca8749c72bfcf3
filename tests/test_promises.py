"""Promises of the README and RELIABILITY.md that had no test: a `--resume --set` override
takes effect (the learning rate; the batch size at an epoch boundary), a reader that loses
the race with two saves starts over, SIGTERM and Ctrl-C unwind every command, and training
memory does not grow with the corpus."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from textgen import rundir
from textgen.cli import main
from textgen.rundir import store

from .conftest import ROOT, TOY_CONFIG
from .test_reliability import temporaries


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


# -- --resume --set takes effect --------------------------------------------------------------
SGD = ["--set", "train.optimizer=sgd", "--set", "train.clipnorm=0"]


@pytest.fixture(scope="module")
def sgd_toy(tmp_path_factory) -> Path:
    """The toy trained 2 epochs with plain SGD (no momentum, no clipping) at 0.1: its three
    lines are one batch of 8, so each epoch is one step."""
    run = tmp_path_factory.mktemp("sgd") / "run"
    result = invoke(
        "train", "--config", TOY_CONFIG, "--out", run, "--quiet", *SGD,
        "--set", "train.learning_rate=0.1", "--set", "train.epochs=2",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return run


def resumed(base: Path, out: Path, *sets: str) -> tuple[list[np.ndarray], list, dict]:
    shutil.copytree(base, out, symlinks=True)
    result = invoke("train", "--resume", out, "--quiet", *[a for s in sets for a in ("--set", s)])
    assert result.exit_code == 0, result.output
    return rundir.load_state(out)


def test_a_resumed_learning_rate_takes_effect(sgd_toy, tmp_path):
    """From the same state, one SGD step on the same batch moves the weights in proportion
    to the rate: resumed at 0.2 and at 0.05, the first moves them exactly 4 times as far."""
    start, _, _ = rundir.load_state(sgd_toy)
    fast, _, _ = resumed(sgd_toy, tmp_path / "fast", "train.epochs=3", "train.learning_rate=0.2")
    slow, _, _ = resumed(sgd_toy, tmp_path / "slow", "train.epochs=3", "train.learning_rate=0.05")
    fast_steps = [a - before for before, a in zip(start, fast, strict=True)]
    slow_steps = [b - before for before, b in zip(start, slow, strict=True)]
    for before, a, b in zip(start, fast_steps, slow_steps, strict=True):
        # each stored weight is rounded to float32: a few units in the last place of the
        # largest weight of the array
        ulp = float(np.spacing(np.float32(np.abs(before).max())))
        np.testing.assert_allclose(a, 4 * b, rtol=1e-4, atol=8 * ulp)
    norm = np.sqrt(sum(float((a.astype(np.float64) ** 2).sum()) for a in fast_steps))
    slow_norm = np.sqrt(sum(float((b.astype(np.float64) ** 2).sum()) for b in slow_steps))
    assert norm > 1e-3 and norm / slow_norm == pytest.approx(4, rel=1e-3)


def test_a_resumed_batch_size_takes_effect_at_an_epoch_boundary(sgd_toy, tmp_path):
    """Resumed at an epoch boundary with batch_size 1, the next epoch takes three steps (one
    per line) where each epoch took one."""
    _, opt_before, info_before = rundir.load_state(sgd_toy)
    _, opt_after, info = resumed(sgd_toy, tmp_path / "run", "train.epochs=3", "train.batch_size=1")
    assert (info_before["epoch"], info_before["step"]) == (3, 0)  # at the boundary
    steps = [int(v) for v in opt_after if np.ndim(v) == 0 and np.issubdtype(v.dtype, np.integer)]
    assert steps == [2 + 3], "the optimizer's step count: 2 epochs of 1 step, then 3"
    assert info["global_batch"] == 1 and len(opt_before) == len(opt_after)


# -- a reader that loses the race with two saves starts over ----------------------------------
def test_a_reader_that_lost_its_snapshot_to_two_saves_starts_over(tmp_path, toy_run):
    """The snapshot a reader resolved is removed by the save after the next one: the read
    that finds a file gone starts over on the newer snapshot (and so does load_bundle)."""
    run = tmp_path / "run"
    shutil.copytree(toy_run, run, symlinks=True)
    seen: list[str] = []

    def read(snap: store.Snapshot) -> str:
        seen.append(snap.folder.name)
        if len(seen) == 1:  # two saves while this reader holds the snapshot
            for n in (1, 2):
                with store.Commit(run) as commit:
                    commit.write_text(rundir.HISTORY, f"save {n}\n")
            assert not snap.folder.exists(), "the reader's snapshot should be gone"
        return snap.path(rundir.HISTORY).read_text(encoding="utf-8")

    assert store.read_run(run, read) == "save 2\n"
    assert len(seen) == 2 and seen[0] != seen[1]
    assert rundir.load_bundle(run).history == "save 2\n"


# -- SIGTERM and Ctrl-C unwind every command --------------------------------------------------
# runs the command line with one function wrapped: after its CALL-th call returns, the
# process sends itself the signal, so that it arrives in the middle of the command
SIGNALLED = """
import importlib, os, signal, sys
target, nth, sig = sys.argv[1], int(sys.argv[2]), getattr(signal, sys.argv[3])
module, _, attr = target.partition(":")
owner = importlib.import_module(module)
*path, name = attr.split(".")
for part in path:
    owner = getattr(owner, part)
original, calls = getattr(owner, name), [0]

def wrapped(*args, **kwargs):
    result = original(*args, **kwargs)
    calls[0] += 1
    if calls[0] == nth:
        os.kill(os.getpid(), sig)
    return result

setattr(owner, name, wrapped)
sys.argv = ["textgen", *sys.argv[4:]]
from textgen.cli import main
main()
"""

PREPARE = ["prepare", "--config", "{toy}", "--corpus", "{tmp}/c.txt", "--set", "data.mode=stream",
           "--quiet"]  # fmt: skip
# command → (the function the signal arrives after, which call, the command's arguments)
COMMANDS = {
    # during a save: the third commit's staging folder (the first two: the new run, epoch 1)
    "train": ("tempfile:mkdtemp", 3,
              ["train", "--config", "{toy}", "--out", "{tmp}/new", "--set", "train.epochs=50"]),
    # while the cache entry is built in its temporary folder (its ids written, being hashed)
    "prepare": ("textgen.corpus.cache:_sha256", 1, PREPARE),
    "generate": ("textgen.decoding.numpy_lm:NumpyLM.step", 2,
                 ["generate", "--model", "{run}", "--seed", "그의", "--length", "50"]),
    "eval": ("textgen.decoding.numpy_lm:NumpyLM.run", 1,
             ["eval", "--model", "{run}", "{toy_corpus}"]),
    "info": ("textgen.report:run_summary", 1, ["info", "{run}"]),
    # after the plot is drawn into its temporary file, before it is renamed into place
    "plot": ("matplotlib.figure:Figure.savefig", 1,
             ["plot", "{run}", "--out", "{tmp}/plots/loss.png"]),
}  # fmt: skip


# a signal just after the cache's temporary folder and its owner file are made, before the
# block that builds the entry (the folder was left behind there until the next prepare)
COMMANDS["prepare, just after its folder is made"] = ("textgen.corpus.cache:_hold", 1, PREPARE)


# each command with each signal; train with SIGTERM only (a trainer handles both signals the
# same way, and test_reliability's test_cli_signal_saves_state_and_prints_resume_command
# sends it each of them; this one lands in the middle of a save)
CASES = [
    pytest.param(command, sig, id=f"{command}-{'ctrl-c' if sig == signal.SIGINT else 'sigterm'}")
    for command in COMMANDS
    for sig in (signal.SIGINT, signal.SIGTERM)
    if not (command == "train" and sig == signal.SIGINT)
]  # fmt: skip


@pytest.mark.parametrize(("command", "sig"), CASES)
def test_a_signal_unwinds_every_command(tmp_path, toy_run, command, sig):
    """Exit 130 (Ctrl-C) or 143 (SIGTERM), one line saying so, no traceback, and no
    temporary file or folder left in the run, the output folder or the id cache."""
    if command == "plot":
        pytest.importorskip("matplotlib")
    run = tmp_path / "run"
    shutil.copytree(toy_run, run, symlinks=True)
    (tmp_path / "plots").mkdir()
    (tmp_path / "c.txt").write_text("a b c d e\n" * 2000, encoding="utf-8")
    cache = tmp_path / "cache"
    places = {"toy": str(TOY_CONFIG), "tmp": str(tmp_path), "run": str(run),
              "toy_corpus": str(ROOT / "data" / "ko-toy.txt")}  # fmt: skip
    target, nth, args = COMMANDS[command]
    proc = subprocess.run(
        [sys.executable, "-c", SIGNALLED, target, str(nth), sig.name,
         *[a.format(**places) for a in args]],
        cwd=tmp_path, env=dict(os.environ, TEXTGEN_CACHE=str(cache), PYTHONPATH=str(ROOT)),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 128 + sig, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    if command == "train":  # train saves, then says how to go on
        assert last.startswith(f"error: {sig.name}: training stopped at"), last
        assert f"textgen train --resume {tmp_path / 'new'}" in last, last
        rundir.load_state(tmp_path / "new")  # the save it was in finished whole
    else:
        assert last == ("interrupted" if sig == signal.SIGINT else "terminated"), proc.stderr
    for folder in (run, tmp_path / "new", tmp_path / "plots"):
        if folder.exists():
            assert temporaries(folder) == [], folder
    assert list((tmp_path / "plots").iterdir()) == []  # no half-written plot either
    if cache.exists():
        assert [p.name for p in cache.iterdir() if ".tmp-" in p.name] == []


# -- training memory does not grow with the corpus --------------------------------------------
def anonymous_mb(pid: int) -> float:
    """The process' resident anonymous memory (its heap: not the shared libraries, whose
    pages the kernel may drop and read back at any time), 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc (Linux)")
@pytest.mark.slow  # multi-process or long: make test-slow (CI)
def test_training_memory_does_not_grow_with_the_corpus(tmp_path):
    """A char-level stream corpus of 1 MB and one of 81 MB, prepared, each trained for a
    second in its own process: the peak of resident anonymous memory, sampled every 20 ms,
    grows by less than 40 MB, where ids held whole would add at least 80 MB (one byte a
    character).

    Measured here, three pairs: about 220 MB each (TensorFlow and the model), the same for
    both corpora. Each process gets its own XLA compilation cache: sharing one, the process
    that compiled the step peaked near 420 MB and one that loaded it near 310 MB (CI once
    failed on that: 345 against 416). The peak RSS
    (VmHWM) was no good: once it read 591 MB for one run of the pair, shared-library pages
    being dropped. data.seq_len = 400 keeps the epoch's order of windows (8 bytes a window)
    near 1.7 MB for the larger corpus.
    """
    import time

    from textgen import config as config_mod
    from textgen._tf import XLA_CACHE_FLAG
    from textgen.corpus.cache import prepare_ids

    sets = ["model.embedding_dim=8", "model.units=16", "data.val_split=0", "data.seq_len=400",
            "train.epochs=1", "train.max_minutes=0.02"]  # fmt: skip
    char = ROOT / "configs" / "shakespeare-char.toml"
    symbols = np.frombuffer(b"abcdefghij klmnop\n", dtype=np.uint8)
    rng = np.random.default_rng(0)
    procs = {}
    for mb in (1, 81):
        corpus = tmp_path / f"c{mb}.txt"
        corpus.write_bytes(symbols[rng.integers(0, len(symbols), mb << 20, np.uint8)].tobytes())
        cfg = config_mod.load(char).with_overrides(sets)
        prepare_ids(config_mod.with_corpus(cfg, corpus).data)  # the entry train reads
    for mb in (1, 81):  # both at once: the test costs one TensorFlow start-up of wall time
        args = ["train", "--config", char, "--corpus", tmp_path / f"c{mb}.txt",
                "--out", tmp_path / f"run{mb}", "--quiet",
                *[a for s in sets for a in ("--set", s)]]  # fmt: skip
        # each its own empty XLA cache: a run that compiles holds ~100 MB more than one
        # that finds the other's compiled step, which made the pair differ by that much
        env = {**os.environ, "TF_XLA_FLAGS": f"{XLA_CACHE_FLAG}={tmp_path / f'xla{mb}'}"}
        procs[mb] = subprocess.Popen(
            [sys.executable, "-m", "textgen", *map(str, args)],
            cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
    peak = dict.fromkeys(procs, 0.0)
    deadline = time.monotonic() + 300
    while any(p.poll() is None for p in procs.values()) and time.monotonic() < deadline:
        for mb, proc in procs.items():
            peak[mb] = max(peak[mb], anonymous_mb(proc.pid))
        time.sleep(0.02)
    for proc in procs.values():
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    assert peak[1] > 100, peak  # the sampling saw the runs
    assert peak[81] - peak[1] < 40, f"peak anonymous memory {peak[1]:.0f} → {peak[81]:.0f} MB"
