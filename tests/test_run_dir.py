"""The run directory keeps a user's work: what --overwrite may delete, one trainer per run,
one save as one commit, readers that never see half a save, and the `latest` link.

Each test here reproduces a defect that lost or mixed a user's files (see RELIABILITY.md).
"""

from __future__ import annotations

import json
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
from textgen.decoding.numpy_lm import NumpyLM
from textgen.errors import DataError
from textgen.rundir import store
from textgen.training.checkpoint import resume_config
from textgen.training.loop import train

from .conftest import ROOT, TOY_CONFIG, small_config
from .test_reliability import QUIET, corpus_file, temporaries


def invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line_error(result, code: int, fragment: str) -> None:
    """Exit ``code``, no traceback, and the last stderr line is one ``error:`` naming it."""
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and fragment in last, last


def toy(out: Path, *extra: str):
    return invoke("train", "--config", TOY_CONFIG, "--out", out, "--quiet", *extra)


@pytest.fixture
def session_toy_run(toy_run: Path) -> Path:
    """conftest's toy run (the toy config's 150 epochs, trained once per session), under a
    name that this module's own :func:`toy_run` does not hide."""
    return toy_run


def toy_run(out: Path, epochs: int = 3) -> Path:
    result = toy(out, "--set", f"train.epochs={epochs}")
    assert result.exit_code == 0, result.output
    return out


# -- 1. --overwrite deletes only what textgen wrote, after every check --------------------
def test_overwrite_keeps_a_folder_with_files_textgen_did_not_write(tmp_path):
    folder = tmp_path / "d"
    (folder / "src").mkdir(parents=True)
    (folder / "src" / "keep.py").write_text("print('mine')\n", encoding="utf-8")
    (folder / "tokenizer.json").write_text("{}", encoding="utf-8")

    bad_seed = toy(folder, "--overwrite", "--set", "train.seed=-1")
    assert_one_line_error(bad_seed, 2, "train.seed must be in [0, 2**32)")
    refused = toy(folder, "--overwrite")
    assert_one_line_error(refused, 2, "holds src/, tokenizer.json, which textgen did not write")
    assert (folder / "src" / "keep.py").read_text(encoding="utf-8") == "print('mine')\n"
    assert (folder / "tokenizer.json").read_text(encoding="utf-8") == "{}"


def test_overwrite_replaces_a_run_but_not_a_file_added_to_it(tmp_path):
    run = toy_run(tmp_path / "run")
    assert toy(run, "--overwrite", "--set", "train.epochs=2").exit_code == 0
    assert rundir.load_bundle(run).metadata["best_epoch"] == 2
    (run / "notes.txt").write_text("my notes", encoding="utf-8")
    assert_one_line_error(toy(run, "--overwrite"), 2, "holds notes.txt")
    assert (run / "notes.txt").read_text(encoding="utf-8") == "my notes"
    rundir.load_bundle(run)


def test_overwrite_with_a_bad_corpus_deletes_nothing(tmp_path):
    run = toy_run(tmp_path / "run")
    before = everything_in(run, logs=True)
    assert any(name.startswith(f"{rundir.LOGS}/") for name in before)
    result = toy(run, "--overwrite", "--corpus", tmp_path / "missing.txt")
    assert_one_line_error(result, 1, f"corpus not found: {tmp_path / 'missing.txt'}")
    assert everything_in(run, logs=True) == before  # every file's bytes, every link


# -- 2. one process holds a run -------------------------------------------------------------
HOLD = (
    "import sys; from pathlib import Path; from textgen.rundir import RunLock\n"
    "with RunLock(Path(sys.argv[1])):\n"
    "    print('locked', flush=True); sys.stdin.read()\n"
)


