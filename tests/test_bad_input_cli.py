"""Every bad-input case of RELIABILITY.md through the command line: its exit code, one
`error:` line on stderr, no traceback, and nothing of the user's touched.

Each row names the case as RELIABILITY.md does. ``{tmp}`` is a fresh folder, ``{run}`` a
copy of the trained toy run, ``{toy}`` the toy config.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from textgen import rundir
from textgen.cli import main

from .conftest import TOY_CONFIG

FILES: dict[str, bytes] = {
    "empty.txt": b"",
    "blank.txt": b"  \n\t\n  \n",
    "latin1.txt": "café crème\n".encode("latin-1"),
    "binary.txt": b"\x00\x01\x02binary\x00",
    "short.txt": b"a b\n",
    "one.txt": b"aaaaaaaaaaaaaaaa",
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
CASES = [
    # corpora
    ("empty corpus", [*TRAIN, "--corpus", "{tmp}/empty.txt"], 1, "is empty"),
    ("whitespace-only corpus", [*TRAIN, "--corpus", "{tmp}/blank.txt"], 1, "is empty"),
    ("non-UTF-8 corpus", [*TRAIN, "--corpus", "{tmp}/latin1.txt"], 1, "not valid utf-8 at byte 3"),
    ("unknown encoding", [*TRAIN, "--encoding", "klingon"], 1, "unknown encoding 'klingon'"),
    ("binary file", [*TRAIN, "--corpus", "{tmp}/binary.txt"], 1, "looks binary (NUL byte)"),
    ("missing corpus", [*TRAIN, "--corpus", "{tmp}/nope.txt"], 1, "corpus not found"),
    ("corpus is a folder", [*TRAIN, "--corpus", "{tmp}"], 1, "is a folder, not a text file"),
    ("corpus is a device", [*TRAIN, "--corpus", "/dev/zero"], 1, "is not a regular file"),
    (
        "corpus shorter than one window",
        [
            *TRAIN,
            "--corpus",
            "{tmp}/short.txt",
            "--set",
            "data.mode=stream",
            "--set",
            "data.seq_len=50",
        ],
        1,
        "too short for one window",
    ),
    (
        "single-token vocabulary",
        [
            *TRAIN,
            "--corpus",
            "{tmp}/one.txt",
            "--set",
            "data.level=char",
            "--set",
            "data.mode=stream",
            "--set",
            "data.seq_len=5",
        ],
        1,
        "has a single distinct token",
    ),
    # configs
    ("unknown config key", ["train", "--config", "{tmp}/key.toml"], 2, "did you mean"),
    ("unknown section", ["train", "--config", "{tmp}/section.toml"], 2, "unknown config section"),
    ("wrong value type", ["train", "--config", "{tmp}/type.toml"], 2, "must be int, got str"),
    ("out-of-range value", ["train", "--config", "{tmp}/range.toml"], 2, "train.epochs must be"),
    ("value outside its choices", ["train", "--config", "{tmp}/choice.toml"], 2, "must be one of"),
    ("missing config", ["train", "--config", "{tmp}/nope.toml"], 2, "config file not found"),
    ("config path that is a folder", ["train", "--config", "{tmp}"], 2, "is a folder"),
    ("invalid TOML", ["train", "--config", "{tmp}/bad.toml"], 2, "not valid TOML"),
    ("config not UTF-8", ["train", "--config", "{tmp}/latin1.toml"], 2, "is not UTF-8"),
    ("malformed --set", [*TRAIN, "--set", "oops"], 2, "--set expects section.key=value"),
    ("unknown --set key", [*TRAIN, "--set", "model.unit=3"], 2, "did you mean 'model.units'"),
    ("negative seed", [*TRAIN, "--set", "train.seed=-1"], 2, "train.seed must be in"),
    (
        "an option the level does not use",
        [*TRAIN, "--set", "data.level=subword", "--set", "data.lowercase=true"],
        2,
        'data.lowercase does not apply to data.level = "subword"',
    ),
    (
        "lowercase at the char level",
        [*TRAIN, "--set", "data.level=char", "--set", "data.lowercase=true"],
        2,
        'data.lowercase does not apply to data.level = "char"',
    ),
    (
        "a subword option at the word level",
        [*TRAIN, "--set", "data.vocab_size=500"],
        2,
        'data.vocab_size does not apply to data.level = "word"',
    ),
    # seeds and decoding options
    ("empty seed", ["generate", "--model", "{run}", "--seed", ""], 2, "the seed is empty"),
    ("seed of unknown tokens", ["generate", "--model", "{run}", "--seed", "안녕"], 1, "no token"),
    (
        "--length 0",
        [*GENERATE, "--length", "0"],
        2,
        "--length must be at least 1",
    ),
    (
        "--length absurd",
        [*GENERATE, "--length", "1000000000000"],
        2,
        "--length must be at most 1,000,000",
    ),
    ("-n 0", [*GENERATE, "-n", "0"], 2, "at least 1"),
    (
        "--temperature 0 when sampling",
        [*GENERATE, "--strategy", "sample", "--temperature", "0"],
        2,
        "--temperature must be > 0",
    ),
    (
        "--top-p outside (0, 1]",
        [*GENERATE, "--top-p", "2"],
        2,
        "--top-p must be in (0, 1]",
    ),
    (
        "--beam-width 0",
        [*GENERATE, "--strategy", "beam", "--beam-width", "0"],
        2,
        "--beam-width must be >= 1",
    ),
    # runs
    ("no trained run", ["generate", "--seed", "x"], 1, "no trained run found"),
    ("missing run directory", ["generate", "--model", "{tmp}/nope", "--seed", "x"], 1, "not found"),
    ("existing --out", ["train", "--config", "{toy}", "--out", "{run}"], 2, "already exists"),
    ("--resume of a missing run", ["train", "--resume", "{tmp}/nope"], 1, "not found"),
    ("--resume without state", ["train", "--resume", "{tmp}"], 1, "has no resumable state"),
    (
        "--resume with --config",
        ["train", "--resume", "{run}", "--config", "{toy}"],
        2,
        "only --set",
    ),
    ("train with neither", ["train"], 2, "give --config FILE (or --resume RUN_DIR)"),
    (
        "--resume of a finished run",
        ["train", "--resume", "{run}", "--quiet"],
        2,
        "has already trained its 150 epochs",
    ),
    (
        "--resume changing the level",
        ["train", "--resume", "{run}", "--set", "data.level=char"],
        2,
        "--set data.level cannot change when resuming",
    ),
]


def damage(kind: str, run: Path) -> str:
    """Damage the copied run as ``kind`` says; return the expected message."""
    snap = rundir.current_snapshot(run)
    if kind == "run directory with a missing file":
        (snap.folder / "weights.npz").unlink()
        return "is incomplete: missing weights.npz"
    if kind == "corrupt weights (checksum)":
        (snap.folder / "weights.npz").write_bytes(b"garbage")
        return "weights.npz does not match its checksum"
    if kind == "corrupt metadata":
        (snap.folder / "metadata.json").write_bytes(b"{not json")
        return "metadata.json does not match its checksum"
    if kind == "corrupt manifest":
        (snap.folder / "manifest.json").write_bytes(b"{not json")
        return "manifest.json is corrupt"
    if kind == "run from a newer format version":
        manifest = json.loads((snap.folder / "manifest.json").read_text())
        (snap.folder / "manifest.json").write_text(json.dumps(manifest | {"format_version": 9}))
        return "was written by a newer textgen; upgrade textgen"
    if kind == "truncated state":
        with open(snap.folder / "last.npz", "r+b") as fh:
            fh.truncate(100)
        return "last.npz does not match its checksum"
    raise AssertionError(kind)


DAMAGE = [
    ("run directory with a missing file", GENERATE),
    ("corrupt weights (checksum)", GENERATE),
    ("corrupt metadata", ["info", "{run}"]),
    ("corrupt manifest", ["eval", "--model", "{run}", "{toy_corpus}"]),
    ("run from a newer format version", GENERATE),
    ("truncated state", ["train", "--resume", "{run}", "--set", "train.epochs=200"]),
]


@pytest.fixture
def places(tmp_path, toy_run, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no runs/latest here
    folder = tmp_path / "in"
    folder.mkdir()
    for name, data in FILES.items():
        (folder / name).write_bytes(data)
    run = tmp_path / "run"
    shutil.copytree(toy_run, run, symlinks=True)
    return {
        "tmp": str(folder), "run": str(run), "toy": str(TOY_CONFIG),
        "toy_corpus": str(TOY_CONFIG.parent.parent / "data" / "ko-toy.txt"),
    }  # fmt: skip


def check(args: list[str], places: dict[str, str], code: int, message: str) -> None:
    before = sorted(p.name for p in Path(places["tmp"]).iterdir())
    result = CliRunner().invoke(main, [a.format(**places) for a in args])
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert sorted(p.name for p in Path(places["tmp"]).iterdir()) == before  # nothing written


@pytest.mark.parametrize(("case", "args", "code", "message"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line(places, case, args, code, message):
    check(args, places, code, message)


@pytest.mark.parametrize(("case", "args"), DAMAGE, ids=[c[0] for c in DAMAGE])
def test_a_damaged_run_is_one_line(places, case, args):
    message = damage(case, Path(places["run"]))
    check(args, places, 1, message)
