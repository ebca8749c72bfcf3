"""Resume, interruption, divergence and failed saves: training never loses a good run."""

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from textgen import rundir
from textgen.decoding.generate import sentence_generation
from textgen.errors import DataError
from textgen.rundir import contents
from textgen.training.loop import Diverged, train
from textgen.training.signals import Interrupted, Signals

from .conftest import ROOT, small_config

QUIET = {"progress": False, "log": lambda _m: None}


def corpus_file(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(30)]
    lines = [" ".join(rng.choice(words, size=rng.integers(3, 9))) for _ in range(160)]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def temporaries(run_dir: Path) -> list[str]:
    """What a save stages and should remove, at every depth of ``run_dir`` (links not
    followed): the ``.snapshots/.tmp-*`` folder of a commit, ``.NAME.*.tmp`` files of an
    atomic write, ``.NAME.link.PID`` of a link being replaced."""
    found = []
    for folder, dirs, files in os.walk(run_dir):
        for name in dirs + files:
            if name.startswith(".tmp-") or name.endswith(".tmp") or ".link." in name:
                found.append(os.path.relpath(os.path.join(folder, name), run_dir))
    return sorted(found)


def resumable_config(corpus: Path, epochs: int = 3, jit_compile: bool = True):
    """Two layers with dropout, saved every 5 steps; ``jit_compile=False`` for a test that is
    about the bookkeeping of a resume, not the XLA step (compiling it costs about 6 s of CPU
    per training; test_interrupt_then_resume_equals_uninterrupted keeps the XLA step)."""
    return small_config(
        corpus,
        data={"val_split": 0.1},
        model={"layers": 2, "dropout": 0.2},  # dropout: its RNG must resume exactly too
        train={"epochs": epochs, "batch_size": 8, "save_every_steps": 5, "learning_rate": 0.01,
               "jit_compile": jit_compile},
    )  # fmt: skip


def final_state(run_dir: Path) -> list[np.ndarray]:
    model_vars, opt_vars, _ = rundir.load_state(run_dir)
    return model_vars + opt_vars


def interrupt_after(steps: int, monkeypatch):
    """Send this process a real SIGINT as training step ``steps`` runs."""
    import textgen.training.steps as steps_mod

    original = steps_mod.Steps.__init__
    counter = {"n": 0}

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        step = self.train_step

        def counted(*args):
            counter["n"] += 1
            if counter["n"] == steps:
                os.kill(os.getpid(), signal.SIGINT)
            return step(*args)

        self.train_step = counted

    monkeypatch.setattr(steps_mod.Steps, "__init__", init)


def test_interrupt_then_resume_equals_uninterrupted(tmp_path, monkeypatch):
    corpus = corpus_file(tmp_path)
    cfg = resumable_config(corpus)
    train(cfg, tmp_path / "straight", **QUIET)

    with monkeypatch.context() as m:
        interrupt_after(23, m)  # mid-epoch (18 steps per epoch), between state saves
        with pytest.raises(Interrupted) as info:
            train(cfg, tmp_path / "stopped", **QUIET)
    assert info.value.exit_code == 130
    assert "epoch 2, step 5" in str(info.value)
    assert f"textgen train --resume {tmp_path / 'stopped'}" in str(info.value)
    train(cfg, tmp_path / "stopped", resume=True, **QUIET)

    for a, b in zip(
        final_state(tmp_path / "straight"), final_state(tmp_path / "stopped"), strict=True
    ):
        np.testing.assert_allclose(a, b, atol=1e-5)
    straight = (tmp_path / "straight" / "history.csv").read_text().splitlines()
    resumed = (tmp_path / "stopped" / "history.csv").read_text().splitlines()
    # same losses per epoch (the tokens/s and seconds columns differ)
    assert [r.split(",")[:5] for r in straight] == [r.split(",")[:5] for r in resumed]


def test_resume_with_more_epochs(tmp_path):
    corpus = corpus_file(tmp_path)
    train(resumable_config(corpus, epochs=1, jit_compile=False), tmp_path / "run", **QUIET)
    cfg = resumable_config(corpus, epochs=1, jit_compile=False).with_overrides(["train.epochs=2"])
    result = train(cfg, tmp_path / "run", resume=True, **QUIET)
    assert [row["epoch"] for row in result.history] == [1, 2]


def test_resume_refuses_a_changed_corpus(tmp_path):
    corpus = corpus_file(tmp_path)
    train(resumable_config(corpus, epochs=1, jit_compile=False), tmp_path / "run", **QUIET)
    corpus.write_text(corpus.read_text() + "\nnew words here", encoding="utf-8")
    with pytest.raises(DataError, match="corpus changed"):
        cfg = resumable_config(corpus, epochs=2, jit_compile=False)
        train(cfg, tmp_path / "run", resume=True, **QUIET)


def test_resume_without_state(tmp_path):
    corpus = corpus_file(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"has no resumable state \(last\.npz\)"):
        train(resumable_config(corpus), tmp_path / "empty", resume=True, **QUIET)


def test_divergence_stops_and_keeps_the_last_good_checkpoint(tmp_path, toy_config, toy_run):
    run = tmp_path / "run"
    shutil.copytree(toy_run, run, symlinks=True)  # the toy config's 150 epochs, trained once
    before = (run / "weights.npz").read_bytes()
    absurd = toy_config.with_overrides(["train.epochs=200", "train.learning_rate=3e38"])
    with pytest.raises(Diverged, match=r"(loss|weights) became .* epoch 152"):
        train(absurd, run, resume=True, **QUIET)
    assert (run / "weights.npz").read_bytes() == before
    bundle = rundir.load_bundle(run)
    assert sentence_generation(bundle, bundle.tokenizer, "그의", 10) == "그의 말이 법이다"