def test_a_second_trainer_is_refused_and_sigkill_frees_the_run(tmp_path):
    run = toy_run(tmp_path / "run")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        resumed = invoke("train", "--resume", run, "--quiet", "--set", "train.epochs=4")
        assert_one_line_error(resumed, 1, f"in use by another textgen process (pid {holder.pid})")
        fresh = toy(tmp_path / "run", "--overwrite")
        assert_one_line_error(fresh, 1, f"(pid {holder.pid})")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    # the kernel released the lock with the process: nothing stale is left
    resumed = invoke("train", "--resume", run, "--quiet", "--set", "train.epochs=4")
    assert resumed.exit_code == 0, resumed.output
    assert rundir.load_bundle(run).metadata["best_epoch"] == 4


def test_two_trainers_started_together_one_wins(tmp_path):
    """Whichever trainer takes the lock second is refused by it, naming the winner. 120
    epochs keep the lock held for seconds (40 held it for about 1.6 s, too close to the
    spread of two TensorFlow start-ups on a loaded machine)."""
    run = tmp_path / "run"
    command = [
        sys.executable, "-m", "textgen", "train", "--config", str(TOY_CONFIG), "--out", str(run),
        "--quiet", "--set", "train.epochs=120",
    ]  # fmt: skip
    procs = [
        subprocess.Popen(command, stderr=subprocess.PIPE, text=True, cwd=ROOT) for _ in range(2)
    ]
    outcomes = sorted((p.wait(timeout=300), p.stderr.read(), p.pid) for p in procs)
    assert outcomes[0][0] == 0, outcomes
    winner = outcomes[0][2]
    code, err, _ = outcomes[1]
    # the loser met the winner's lock: "already exists" is what two unlocked trainers give
    assert code == 1, err
    assert err.strip().splitlines()[-1] == (
        f"error: {run} is in use by another textgen process (pid {winner}); "
        "wait for it to finish or stop it first"
    ), err
    assert "Traceback" not in err
    bundle = rundir.load_bundle(run)
    assert bundle.metadata["best_epoch"] == 120


# -- 3. what last.npz calls best is on disk -----------------------------------------------
@pytest.mark.parametrize("crash_at", [2, 3, 5])
def test_a_crash_after_any_epoch_leaves_the_best_it_names_on_disk(
    tmp_path, monkeypatch, toy_config, crash_at
):
    """A process that dies at an epoch start (SIGKILL, OOM) keeps the best it recorded."""
    from textgen.training.progress import Reporter

    original = Reporter.epoch_start

    def dies(self, epoch, step):
        if epoch == crash_at:
            raise SystemExit("killed")  # nothing after this point runs, as with SIGKILL
        return original(self, epoch, step)

    monkeypatch.setattr(Reporter, "epoch_start", dies)
    with pytest.raises(SystemExit):  # the toy improves every epoch at its start
        train(toy_config.with_overrides(["train.epochs=8"]), tmp_path / "run", **QUIET)
    model_vars, _, info = rundir.load_state(tmp_path / "run")
    meta = rundir.load_bundle(tmp_path / "run").metadata
    assert info["epoch"] == crash_at and meta["best_epoch"] == info["best_epoch"] == crash_at - 1
    saved = NumpyLM.load(tmp_path / "run" / rundir.WEIGHTS)
    np.testing.assert_array_equal(saved.embedding, model_vars[0])  # the weights of that epoch


def test_the_bundle_holds_the_best_epochs_weights(tmp_path):
    corpus = corpus_file(tmp_path)

    def config(epochs: int):
        return small_config(
            corpus,
            data={"val_split": 0.25},
            model={"units": 32, "embedding_dim": 16},
            # what is saved as best, not the XLA step (compiling it costs ~6 s CPU a run)
            train={"epochs": epochs, "batch_size": 8, "learning_rate": 0.02, "jit_compile": False},
        )

    result = train(config(6), tmp_path / "long", **QUIET)
    assert 1 < result.best_epoch < 6, "the validation loss must turn for this test to mean much"
    train(config(result.best_epoch), tmp_path / "short", **QUIET)  # stops at the best epoch
    best = rundir.load_bundle(tmp_path / "long").lm.arrays()
    end_of_short = rundir.load_bundle(tmp_path / "short").lm.arrays()
    for name in best:
        np.testing.assert_allclose(best[name], end_of_short[name], atol=1e-6, err_msg=name)


