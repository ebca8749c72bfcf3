"""Every bad-input case of RELIABILITY.md ("Bad input") through the command line: its exit
code, exactly one `error:` line on stderr, equal to the message the case must give, no
traceback, and nothing touched: every file under the test's folder (the inputs, the copied
run, the working folder) keeps its bytes, every link its target.

Each row names the case as RELIABILITY.md does (a case of several parts has a row per
part). ``{tmp}`` is a folder of bad inputs, ``{run}`` a copy of the trained toy run,
``{toy}`` the toy config, ``{cwd}`` the working folder. A row may set things up first
(damage the run, hold its lock, lower a limit so that a 256 MB line costs a megabyte).
:data:`ELSEWHERE` names the cases no command line here can reach and the test that runs
each; :func:`test_every_case_of_reliability_md_is_run` keeps this file and the list in
RELIABILITY.md the same.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from textgen import rundir
from textgen.cli import main
from textgen.corpus import examples as examples_mod
from textgen.corpus import read as read_mod
from textgen.rundir import store
from textgen.text import stream as stream_mod

from .conftest import ROOT, TOY_CONFIG

FILES: dict[str, bytes] = {
    "empty.txt": b"",
    "blank.txt": b"  \n\t\n  \n",
    "latin1.txt": "café crème\n".encode("latin-1"),
    "binary.txt": b"\x00\x01\x02binary\x00",
    "short.txt": b"a b\n",
    "one.txt": b"aaaaaaaaaaaaaaaa",
    "other.txt": "그의 말이 법이다\n".encode() * 3,  # not the toy's text
    "bad.toml": b"[train\nepochs = 3\n",
    "section.toml": b"[modle]\nunits = 3\n",
    "type.toml": b'[train]\nepochs = "ten"\n',
    "range.toml": b"[train]\nepochs = 0\n",
    "choice.toml": b'[model]\ncell = "transformer"\n',
    "key.toml": b"[train]\nepoch = 3\n",
    "latin1.toml": "# café\n".encode("latin-1"),
}

TRAIN = ["train", "--config", "{toy}", "--out", "{tmp}/out", "--quiet"]
GENERATE = ["generate", "--model", "{run}", "--seed", "그의"]
RESUME = ["train", "--resume", "{run}", "--quiet"]
STREAM = ["--set", "data.mode=stream"]
Setup = Callable[[dict[str, str], pytest.MonkeyPatch, contextlib.ExitStack], None]


# -- set-ups: what a row does before its command -----------------------------------------
def in_snapshot(places: dict[str, str]) -> Path:
    return rundir.current_snapshot(Path(places["run"])).folder


def remove_weights(places, _mp, _stack) -> None:
    (in_snapshot(places) / "weights.npz").unlink()


def garbage_weights(places, _mp, _stack) -> None:
    (in_snapshot(places) / "weights.npz").write_bytes(b"garbage")


def garbage_metadata(places, _mp, _stack) -> None:
    (in_snapshot(places) / "metadata.json").write_bytes(b"{not json")


def garbage_manifest(places, _mp, _stack) -> None:
    (in_snapshot(places) / "manifest.json").write_bytes(b"{not json")


def newer_manifest(places, _mp, _stack) -> None:
    path = in_snapshot(places) / "manifest.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | {"format_version": 9}))


def newer_tokenizer(places, _mp, _stack) -> None:
    from .test_claims import replace_in_snapshot

    run = Path(places["run"])
    data = json.loads((run / "tokenizer.json").read_text(encoding="utf-8"))
    data["format_version"] = 99
    replace_in_snapshot(run, "tokenizer.json", json.dumps(data).encode())


def truncated_state(places, _mp, _stack) -> None:
    with open(in_snapshot(places) / "last.npz", "r+b") as fh:
        fh.truncate(100)


def pickled_weights(places, _mp, _stack) -> None:
    from .test_claims import _with_a_pickled_array, replace_in_snapshot

    run = Path(places["run"])
    marker = Path(places["cwd"]) / "unpickled"  # would show as a file touched
    planted = _with_a_pickled_array(in_snapshot(places) / "weights.npz", "embedding", marker)
    replace_in_snapshot(run, "weights.npz", planted)


def full_disk(_places, monkeypatch, _stack) -> None:
    real = store._write_synced

    def write(path, fill):
        if Path(path).name == rundir.WEIGHTS:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, fill)

    monkeypatch.setattr(store, "_write_synced", write)


def remove_current_snapshot(places, _mp, _stack) -> None:
    folder = in_snapshot(places)
    shutil.rmtree(folder)
    places["snapshot"] = folder.name


def dangling_out(places, _mp, _stack) -> None:
    (Path(places["tmp"]) / "dangling").symlink_to(Path(places["tmp"]) / "nowhere")


def held_lock(places, _mp, stack) -> None:
    stack.enter_context(rundir.RunLock(Path(places["run"])))  # this process, another fd
    places["pid"] = str(os.getpid())


def a_long_line(places, monkeypatch, _stack) -> None:
    monkeypatch.setattr(read_mod, "BLOCK", 64 << 10)
    monkeypatch.setattr(read_mod, "MAX_LINE_BYTES", 1 << 20)  # 256 MB costs 1 MB here
    (Path(places["tmp"]) / "long.txt").write_bytes(b"short\n" + b"x" * (2 << 20) + b"\n")


def many_words(places, monkeypatch, _stack) -> None:
    monkeypatch.setattr(stream_mod, "MAX_DISTINCT", 1000)  # 5 million costs 2,000 here
    text = "\n".join(f"u{i} v{i}" for i in range(1000))
    (Path(places["tmp"]) / "words.txt").write_text(text, encoding="utf-8")


def one_huge_line(places, monkeypatch, _stack) -> None:
    monkeypatch.setattr(examples_mod, "MAX_PADDED_IDS", 10_000)  # 1 GB costs 10,000 ids
    lines = ["a b c"] * 50
    lines[7] = " ".join(["a"] * 5000)
    (Path(places["tmp"]) / "huge.txt").write_text("\n".join(lines), encoding="utf-8")


# (case, command, exit code, the error line without "error: ", set-up)
CASES: list[tuple[str, list[str], int, str, Setup | None]] = [
    # corpora
    ("empty corpus", [*TRAIN, "--corpus", "{tmp}/empty.txt"], 1,
     "corpus {tmp}/empty.txt is empty (no text besides whitespace)", None),
    ("whitespace-only corpus", [*TRAIN, "--corpus", "{tmp}/blank.txt"], 1,
     "corpus {tmp}/blank.txt is empty (no text besides whitespace)", None),
    ("non-UTF-8 corpus", [*TRAIN, "--corpus", "{tmp}/latin1.txt"], 1,
     "corpus {tmp}/latin1.txt is not valid utf-8 at byte 3 (0xe9); convert it or pass "
     "--encoding", None),
    ("unknown encoding", [*TRAIN, "--encoding", "klingon"], 1,
     "unknown encoding 'klingon'", None),
    ("binary file", [*TRAIN, "--corpus", "{tmp}/binary.txt"], 1,
     "corpus {tmp}/binary.txt looks binary (NUL byte); give a text file", None),
    ("missing corpus", [*TRAIN, "--corpus", "{tmp}/nope.txt"], 1,
     "corpus not found: {tmp}/nope.txt", None),
    ("corpus that is a folder", [*TRAIN, "--corpus", "{tmp}"], 1,
     "corpus {tmp} is a folder, not a text file", None),
    ("corpus that is a device", [*TRAIN, "--corpus", "/dev/zero"], 1,
     "corpus /dev/zero is not a regular file (a device or a pipe); give a text file", None),
    ("a corpus shorter than one window",
     [*TRAIN, "--corpus", "{tmp}/short.txt", *STREAM, "--set", "data.seq_len=50"], 1,
     "corpus {tmp}/short.txt is too short for one window: 3 training tokens, data.seq_len = 50 "
     "needs 51", None),
    ("a single-token vocabulary",
     [*TRAIN, "--corpus", "{tmp}/one.txt", "--set", "data.level=char", *STREAM,
      "--set", "data.seq_len=5"], 1,
     "corpus {tmp}/one.txt has a single distinct token ('a'); a language model needs at least two",
     None),
    ("a stream line over 256 MB",
     ["prepare", "--config", "{toy}", "--corpus", "{tmp}/long.txt", *STREAM, "--quiet"], 1,
     "corpus {tmp}/long.txt has a line longer than 1 MB; stream-mode text needs line breaks",
     a_long_line),
    ("more than 5 million distinct words",
     ["prepare", "--config", "{toy}", "--corpus", "{tmp}/words.txt", *STREAM, "--quiet"], 1,
     "the corpus has more than 1,000 distinct tokens; a word vocabulary that large does not "
     'fit a model: use data.level = "subword" (or clean the text)', many_words),
    ("padding to one huge line", [*TRAIN, "--corpus", "{tmp}/huge.txt"], 1,
     "corpus {tmp}/huge.txt: non-blank line 8 has 5,000 tokens, and padding all 50 lines to "
     "it needs 0.0 GB; set data.max_len (e.g. 200) to cut long lines into pieces",
     one_huge_line),
    # configs
    ("unknown config key", ["train", "--config", "{tmp}/key.toml"], 2,
     "unknown config key 'train.epoch' (did you mean 'train.epochs'?)", None),
    ("unknown section", ["train", "--config", "{tmp}/section.toml"], 2,
     "unknown config section '[modle]' (did you mean 'model'?)", None),
    ("wrong value type", ["train", "--config", "{tmp}/type.toml"], 2,
     "config key 'train.epochs' must be int, got str 'ten'", None),
    ("out-of-range value", ["train", "--config", "{tmp}/range.toml"], 2,
     "train.epochs must be >= 1", None),
    ("value outside its choices", ["train", "--config", "{tmp}/choice.toml"], 2,
     "config key 'model.cell' must be one of lstm, gru, rnn; got 'transformer'", None),
    ("missing config", ["train", "--config", "{tmp}/nope.toml"], 2,
     "config file not found: {tmp}/nope.toml", None),
    ("config path that is a folder", ["train", "--config", "{tmp}"], 2,
     "config {tmp} is a folder, not a TOML file", None),
    ("invalid TOML", ["train", "--config", "{tmp}/bad.toml"], 2,
     "{tmp}/bad.toml: not valid TOML: Expected ']' at the end of a table declaration "
     "(at line 1, column 7)", None),
    ("config not UTF-8", ["train", "--config", "{tmp}/latin1.toml"], 2,
     "config {tmp}/latin1.toml is not UTF-8 (byte 5)", None),
    ("malformed --set", [*TRAIN, "--set", "oops"], 2,
     "--set expects section.key=value, got 'oops'", None),
    ("unknown --set key", [*TRAIN, "--set", "model.unit=3"], 2,
     "unknown config key 'model.unit' (did you mean 'model.units'?)", None),
    ("negative seed", [*TRAIN, "--set", "train.seed=-1"], 2,
     "train.seed must be in [0, 2**32)", None),
    ("a tokenizer option the level does not use",
     [*TRAIN, "--set", "data.level=subword", "--set", "data.lowercase=true"], 2,
     'data.lowercase does not apply to data.level = "subword" (it would be ignored); remove it',
     None),
    ("lowercase at the char level",
     [*TRAIN, "--set", "data.level=char", "--set", "data.lowercase=true"], 2,
     'data.lowercase does not apply to data.level = "char" (it would be ignored); remove it',
     None),
    ("a subword option at the word level", [*TRAIN, "--set", "data.vocab_size=500"], 2,
     'data.vocab_size does not apply to data.level = "word" (it would be ignored); remove it',
     None),
    ("a setting the rest of the config makes unused", [*TRAIN, "--set", "train.momentum=0.9"],
     2, 'train.momentum applies to train.optimizer = "sgd" only (got \'adam\': it would be '
     "ignored); remove it", None),
    # seeds and decoding options
    ("empty seed", ["generate", "--model", "{run}", "--seed", ""], 2,
     'the seed is empty; give at least one token, e.g. --seed "The"', None),
    ("seed made only of unknown tokens", ["generate", "--model", "{run}", "--seed", "안녕"], 1,
     "no token of the seed is in the model's vocabulary: '안녕'", None),
    ("--length 0", [*GENERATE, "--length", "0"], 2, "--length must be at least 1, got 0", None),
    ("--length negative", [*GENERATE, "--length", "-5"], 2,
     "--length must be at least 1, got -5", None),
    ("-n 0", [*GENERATE, "-n", "0"], 2, "-n/--num-samples must be at least 1, got 0", None),
    ("--temperature 0 when sampling", [*GENERATE, "--strategy", "sample", "--temperature", "0"],
     2, "--temperature must be > 0 when sampling, got 0.0 (use --strategy greedy for argmax)",
     None),
    ("--temperature negative when sampling",
     [*GENERATE, "--strategy", "sample", "--temperature", "-1"], 2,
     "--temperature must be > 0 when sampling, got -1.0 (use --strategy greedy for argmax)",
     None),
    ("--top-p above 1", [*GENERATE, "--top-p", "2"], 2, "--top-p must be in (0, 1], got 2.0", None),
    ("--top-p 0", [*GENERATE, "--top-p", "0"], 2, "--top-p must be in (0, 1], got 0.0", None),
    ("--beam-width 0", [*GENERATE, "--strategy", "beam", "--beam-width", "0"], 2,
     "--beam-width must be >= 1, got 0", None),
    ("--length too large to hold", [*GENERATE, "--length", "1000000000000"], 2,
     "--length must be at most 1,000,000, got 1,000,000,000,000", None),
    ("-n too large to hold", [*GENERATE, "-n", "100000"], 2,
     "-n/--num-samples must be at most 10,000, got 100,000", None),
    ("-n × --length too large to hold", [*GENERATE, "-n", "10000", "--length", "1000000"], 2,
     "-n × --length must be at most 10,000,000 tokens, got 10,000 × 1,000,000; ask for fewer "
     "or shorter texts", None),
    ("--beam-width too large", [*GENERATE, "--strategy", "beam", "--beam-width", "5000"], 2,
     "--beam-width must be at most 1,000, got 5,000", None),
    ("-n above --beam-width", [*GENERATE, "--strategy", "beam", "--beam-width", "2", "-n", "3"],
     2, "-n 3 is more than --beam-width 2: a beam search keeps at most --beam-width texts; "
     "raise --beam-width or lower -n", None),
    # runs
    ("no trained run", ["generate", "--seed", "x"], 1,
     "no trained run found (runs/latest does not exist); train one with "
     "'textgen train --config FILE' or pass --model RUN_DIR", None),
    ("missing run directory", ["generate", "--model", "{tmp}/nope", "--seed", "x"], 1,
     "run directory not found: {tmp}/nope", None),
    ("run directory with a missing file", GENERATE, 1,
     "run directory {run} is incomplete: missing weights.npz", remove_weights),
    ("corrupt weights (checksum)", GENERATE, 1,
     "{run}/weights.npz does not match its checksum; the file is corrupt", garbage_weights),
    ("corrupt metadata", ["info", "{run}"], 1,
     "{run}/metadata.json does not match its checksum; the file is corrupt", garbage_metadata),
    ("damaged manifest", ["eval", "--model", "{run}", "{toy_corpus}"], 1,
     "{run}/.snapshots/00000151/manifest.json is corrupt (JSONDecodeError); the run cannot "
     "be read", garbage_manifest),
    ("run from a newer format version", GENERATE, 1,
     "{run} was written by a newer textgen; upgrade textgen", newer_manifest),
    ("tokenizer from a newer format version", GENERATE, 1,
     "{run}/.snapshots/00000151/tokenizer.json: format version 99 is newer than this textgen "
     "supports (1); upgrade textgen", newer_tokenizer),
    ("truncated last.npz", [*RESUME, "--set", "train.epochs=200"], 1,
     "{run}/last.npz does not match its checksum; the file is corrupt", truncated_state),
    ("pickled arrays", GENERATE, 1,
     "{run}/weights.npz is not a readable weights file (Object arrays cannot be loaded when "
     "allow_pickle=False)", pickled_weights),
    ("--out naming an existing run", ["train", "--config", "{toy}", "--out", "{run}"], 2,
     "run directory {run} already exists; pass --overwrite to replace it, --resume {run} to "
     "continue it, or --out to choose another", None),
    ("--overwrite of a folder with other files",
     ["train", "--config", "{toy}", "--out", "{tmp}", "--overwrite"], 2,
     "{tmp} is not empty and is not a textgen run directory; refusing to delete it with "
     "--overwrite", None),
    ("a missing snapshot", GENERATE, 1,
     "run directory {run} is damaged: .snapshots/{snapshot}/manifest.json is missing",
     remove_current_snapshot),
    ("--out a dangling link", ["train", "--config", "{toy}", "--out", "{tmp}/dangling"], 2,
     "--out {tmp}/dangling is a link to {tmp}/nowhere, which does not exist; create that "
     "folder or choose another --out", dangling_out),
    ("--out latest", ["train", "--config", "{toy}", "--out", "{tmp}/latest"], 2,
     "--out {tmp}/latest: 'latest' is the link to the most recent run; choose another name",
     None),
    ("--resume of a missing run", ["train", "--resume", "{tmp}/nope"], 1,
     "run directory not found: {tmp}/nope", None),
    ("--resume of a run without state", ["train", "--resume", "{tmp}"], 1,
     "{tmp} has no resumable state (last.npz); it cannot be resumed", None),
    ("--resume with a changed corpus", [*RESUME, "--set", "data.corpus={tmp}/other.txt"], 1,
     "--set data.corpus={tmp}/other.txt: that file is not the one {run} was trained on (sha256 "
     "{other_sha}…, the run recorded {toy_sha}…); cannot resume", None),
    ("--resume with --config", ["train", "--resume", "{run}", "--config", "{toy}"], 2,
     "--resume takes the run's own config; only --set may go with it", None),
    ("train with neither --config nor --resume", ["train"], 2,
     "give --config FILE (or --resume RUN_DIR)", None),
    ("a resume that changes data", [*RESUME, "--set", "data.level=char"], 2,
     "--set data.level cannot change when resuming: {run} was trained with "
     "data.level = 'word'; start a new run (--out) to change it", None),
    ("a resume that changes the model", [*RESUME, "--set", "model.units=64"], 2,
     "--set model.units cannot change when resuming: {run} was trained with "
     "model.units = 32; start a new run (--out) to change it", None),
    ("a resume that changes the optimizer", [*RESUME, "--set", "train.optimizer=sgd"], 2,
     "--set train.optimizer cannot change when resuming: {run} was trained with "
     "train.optimizer = 'adam'; start a new run (--out) to change it", None),
    ("a resume that changes the seed", [*RESUME, "--set", "train.seed=1"], 2,
     "--set train.seed cannot change when resuming: {run} was trained with "
     "train.seed = 42; start a new run (--out) to change it", None),
    ("a resume of a finished run", RESUME, 2,
     "{run} has already trained its 150 epochs; to go on, raise them: "
     "textgen train --resume {run} --set train.epochs=160", None),
    ("a run in use by another process", [*RESUME, "--set", "train.epochs=151"], 1,
     "{run} is in use by another textgen process (pid {pid}); wait for it to finish or stop "
     "it first", held_lock),
    ("full disk during a save", [*RESUME, "--set", "train.epochs=151"], 1,
     "could not write to {run}: No space left on device; the previous checkpoint is intact",
     full_disk),
]  # fmt: skip

# a case may change these, and only these, while being refused
MAY_CHANGE = {  # the resume started: `latest` names it, TensorBoard logged the epoch that ran
    "full disk during a save": ("latest", "run/logs/"),
}

# cases that are reported and carried on with, not refused: exit 0 and the note on stderr
REPORTED = [
    ("a line longer than max_len",
     ["train", "--config", "{toy}", "--corpus", "{tmp}/longline.txt", "--out", "{cwd}/r",
      "--set", "data.max_len=8", "--set", "train.epochs=1"],
     "note: 2 lines longer than data.max_len were cut into overlapping pieces"),
    ("seed with some unknown tokens", ["generate", "--model", "{run}", "--seed", "그의 안녕"],
     "not in the vocabulary, read as <unk>: '안녕'"),
]  # fmt: skip

# cases no command line can reach, and the test that runs each
ELSEWHERE = {
    "corrupt model.keras":
        "tests/test_run_dir.py::test_a_damaged_model_keras_is_refused_by_its_checksum "
        "(no command loads model.keras; rundir.load_keras_model does)",
    "a model.keras with code (safe_mode)":
        "tests/test_claims.py::test_a_model_keras_with_code_is_refused_by_safe_mode "
        "(no command loads model.keras; rundir.load_keras_model does)",
    "eval --valid whose corpus is not the trained file":
        "tests/test_run_dir.py::test_eval_valid_refuses_a_corpus_that_is_not_the_trained_one "
        "(through the command line, on a run it trains with a validation split)",
}  # fmt: skip


@pytest.fixture
def places(tmp_path, toy_run, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no runs/latest here
    folder = tmp_path / "in"
    folder.mkdir()
    for name, data in FILES.items():
        (folder / name).write_bytes(data)
    run = tmp_path / "run"
    shutil.copytree(toy_run, run, symlinks=True)
    toy_corpus = TOY_CONFIG.parent.parent / "data" / "ko-toy.txt"
    return {
        "tmp": str(folder), "run": str(run), "toy": str(TOY_CONFIG), "cwd": str(tmp_path),
        "toy_corpus": str(toy_corpus),
        "toy_sha": hashlib.sha256(toy_corpus.read_bytes()).hexdigest()[:12],
        "other_sha": hashlib.sha256(FILES["other.txt"]).hexdigest()[:12],
    }  # fmt: skip


def everything(folder: Path) -> dict[str, str]:
    """Every entry under ``folder`` (links not followed) → the sha256 of a file's bytes,
    a link's target, or "folder"."""
    found = {}
    for parent, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(parent) / name
            key = path.relative_to(folder).as_posix()
            if path.is_symlink():
                found[key] = "-> " + os.readlink(path)
            elif path.is_dir():
                found[key] = "folder"
            else:
                found[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def check(args, places, code: int, message: str, may_change: tuple[str, ...] = ()) -> None:
    root = Path(places["cwd"])
    before = everything(root)
    result = CliRunner().invoke(main, [a.format(**places) for a in args])
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert errors[0] == f"error: {message.format(**places)}"  # the whole line
    after = everything(root)
    if may_change:
        before = {k: v for k, v in before.items() if not k.startswith(may_change)}
        after = {k: v for k, v in after.items() if not k.startswith(may_change)}
    assert after == before  # nothing written, removed or changed


@pytest.mark.parametrize(
    ("case", "args", "code", "message", "setup"), CASES, ids=[c[0] for c in CASES]
)
def test_bad_input_is_one_line(places, monkeypatch, case, args, code, message, setup):
    with contextlib.ExitStack() as stack:
        if setup is not None:
            setup(places, monkeypatch, stack)
        check(args, places, code, message, MAY_CHANGE.get(case, ()))


@pytest.mark.parametrize(("case", "args", "note"), REPORTED, ids=[c[0] for c in REPORTED])
def test_reported_cases_carry_on(places, case, args, note):
    words = " ".join(f"w{i % 5}" for i in range(20))
    (Path(places["tmp"]) / "longline.txt").write_text(f"a b c\n{words}\nb c a\n{words}\n")
    result = CliRunner().invoke(main, [a.format(**places) for a in args])
    assert result.exit_code == 0, result.output
    assert note in result.stderr and "error:" not in result.stderr, result.stderr


def test_every_case_of_reliability_md_is_run():
    """The list under "Bad input" in RELIABILITY.md, item by item, against the rows here:
    each item is a row (or rows, one per part), a reported case, or named in ELSEWHERE."""
    text = (ROOT / "RELIABILITY.md").read_text(encoding="utf-8")
    listed = text.split("## Bad input", 1)[1].split("\n\n")[2]
    items = [re.sub(r"\s+", " ", item).strip(" .").replace("`", "") for item in listed.split("·")]
    rows = {c[0] for c in CASES} | {c[0] for c in REPORTED} | set(ELSEWHERE)
    parts = {  # an item of several cases → its rows
        "non-UTF-8 corpus (byte offset and the byte; --encoding)": ["non-UTF-8 corpus"],
        "unknown config key (nearest key suggested)": ["unknown config key"],
        "seed with some unknown tokens (warning naming them, continues with <unk>)": [
            "seed with some unknown tokens"],
        "a line longer than max_len (cut into overlapping pieces, reported)": [
            "a line longer than max_len"],
        "--length 0 or negative": ["--length 0", "--length negative"],
        "-n 0": ["-n 0"],
        "--temperature ≤ 0 when sampling": [
            "--temperature 0 when sampling", "--temperature negative when sampling"],
        "--top-p outside (0, 1]": ["--top-p above 1", "--top-p 0"],
        "--beam-width 0": ["--beam-width 0"],
        "--out naming an existing run (refused unless --overwrite)": [
            "--out naming an existing run"],
        "--resume of a missing run, of a run without state, with a changed corpus, or with "
        "--config": ["--resume of a missing run", "--resume of a run without state",
                       "--resume with a changed corpus", "--resume with --config"],
        "train with neither --config nor --resume": [
            "train with neither --config nor --resume"],
        "corpus that is a folder or a device": [
            "corpus that is a folder", "corpus that is a device"],
        "--length or -n too large to hold": [
            "--length too large to hold", "-n too large to hold"],
        "a resume that changes data/model/optimizer/seed": [
            "a resume that changes data", "a resume that changes the model",
            "a resume that changes the optimizer", "a resume that changes the seed"],
        "--overwrite of a folder with other files": ["--overwrite of a folder with other files"],
        "--out latest": ["--out latest"],
        "truncated or damaged last.npz, model.keras, manifest": [
            "truncated last.npz", "corrupt model.keras", "damaged manifest"],
        "a tokenizer option the level does not use (named, never ignored; lowercase at the "
        "char level too)": ["a tokenizer option the level does not use",
                            "lowercase at the char level"],
    }  # fmt: skip
    for where in ELSEWHERE.values():  # the tests named there exist
        path, name = where.split(" ", 1)[0].split("::")
        assert f"def {name}(" in (ROOT / path).read_text(encoding="utf-8"), where
    missing = [item for item in items if not set(parts.get(item, [item])) <= rows]
    assert missing == [], f"RELIABILITY.md lists cases no test here runs: {missing}"
    assert len(CASES) + len(REPORTED) + len(ELSEWHERE) >= len(items)