def test_disk_full_during_save_keeps_the_previous_checkpoint(tmp_path, toy_config, monkeypatch):
    run = tmp_path / "run"
    train(toy_config.with_overrides(["train.epochs=20"]), run, **QUIET)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}

    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(contents.np, "savez", full)
    cfg = toy_config.with_overrides(["train.epochs=40"])
    with pytest.raises(
        DataError, match="No space left on device; the previous checkpoint is intact"
    ):
        train(cfg, run, resume=True, **QUIET)
    monkeypatch.undo()
    assert temporaries(run) == [], "temporary files left behind"
    for name in ("weights.npz", "model.keras", "last.npz", "metadata.json"):
        assert (run / name).read_bytes() == before[name], name
    rundir.load_bundle(run)
    rundir.load_state(run)


def test_second_signal_exits_at_once(tmp_path):
    code = (
        "import os, signal, time\n"
        "from textgen.training.signals import Signals\n"
        "with Signals() as s:\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    assert s.received == signal.SIGINT\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    time.sleep(5)\n"
        "print('not reached')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 130 and "not reached" not in proc.stdout


def test_signals_restores_handlers():
    before = signal.getsignal(signal.SIGINT)
    with Signals():
        assert signal.getsignal(signal.SIGINT) != before
    assert signal.getsignal(signal.SIGINT) == before


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_cli_signal_saves_state_and_prints_resume_command(tmp_path, sig):
    corpus = corpus_file(tmp_path)
    config = tmp_path / "c.toml"
    config.write_text(
        f'[data]\ncorpus = "{corpus}"\n[model]\nunits = 16\nembedding_dim = 8\n'
        # not the XLA step (compiling it costs the subprocess about 6 s of CPU)
        "[train]\nepochs = 1000\nbatch_size = 4\njit_compile = false\n",
        encoding="utf-8",
    )
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "textgen", "train", "--config", str(config), "--out", str(run)],
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    deadline = time.monotonic() + 120
    while not (run / "last.npz").exists():
        assert time.monotonic() < deadline and proc.poll() is None, "training did not start"
        time.sleep(0.2)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig
    assert f"textgen train --resume {run}" in err and "Traceback" not in err
    rundir.load_bundle(run)
    rundir.load_state(run)


@pytest.mark.slow  # multi-process or long: make test-slow (CI)
def test_subprocess_sigint_then_resume_equals_uninterrupted(tmp_path):
    """`textgen train` in a subprocess gets a real SIGINT; the printed resume command, run
    with a --set, ends equal to a run that was never stopped."""
    corpus = corpus_file(tmp_path)
    cfg = resumable_config(corpus, epochs=3).with_overrides(["train.save_every_steps=1"])
    config = tmp_path / "c.toml"
    config.write_text(cfg.to_toml(), encoding="utf-8")
    run = tmp_path / "stopped"
    proc = subprocess.Popen(
        [sys.executable, "-m", "textgen", "train", "--config", str(config), "--out", str(run)],
        stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not (run / "last.npz").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "training did not start"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    _, _, info = rundir.load_state(run)
    assert (info["epoch"], info["step"]) < (4, 0), "the run had finished before the signal"

    # resume exactly as the message says, through the command line
    from click.testing import CliRunner

    from textgen.cli import main

    command = err.split("Resume with: ")[1].split()
    assert command[:4] == ["textgen", "train", "--resume", str(run)]
    resume = [*command[1:], "--quiet", "--set", "train.save_every_steps=0"]
    result = CliRunner().invoke(main, resume)
    assert result.exit_code == 0, result.output
    train(cfg, tmp_path / "straight", **QUIET)
    for a, b in zip(final_state(tmp_path / "straight"), final_state(run), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_overwrite_refuses_a_folder_that_is_not_a_run(tmp_path, toy_config):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work", encoding="utf-8")
    from textgen.errors import UsageError

    with pytest.raises(UsageError, match="is not a textgen run directory; refusing to delete it"):
        train(toy_config, precious, overwrite=True, **QUIET)
    assert (precious / "thesis.tex").read_text(encoding="utf-8") == "years of work"


def test_run_name_must_stay_inside_runs(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from textgen.cli import main

    monkeypatch.chdir(tmp_path)
    config = tmp_path / "..toml"
    config.write_text("[train]\nepochs = 1\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["train", "--config", str(config), "--overwrite"])
    assert result.exit_code == 2
    assert "cannot name a run after" in result.stderr


def test_a_state_written_by_an_earlier_version_reads_back():
    """last.npz of earlier versions: "wait" and a history with "loss" columns."""
    import json
    import math

    from textgen.training.state import TrainState

    old = {"epoch": 4, "step": 0, "wait": 2, "history": [{"epoch": 1, "loss": 2.5}],
           "best_loss": None, "best_epoch": 1, "unknown_later_field": 1}  # fmt: skip
    state = TrainState.from_info(old)
    assert (state.epoch, state.epochs_since_best, state.best_loss) == (4, 2, math.inf)
    assert state.history[0]["train_loss"] == 2.5 and math.isnan(state.history[0]["check_loss"])
    again = TrainState.from_info(state.to_info())
    assert json.dumps(again.to_info()) == json.dumps(state.to_info())  # NaN-safe equality
