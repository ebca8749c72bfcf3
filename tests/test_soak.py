"""Kill training at random moments (SIGINT and SIGKILL) and check nothing is lost.

Every trial starts ``textgen train`` in a subprocess, waits until it has written its first
checkpoint, sleeps a random time and kills it. The run directory must then load, its
resumable state must load, and resuming must end exactly where a run that was never
stopped ends (every model and optimizer variable, and the per-epoch losses). The state is
saved after every step, so many kills land inside a save; a SIGKILL that leaves a
snapshot under construction behind proves one did. ``SOAK_TRIALS`` sets the number of
trials (default 20); ``make soak`` runs only this file.
"""

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from textgen import rundir
from textgen.training.checkpoint import resume_config
from textgen.training.loop import train

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
        "[train]\nepochs = 1000\nbatch_size = 8\nsave_every_steps = 1\n",
        encoding="utf-8",
    )
    return config


def reference(config_path, epochs: int, folder, cache: dict) -> tuple[list, list[float]]:
    """Variables and losses of a run of ``epochs`` epochs that was never stopped."""
    if epochs not in cache:
        from textgen import config as config_mod

        cfg = config_mod.load(config_path).with_overrides([f"train.epochs={epochs}"])
        result = train(cfg, folder / f"ref{epochs}", progress=False, log=lambda _m: None)
        model_vars, opt_vars, _ = rundir.load_state(folder / f"ref{epochs}")
        cache[epochs] = (model_vars + opt_vars, [row["train_loss"] for row in result.history])
    return cache[epochs]


@pytest.mark.slow
def test_random_kills_never_lose_the_run(tmp_path, soak_config):
    rng = random.Random(1234)
    survived, inside_a_save, references = 0, 0, {}
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
        store = run / rundir.SNAPSHOTS
        inside_a_save += any(p.name.startswith(".tmp-") for p in store.iterdir())

        rundir.load_bundle(run)  # generation works from what is on disk
        _, _, info = rundir.load_state(run)
        epochs = info["epoch"] + 1
        cfg = resume_config(run, [f"train.epochs={epochs}"])
        result = train(cfg, run, resume=True, progress=False, log=lambda _m: None)
        assert result.history[-1]["epoch"] == epochs
        expected_vars, expected_losses = reference(soak_config, epochs, tmp_path, references)
        model_vars, opt_vars, _ = rundir.load_state(run)
        for a, b in zip(model_vars + opt_vars, expected_vars, strict=True):
            np.testing.assert_allclose(a, b, atol=1e-5, err_msg=f"trial {trial}")
        np.testing.assert_allclose(
            [row["train_loss"] for row in result.history], expected_losses, rtol=1e-5
        )
        survived += 1
    assert survived == TRIALS
    if TRIALS >= 10:
        assert inside_a_save >= 1, "no kill landed inside a save"
    print(
        f"\nsoak: {survived}/{TRIALS} kills survived and resumed exactly (SIGINT and SIGKILL "
        f"alternating); {inside_a_save} SIGKILLs landed inside a save"
    )
