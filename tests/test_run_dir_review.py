"""The second review of the run directory: ``latest`` from a run's first commit, an
``--overwrite`` that deletes only what textgen recorded writing, copies that keep their
checks, damaged snapshots, a run that follows its corpus, and the small promises.

Each test failed on b64777a (see RELIABILITY.md).
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
from pathlib import Path

import pytest

from textgen import rundir
from textgen.errors import DataError, UsageError
from textgen.training import loop

from .conftest import TOY_CONFIG, TOY_CORPUS
from .test_run_dir import assert_one_line_error, invoke, toy, toy_run


def tree(root: Path) -> dict[str, str]:
    """Every file and link under ``root``: its path → sha256 of its bytes (or its target)."""
    out = {}
    for path in sorted(root.rglob("*")):
        key = path.relative_to(root).as_posix()
        if path.is_symlink():
            out[key] = "-> " + os.readlink(path)
        elif path.is_file():
            out[key] = hashlib.sha256(path.read_bytes()).hexdigest()
        elif path.is_dir():
            out[key] = "dir"
    return out


# -- 1. latest names a run from its first commit -------------------------------------------
def test_latest_names_a_run_from_its_first_commit(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    toy_run(Path("runs/A"), epochs=2)
    assert os.readlink("runs/latest") == "A"

    def stopped(self, reporter, signals):  # B is stopped (SIGTERM) before its first epoch ends
        raise KeyboardInterrupt

    monkeypatch.setattr(loop.Trainer, "fit", stopped)
    result = toy(Path("runs/B"), "--set", "train.epochs=2")
    assert result.exit_code == 130, result.output
    assert os.readlink("runs/latest") == "B"
    assert rundir.resolve_run(None) == Path("runs/B")
    assert rundir.resolve_run("runs/latest") == Path("runs/B")


def test_out_through_a_link_keeps_latest_beside_the_link(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("big/C").mkdir(parents=True)
    Path("runs").mkdir()
    Path("runs/C").symlink_to(tmp_path / "big" / "C")
    assert toy(Path("runs/C"), "--set", "train.epochs=2").exit_code == 0
    assert os.readlink("runs/latest") == "C"
    assert not Path("big/latest").exists() and not Path("big/latest").is_symlink()
    assert rundir.load_bundle(Path("runs/latest")).metadata["best_epoch"] == 2


def test_out_a_dangling_link_says_so(tmp_path):
    link = tmp_path / "run"
    link.symlink_to(tmp_path / "nowhere")
    result = toy(link)
    assert_one_line_error(result, 2, "is a link to")
    assert "which does not exist" in result.stderr and "'latest'" not in result.stderr
    assert not (tmp_path / "nowhere").exists()


# -- 2. --overwrite deletes only what textgen recorded writing -----------------------------
def test_overwrite_keeps_a_hand_written_config_in_the_working_folder(tmp_path, monkeypatch):
    proj = tmp_path / "proj"
    proj.mkdir()
    text = f"# my config, with comments\n{TOY_CONFIG.read_text(encoding='utf-8')}"
    text = text.replace('corpus = "../data/ko-toy.txt"', f'corpus = "{TOY_CORPUS}"')
    (proj / "config.toml").write_text(text, encoding="utf-8")
    before = tree(proj)
    monkeypatch.chdir(proj)
    result = invoke("train", "--config", "config.toml", "--out", ".", "--overwrite", "--quiet")
    assert_one_line_error(result, 2, "holds config.toml, which textgen did not write")
    assert tree(proj) == before  # the config as written, and no .lock left behind
    assert not (tmp_path / "latest").exists()


def test_overwrite_keeps_a_note_inside_logs_and_deletes_nothing(tmp_path):
    run = toy_run(tmp_path / "run", epochs=2)
    assert any((run / "logs").iterdir()), "the run writes TensorBoard files"
    (run / "logs" / "my-notes.md").write_text("note\n", encoding="utf-8")
    before = tree(run)
    result = toy(run, "--overwrite")
    assert_one_line_error(result, 2, "holds logs/my-notes.md, which textgen did not write")
    assert tree(run) == before


def test_overwrite_refuses_a_file_of_textgen_changed_since(tmp_path):
    run = toy_run(tmp_path / "run", epochs=2)
    current = run / rundir.SNAPSHOTS / os.readlink(run / rundir.SNAPSHOTS / rundir.CURRENT)
    history = current / rundir.HISTORY
    data = history.read_bytes()
    history.unlink()  # a new file (not through the hard link), as an editor saves it
    history.write_bytes(data + b"my own row\n")
    before = tree(run)
    result = toy(run, "--overwrite")
    assert_one_line_error(result, 2, "history.csv (changed since textgen wrote it)")
    assert tree(run) == before


@pytest.mark.parametrize("layout", ["links", "copy that followed the links"])
def test_overwrite_of_a_whole_run_deletes_all_it_wrote(tmp_path, layout):
    run = toy_run(tmp_path / "run", epochs=2)
    if layout != "links":
        shutil.copytree(run, tmp_path / "copy", symlinks=False)
        run = tmp_path / "copy"
    old_events = {p.name for p in (run / "logs").iterdir()}
    result = toy(run, "--overwrite", "--set", "train.epochs=1")
    assert result.exit_code == 0, result.output
    assert rundir.load_bundle(run).metadata["best_epoch"] == 1
    assert not old_events & {p.name for p in (run / "logs").iterdir()}
    assert rundir.foreign_entries(run) == []  # all of it recorded: the next one works too


def test_a_refused_new_run_leaves_the_folder_as_it_was(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "my.txt").write_text("mine", encoding="utf-8")
    result = toy(folder)
    assert_one_line_error(result, 2, "already exists")
    assert tree(folder) == {"my.txt": hashlib.sha256(b"mine").hexdigest()}
    result = toy(folder, "--overwrite")
    assert_one_line_error(result, 2, "is not a textgen run directory")
    assert sorted(p.name for p in folder.iterdir()) == ["my.txt"]


def test_foreign_entries_are_named_at_every_depth(tmp_path):
    run = toy_run(tmp_path / "run", epochs=1)
    store = run / rundir.SNAPSHOTS
    (store / "mine").mkdir()
    (store / os.readlink(store / rundir.CURRENT) / "extra.txt").write_text("x")
    with pytest.raises(UsageError, match="which textgen did not write"):
        rundir.clear_run(run)
    names = rundir.foreign_entries(run)
    assert f"{rundir.SNAPSHOTS}/mine" in names
    assert any(n.endswith("/extra.txt") for n in names)
    assert rundir.load_bundle(run).metadata["best_epoch"] == 1  # nothing was deleted


def test_an_event_file_rewritten_by_someone_else_is_refused(tmp_path):
    """TensorBoard files may only have grown since textgen recorded them."""
    run = toy_run(tmp_path / "run", epochs=1)
    event = next((run / "logs").iterdir())
    event.write_bytes(b"not what textgen wrote")
    before = tree(run)
    with pytest.raises(UsageError, match="changed since textgen wrote it"):
        rundir.clear_run(run)
    assert tree(run) == before


# -- 3. copies that followed the links keep every check ------------------------------------
@pytest.mark.parametrize("name", [rundir.MODEL, rundir.STATE, rundir.HISTORY, rundir.WEIGHTS])
def test_damage_in_a_copy_that_followed_the_links_is_refused(tmp_path, name):
    run = toy_run(tmp_path / "run", epochs=2)
    copy = tmp_path / "copy"
    shutil.copytree(run, copy, symlinks=False)  # cp -rL, an unpacked zip
    with open(copy / name, "ab") as fh:
        fh.write(b"appended")
    readers = {
        rundir.MODEL: lambda: rundir.load_keras_model(copy),
        rundir.STATE: lambda: rundir.load_state(copy),
        rundir.HISTORY: lambda: rundir.load_bundle(copy),
        rundir.WEIGHTS: lambda: rundir.load_bundle(copy),
    }
    with pytest.raises(DataError, match=f"{name} does not match its checksum"):
        readers[name]()
    if name == rundir.HISTORY:  # resuming must not add a row to the damaged history
        before = (copy / name).read_bytes()
        result = invoke("train", "--resume", copy, "--quiet", "--set", "train.epochs=3")
        assert_one_line_error(result, 1, "does not match its checksum")
        assert (copy / name).read_bytes() == before


# -- 4. a missing snapshot or manifest is one line, and readers retry ------------------------
@pytest.mark.parametrize("what", ["snapshot", "manifest"])
def test_a_missing_snapshot_or_manifest_is_one_line(tmp_path, what):
    run = toy_run(tmp_path / "run", epochs=1)
    current = run / rundir.SNAPSHOTS / os.readlink(run / rundir.SNAPSHOTS / rundir.CURRENT)
    if what == "snapshot":
        shutil.rmtree(current)
    else:
        (current / rundir.MANIFEST).unlink()
    for command in (("generate", "--model", run, "--seed", "그의"), ("info", run)):
        result = invoke(*command)
        assert_one_line_error(result, 1, "is damaged")
        assert "is missing" in result.stderr
    result = invoke("train", "--resume", run, "--quiet", "--set", "train.epochs=2")
    assert_one_line_error(result, 1, "is damaged")


def test_a_reader_that_loses_the_race_with_two_saves_starts_over(tmp_path, monkeypatch):
    """The manifest of the snapshot a reader resolved vanishes before it is read (two
    saves came in between): the reader resolves ``current`` again."""
    from textgen.rundir import store

    run = toy_run(tmp_path / "run", epochs=1)
    real = os.readlink
    calls = []

    def stale_once(path, *args, **kwargs):
        if str(path).endswith(f"{rundir.SNAPSHOTS}/{rundir.CURRENT}") and not calls:
            calls.append(path)
            return "00000000"  # a snapshot the pruning of two saves removed
        return real(path, *args, **kwargs)

    monkeypatch.setattr(store.os, "readlink", stale_once)
    assert rundir.load_bundle(run).metadata["best_epoch"] == 1
    assert calls, "the stale name was served"


# -- 5. a run follows its corpus by its sha256 ---------------------------------------------
def test_a_run_follows_its_corpus_to_a_new_path_with_the_same_content(tmp_path):
    corpus = tmp_path / "corpus.txt"
    shutil.copy(TOY_CORPUS, corpus)
    config = tmp_path / "toy.toml"
    text = TOY_CONFIG.read_text(encoding="utf-8")
    config.write_text(text.replace('corpus = "../data/ko-toy.txt"', 'corpus = "corpus.txt"'))
    run = tmp_path / "run"
    first = invoke("train", "--config", config, "--out", run, "--quiet", "--set", "train.epochs=2")
    assert first.exit_code == 0, first.output
    moved = tmp_path / "elsewhere" / "same.txt"
    moved.parent.mkdir()
    corpus.rename(moved)

    lost = invoke("train", "--resume", run, "--quiet", "--set", "train.epochs=3")
    assert_one_line_error(lost, 1, "corpus not found")
    assert "--set data.corpus=PATH" in lost.stderr

    other = tmp_path / "other.txt"
    other.write_text(moved.read_text(encoding="utf-8") + "다른 문장\n", encoding="utf-8")
    refused = invoke(
        "train", "--resume", run, "--quiet", "--set", "train.epochs=3", "--set",
        f"data.corpus={other}",
    )  # fmt: skip
    assert_one_line_error(refused, 1, "is not the one")
    assert rundir.load_bundle(run).metadata["best_epoch"] == 2

    followed = invoke(
        "train", "--resume", run, "--quiet", "--set", "train.epochs=3", "--set",
        f"data.corpus={moved}",
    )  # fmt: skip
    assert followed.exit_code == 0, followed.output
    assert rundir.load_bundle(run).config.data.corpus == str(moved.resolve())


# -- 9, 13, 14, 15: the hint, the state's size, the check sample, config.toml --------------
def test_the_hint_for_a_finished_run_counts_from_the_epoch_reached(tmp_path):
    run = toy_run(tmp_path / "run", epochs=4)
    result = invoke("train", "--resume", run, "--quiet", "--set", "train.epochs=2")
    assert_one_line_error(result, 2, "has already trained its 4 epochs")
    assert "--set train.epochs=14" in result.stderr


def test_the_state_does_not_grow_with_the_epochs(tmp_path):
    run = toy_run(tmp_path / "run", epochs=2)
    small = (run / rundir.STATE).stat().st_size
    result = invoke("train", "--resume", run, "--quiet", "--set", "train.epochs=40")
    assert result.exit_code == 0, result.output
    # the same arrays; only the digits of a few numbers (elapsed seconds, counters) differ
    assert abs((run / rundir.STATE).stat().st_size - small) < 100
    _, _, info = rundir.load_state(run)
    assert "history" not in info and len(info["history_csv"].splitlines()) == 41


def test_a_run_without_validation_keeps_its_check_sample_over_a_new_batch_size(tmp_path):
    from .conftest import small_config

    # not the XLA step (the resume's new batch size would compile it again: ~6 s CPU each)
    cfg = small_config(TOY_CORPUS, train={"epochs": 1, "batch_size": 2, "jit_compile": False})
    loop.train(cfg, tmp_path / "run", progress=False, log=lambda _m: None)
    result = invoke(
        "train", "--resume", tmp_path / "run", "--quiet", "--set", "train.epochs=2",
        "--set", "train.batch_size=8",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    _, _, info = rundir.load_state(tmp_path / "run", info_only=True)
    assert info["check_rows"] == 8  # 4 x the batch size the run started with, not 4 x 8


def test_config_toml_shows_the_config_in_force_after_a_resume(tmp_path, monkeypatch):
    from textgen.training.state import TrainState

    run = toy_run(tmp_path / "run", epochs=3)
    real = TrainState.record
    monkeypatch.setattr(TrainState, "record", lambda self, score: real(self, math.inf))
    result = invoke(
        "train", "--resume", run, "--quiet", "--set", "train.epochs=5",
        "--set", "train.learning_rate=0.001",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    bundle = rundir.load_bundle(run)  # checksums, the metadata's record of config included
    assert bundle.metadata["best_epoch"] == 3  # no new best: the bundle is the old one ...
    assert bundle.config.train.epochs == 5  # ... and its config.toml the one in force
    assert bundle.config.train.learning_rate == 0.001


# -- 16. settings the rest of the config makes unused are errors ---------------------------
@pytest.mark.parametrize(
    ("sets", "fragment"),
    [
        (["train.momentum=0.9"], 'train.momentum applies to train.optimizer = "sgd" only'),
        (["data.seq_len=32"], 'data.seq_len applies to data.mode = "stream" only'),
        (["data.valid_corpus=x.txt", "data.val_split=0.3"], "data.val_split is not used"),
    ],
)
def test_a_setting_that_would_be_ignored_is_an_error(tmp_path, sets, fragment):
    args = [a for s in sets for a in ("--set", s)]
    result = toy(tmp_path / "run", *args)
    assert_one_line_error(result, 2, fragment)
    assert not (tmp_path / "run").exists()


def test_eval_valid_follows_a_moved_corpus_by_its_sha256(tmp_path):
    from .conftest import small_config
    from .test_reliability import corpus_file

    corpus = corpus_file(tmp_path)
    train_keys = {"epochs": 1, "jit_compile": False}  # not the XLA step: it costs ~6 s CPU
    cfg = small_config(corpus, data={"val_split": 0.2}, train=train_keys)
    loop.train(cfg, tmp_path / "run", progress=False, log=lambda _m: None)
    scored = invoke("eval", "--model", tmp_path / "run", "--valid", "--format", "json")
    assert scored.exit_code == 0, scored.output
    moved = tmp_path / "moved.txt"
    corpus.rename(moved)
    lost = invoke("eval", "--model", tmp_path / "run", "--valid")
    assert_one_line_error(lost, 1, "corpus not found")
    assert "--corpus PATH" in lost.stderr
    followed = invoke(
        "eval", "--model", tmp_path / "run", "--valid", "--corpus", moved, "--format", "json"
    )
    assert followed.exit_code == 0, followed.output
    assert followed.stdout == scored.stdout
    other = tmp_path / "other.txt"
    other.write_text(moved.read_text(encoding="utf-8") + "more\n", encoding="utf-8")
    refused = invoke("eval", "--model", tmp_path / "run", "--valid", "--corpus", other)
    assert_one_line_error(refused, 1, "is not the file this run was trained on")


def test_a_plot_in_the_run_is_recorded_so_overwrite_replaces_it(tmp_path):
    pytest.importorskip("matplotlib")
    run = toy_run(tmp_path / "run", epochs=2)
    assert invoke("plot", run).exit_code == 0
    assert rundir.foreign_entries(run) == []
    (run / rundir.PLOT).write_bytes(b"my own picture")
    assert rundir.foreign_entries(run) == ["loss.png (changed since textgen wrote it)"]