# -- 4. a save is one commit; every file is checked ---------------------------------------
def test_a_truncated_state_is_one_line_on_resume(tmp_path):
    run = toy_run(tmp_path / "run")
    with open(run / rundir.STATE, "r+b") as fh:  # through the link, into the snapshot
        fh.truncate(200)
    result = invoke("train", "--resume", run, "--quiet", "--set", "train.epochs=5")
    assert_one_line_error(result, 1, "last.npz")
    assert "corrupt" in result.stderr


def test_a_state_without_its_checksum_is_still_refused_when_damaged(tmp_path):
    run = toy_run(tmp_path / "run")
    snapshot = rundir.current_snapshot(run)
    manifest = snapshot.folder / rundir.MANIFEST
    data = json.loads(manifest.read_text())
    del data["files"][rundir.STATE]
    manifest.write_text(json.dumps(data))
    with open(run / rundir.STATE, "r+b") as fh:
        fh.truncate(200)
    with pytest.raises(DataError, match=r"is corrupt \(BadZipFile\)"):
        rundir.load_state(run)


def test_a_damaged_model_keras_is_refused_by_its_checksum(tmp_path):
    run = toy_run(tmp_path / "run")
    raw = bytearray((run / rundir.MODEL).read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (run / rundir.MODEL).write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"model\.keras does not match its checksum"):
        rundir.load_keras_model(run)


# every step of a save: each file it writes, the manifest, the rename of the staging
# folder into place and the `current` link (made, then renamed over the old one: the commit)
SAVE_STEPS = [
    *(f"write {name}" for name in rundir.FILES if name != rundir.TOKENIZER),
    f"write {rundir.MANIFEST}",
    "rename",
    "make the link",
    "replace the link",
]


def fail_at(step: str, monkeypatch) -> dict[str, int]:
    """Make ``step`` of the next save fail with ENOSPC; count how often it was reached."""
    hits = {"n": 0}

    def full():
        hits["n"] += 1
        raise OSError(28, "No space left on device")

    if step.startswith("write "):
        real_write = store._write_synced

        def write(path, fill):
            if Path(path).name == step.removeprefix("write "):
                full()
            return real_write(path, fill)

        monkeypatch.setattr(store, "_write_synced", write)
        return hits
    name = {"rename": "rename", "make the link": "symlink", "replace the link": "replace"}[step]
    real = getattr(os, name)

    def fails(src, dst, *args, **kwargs):
        if step == "rename" or Path(dst).name.startswith((rundir.CURRENT, f".{rundir.CURRENT}.")):
            full()
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(store.os, name, fails)
    return hits


def everything_in(run: Path, *, logs: bool = False) -> dict[str, object]:
    """Every entry under ``run`` (links not followed): a file's bytes, a link's target.
    logs/ only with ``logs``: TensorBoard's event files record what ran, not a save."""
    found: dict[str, object] = {}
    for folder, dirs, files in os.walk(run):
        for name in dirs + files:
            path = Path(folder) / name
            relative = path.relative_to(run).as_posix()
            if not logs and (relative == rundir.LOGS or relative.startswith(f"{rundir.LOGS}/")):
                continue
            if path.is_symlink():
                found[relative] = ("link", os.readlink(path))
            elif path.is_file():
                found[relative] = path.read_bytes()
            else:
                found[relative] = "folder"
    return found


@pytest.fixture(scope="module")
def resumed_toy(tmp_path_factory, toy_run):
    """The session's toy run (150 epochs) copied and resumed into a Trainer, to save from."""
    from textgen.corpus.examples import prepare
    from textgen.training.checkpoint import saved_tokenizer
    from textgen.training.loop import Trainer

    run = tmp_path_factory.mktemp("resumed") / "run"
    shutil.copytree(toy_run, run, symlinks=True)
    config = resume_config(run, ["train.epochs=152"])
    prepared = prepare(config.data, tokenizer=saved_tokenizer(run))
    trainer = Trainer(config, prepared, run, lambda _m: None)
    trainer.restore_state()
    return trainer


