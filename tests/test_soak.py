"""Kill training at random moments (SIGINT and SIGKILL) and check nothing is lost.

Every trial starts ``textgen train`` in a subprocess, waits until it has written its first
checkpoint, sleeps a random time and kills it. The run directory must then load, its
resumable state must load, and resuming must finish training. ``SOAK_TRIALS`` sets the
number of trials (default 20); ``make soak`` runs only this file.
"""

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from textgen import checkpoint
from textgen.train import resume_config, train

from .conftest import ROOT

TRIALS = int(os.environ.get("SOAK_TRIALS", "20"))


@pytest.fixture(scope="module")
def soak_config(tmp_path_factory):
    folder = tmp_path_factory.mktemp("soak")
    rng = random.Random(0)
    words = [f"w{i}" for i in range(40)]
    corpus = folder / "corpus.txt"
    corpus.write_text(
        "\n".join(" ".join(rng.choices(words, k=rng.randint(3, 10))) for _ in range(300)),
        encoding="utf-8",
    )
    config = folder / "soak.toml"
    config.write_text(
        f'[data]\ncorpus = "{corpus}"\nval_split = 0.1\n'
        "[model]\nunits = 32\nembedding_dim = 16\nlayers = 2\n"
        "[train]\nepochs = 1000\nbatch_size = 8\nsave_every_steps = 3\n",
        encoding="utf-8",
    )
    return config


@pytest.mark.slow
def test_random_kills_never_lose_the_run(tmp_path, soak_config):
    rng = random.Random(1234)
    survived = 0
    for trial in range(TRIALS):
        run = tmp_path / f"run{trial}"
        sig = signal.SIGINT if trial % 2 == 0 else signal.SIGKILL
        proc = subprocess.Popen(
            [sys.executable, "-m", "textgen", "train", "--config", str(soak_config),
             "--out", str(run), "--quiet"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while not ((run / "last.npz").exists() and (run / "weights.npz").exists()):
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.5))
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode in (128 + sig, -sig), (proc.returncode, err)
        assert "Traceback" not in err

        checkpoint.load_bundle(run)  # generation works from what is on disk
        _, _, info = checkpoint.load_state(run)
        cfg = resume_config(run, [f"train.epochs={info['epoch'] + 1}"])
        result = train(cfg, run, resume=True, progress=False, log=lambda _m: None)
        assert result.history[-1]["epoch"] == info["epoch"] + 1
        survived += 1
    assert survived == TRIALS
    print(f"\nsoak: {survived}/{TRIALS} kills survived (SIGINT and SIGKILL alternating)")