@pytest.mark.parametrize("step", SAVE_STEPS)
def test_a_save_that_fails_at_any_step_changes_nothing(resumed_toy, monkeypatch, step):
    """A save of a best epoch (the bundle, history and state) fails at ``step``: the run
    is byte for byte as it was, snapshots included, and nothing is left behind."""
    run = resumed_toy.run_dir
    before = everything_in(run)
    hits = fail_at(step, monkeypatch)
    with pytest.raises(OSError, match="No space left on device"):
        resumed_toy.save(best=True)
    monkeypatch.undo()
    assert hits["n"] == 1, f"the save never reached {step}"
    assert everything_in(run) == before
    assert temporaries(run) == []


def test_a_failed_save_is_one_line_and_the_run_goes_on_from_the_last_one(
    tmp_path, monkeypatch, request
):
    run = tmp_path / "run"
    shutil.copytree(request.getfixturevalue("toy_run"), run, symlinks=True)
    hits = fail_at(f"write {rundir.WEIGHTS}", monkeypatch)
    result = invoke("train", "--resume", run, "--quiet", "--set", "train.epochs=152")
    monkeypatch.undo()
    assert hits["n"] == 1
    assert_one_line_error(result, 1, "No space left on device; the previous checkpoint is intact")
    assert rundir.load_state(run, info_only=True)[2]["epoch"] == 151
    assert invoke("train", "--resume", run, "--quiet", "--set", "train.epochs=152").exit_code == 0
    assert rundir.load_bundle(run).metadata["best_epoch"] == 152


def test_a_crash_at_the_commit_point_keeps_the_previous_snapshot(tmp_path, monkeypatch):
    run = toy_run(tmp_path / "run")
    before = rundir.load_bundle(run).metadata["best_epoch"]
    real = os.replace

    def crash(src, dst):
        if Path(dst).name == rundir.CURRENT:
            raise SystemExit("killed at the commit")
        return real(src, dst)

    monkeypatch.setattr(store.os, "replace", crash)
    with pytest.raises(SystemExit):
        train(resume_config(run, ["train.epochs=5"]), run, resume=True, **QUIET)
    monkeypatch.undo()
    assert rundir.load_bundle(run).metadata["best_epoch"] == before
    assert rundir.load_state(run, info_only=True)[2]["epoch"] == before + 1
    # the next save commits and clears what the crash left
    assert invoke("train", "--resume", run, "--quiet", "--set", "train.epochs=5").exit_code == 0
    assert rundir.load_bundle(run).metadata["best_epoch"] == 5
    assert len([p for p in (run / rundir.SNAPSHOTS).iterdir() if p.name.isdigit()]) == 2


def test_a_run_from_before_snapshots_is_read_and_converted(tmp_path):
    run = toy_run(tmp_path / "run")
    old = tmp_path / "old"
    old.mkdir()
    for name in rundir.FILES:  # the flat layout of earlier textgen versions
        (old / name).write_bytes((run / name).read_bytes())
    assert rundir.load_bundle(old).metadata["best_epoch"] == 3
    result = invoke("train", "--resume", old, "--quiet", "--set", "train.epochs=4")
    assert result.exit_code == 0, result.output
    assert (old / rundir.WEIGHTS).is_symlink()
    assert rundir.load_bundle(old).metadata["best_epoch"] == 4


# -- 5. readers see whole saves -------------------------------------------------------------
def best_epochs_of_one_snapshot(run: Path, copy: Path) -> tuple[int, int]:
    """The best epoch that metadata.json and last.npz name, both from the one snapshot
    current at the call: its files are copied (checked against its manifest) into the flat
    layout of a run from before snapshots, which the public readers read as it is."""

    def copy_files(snap: store.Snapshot) -> None:
        if copy.exists():
            shutil.rmtree(copy)
        copy.mkdir()
        for name in rundir.FILES:
            if snap.has(name):
                shutil.copyfile(snap.path(name), copy / name)

    store.read_run(run, copy_files)  # starts over if a save removed the snapshot meanwhile
    _, _, info = rundir.load_state(copy, info_only=True)
    return rundir.load_bundle(copy).metadata["best_epoch"], info["best_epoch"]


@pytest.mark.slow  # multi-process or long: make test-slow (CI)
def test_readers_never_see_a_save_in_progress(tmp_path):
    run = toy_run(tmp_path / "run", epochs=1)
    proc = subprocess.Popen(
        [sys.executable, "-m", "textgen", "train", "--resume", str(run), "--quiet",
         "--set", "train.epochs=400"],
        stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    loads, epochs = 0, set()
    while proc.poll() is None:
        rundir.load_bundle(run)  # raises on any mix of two saves
        # the state and the bundle of one snapshot name the same best epoch: a state that
        # ran ahead of its bundle (the old defect) would name a best model not on disk
        in_bundle, in_state = best_epochs_of_one_snapshot(run, tmp_path / "copy")
        assert in_state == in_bundle, (in_state, in_bundle)
        loads += 1
        epochs.add(in_bundle)
    assert proc.returncode == 0, proc.stderr.read()
    assert loads >= 20 and len(epochs) >= 10, (loads, len(epochs))


# -- 7. resume refuses what would change the saved state's meaning --------------------------
@pytest.mark.parametrize(
    "override", ["data.max_len=7", "data.level=char", "model.units=64", "train.seed=1"]
)
def test_resume_refuses_overrides_that_change_what_the_state_means(tmp_path, override):
    run = toy_run(tmp_path / "run")
    result = invoke("train", "--resume", run, "--quiet", "--set", override)
    key = override.split("=")[0]
    assert_one_line_error(result, 2, f"--set {key} cannot change when resuming")


def test_resume_accepts_more_epochs_and_a_new_learning_rate(tmp_path):
    run = toy_run(tmp_path / "run")
    result = invoke(
        "train", "--resume", run, "--quiet", "--set", "train.epochs=4",
        "--set", "train.learning_rate=0.01", "--set", "data.level=word",  # unchanged: fine
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = rundir.parse_history((run / rundir.HISTORY).read_text(encoding="utf-8"))
    assert [(r["epoch"], r["learning_rate"]) for r in rows] == [
        (1, 0.02), (2, 0.02), (3, 0.02), (4, 0.01),  # the toy's rate, then the new one
    ]  # fmt: skip
    assert resume_config(run, []).train.learning_rate == 0.01  # and it is kept for later


def test_resume_of_a_finished_run_says_so(tmp_path):
    run = toy_run(tmp_path / "run")
    assert_one_line_error(
        invoke("train", "--resume", run, "--quiet"), 2, "has already trained its 3 epochs"
    )


def test_a_changed_corpus_is_caught_before_the_first_best_model(tmp_path, monkeypatch):
    from textgen.training.progress import Reporter

    corpus = corpus_file(tmp_path)
    cfg = small_config(corpus, train={"epochs": 2, "save_every_steps": 2, "jit_compile": False})

    def dies(self, step, loss):
        if step == 5:
            raise SystemExit("killed")

    monkeypatch.setattr(Reporter, "step", dies)
    with pytest.raises(SystemExit):
        train(cfg, tmp_path / "run", **QUIET)
    monkeypatch.undo()
    assert rundir.load_metadata(tmp_path / "run") is None  # no best model yet
    corpus.write_text(corpus.read_text() + "\nnew words here", encoding="utf-8")
    with pytest.raises(DataError, match="corpus changed"):
        train(cfg, tmp_path / "run", resume=True, **QUIET)


# -- 9. the latest link, plot's temporary file, eval --valid's corpus ----------------------
def test_resume_through_latest_keeps_latest_a_link_to_the_run(
    tmp_path, monkeypatch, session_toy_run
):
    monkeypatch.chdir(tmp_path)
    # the session's toy run (150 epochs) with the latest link its training made beside it
    shutil.copytree(session_toy_run.parent, "runs", symlinks=True)
    assert os.readlink("runs/latest") == session_toy_run.name
    result = invoke("train", "--resume", "runs/latest", "--quiet", "--set", "train.epochs=151")
    assert result.exit_code == 0, result.output
    assert os.readlink("runs/latest") == session_toy_run.name
    generated = invoke("generate", "--seed", "그의")
    assert generated.exit_code == 0 and generated.stdout.strip() == "그의 말이 법이다"


def test_out_latest_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    toy_run(Path("runs/a"))
    assert_one_line_error(toy(Path("runs/latest"), "--overwrite"), 2, "'latest' is the link")
    assert rundir.load_bundle(Path("runs/a")).metadata["best_epoch"] == 3


def test_out_dot_trains_into_the_working_folder(tmp_path, monkeypatch):
    here = tmp_path / "project"
    here.mkdir()
    monkeypatch.chdir(here)
    assert toy(Path("."), "--set", "train.epochs=2").exit_code == 0
    assert rundir.load_bundle(here).metadata["best_epoch"] == 2
    assert not (tmp_path / "latest").is_symlink()  # nothing outside the folder named


def test_a_users_own_file_named_latest_is_left_alone(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("runs").mkdir()
    Path("runs/latest").write_text("my file", encoding="utf-8")
    result = invoke("train", "--config", TOY_CONFIG, "--out", "runs/a", "--set", "train.epochs=2")
    assert result.exit_code == 0
    assert "is not a link; left it alone" in result.stderr
    assert Path("runs/latest").read_text(encoding="utf-8") == "my file"


def test_plot_does_not_write_through_a_planted_link(tmp_path):
    pytest.importorskip("matplotlib")
    run = toy_run(tmp_path / "run", epochs=2)
    victim = tmp_path / "victim.txt"
    victim.write_text("untouched", encoding="utf-8")
    for name in (".loss.png.tmp.png", ".loss.png.tmp"):  # the old fixed temporary names
        (run / name).symlink_to(victim)
    assert invoke("plot", run).exit_code == 0
    assert victim.read_text(encoding="utf-8") == "untouched"
    assert (run / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_eval_valid_refuses_a_corpus_that_is_not_the_trained_one(tmp_path):
    corpus = corpus_file(tmp_path)
    train_keys = {"epochs": 1, "jit_compile": False}  # not the XLA step: it costs ~6 s CPU
    cfg = small_config(corpus, data={"val_split": 0.2}, train=train_keys)
    train(cfg, tmp_path / "run", **QUIET)
    assert invoke("eval", "--model", tmp_path / "run", "--valid").exit_code == 0
    corpus.unlink()
    corpus.symlink_to("/dev/zero")  # a downloaded run whose path names a device here
    proc = subprocess.run(
        [sys.executable, "-m", "textgen", "eval", "--model", str(tmp_path / "run"), "--valid"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1 and "is not a regular file" in proc.stderr, proc.stderr
    corpus.unlink()
    corpus.write_text("another text entirely\n" * 50, encoding="utf-8")
    result = invoke("eval", "--model", tmp_path / "run", "--valid")
    assert_one_line_error(result, 1, "is not the file this run was trained on")


def test_a_run_being_trained_can_be_read(tmp_path, session_toy_run):
    """Readers take no lock: generate works while a trainer holds the run."""
    run = tmp_path / "run"
    shutil.copytree(session_toy_run, run, symlinks=True)  # the toy config's 150 epochs
    with rundir.RunLock(run):
        result = invoke("generate", "--model", run, "--seed", "그의")
    assert result.exit_code == 0 and result.stdout.strip() == "그의 말이 법이다"


def test_a_copy_that_followed_the_links_is_read_and_resumed(tmp_path):
    import shutil

    run = toy_run(tmp_path / "run")
    copy = tmp_path / "copy"
    shutil.copytree(run, copy, symlinks=False)  # files instead of links, current a folder
    assert rundir.load_bundle(copy).metadata["best_epoch"] == 3
    result = invoke("train", "--resume", copy, "--quiet", "--set", "train.epochs=4")
    assert result.exit_code == 0, result.output
    assert rundir.load_bundle(copy).metadata["best_epoch"] == 4
    assert rundir.load_bundle(run).metadata["best_epoch"] == 3  # the original untouched
