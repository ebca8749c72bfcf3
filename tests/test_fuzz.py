"""Fuzz the command line with hostile input; every invocation keeps the properties of
:mod:`tests.fuzz_support` (exit 0 or a one-line ``error:`` with exit 1/2, no traceback,
bounded memory and time, no change outside the run directory it was given).

The areas, each a hypothesis test drawing whole cases, and each case a function that can
also run a hand-written case:

- ``generate``: seeds of any Unicode, invalid UTF-8 and NUL through stdin and seeds files,
  huge seeds, special-token spellings, NFD text and odd whitespace; every option at and
  past its bounds (numbers, NaN and infinities, words where numbers go);
- reader commands (``info``, ``eval``, ``plot``) with odd run paths, corpora and ``--out``;
- damaged run directories: each file, link and folder of a run (at the top, in
  ``.snapshots/<current>/`` and its ``manifest.json``) removed, truncated, appended to,
  flipped, swapped, replaced by a link or a folder or a FIFO, in a ``cp -r`` copy and a
  ``cp -rL`` copy; then every reader and ``train --resume``;
- configs: random keys, types and ranges in TOML files and ``--set``;
- corpora: random bytes, encodings and line endings through ``prepare``, ``eval`` and
  ``train``;
- ``--out`` targets: links, files, folders with foreign contents, ``.``, ``latest``, with
  and without ``--overwrite``;
- real subprocesses: SIGINT and SIGTERM to ``generate`` waiting on a pipe and to a
  training run (with a reader racing its saves), a closed stdout, and a terminal (pty)
  against a pipe.

Besides the properties of every invocation, each area checks the rules the README and
issue #21 state for it (named in the messages). ``test_known`` replays each defect the
review found by hand (and each one this fuzz found) as a fixed case.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pty
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
import tomllib
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from . import fuzz_support as fz
from .conftest import TOY_CONFIG, TOY_CORPUS, TOY_SENTENCES
from .fuzz_support import Sandbox, check, fail, invoke

pytestmark = pytest.mark.fuzz

TOY_WORDS = sorted({w for s in TOY_SENTENCES for w in s.split()})
SYLLABLES = sorted({c for s in TOY_SENTENCES for c in s if not c.isspace()})
MAX_LENGTH, MAX_SAMPLES = 1_000_000, 10_000  # generate's documented limits
TOY_EPOCHS = 150  # configs/ko-toy.toml
GENERATE_TIME = 10.0  # seconds a generate on a toy model may take
LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


def nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def nfd(text: str) -> str:
    return unicodedata.normalize("NFD", text)


# -- templates: the runs every case starts from ---------------------------------------------
@dataclass
class Templates:
    base: Path  # hashed by every case: nothing may change it
    cases: Path  # where each case gets its Sandbox (not hashed)
    word: Path  # the toy run (word level, lines mode, 150 epochs), a cp -r copy
    deref: Path  # the same as cp -rL makes it (links followed)
    jamo: Path  # char level, NFD (jamo), stream mode
    corpus: Path  # the toy corpus
    config: Path  # a tiny config over ``corpus``: one epoch of a 4-unit model

    def run(self, name: str) -> Path:
        return {"word": self.word, "deref": self.deref, "jamo": self.jamo}[name]


TINY_CONFIG = """\
[data]
corpus = "{corpus}"
val_split = 0.0
[model]
embedding_dim = 4
units = 4
[train]
epochs = 1
batch_size = 4
jit_compile = false
"""


@pytest.fixture(scope="module")
def templates(toy_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    base = tmp_path_factory.mktemp("fuzz-templates")
    cases = tmp_path_factory.mktemp("fuzz-cases")
    word = fz.copy_run(toy_run, base / "word")
    deref = fz.copy_run(toy_run, base / "deref", follow_links=True)
    corpus = base / "ko-toy.txt"
    shutil.copyfile(TOY_CORPUS, corpus)
    config = base / "tiny.toml"
    config.write_text(TINY_CONFIG.format(corpus=corpus), encoding="utf-8")
    jamo = base / "jamo"
    sets = {
        "data.level": "char", "data.normalize": "nfd", "data.mode": "stream",
        "data.seq_len": 16, "train.epochs": 15, "train.batch_size": 1,
        "train.learning_rate": 0.01,
    }  # fmt: skip
    args = ["train", "--config", str(TOY_CONFIG), "--out", str(jamo), "--quiet"]
    for key, value in sets.items():
        args += ["--set", f"{key}={value}"]
    from click.testing import CliRunner

    result = CliRunner().invoke(fz.cli_main(), args)
    assert result.exit_code == 0, (result.stderr, result.exception)
    (base / "latest").unlink(missing_ok=True)
    yield Templates(base, cases, word, deref, jamo, corpus, config)
    fz.write_report()
    print("\n" + "\n".join(f"fuzz {k} = {v}" for k, v in sorted(fz.STATS.items())))


def end_of_test(name: str) -> None:
    """In the long profile: fail at the end of a test with every failure it recorded."""
    fz.write_report()
    if fz.recorded(name):
        pytest.fail(fz.summary(name), pytrace=False)


def roots(t: Templates, box: Sandbox) -> list[Path]:
    return [box.root, t.base]


# ==========================================================================================
# generate
# ==========================================================================================
SPECIAL_SPELLINGS = ["<eos>", "<unk>", "<pad>", "<bos>", "<EOS>", "<s>", "</s>", "<eos><eos>"]
SPACES = [" ", " ", " ", "  ", "\t", "\u3000", "\u00a0", "\u200b", "\n", "\r\n", "\x0b", "\x1c"]
OTHER_WORDS = ["안녕", "말", "곱", "xyz", "ROMEO:", "말이다", "\u1100\u1161", "ea", "<", ">"]

known_word = st.sampled_from(TOY_WORDS)
word_like = st.one_of(
    known_word,
    known_word.map(nfd),
    st.sampled_from(SPECIAL_SPELLINGS),
    st.sampled_from(OTHER_WORDS),
    st.text(min_size=1, max_size=6),
)


ANY_SPACE = st.sampled_from(SPACES)


@st.composite
def worded(draw: Any, words: Any = word_like, spaces: Any = ANY_SPACE) -> str:
    parts = draw(st.lists(st.tuples(words, spaces), min_size=1, max_size=8))
    text = "".join(w + s for w, s in parts)
    return text if draw(st.booleans()) else text.rstrip()


HUGE = 100_000 if fz.LONG else 20_000
huge_seed = st.builds(lambda w, k: (w + " ") * k, known_word, st.integers(2_000, HUGE))
invalid_utf8 = st.sampled_from(
    [b"\xff", b"\xfe\xff", b"\xc3\x28", b"\xed\xa0\x80", "그의".encode("cp949"), b"\x80abc"]
)


@st.composite
def argv_seed(draw: Any) -> str:
    """A seed as the shell passes it: no NUL; invalid UTF-8 arrives surrogate-escaped."""
    seed = draw(st.one_of(worded(), worded(), st.text(max_size=30), huge_seed))
    if draw(st.integers(0, 9)) == 0:
        raw = seed.encode("utf-8", "surrogatepass") + draw(invalid_utf8)
        seed = raw.decode("utf-8", "surrogateescape")
    return seed.replace("\x00", "")


@st.composite
def seed_lines(draw: Any, plain: bool) -> tuple[bytes, int | None]:
    """Bytes for stdin or a seeds file, and the number of lines when the line rule applies
    (UTF-8, ``\\n`` endings, no other line breaks) or None."""
    line = st.one_of(
        worded(spaces=st.sampled_from([" ", " ", "  ", "\t"])).map(lambda s: s.encode()),
        st.just(b""),
        st.sampled_from([b" ", b"\t", b"  "]),
    )
    if not plain:
        line = st.one_of(
            line, invalid_utf8, st.text(max_size=20).map(str.encode), st.just(b"a\x00b")
        )
    lines = draw(st.lists(line, min_size=1, max_size=5))
    ending = b"\n" if plain else draw(st.sampled_from([b"\n", b"\n", b"\r\n", b"\r", b"\x00"]))
    data = ending.join(lines) + (ending if draw(st.booleans()) else b"")
    if not plain and draw(st.integers(0, 7)) == 0:
        data = b"\xef\xbb\xbf" + data  # a BOM
    clean = ending == b"\n" and not data.startswith(b"\xef\xbb\xbf")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        clean = False
    else:
        clean = clean and not any(c in text for c in LINE_BREAKS if c != "\n")
    count = None
    if clean:
        count = len(text.split("\n")) - data.endswith(b"\n") if data else 0
    return data, count


def _ints(lo: int, hi: int, edges: list[int]) -> Any:
    return st.one_of(st.integers(lo, hi), st.sampled_from(edges)).map(str)


NOT_NUMBERS = ["", "abc", "1.5", "1e3", " 3", "0x10", "--1", "٣", "1_000", "nan"]
FLOAT_EDGES = ["nan", "inf", "-inf", "0", "-0.0", "1e-320", "1e-45", "1e308", "-1", "abc", ""]
STOPS = st.one_of(
    known_word,
    st.sampled_from(SYLLABLES),
    st.lists(st.sampled_from(SYLLABLES), min_size=2, max_size=3).map("".join),
    st.text(min_size=1, max_size=3),
    st.sampled_from(["\n", " ", "", "ea", "<eos>", "<unk>", "\udcff"]),
)


def hostile_options(model: str) -> dict[str, Any]:
    """Each option at and past its bounds. A stream model never ends at <eos>, so its
    lengths stay short unless they are past the limit (a case is seconds, not hours)."""
    if model == "jamo":
        length = _ints(1, 300, [-1, 0, 1, MAX_LENGTH + 1, 10**12])
        samples = _ints(1, 8, [0, -1, MAX_SAMPLES + 1, 10**9])
        width = _ints(1, 8, [0, -1, 10**8, 2**62])
    else:
        length = _ints(1, 60, [-1, 0, 1, MAX_LENGTH, MAX_LENGTH + 1, 10**12, 2**63, -(2**63)])
        samples = _ints(1, 8, [0, -1, 1, MAX_SAMPLES, MAX_SAMPLES + 1, 10**9])
        width = _ints(1, 8, [0, -1, 1, 64, 10_000, 10**8, 2**62])
    return {
        "--length": st.one_of(length, st.sampled_from(NOT_NUMBERS)),
        "-n": st.one_of(samples, st.sampled_from(NOT_NUMBERS)),
        "--strategy": st.sampled_from(["greedy", "sample", "beam", "Beam", "", "top-k"]),
        "--temperature": st.one_of(st.sampled_from(FLOAT_EDGES), st.floats(0.05, 5).map(repr)),
        "--top-k": st.one_of(_ints(0, 20, [-1, 13, 14, 15, 10**6, 2**63, 2**64]), st.just("x")),
        "--top-p": st.sampled_from(
            ["nan", "0", "1e-300", "0.5", "1", "1.0000001", "2", "-0.1", "inf", "-inf", "p"]
        ),
        "--beam-width": st.one_of(width, st.just("four")),
        "--length-penalty": st.sampled_from(
            ["nan", "inf", "-inf", "0", "-1", "1", "2", "1e308", "-1e308", "-0.5", ""]
        ),
        "--rng-seed": _ints(0, 1000, [-1, 0, 2**32, 2**64, 2**128, -(2**63)]),
        "--stop": STOPS,
        "--format": st.sampled_from(["text", "jsonl", "json", ""]),
    }


def plain_options(model: str) -> dict[str, Any]:
    """Options well inside their bounds: then only the seed decides the outcome."""
    return {
        "--length": st.integers(1, 40 if model == "word" else 80).map(str),
        "-n": st.integers(1, 5).map(str),
        "--strategy": st.sampled_from(["greedy", "sample", "beam"]),
        "--temperature": st.floats(0.2, 3).map(lambda x: f"{x:.3f}"),
        "--top-k": st.integers(0, 20).map(str),
        "--top-p": st.floats(0.2, 1).map(lambda x: f"{x:.3f}"),
        "--beam-width": st.integers(1, 6).map(str),
        "--length-penalty": st.floats(0, 2).map(lambda x: f"{x:.3f}"),
        "--rng-seed": st.integers(0, 1000).map(str),
        "--stop": STOPS.filter(lambda s: s.strip() and s == s.strip() and "\udcff" not in s),
        "--format": st.sampled_from(["text", "jsonl"]),
    }


@dataclass(frozen=True)
class GenerateCase:
    model: str  # "word", "deref" (the same run copied with cp -rL) or "jamo"
    source: str  # arg, stdin, file, interactive, arg+stdin, none, folder, missing
    seed: str | None = None
    data: bytes | None = None  # stdin or the seeds file
    options: tuple[tuple[str, str], ...] = ()
    plain: bool = False  # options inside their bounds
    lines: int | None = None  # input lines, where the one-result-per-line rule applies


@st.composite
def generate_cases(draw: Any) -> GenerateCase:
    model = draw(st.sampled_from(["word", "word", "word", "deref", "jamo"]))
    plain = draw(st.booleans())
    table = plain_options(model) if plain else hostile_options(model)
    names = draw(st.lists(st.sampled_from(sorted(table)), max_size=5, unique=not plain))
    options = tuple((name, draw(table[name])) for name in names)
    source = draw(
        st.sampled_from(["arg"] * 6 + ["stdin"] * 3 + ["file"] * 2 + ["interactive"])
        if plain
        else st.sampled_from(
            ["arg"] * 5 + ["stdin"] * 3 + ["file", "interactive", "arg+stdin", "none"]
            + ["folder", "missing"]
        )
    )  # fmt: skip
    seed, data, lines = None, None, None
    if "arg" in source:
        seed = draw(argv_seed())
    if source in ("stdin", "file", "interactive", "arg+stdin"):
        data, lines = draw(seed_lines(plain))
    return GenerateCase(model, source, seed, data, options, plain, lines)


def classify(seed: str) -> str:
    """How the word model must take a seed: "empty" (no token: exit 2), "unknown" (no
    token it knows, special-token spellings being text: exit 1) or "ok"."""
    tokens = nfc(seed).split()
    if not tokens:
        return "empty"
    return "ok" if any(t in TOY_WORDS for t in tokens) else "unknown"


def run_generate(case: GenerateCase, t: Templates) -> None:
    with Sandbox(t.cases) as box:
        args = ["generate", "--model", str(t.run(case.model))]
        for name, value in case.options:
            args += [name, value]
        stdin = None
        if case.seed is not None:
            args += ["--seed", case.seed]
        if case.source in ("stdin", "arg+stdin"):
            args.append("-")
            stdin = case.data
        elif case.source == "file":
            path = box.cwd / "seeds.txt"
            path.write_bytes(case.data or b"")
            args.append(str(path))
        elif case.source == "interactive":
            args.append("--interactive")
            stdin = case.data
        elif case.source == "folder":
            args.append(str(box.cwd))
        elif case.source == "missing":
            args.append(str(box.cwd / "no-such-seeds.txt"))
        size = len(case.seed or "") + len(case.data or b"")
        outcome = invoke(  # a huge seed costs time in proportion: 0.1 ms a character
            args, roots=roots(t, box), input=stdin, cwd=box.cwd,
            time_limit=GENERATE_TIME + size / 10_000,
        )  # fmt: skip
    many = case.source in ("stdin", "file", "interactive", "arg+stdin")
    if not check(
        outcome,
        max_errors=max(1, (case.data or b"").count(b"\n") + 1) if many else 1,
        errors_on_success=case.source == "interactive",
    ):
        return
    if case.plain and case.model in ("word", "deref"):
        generate_rules(case, outcome)
    if case.plain and outcome.exit_code == 0:
        stop_rule(case, outcome)


def _records(outcome: fz.Outcome) -> list[dict[str, Any]]:
    records = []
    for line in outcome.stdout.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            fail("output format", f"not a JSON record: {line[:80]!r}", outcome)
            record = {}
        records.append(record)
    return records


def _outputs(outcome: fz.Outcome, fmt: str) -> list[str]:
    """The texts of the output: one per line, or the "text" of each jsonl record."""
    if fmt == "jsonl":
        return [str(record.get("text", "")) for record in _records(outcome)]
    lines = outcome.stdout.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def generate_rules(case: GenerateCase, outcome: fz.Outcome) -> None:
    """The word model with options inside their bounds: the seed decides the outcome."""
    opts = dict(case.options)
    n, fmt = int(opts.get("-n", "1")), opts.get("--format", "text")
    if case.source == "arg":
        if any(0xD800 <= ord(c) <= 0xDFFF for c in case.seed or ""):
            return  # invalid UTF-8 in argv: refusing the seed is as right as reading it
        kind = classify(case.seed or "")
        expected = {"empty": 2, "unknown": 1, "ok": 0}[kind]
        beam = opts.get("--strategy") == "beam"
        if beam and n > int(opts.get("--beam-width", "4")) and kind == "ok":
            kind, expected = "ok, but -n above --beam-width", 2
        if outcome.exit_code != expected:
            fail(
                "seed outcome",
                f"a seed the model reads as {kind!r} exits {outcome.exit_code}, not {expected}"
                " (#21 item 11: special-token spellings are text)",
                outcome,
                key=f"{kind} seed exits {outcome.exit_code}",
            )
            return
        if outcome.exit_code != 0:
            return
        texts = _outputs(outcome, fmt)
        if len(texts) != n:
            breaks = any(c in (case.seed or "") for c in LINE_BREAKS)
            fail(
                "one text per sample",
                f"{len(texts)} lines for -n {n}" + (" (the seed's line break echoed)" * breaks),
                outcome,
                key="the seed's line break echoed (#21 item 11)" if breaks else None,
            )
        for text in texts:
            wrong = [
                name
                for name, bad in [
                    ("not NFC", not unicodedata.is_normalized("NFC", text)),
                    ("two spaces", "  " in text),
                    ("space at an end", text != text.strip(" ")),
                    ("other whitespace", any(c.isspace() and c != " " for c in text)),
                ]
                if bad
            ]
            if wrong:
                fail(
                    "seed echo",
                    f"{text[:60]!r} is not the seed as the model reads it ({', '.join(wrong)}:"
                    " #21 item 11)",
                    outcome,
                    key=f"{wrong[0]} (#21 item 11)",
                )
                break
        if fmt == "jsonl" and opts.get("--stop", TOY_WORDS[0]) in TOY_WORDS:  # no stop, or a word
            seed_words = len(nfc(case.seed or "").split())
            for record in _records(outcome):
                if len(str(record.get("text", "")).split()) - seed_words != record.get("tokens"):
                    fail("jsonl tokens", f"tokens {record.get('tokens')} for {record}", outcome,
                         key="tokens is not the number of new words")  # fmt: skip
                    break
    elif case.source in ("stdin", "file") and case.lines is not None:
        seeds = (case.data or b"").decode("utf-8").split("\n")[: case.lines]
        kinds = [classify(s) for s in seeds]
        if outcome.exit_code == 0 and "unknown" in kinds:
            fail("pipeline", "exit 0 though a seed line has no known token (#21 item 7)", outcome)
        blank = "empty" in kinds
        if outcome.exit_code not in (0, 1, 2):
            return
        if all(k == "ok" for k in kinds) or n == 1:
            texts = _outputs(outcome, fmt)
            if len(texts) != n * len(seeds):
                fail(
                    "pipeline",
                    f"{len(texts)} results for {len(seeds)} input lines and -n {n}: one "
                    "result per input line, in order (#21 item 7)",
                    outcome,
                    key="results do not match input lines"
                    + (" (a blank line)" if blank else "")
                    + (" (a line of unknown tokens)" if "unknown" in kinds else ""),
                )


def stop_rule(case: GenerateCase, outcome: fz.Outcome) -> None:
    """With --stop, decoding ends at the stop string: jsonl ``tokens`` counts what was kept
    (checked at the jamo level, one token per jamo), and no text holds the stop string
    after the seed (checked for stop strings that share no character with the seed, so
    that any match is in the new text) (#21 item 8)."""
    opts = dict(case.options)
    stop = opts.get("--stop")
    if not stop or case.source != "arg" or any(c.isspace() for c in stop):
        return
    if case.model == "jamo" and opts.get("--format") == "jsonl":
        seed = nfd(case.seed or "")
        for record in _records(outcome):
            text = nfd(str(record.get("text", "")))
            if text.startswith(seed) and len(text) - len(seed) != record.get("tokens"):
                fail(
                    "jsonl tokens",
                    f"tokens {record.get('tokens')} for {len(text) - len(seed)} new jamo in "
                    f"{record.get('text')!r}: decoding went on past --stop {stop!r} (#21 item 8)",
                    outcome,
                    key="jamo level: tokens is not what was kept",
                )
                break
    if set(nfc(stop)) & set(nfc(case.seed or "")):
        return
    for text in _outputs(outcome, opts.get("--format", "text")):
        if nfc(stop) in nfc(text):
            strategy = opts.get("--strategy", "greedy")
            fail(
                "stop string",
                f"{stop!r} in {text[:80]!r} (#21 item 8)",
                outcome,
                key=f"{case.model} model, {strategy}",
            )
            return


@fz.fuzz(fast=60, long=4000)
@given(case=generate_cases())
def _generate(templates: Templates, case: GenerateCase) -> None:
    fz.count_case(case)
    run_generate(case, templates)


def test_generate(templates: Templates) -> None:
    with fz.recording():
        _generate(templates=templates)
    end_of_test("test_generate")


# ==========================================================================================
# damaged run directories
# ==========================================================================================
FILES = ("config.toml", "tokenizer.json", "model.keras", "weights.npz", "history.csv",
         "metadata.json", "last.npz")  # fmt: skip
NEEDED = ("config.toml", "tokenizer.json", "weights.npz", "metadata.json")
TARGETS = (
    [*FILES, ".snapshots", ".snapshots/current", "<current>", "<previous>", ".lock", "logs"]
    + ["logs/*", "<current>/manifest.json", "latest"]
    + [f"<current>/{name}" for name in FILES]
    + [f"everywhere:{name}" for name in (*FILES, "manifest.json")]
)
CONTENT_OPS = ("truncate", "empty", "append", "flip", "swap")
STRUCTURE_OPS = (
    "remove", "link-dangling", "link-loop", "link-outside-file", "link-outside-dir",
    "link-devzero", "link-devnull", "link-sibling", "folder", "folder-with-file", "fifo",
)  # fmt: skip
READERS = ("generate", "generate-stdin", "generate-latest", "info", "info-history", "eval", "plot")


@dataclass(frozen=True)
class DamageCase:
    layout: str  # "links" (cp -r) or "deref" (cp -rL)
    target: str  # one of TARGETS
    op: str  # one of CONTENT_OPS or STRUCTURE_OPS
    command: str  # one of READERS or "resume"
    at: int = 0  # where a truncation or a flip falls (taken modulo the size)
    data: bytes = b"x"  # what an append adds


def make_device(path: Path, minor: int) -> Path:
    """A character device like /dev/null (minor 3) or /dev/zero (5) in a case's folder, so
    that a command replacing its --out never replaces the machine's own; a link to the real
    one where devices cannot be made (a rename replaces a link, never its target)."""
    import stat

    if os.path.lexists(path):
        return path
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, minor))
    except OSError:
        path.symlink_to("/dev/null" if minor == 3 else "/dev/zero")
    return path


def _current(run: Path) -> Path:
    store = run / ".snapshots"
    link = store / "current"
    if link.is_symlink():
        return store / os.readlink(link)
    return link


def _snapshot_folders(run: Path) -> list[Path]:
    store = run / ".snapshots"
    if not store.is_dir():
        return []
    return sorted(p for p in store.iterdir() if p.is_dir() and not p.is_symlink())


def resolve_target(target: str, run: Path) -> list[Path]:
    """The paths a symbolic target names in ``run`` (none when the layout lacks it)."""
    if target.startswith("everywhere:"):
        name = target.split(":", 1)[1]
        paths = [run / name] if name != "manifest.json" else []
        paths += [folder / name for folder in _snapshot_folders(run)]
        return [p for p in paths if p.is_file()]
    if target == "latest":
        return [run.parent / "latest"]
    if target == "logs/*":
        logs = sorted((run / "logs").rglob("*")) if (run / "logs").is_dir() else []
        return [p for p in logs if p.is_file()][:1]
    if target == "<previous>":
        current = _current(run)
        older = [p for p in _snapshot_folders(run) if p.name.isdigit() and p != current]
        return older[-1:]
    if target.startswith("<current>"):
        return [_current(run) / target[len("<current>/") :]]
    return [run / target]


def _replace(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()


def damage(case: DamageCase, run: Path, box: Sandbox) -> set[str]:
    """Apply the damage; return the names of files whose content changed in every copy."""
    paths = resolve_target(case.target, run)
    changed: set[str] = set()
    if case.op in CONTENT_OPS:
        files: dict[str, Path] = {}
        for path in paths:
            found = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
            for file in found:
                if file.is_file():  # a link is damaged where it points
                    files.setdefault(os.path.realpath(file), file)
        for real in sorted(files):
            file = Path(real)
            before = file.read_bytes()
            after = _damaged_bytes(case, file, before)
            file.unlink()  # never write through a hard link into another snapshot
            file.write_bytes(after)
            if after != before:
                changed.add(file.name)
        everywhere = case.target.startswith("everywhere:") and paths
        return changed if everywhere else set()
    for path in paths:
        _replace(path)
        if case.op == "remove":
            continue
        if case.op == "link-dangling":
            path.symlink_to(box.outside / "missing")
        elif case.op == "link-loop":
            path.symlink_to(path.name)
        elif case.op == "link-outside-file":
            (box.outside / "foreign.txt").write_bytes(b"not a textgen file\n")
            path.symlink_to(box.outside / "foreign.txt")
        elif case.op == "link-outside-dir":
            (box.outside / "folder").mkdir(exist_ok=True)
            (box.outside / "folder" / "file.txt").write_bytes(b"foreign\n")
            path.symlink_to(box.outside / "folder")
        elif case.op == "link-devzero":
            path.symlink_to(make_device(box.outside / "zero", 5))
        elif case.op == "link-devnull":
            path.symlink_to(make_device(box.outside / "null", 3))
        elif case.op == "link-sibling":
            path.symlink_to("weights.npz" if path.name != "weights.npz" else "last.npz")
        elif case.op == "folder":
            path.mkdir()
        elif case.op == "folder-with-file":
            path.mkdir()
            (path / "file.txt").write_bytes(b"foreign\n")
        elif case.op == "fifo":
            os.mkfifo(path)
    return set()


def _damaged_bytes(case: DamageCase, file: Path, data: bytes) -> bytes:
    if case.op == "truncate":
        return data[: case.at % max(1, len(data))]
    if case.op == "empty":
        return b""
    if case.op == "append":
        return data + (case.data or b"x")
    if case.op == "flip":
        if not data:
            return b"\x00"
        i = case.at % len(data)
        return data[:i] + bytes([data[i] ^ 0x5A]) + data[i + 1 :]
    other = {"weights.npz": "last.npz", "last.npz": "weights.npz", "config.toml": "history.csv"}
    source = file.parent / other.get(file.name, "config.toml")
    return source.read_bytes() if source.is_file() and source != file else data + b"\n"


def must_refuse(case: DamageCase, changed: set[str]) -> str:
    """Why the command must refuse the damaged run ("" when it need not): every file a
    reader uses is checked in every layout (#21 item 3)."""
    reads = {"resume": {*FILES}, "info": {*NEEDED, "history.csv"}, "plot": {"history.csv"}}
    reads["info-history"] = reads["info"]
    used = reads.get(case.command, set(NEEDED))
    if case.layout == "links" and case.op in ("truncate", "empty", "append"):
        used = used | {"manifest.json"}  # the checksums themselves
    hit = sorted(changed & used)
    return f"{', '.join(hit)} changed in every copy" if hit else ""


@st.composite
def damage_cases(draw: Any, commands: tuple[str, ...] = READERS) -> DamageCase:
    return DamageCase(
        layout=draw(st.sampled_from(["links", "links", "deref"])),
        target=draw(st.sampled_from(TARGETS)),
        op=draw(st.sampled_from(CONTENT_OPS + STRUCTURE_OPS)),
        command=draw(st.sampled_from(commands)),
        at=draw(st.integers(0, 1 << 20)),
        data=draw(st.one_of(st.binary(min_size=1, max_size=40), st.just(b"151,0.1,,0.1\n"))),
    )


def run_damaged(case: DamageCase, t: Templates) -> None:
    with Sandbox(t.cases) as box:
        runs = box.cwd / "runs"
        runs.mkdir()
        run = fz.copy_run(t.word if case.layout == "links" else t.deref, runs / "r")
        (runs / "latest").symlink_to("r")
        changed = damage(case, run, box)
        may_change: list[Path] = []
        stdin, trains = None, False
        if case.command == "generate":
            args = ["generate", "--model", str(run), "--seed", "그의"]
        elif case.command == "generate-stdin":
            args, stdin = ["generate", "--model", str(run), "-"], "그의\n가는\n".encode()
        elif case.command == "generate-latest":
            args = ["generate", "--seed", "경마장에"]
        elif case.command == "info":
            args = ["info", str(run)]
        elif case.command == "info-history":
            args = ["info", str(run), "--history"]
        elif case.command == "eval":
            args = ["eval", "--model", str(run), str(t.corpus), "--format", "json"]
        elif case.command == "plot":
            png = box.cwd / "loss.png"
            args, may_change = ["plot", str(run), "--out", str(png)], [png]
        else:
            args = ["train", "--resume", str(run), "--set", f"train.epochs={TOY_EPOCHS + 1}"]
            args.append("--quiet")
            may_change, trains = [run, runs / "latest"], True
        outcome = invoke(
            args, roots=roots(t, box), may_change=may_change, input=stdin, cwd=box.cwd,
            trains=trains, time_limit=fz.TIME_LIMIT if trains else GENERATE_TIME,
        )  # fmt: skip
    check(outcome, max_errors=2 if case.command == "generate-stdin" else 1)
    why = must_refuse(case, changed)
    if why and outcome.exit_code == 0:
        fail(
            "damage accepted",
            f"{case.command} of a {case.layout} run exits 0 though {why} ({case.op}; #21 item 3)",
            outcome,
        )


@fz.fuzz(fast=50, long=3000)
@given(case=damage_cases())
def _damaged_readers(templates: Templates, case: DamageCase) -> None:
    fz.count_case(case)
    run_damaged(case, templates)


def test_damaged_run_readers(templates: Templates) -> None:
    with fz.recording():
        _damaged_readers(templates=templates)
    end_of_test("test_damaged_run_readers")


@fz.fuzz(fast=2, long=150)
@given(case=damage_cases(commands=("resume",)))
def _damaged_resume(templates: Templates, case: DamageCase) -> None:
    fz.count_case(case)
    run_damaged(case, templates)


def test_damaged_run_resume(templates: Templates) -> None:
    with fz.recording():
        _damaged_resume(templates=templates)
    end_of_test("test_damaged_run_resume")


# ==========================================================================================
# configs: TOML files and --set
# ==========================================================================================
INT_KEYS = {
    ("data", "vocab_size"): (8, 50), ("data", "max_vocab"): (0, 20), ("data", "min_freq"): (1, 2),
    ("data", "max_len"): (0, 12), ("data", "seq_len"): (1, 8), ("model", "embedding_dim"): (1, 6),
    ("model", "units"): (1, 6), ("model", "layers"): (1, 2), ("train", "seed"): (0, 2**32 - 1),
    ("train", "epochs"): (1, 2), ("train", "batch_size"): (1, 8),
    ("train", "lr_decay_after"): (0, 3), ("train", "patience"): (0, 3),
    ("train", "save_every_steps"): (0, 3), ("train", "log_every_steps"): (0, 3),
}  # fmt: skip
FLOAT_KEYS = {
    ("data", "val_split"): (0.0, 0.5), ("model", "dropout"): (0.0, 0.5),
    ("model", "input_dropout"): (0.0, 0.5), ("model", "output_dropout"): (0.0, 0.5),
    ("model", "init_scale"): (0.0, 0.3), ("train", "learning_rate"): (1e-4, 0.1),
    ("train", "momentum"): (0.0, 0.9), ("train", "lr_decay"): (0.5, 1.0),
    ("train", "plateau_factor"): (0.5, 1.0), ("train", "clipnorm"): (0.0, 5.0),
    ("train", "max_minutes"): (0.0, 0.05), ("train", "peer_timeout"): (0.0, 10.0),
}  # fmt: skip
CHOICE_KEYS = {
    ("data", "level"): ["word", "char", "subword", "morpheme"],
    ("data", "mode"): ["lines", "stream"], ("data", "normalize"): ["nfc", "nfd"],
    ("data", "subword_model"): ["bpe", "unigram"], ("model", "cell"): ["lstm", "gru", "rnn"],
    ("train", "optimizer"): ["adam", "sgd"], ("train", "distribute"): ["none", "mirrored"],
}  # fmt: skip
BOOL_KEYS = [("data", "lowercase"), ("data", "strip_punctuation"), ("model", "tie_weights"),
             ("train", "carry_state"), ("train", "jit_compile")]  # fmt: skip
PATH_KEYS = [("data", "corpus"), ("data", "valid_corpus")]
ENCODINGS = ["utf-8", "UTF8", "utf-8-sig", "latin-1", "utf-16", "cp949", "ascii", "klingon", "",
             "rot13", "hex", "base64", "idna", "utf_32"]  # fmt: skip
PATHS = ["corpus.txt", "missing.txt", ".", "/dev/zero", "/dev/null", "cfg.toml", "",
         "corpus.txt/x", "~/corpus.txt", "a\\u0000b", "../outside/corpus.txt", "empty.txt",
         "latin1.txt", "a" * 300]  # fmt: skip
WRONG_TYPES = ['"ten"', "1.5", "true", "[1, 2]", "{a = 1}", "1979-05-27", "''", "[]", "0x10"]
ASTRONOMICAL = ["1000000000", "4611686018427387904", "100000000000000000000"]


def _toml_string(text: str) -> str:
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def value_literal(section: str, key: str) -> Any:
    """TOML literals for one key: inside its range, at and past its bounds, wrong types."""
    if (section, key) in INT_KEYS:
        lo, hi = INT_KEYS[section, key]
        edges = [lo - 1, -1, 0, -(2**63)]
        if key not in ("epochs", "layers"):  # a billion epochs or layers is hours, not a bug
            edges += [int(x) for x in ASTRONOMICAL]
        valid = st.integers(lo, hi).map(str)
        return st.one_of(
            valid, valid, st.sampled_from(edges).map(str), st.sampled_from(WRONG_TYPES)
        )
    if (section, key) in FLOAT_KEYS:
        lo, hi = FLOAT_KEYS[section, key]
        valid = st.floats(lo, hi).map(repr)
        edges = ["nan", "inf", "-inf", "-0.0", "1.0", "-1.0", "1e308", "0", "1"]
        return st.one_of(valid, valid, st.sampled_from(edges), st.sampled_from(WRONG_TYPES))
    if (section, key) in CHOICE_KEYS:
        good = st.sampled_from(CHOICE_KEYS[section, key]).map(_toml_string)
        bad = st.sampled_from(["LSTM", "", "transformer", "nfkc", "multiworker", "none "])
        return st.one_of(good, good, bad.map(_toml_string), st.sampled_from(WRONG_TYPES))
    if (section, key) in BOOL_KEYS:
        return st.sampled_from(["true", "false", "false", '"true"', "1", "0"])
    if (section, key) in PATH_KEYS:
        return st.sampled_from(PATHS).map(_toml_string)
    if (section, key) == ("data", "encoding"):
        return st.sampled_from(ENCODINGS).map(_toml_string)
    return st.sampled_from(["1", '"x"', "true", "1.5", "[1]", "{}"])


ALL_KEYS = sorted([*INT_KEYS, *FLOAT_KEYS, *CHOICE_KEYS, *BOOL_KEYS, *PATH_KEYS])
ALL_KEYS.append(("data", "encoding"))
ODD_KEYS = [("modle", "units"), ("train", "epoch"), ("data", "Level"), ("", "x"),
            ("train", "momentum "), ("data", "corpus.x"), ("mode", "cell"),
            ("train", "épochs")]  # fmt: skip


@dataclass(frozen=True)
class ConfigCase:
    text: bytes  # the config file
    sets: tuple[str, ...] = ()
    extra: tuple[str, ...] = ()  # more options of train
    name: str = "cfg.toml"
    out: bool = True  # give --out (else the run goes to runs/<config name>)


BASE = {
    ("data", "corpus"): '"corpus.txt"', ("data", "val_split"): "0.0",
    ("model", "embedding_dim"): "4", ("model", "units"): "4",
    ("train", "epochs"): "1", ("train", "batch_size"): "4", ("train", "jit_compile"): "false",
}  # fmt: skip


def toml_text(entries: dict[tuple[str, str], str], top: str = "") -> str:
    sections: dict[str, list[str]] = {}
    for (section, key), literal in entries.items():
        quoted = key if key.replace("_", "").isalnum() and key.isascii() else _toml_string(key)
        sections.setdefault(section, []).append(f"{quoted} = {literal}")
    body = [top] if top else []
    for section, lines in sections.items():
        header = section if section.isidentifier() else _toml_string(section)
        body += [f"[{header}]", *lines]
    return "\n".join(body) + "\n"


MALFORMED_SETS = ["oops", "=3", "a.=3", ".b=3", "data.level", "data..level=x", "data.level==char",
                  " data . level = char ", "x.y.z=1"]  # fmt: skip


@st.composite
def override(draw: Any) -> str:
    section, key = draw(st.sampled_from(ALL_KEYS + ODD_KEYS))
    value = draw(value_literal(section, key))
    form = draw(st.integers(0, 9))
    if form == 0:
        return draw(st.sampled_from(MALFORMED_SETS))
    if form == 1:
        return f"{section}.{key}={draw(st.text(max_size=8))}"
    return f"{section}.{key}={value}"


@st.composite
def config_cases(draw: Any) -> ConfigCase:
    entries = dict(BASE)
    for _ in range(draw(st.integers(1, 4))):
        section, key = draw(st.sampled_from(ALL_KEYS * 3 + ODD_KEYS))
        entries[section, key] = draw(value_literal(section, key))
    top = draw(st.sampled_from(["", "", "", "model.units = 3", "epochs = 1", "[[data]]"]))
    text = toml_text(entries, top).encode("utf-8")
    damage_kind = draw(st.integers(0, 14))
    if damage_kind == 0:
        text = draw(st.binary(max_size=60))
    elif damage_kind == 1:
        cut = draw(st.integers(0, len(text)))
        text = text[:cut]
    elif damage_kind == 2:
        text += draw(st.sampled_from([b"[train\n", b"= 3\n", b"\x00", b"\xff\n", b"[data]\n"]))
    sets = tuple(draw(st.lists(override(), max_size=3)))
    extra = draw(
        st.lists(
            st.sampled_from([
                ("--corpus", "corpus.txt"), ("--corpus", "missing.txt"), ("--corpus", "."),
                ("--encoding", "latin-1"), ("--encoding", "klingon"), ("--encoding", "rot13"),
                ("--distribute", "none"), ("--distribute", "bogus"), ("--overwrite",),
                ("--resume", "."),
            ]),
            max_size=2,
        )
    )  # fmt: skip
    name = draw(st.sampled_from(["cfg.toml"] * 6 + ["latest.toml", ".toml", "x y.toml", "cfg"]))
    return ConfigCase(text, sets, tuple(x for pair in extra for x in pair), name, draw(
        st.integers(0, 5).map(bool)
    ))  # fmt: skip


def _set_value(text: str) -> Any:
    text = text.strip()
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def ignored_setting(case: ConfigCase) -> str:
    """A setting the config names that training would silently ignore (#21 item 16)."""
    try:
        raw = tomllib.loads(case.text.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        return ""
    if not all(isinstance(raw.get(s, {}), dict) for s in ("data", "model", "train")):
        return ""
    values = {(s, k): v for s in ("data", "train") for k, v in raw.get(s, {}).items()}
    for item in case.sets:
        name, sep, text = item.partition("=")
        section, dot, key = name.strip().partition(".")
        if sep and dot and section and key:
            values[section, key.strip()] = _set_value(text)

    def number(key: tuple[str, str]) -> float | None:
        value = values.get(key)
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return float(value) if ok and math.isfinite(value) else None

    optimizer = values.get(("train", "optimizer"), "adam")
    momentum = number(("train", "momentum"))
    if optimizer == "adam" and momentum is not None and 0 < momentum < 1:
        return "train.momentum with the adam optimizer"
    seq_len = values.get(("data", "seq_len"))
    lines = values.get(("data", "mode"), "lines") == "lines"
    if lines and type(seq_len) is int and seq_len >= 1 and seq_len != 100:
        return 'data.seq_len in data.mode = "lines"'
    val_split = number(("data", "val_split"))
    valid = values.get(("data", "valid_corpus"))
    if isinstance(valid, str) and valid and val_split is not None and 0 < val_split < 1:
        return "data.val_split beside data.valid_corpus"
    return ""


def run_config(case: ConfigCase, t: Templates) -> None:
    with Sandbox(t.cases) as box:
        shutil.copyfile(t.corpus, box.cwd / "corpus.txt")
        (box.cwd / "empty.txt").write_bytes(b"")
        (box.cwd / "latin1.txt").write_bytes("café\n".encode("latin-1"))
        (box.outside / "corpus.txt").write_bytes(TOY_CORPUS.read_bytes())
        config = box.cwd / case.name
        config.write_bytes(case.text)
        args = ["train", "--config", str(config), "--quiet", *case.extra]
        if case.out:
            args += ["--out", str(box.cwd / "out")]
            place = box.cwd / "out"
        else:
            place = box.cwd / "runs" / Path(case.name).stem
        for item in case.sets:
            args += ["--set", item]
        before = fz.snapshot([box.root])
        outcome = invoke(
            args, roots=roots(t, box), cwd=box.cwd, trains=True,
            may_change=[place, box.cwd / "runs" / "latest", box.cwd / "latest"],
        )  # fmt: skip
        outcome.changed = fz.new_parents(outcome.changed, before, place)
        left = fz.changes(before, fz.snapshot([box.root]))
    check(outcome)
    if outcome.exit_code != 0 and left:
        fail(
            "refused train left files",
            f"exit {outcome.exit_code} but {len(left)} paths changed: {', '.join(left[:3])}"
            " (#21 item 2: a refused train leaves no .lock behind)",
            outcome,
        )
    why = ignored_setting(case)
    if why and outcome.exit_code != 2:
        fail("ignored setting", f"{why} exits {outcome.exit_code}, not 2 (#21 item 16)", outcome)


@fz.fuzz(fast=16, long=1000)
@given(case=config_cases())
def _configs(templates: Templates, case: ConfigCase) -> None:
    fz.count_case(case)
    run_config(case, templates)


def test_configs(templates: Templates) -> None:
    with fz.recording():
        _configs(templates=templates)
    end_of_test("test_configs")


# ==========================================================================================
# corpora: bytes, encodings, line endings through prepare, eval and train
# ==========================================================================================
TEXT_ENCODINGS = ["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-32", "cp949", "euc-kr",
                  "latin-1", "shift_jis", "ascii"]  # fmt: skip
ENDINGS = ["\n", "\r\n", "\r", "\u2028", "\x85", "\x0c"]


@st.composite
def corpus_bytes(draw: Any) -> bytes:
    kind = draw(st.integers(0, 5))
    if kind == 0:
        return draw(st.binary(max_size=300))
    line = st.one_of(worded(), known_word, st.text(max_size=30), st.just(""))
    lines = draw(st.lists(line, max_size=10))
    ending = draw(st.sampled_from(ENDINGS)) if kind != 1 else draw(st.sampled_from(ENDINGS[:2]))
    text = ending.join(lines) + (ending if draw(st.booleans()) else "")
    encoding = draw(st.sampled_from(TEXT_ENCODINGS)) if kind >= 3 else "utf-8"
    data = text.encode(encoding, errors="replace")
    if kind == 5 and data:
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.sampled_from([b"\x00", b"\xff", b"\xc3", b"\r"])) + data[at:]
    if draw(st.integers(0, 19)) == 0:
        data = data * 2000  # tens of kilobytes: still quick, but past every small buffer
    return data


@dataclass(frozen=True)
class CorpusCase:
    data: bytes
    command: str  # prepare, eval, train
    encoding: str | None = None
    level: str = "word"
    mode: str = "stream"


@st.composite
def corpus_cases(draw: Any, commands: tuple[str, ...] = ("prepare", "eval")) -> CorpusCase:
    return CorpusCase(
        data=draw(corpus_bytes()),
        command=draw(st.sampled_from(commands)),
        encoding=draw(st.one_of(st.none(), st.sampled_from(TEXT_ENCODINGS + ENCODINGS))),
        level=draw(st.sampled_from(["word", "word", "char", "subword"])),
        mode=draw(st.sampled_from(["stream", "lines"])),
    )


def run_corpus(case: CorpusCase, t: Templates) -> None:
    with Sandbox(t.cases) as box:
        corpus = box.cwd / "corpus.txt"
        corpus.write_bytes(case.data)
        enc = ["--encoding", case.encoding] if case.encoding is not None else []
        sets = ["--set", f"data.level={case.level}", "--set", f"data.mode={case.mode}"]
        if case.mode == "stream":
            sets += ["--set", "data.seq_len=4"]
        if case.level == "subword":
            sets += ["--set", "data.vocab_size=16"]
        may_change: list[Path] = []
        if case.command == "prepare":
            args = ["prepare", "--config", str(t.config), "--corpus", str(corpus), *enc]
            args += [*sets, "--format", "json", "--quiet"]
        elif case.command == "eval":
            args = ["eval", "--model", str(t.word), str(corpus), *enc, "--format", "json"]
        else:
            out = box.cwd / "out"
            args = ["train", "--config", str(t.config), "--corpus", str(corpus), *enc, *sets]
            args += ["--out", str(out), "--quiet"]
            may_change = [out, box.cwd / "latest"]
        outcome = invoke(
            args, roots=roots(t, box), may_change=may_change, cwd=box.cwd,
            trains=case.command == "train",
        )  # fmt: skip
    check(outcome)
    if outcome.exit_code == 0 and "json" in args:
        strict_json(outcome)


def strict_json(outcome: fz.Outcome) -> None:
    """JSON output is JSON: no NaN or Infinity, which strict parsers refuse."""

    def refuse(name: str) -> None:
        raise ValueError(name)

    try:
        json.loads(outcome.stdout, parse_constant=refuse)
    except ValueError as err:
        fail("json output", f"not strict JSON ({err})", outcome)


@fz.fuzz(fast=30, long=2000)
@given(case=corpus_cases())
def _corpora(templates: Templates, case: CorpusCase) -> None:
    fz.count_case(case)
    run_corpus(case, templates)


def test_corpora(templates: Templates) -> None:
    with fz.recording():
        _corpora(templates=templates)
    end_of_test("test_corpora")


@fz.fuzz(fast=3, long=100)
@given(case=corpus_cases(commands=("train",)))
def _corpora_train(templates: Templates, case: CorpusCase) -> None:
    fz.count_case(case)
    run_corpus(case, templates)


def test_corpora_train(templates: Templates) -> None:
    with fz.recording():
        _corpora_train(templates=templates)
    end_of_test("test_corpora_train")


@dataclass(frozen=True)
class LineEndingCase:
    lines: tuple[str, ...]
    model: str = "word"


def run_line_endings(case: LineEndingCase, t: Templates) -> None:
    """The same text scores the same with LF and CRLF line endings (#21 item 12)."""
    with Sandbox(t.cases) as box:
        results = []
        for ending in ("\n", "\r\n"):
            path = box.cwd / f"text-{len(results)}.txt"
            path.write_bytes((ending.join(case.lines) + ending).encode("utf-8"))
            args = ["eval", "--model", str(t.run(case.model)), str(path), "--format", "json"]
            outcome = invoke(args, roots=roots(t, box), cwd=box.cwd)
            check(outcome)
            if outcome.exit_code != 0:
                return
            results.append(next(iter(json.loads(outcome.stdout).values())))
    if results[0] != results[1]:
        fail("line endings", f"LF {results[0]} but CRLF {results[1]} (#21 item 12)", outcome)


@fz.fuzz(fast=6, long=300)
@given(
    case=st.builds(
        LineEndingCase,
        lines=st.lists(worded(known_word, st.just(" ")), min_size=1, max_size=6).map(tuple),
        model=st.sampled_from(["word", "jamo"]),
    )
)
def _line_endings(templates: Templates, case: LineEndingCase) -> None:
    fz.count_case(case)
    run_line_endings(case, templates)


def test_eval_line_endings(templates: Templates) -> None:
    with fz.recording():
        _line_endings(templates=templates)
    end_of_test("test_eval_line_endings")


# ==========================================================================================
# readers with odd arguments: info, eval, plot
# ==========================================================================================
RUN_ARGS = ["run", "run/", "link", "dangling", "file", "folder", "missing", "", "-", "latest",
            "no-latest", "dev-null"]  # fmt: skip
PLOT_OUTS = ["none", "png", "folder", "folder/", "new-folder/", "under-file", "unwritable",
             "existing-file", "link-to-outside", "dangling-link", "dev-null", "txt"]  # fmt: skip
EVAL_FILES = ["corpus", "folder", ".", "missing", "dev-zero", "fifo", "empty", "binary"]


@dataclass(frozen=True)
class ReaderCase:
    command: str  # info, info-history, eval, eval-valid, plot
    run: str = "run"  # one of RUN_ARGS
    plot_out: str = "none"
    plot_x: str = "epoch"
    files: tuple[str, ...] = ("corpus",)
    model: str = "word"


def _run_arg(kind: str, t: Templates, box: Sandbox, model: str) -> str | None:
    run = box.cwd / "runs" / "r"
    fz.copy_run(t.run(model), run)
    (box.cwd / "a-file").write_bytes(b"x\n")
    (box.cwd / "a-folder").mkdir()
    if kind not in ("no-latest",):
        (box.cwd / "runs" / "latest").symlink_to("r")
    if kind == "link":
        (box.cwd / "link").symlink_to(run)
    if kind == "dangling":
        (box.cwd / "dangling").symlink_to(box.outside / "missing")
    return {
        "run": str(run), "run/": f"{run}/", "link": "link", "dangling": "dangling",
        "file": "a-file", "folder": "a-folder", "missing": "missing", "": "", "-": "-",
        "latest": None, "no-latest": None, "dev-null": str(make_device(box.cwd / "null", 3)),
    }[kind]  # fmt: skip


def _plot_out(kind: str, box: Sandbox) -> tuple[list[str], list[Path]]:
    """The --out of plot, and the paths it may change."""
    cwd = box.cwd
    if kind == "none":
        return [], [cwd / "runs" / "r"]  # loss.png, and the record that textgen wrote it
    (cwd / "existing.png").write_bytes(b"old\n")
    (cwd / "plots").mkdir()
    paths = {
        "png": cwd / "loss.png", "folder": cwd / "plots", "folder/": cwd / "plots",
        "new-folder/": cwd / "new-plots", "under-file": cwd / "existing.png" / "x.png",
        "unwritable": Path("/proc/textgen-fuzz.png"), "existing-file": cwd / "existing.png",
        "link-to-outside": cwd / "link.png", "dangling-link": cwd / "dangling.png",
        "dev-null": make_device(cwd / "null", 3), "txt": cwd / "loss.txt",
    }  # fmt: skip
    path = paths[kind]
    if kind == "link-to-outside":
        (box.outside / "target.png").write_bytes(b"not yours\n")
        path.symlink_to(box.outside / "target.png")
    if kind == "dangling-link":
        path.symlink_to(box.outside / "nowhere.png")
    text = str(path) + ("/" if kind.endswith("/") else "")
    may = [path]
    if kind in ("folder", "folder/"):
        may = [path / "loss.png"]  # a folder: the plot goes into it, or nothing changes
    if kind == "new-folder/":
        may = [path]
    return ["--out", text], may


def run_reader(case: ReaderCase, t: Templates) -> None:
    with Sandbox(t.cases) as box:
        run = _run_arg(case.run, t, box, case.model)
        target = [run] if run is not None else []
        may_change: list[Path] = []
        if case.command.startswith("info"):
            args = ["info", *target] + (["--history"] if case.command == "info-history" else [])
        elif case.command.startswith("eval"):
            files = []
            for kind in case.files:
                files.append(_eval_file(kind, box))
            args = ["eval", *(["--model", run] if run is not None else []), *files]
            if case.command == "eval-valid":
                args.append("--valid")
        else:
            out, may_change = _plot_out(case.plot_out, box)
            args = ["plot", *target, *out, "--x", case.plot_x]
        outcome = invoke(
            args, roots=roots(t, box), may_change=may_change, cwd=box.cwd, time_limit=GENERATE_TIME
        )
        if case.command == "plot" and outcome.exit_code == 0:
            plot_rules(case, outcome, box)
    check(outcome)
    if case.command.startswith("eval") and "data.corpus" in "\n".join(outcome.error_lines):
        fail("eval message", "eval names data.corpus, a config key (#21 item 12)", outcome)


def plot_rules(case: ReaderCase, outcome: fz.Outcome, box: Sandbox) -> None:
    """plot prints the file it wrote, a PNG; --out FOLDER/ puts it in the folder (#21 item 6)."""
    lines = outcome.stdout.strip().splitlines()
    written = Path(lines[-1]) if lines else None
    if written is not None and not written.is_absolute():
        written = box.cwd / written
    if written is None or not written.is_file() or written.read_bytes()[:4] != b"\x89PNG":
        fail("plot output", f"exit 0 but {written} is not a PNG it wrote", outcome)
        return
    folder = {"folder": "plots", "folder/": "plots", "new-folder/": "new-plots"}.get(case.plot_out)
    if folder and written.parent != box.cwd / folder:
        fail(
            "plot output",
            f"--out {case.plot_out} wrote the file {written}, not one in the folder (#21 item 6)",
            outcome,
        )


def _eval_file(kind: str, box: Sandbox) -> str:
    cwd = box.cwd
    if kind == "corpus":
        (cwd / "text.txt").write_bytes(TOY_CORPUS.read_bytes())
        return "text.txt"
    if kind == "folder":
        (cwd / "texts").mkdir(exist_ok=True)
        return "texts"
    if kind == "fifo":
        with contextlib.suppress(FileExistsError):
            os.mkfifo(cwd / "pipe")
        return "pipe"
    if kind == "empty":
        (cwd / "empty.txt").write_bytes(b"")
        return "empty.txt"
    if kind == "binary":
        (cwd / "binary.bin").write_bytes(b"\x00\x01\x02\xff")
        return "binary.bin"
    return {".": ".", "missing": "missing.txt", "dev-zero": "/dev/zero"}[kind]


reader_cases = st.builds(
    ReaderCase,
    command=st.sampled_from(["info", "info-history", "eval", "eval-valid", "plot", "plot"]),
    run=st.sampled_from(RUN_ARGS),
    plot_out=st.sampled_from(PLOT_OUTS),
    plot_x=st.sampled_from(["epoch", "time", "epoch", "step", ""]),
    files=st.lists(st.sampled_from(EVAL_FILES), max_size=2).map(tuple),
    model=st.sampled_from(["word", "word", "jamo", "deref"]),
)


@fz.fuzz(fast=30, long=2000)
@given(case=reader_cases)
def _readers(templates: Templates, case: ReaderCase) -> None:
    fz.count_case(case)
    run_reader(case, templates)


def test_readers(templates: Templates) -> None:
    with fz.recording():
        _readers(templates=templates)
    end_of_test("test_readers")


# ==========================================================================================
# --out targets
# ==========================================================================================
OUT_KINDS = ["fresh", "nested-fresh", "empty-dir", "foreign-dir", "run", "run-deref", "file",
             "under-file", "link-to-empty", "link-to-missing", "link-to-run", "link-loop",
             "link-to-file", "dot-empty", "dot-config", "dot-run", "latest", "trailing-slash",
             "dotdot-run", "device"]  # fmt: skip
PLANTS = ["notes.txt", "config.toml", "history.csv", "logs/my-notes.md", ".snapshots/keep.txt",
          "latest", "weights.npz", "sub/deep/file.txt", "model.keras", "loss.png"]  # fmt: skip


@dataclass(frozen=True)
class OutCase:
    kind: str
    overwrite: bool = False
    plants: tuple[str, ...] = ()  # files of the user's in the target before the command
    old_latest: bool = True  # runs/latest names an older run beforehand


def _out_target(case: OutCase, t: Templates, box: Sandbox) -> tuple[str, Path, Path]:
    """Set up the target; return --out as typed, the working folder, the target folder."""
    cwd, runs = box.cwd, box.cwd / "runs"
    runs.mkdir()
    if case.old_latest:
        fz.copy_run(t.word, runs / "old")
        (runs / "latest").symlink_to("old")
    kind = case.kind
    folder = runs / "C"
    typed = str(folder)
    if kind == "nested-fresh":
        folder = runs / "a" / "b" / "C"
        typed = str(folder)
    elif kind in ("empty-dir", "foreign-dir"):
        folder.mkdir()
    elif kind in ("run", "dotdot-run"):
        fz.copy_run(t.word, folder)
        if kind == "dotdot-run":
            typed = str(runs / "C" / ".." / "C")
    elif kind == "run-deref":
        fz.copy_run(t.deref, folder)
    elif kind == "file":
        folder.write_bytes(b"a file of the user's\n")
    elif kind == "under-file":
        (runs / "f").write_bytes(b"a file\n")
        folder = runs / "f" / "C"
        typed = str(folder)
    elif kind.startswith("link-"):
        target = {
            "link-to-empty": box.outside / "C", "link-to-missing": box.outside / "missing",
            "link-to-run": box.outside / "run", "link-loop": folder,
            "link-to-file": box.outside / "file",
        }[kind]  # fmt: skip
        if kind == "link-to-empty":
            target.mkdir()
        elif kind == "link-to-run":
            fz.copy_run(t.word, target)
        elif kind == "link-to-file":
            target.write_bytes(b"a file\n")
        folder.symlink_to(target)
        folder = target if kind in ("link-to-empty", "link-to-run") else folder
    elif kind.startswith("dot-"):
        cwd = runs / "proj"
        cwd.mkdir()
        folder, typed = cwd, "."
        if kind == "dot-run":
            shutil.rmtree(cwd)
            fz.copy_run(t.word, cwd)
    elif kind == "latest":
        folder, typed = runs / "latest", str(runs / "latest")
    elif kind == "trailing-slash":
        typed = str(folder) + "/"
    elif kind == "device":
        folder = make_device(runs / "null", 3)
        typed = str(folder)
    if folder.is_dir() and not kind.startswith("link-to-missing"):
        for name in case.plants:
            path = folder / name
            if path.is_dir() or path.is_symlink():
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(f"{name}: the user's own\n".encode())
    return typed, cwd, folder


def run_out(case: OutCase, t: Templates) -> None:
    with Sandbox(t.cases) as box:
        typed, cwd, folder = _out_target(case, t, box)
        # the user's own config, with comments; in the target itself for dot-config
        config = cwd / "config.toml" if case.kind == "dot-config" else box.root / "config.toml"
        config.write_text("# my settings\n" + TINY_CONFIG.format(corpus=t.corpus), encoding="utf-8")
        plants = {
            str(folder / name): (folder / name).read_bytes()
            for name in [*case.plants, *(["config.toml"] if case.kind == "dot-config" else [])]
            if (folder / name).is_file() and not (folder / name).is_symlink()
        }
        args = ["train", "--config", str(config), "--out", typed, "--quiet"]
        if case.overwrite:
            args.append("--overwrite")
        lexical = Path(os.path.abspath(cwd / typed))
        places: list[Path | str] = [lexical, os.path.realpath(cwd / typed)]
        if os.path.basename(typed.rstrip("/")) not in ("", ".", ".."):
            places.append(Path(os.path.realpath(lexical.parent)) / "latest")
        before = fz.snapshot([box.root])
        outcome = invoke(args, roots=roots(t, box), may_change=places, cwd=cwd, trains=True)
        outcome.changed = fz.new_parents(outcome.changed, before, lexical)
        after = fz.snapshot([box.root])
        check(outcome)
        out_rules(typed, outcome, plants, before, after, lexical, t, box)


def out_rules(
    typed: str,
    outcome: fz.Outcome,
    plants: dict[str, bytes],
    before: dict[str, Any],
    after: dict[str, Any],
    lexical: Path,
    t: Templates,
    box: Sandbox,
) -> None:
    """--overwrite removes only what textgen wrote; a refused train changes nothing; the
    latest link names the new run; 'latest' is named only for --out latest (#21 items 1,
    2, 10)."""
    for path, data in plants.items():
        if not os.path.isfile(path) or Path(path).read_bytes() != data:
            fail(
                "user's file lost",
                f"{path.split('/cwd/')[-1]} (not written by textgen) is gone or changed after"
                f" exit {outcome.exit_code} (#21 item 2)",
                outcome,
            )
            return
    if outcome.exit_code != 0:
        left = fz.changes(before, after)
        if left:
            fail(
                "refused train left files",
                f"exit {outcome.exit_code} but {', '.join(p.split('/cwd/')[-1] for p in left[:3])}"
                " changed (#21 item 2: a refused train leaves nothing, no .lock)",
                outcome,
            )
    message = "\n".join(outcome.error_lines)
    if "'latest' is the link" in message and lexical.name != "latest":
        fail("out message", f"--out {lexical.name} is told about 'latest' (#21 item 10)", outcome)
    if outcome.exit_code == 0:
        latest = Path(os.path.realpath(lexical.parent)) / "latest"
        named = os.path.basename(typed.rstrip("/")) not in ("", ".", "..")
        if named and latest.is_symlink() and latest.resolve() != Path(os.path.realpath(lexical)):
            fail(
                "latest",
                f"after training {lexical.name}, latest names {os.readlink(latest)} (#21 item 1)",
                outcome,
            )
        loaded = invoke(
            ["generate", "--model", str(lexical), "--seed", "그의"],
            roots=roots(t, box), cwd=box.cwd,
        )  # fmt: skip
        check(loaded)
        if loaded.exit_code != 0:
            fail("run unreadable", "the run just trained does not generate", loaded)


out_cases = st.builds(
    OutCase,
    kind=st.sampled_from(OUT_KINDS),
    overwrite=st.booleans(),
    plants=st.lists(st.sampled_from(PLANTS), max_size=3, unique=True).map(tuple),
    old_latest=st.booleans(),
)


@fz.fuzz(fast=8, long=400)
@given(case=out_cases)
def _outs(templates: Templates, case: OutCase) -> None:
    fz.count_case(case)
    run_out(case, templates)


def test_out_targets(templates: Templates) -> None:
    with fz.recording():
        _outs(templates=templates)
    end_of_test("test_out_targets")


# ==========================================================================================
# real processes: signals, a closed stdout, a terminal
# ==========================================================================================
def _default_sigint() -> None:
    """In the child: SIGINT as a terminal sends it, even when this test runs in the
    background of a shell (which starts it, and so its children, with SIGINT ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Child:
    """``python -m textgen ARGS`` with its output collected by threads and its peak
    resident set (``VmHWM``, sampled until it exits: ``wait4``'s figure counts the forked
    copy of this process as well)."""

    def __init__(
        self, args: list[str], cwd: Path, *, stdout: Any = subprocess.PIPE, stdin: Any = None
    ) -> None:
        env = dict(os.environ, PYTHONPATH=str(fz.SOURCE), TF_CPP_MIN_LOG_LEVEL="2")
        ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        self.args = args
        self.cwd = cwd
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "textgen", *args], cwd=cwd, env=env,
            stdin=subprocess.PIPE if stdin is None else stdin, stdout=stdout,
            stderr=subprocess.PIPE,
            preexec_fn=_default_sigint if ignored else None,
        )  # fmt: skip
        self.out = bytearray()
        self.err = bytearray()
        self.lines = 0
        self.threads = [threading.Thread(target=self._drain, args=(self.proc.stderr, self.err))]
        if self.proc.stdout is not None:
            self.threads.append(
                threading.Thread(target=self._drain, args=(self.proc.stdout, self.out))
            )
        for thread in self.threads:
            thread.daemon = True
            thread.start()
        self.rc: int | None = None
        self.peak = 0

    def _drain(self, stream: Any, into: bytearray) -> None:
        for chunk in iter(lambda: stream.read1(65536), b""):
            into.extend(chunk)

    def _sample(self) -> None:
        with (
            contextlib.suppress(OSError, ValueError, IndexError),
            open(f"/proc/{self.proc.pid}/status") as fh,
        ):
            for line in fh:
                if line.startswith("VmHWM:"):
                    self.peak = max(self.peak, int(line.split()[1]) * 1024)

    def wait_for(self, predicate: Any, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._sample()
            if predicate():
                return True
            if self.proc.poll() is not None:
                return predicate()
            time.sleep(0.02)
        return False

    def finish(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self._sample()
            pid, status = os.waitpid(self.proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                self.proc.kill()
                pid, status = os.waitpid(self.proc.pid, 0)
                self.err.extend(b"\n[killed by the test: still running]\n")
                break
            time.sleep(0.02)
        self.proc.returncode = self.rc = os.waitstatus_to_exitcode(status)
        for thread in self.threads:
            thread.join(timeout=5)

    def outcome(self, may_change: list[str] | None = None) -> fz.Outcome:
        return fz.Outcome(
            self.args, None, self.rc if self.rc is not None else -1,
            self.out.decode("utf-8", "replace"), self.err.decode("utf-8", "replace"), None,
            may_change or [], [], 0.0, cwd=str(self.cwd),
        )  # fmt: skip


def child_checks(child: Child, expected: int, last_line: str) -> fz.Outcome:
    """A child stopped by a signal: its exit code and last line, no traceback, its memory."""
    outcome = child.outcome()
    if "Traceback (most recent call last)" in outcome.stderr:
        fail("traceback", outcome.stderr.strip().splitlines()[-1][:200], outcome)
    if child.rc != expected:
        fail("signal exit", f"exit {child.rc}, expected {expected}", outcome)
    lines = outcome.stderr.strip().splitlines()
    if not lines or not (lines[-1] == last_line or lines[-1].startswith(last_line + " ")):
        fail("signal message", f"last stderr line {lines[-1:]}, expected {last_line!r}", outcome)
    if child.peak > fz.CHILD_RSS_BOUND:
        fail("memory bound", f"peak resident set {child.peak / fz.GiB:.2f} GiB", outcome)
    return outcome


@dataclass(frozen=True)
class PipeSignalCase:
    sig: int
    lines: tuple[str, ...]  # sent before the signal, each answered before the next
    delay: float


def run_pipe_signal(case: PipeSignalCase, t: Templates) -> None:
    """generate reading a pipe answers each line as it comes (#21 item 7), and SIGINT or
    SIGTERM while it waits for more ends it with 130 or 143 and one line."""
    with Sandbox(t.cases) as box:
        before = fz.snapshot(roots(t, box))
        child = Child(["generate", "--model", str(t.word), "-"], box.cwd)
        streamed = True
        for i, line in enumerate(case.lines):
            child.proc.stdin.write(line.encode() + b"\n")
            child.proc.stdin.flush()
            if not child.wait_for(lambda i=i: child.out.count(b"\n") > i, timeout=5):
                streamed = False
        if not case.lines:
            time.sleep(1.5)  # started and waiting on its stdin
        time.sleep(case.delay)
        child.proc.send_signal(case.sig)
        child.finish()
        expected = 130 if case.sig == signal.SIGINT else 143
        word = "interrupted" if case.sig == signal.SIGINT else "terminated"
        outcome = child_checks(child, expected, word)
        outcome.changed = fz.changes(before, fz.snapshot(roots(t, box)))
        if outcome.changed:
            fail("changed outside the run", ", ".join(outcome.changed[:3]), outcome)
        if not streamed:
            fail("pipeline", "a seed line got no answer before the next one (#21 item 7)", outcome)


@fz.fuzz(fast=2, long=60)
@given(
    case=st.builds(
        PipeSignalCase,
        sig=st.sampled_from([signal.SIGINT, signal.SIGTERM]),
        lines=st.lists(st.sampled_from(TOY_WORDS), max_size=2).map(tuple),
        delay=st.floats(0, 0.5),
    )
)
def _pipe_signals(templates: Templates, case: PipeSignalCase) -> None:
    fz.count_case(case)
    run_pipe_signal(case, templates)


def test_signals_to_generate(templates: Templates) -> None:
    with fz.recording():
        _pipe_signals(templates=templates)
    end_of_test("test_signals_to_generate")


@dataclass(frozen=True)
class TrainSignalCase:
    sig: int
    delay: float  # after the first commit


def run_train_signal(case: TrainSignalCase, t: Templates) -> None:
    """A training run stopped by a signal: exit 130/143 and one line, the run loads,
    runs/latest names it from its first commit (#21 item 1), nothing outside it changes,
    and a reader racing its saves never fails with a traceback (#21 item 4)."""
    with Sandbox(t.cases) as box:
        runs = box.cwd / "runs"
        runs.mkdir()
        fz.copy_run(t.word, runs / "A")
        (runs / "latest").symlink_to("A")
        config = box.root / "long.toml"
        config.write_text(
            TINY_CONFIG.format(corpus=t.corpus).replace("epochs = 1", "epochs = 100000")
            + "save_every_steps = 1\n",
            encoding="utf-8",
        )
        before = fz.snapshot(roots(t, box))
        run = runs / "B"
        child = Child(["train", "--config", str(config), "--out", str(run), "--quiet"], box.cwd)
        committed = child.wait_for(lambda: (run / ".snapshots" / "current").exists(), 120)
        deadline = time.monotonic() + case.delay
        while committed:  # a reader racing the saves, one per step
            reader = invoke(
                ["generate", "--model", str(run), "--seed", "그의"], roots=[t.base], cwd=box.cwd
            )
            check(reader)
            if time.monotonic() > deadline:
                break
        latest = os.readlink(runs / "latest") if (runs / "latest").is_symlink() else None
        child.proc.send_signal(case.sig)
        child.finish()
        expected = 130 if case.sig == signal.SIGINT else 143
        # train's own line: "error: SIGTERM: training stopped at ...; Resume with: ..."
        word = "error: SIGINT:" if case.sig == signal.SIGINT else "error: SIGTERM:"
        after = fz.snapshot(roots(t, box))
        outcome = child.outcome()
        outside = [
            p for p in fz.changes(before, after)
            if not fz.inside(p, [str(run), str(runs / "latest")])
        ]  # fmt: skip
        if not committed:
            fail("train", "no commit within 120 s", outcome)
            return
        child_checks(child, expected, word)
        if outside:
            fail("changed outside the run", ", ".join(outside[:3]), outcome)
        if latest != "B":
            fail("latest", f"runs/latest names {latest} while B trains (#21 item 1)", outcome)
        # through latest: it generates, or (stopped before its first epoch ended) says
        # in one line that it has no model yet
        check(invoke(["generate", "--seed", "그의"], roots=roots(t, box), cwd=box.cwd))


@fz.fuzz(fast=1, long=10)
@given(
    case=st.builds(
        TrainSignalCase, sig=st.sampled_from([signal.SIGTERM, signal.SIGINT]), delay=st.floats(0, 2)
    )
)
def _train_signals(templates: Templates, case: TrainSignalCase) -> None:
    fz.count_case(case)
    run_train_signal(case, templates)


def test_signals_to_train(templates: Templates) -> None:
    if not fz.LONG:
        pytest.skip("long profile only (make soak): a training subprocess takes ~10 s")
    with fz.recording():
        _train_signals(templates=templates)
    end_of_test("test_signals_to_train")


@dataclass(frozen=True)
class TerminalCase:
    model: str
    seed: str
    options: tuple[str, ...]


def _pty_output(args: list[str], cwd: Path) -> tuple[int, str]:
    """Run ``textgen ARGS`` with a terminal for stdout; return its exit code and output."""
    master, slave = pty.openpty()
    child = Child(args, cwd, stdout=slave)
    os.close(slave)
    data = bytearray()
    while True:
        ready, _, _ = select.select([master], [], [], 30)
        if not ready:
            break
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        data.extend(chunk)
    os.close(master)
    child.finish()
    return child.rc or 0, data.decode("utf-8", "replace").replace("\r\n", "\n")


def run_terminal(case: TerminalCase, t: Templates) -> None:
    """What a terminal shows is what a pipe gets (#21 item 8: --stop on a terminal)."""
    with Sandbox(t.cases) as box:
        args = ["generate", "--model", str(t.run(case.model)), "--seed", case.seed, *case.options]
        piped = Child(args, box.cwd)
        piped.finish()
        rc, shown = _pty_output(args, box.cwd)
        outcome = piped.outcome()
        if piped.rc != 0 or rc != 0:
            fail("terminal", f"exit {piped.rc} piped, {rc} on a terminal", outcome)
        elif shown != outcome.stdout:
            fail(
                "terminal",
                f"a terminal shows {shown[:80]!r}, a pipe gets {outcome.stdout[:80]!r}",
                outcome,
            )


@st.composite
def terminal_cases(draw: Any) -> TerminalCase:
    model = draw(st.sampled_from(["word", "jamo"]))
    seed = draw(st.sampled_from(["그의", "가는", "경마장에"]))
    options = ["--length", str(draw(st.integers(1, 40)))]
    if draw(st.booleans()):
        stop = draw(STOPS.filter(lambda s: s.strip() and "\udcff" not in s and "\x00" not in s))
        options += ["--stop", stop]
    if draw(st.booleans()):
        options += ["--strategy", "sample", "--rng-seed", str(draw(st.integers(0, 99)))]
    return TerminalCase(model, seed, tuple(options))


@fz.fuzz(fast=3, long=150)
@given(case=terminal_cases())
def _terminal(templates: Templates, case: TerminalCase) -> None:
    fz.count_case(case)
    run_terminal(case, templates)


def test_terminal_matches_pipe(templates: Templates) -> None:
    with fz.recording():
        _terminal(templates=templates)
    end_of_test("test_terminal_matches_pipe")


@dataclass(frozen=True)
class ClosedOutCase:
    command: str


def run_closed_stdout(case: ClosedOutCase, t: Templates) -> None:
    """A reader whose stdout closes early (``| head -1``) ends quietly: exit 0 or SIGPIPE's
    141, or one error line; never a traceback."""
    with Sandbox(t.cases) as box:
        args = ["generate", "--model", str(t.word), "-", "-n", "3000", "--strategy", "sample"]
        read, write = os.pipe()
        child = Child(args, box.cwd, stdout=write)
        os.close(write)
        child.proc.stdin.write("그의\n가는\n".encode())  # 6000 texts: past a pipe's buffer
        child.proc.stdin.close()
        with os.fdopen(read, "rb") as fh:
            fh.readline()
        child.finish()
        outcome = child.outcome()
        errors = outcome.error_lines
        if "Traceback (most recent call last)" in outcome.stderr:
            fail("traceback", outcome.stderr.strip().splitlines()[-1][:200], outcome)
        elif child.rc not in (0, 141, -signal.SIGPIPE) and not (
            child.rc in (1, 2) and len(errors) == 1
        ):
            fail("closed stdout", f"exit {child.rc} with {len(errors)} error lines", outcome)


def test_closed_stdout(templates: Templates) -> None:
    run_closed_stdout(ClosedOutCase("generate"), templates)


# ==========================================================================================
# the known cases: each defect found by hand (#21) or by this fuzz, as a fixed case
# ==========================================================================================
def _plain(*options: str) -> tuple[tuple[str, str], ...]:
    return tuple(zip(options[::2], options[1::2], strict=True))


KNOWN: list[tuple[str, str, Any]] = [
    # generate (#21 items 6, 7, 8, 11)
    ("item 6: invalid UTF-8 from stdin", "generate",
     GenerateCase("word", "stdin", data=b"\xff\xfe\n")),
    ("item 6: invalid UTF-8 in a seeds file", "generate",
     GenerateCase("word", "file", data="그의\n".encode() + b"\xc3\x28\n")),
    ("item 6: -n 10000 --length 1000000", "generate",
     GenerateCase("word", "arg", "그의", options=_plain("-n", "10000", "--length", "1000000",
                                                       "--strategy", "sample"))),
    ("item 6: --beam-width 100000000", "generate",
     GenerateCase("word", "arg", "그의", options=_plain("--strategy", "beam",
                                                       "--beam-width", "100000000"))),
    ("item 6: invalid UTF-8 at the --interactive prompt", "generate",
     GenerateCase("word", "interactive", data=b"\xff\n")),
    ("item 7: a line with no known token", "generate",
     GenerateCase("word", "stdin", data="그의\nxyz\n가는\n".encode(), plain=True, lines=3)),
    ("item 7: blank lines keep their place", "generate",
     GenerateCase("word", "stdin", data="그의\n\n가는\n".encode(), plain=True, lines=3)),
    ("item 8: a two-syllable --stop at the jamo level", "generate",
     GenerateCase("jamo", "arg", "그의", options=_plain("--stop", "말이", "--length", "60",
                                                       "--format", "jsonl"), plain=True)),
    ("item 8: beam search and --stop", "generate",
     GenerateCase("word", "arg", "그의", options=_plain("--strategy", "beam", "--stop", "법이다",
                                                       "--format", "jsonl"), plain=True)),
    ("item 11: the seed <eos>", "generate", GenerateCase("word", "arg", "<eos>", plain=True)),
    ("item 11: the seed <unk>", "generate", GenerateCase("word", "arg", "<unk>", plain=True)),
    ("item 11: a trailing space", "generate", GenerateCase("word", "arg", "그의 ", plain=True)),
    ("item 11: an NFD seed", "generate", GenerateCase("word", "arg", nfd("그의"), plain=True)),
    ("new: --rng-seed -1", "generate",
     GenerateCase("word", "arg", "그의",
                  options=_plain("--strategy", "sample", "--rng-seed", "-1"))),
    ("new: --length-penalty -inf with beam search", "generate",
     GenerateCase("word", "arg", "그의", options=_plain("--strategy", "beam",
                                                       "--length-penalty", "-inf"))),
    ("new: invalid UTF-8 in --seed at the char level", "generate",
     GenerateCase("jamo", "arg", "가는\udcff")),
    ("new: a click usage error is four lines", "generate",
     GenerateCase("word", "arg", "그의", options=_plain("--length", "abc"))),
    # beam search kept every finished beam and sorted them at each step: 10,000 steps took
    # 23 s, 10^6 never ended; now a step is O(width) (10,000 steps 0.75 s, 10^5 steps 7 s)
    ("new: beam search with a long --length", "generate",
     GenerateCase("word", "arg", "그의",
                  options=_plain("--strategy", "beam", "--length", "30000"))),
    # damaged runs (#21 items 3, 4)
    ("item 4: resume of a snapshot without its tokenizer.json", "damage",
     DamageCase("links", "<current>/tokenizer.json", "remove", "resume")),
    ("item 3: cp -rL copy, metadata.json replaced", "damage",
     DamageCase("deref", "everywhere:metadata.json", "swap", "resume")),
    ("item 4: .snapshots/<current> removed", "damage",
     DamageCase("links", "<current>", "remove", "generate")),
    ("item 4: its manifest.json removed", "damage",
     DamageCase("links", "<current>/manifest.json", "remove", "info")),
    ("new: manifest.json a link to /dev/zero", "damage",
     DamageCase("links", "<current>/manifest.json", "link-devzero", "info")),
    ("new: manifest.json a FIFO", "damage",
     DamageCase("links", "<current>/manifest.json", "fifo", "generate")),
    ("item 3: cp -rL copy, a row appended to history.csv", "damage",
     DamageCase("deref", "everywhere:history.csv", "append", "info", data=b"151,0.1,,0.1\n")),
    ("item 3: cp -rL copy, bytes appended to model.keras", "damage",
     DamageCase("deref", "everywhere:model.keras", "append", "resume")),
    ("item 3: cp -rL copy, bytes appended to last.npz", "damage",
     DamageCase("deref", "everywhere:last.npz", "append", "resume")),
    ("new: resume, .lock a link to itself", "damage",
     DamageCase("links", ".lock", "link-loop", "resume")),
    ("new: resume, .lock a link to a device", "damage",
     DamageCase("links", ".lock", "link-devnull", "resume")),
    ("new: resume, logs/ a link to a file", "damage",
     DamageCase("links", "logs", "link-outside-file", "resume")),
    ("new: resume, logs/ a link to a folder outside the run", "damage",
     DamageCase("links", "logs", "link-outside-dir", "resume")),
    ("new: resume over a config.toml that fails its checksum", "damage",
     DamageCase("links", "everywhere:config.toml", "append", "resume", data=b"\n# x\n")),
    ("new: resume over a weights.npz that fails its checksum", "damage",
     DamageCase("links", "everywhere:weights.npz", "append", "resume")),
    # --out (#21 items 1, 2, 10)
    ("item 1: --out through a link", "out", OutCase("link-to-empty")),
    ("item 1: --out .", "out", OutCase("dot-empty")),
    ("item 2: --out . --overwrite beside the user's config", "out",
     OutCase("dot-config", overwrite=True)),
    ("item 2: a note in logs/ of a run", "out",
     OutCase("run", overwrite=True, plants=("logs/my-notes.md",))),
    ("item 2: a refused --out FOLDER leaves no .lock", "out",
     OutCase("foreign-dir", plants=("notes.txt",))),
    ("item 10: --out a dangling link", "out", OutCase("link-to-missing")),
    ("new: --out under a regular file", "out", OutCase("under-file")),
    # plot and eval (#21 items 6, 12)
    ("item 6: plot --out a folder", "reader", ReaderCase("plot", plot_out="folder")),
    ("item 6: plot --out plots/", "reader", ReaderCase("plot", plot_out="new-folder/")),
    ("item 6: plot --out under a file", "reader", ReaderCase("plot", plot_out="under-file")),
    ("item 6: plot --out an unwritable place", "reader",
     ReaderCase("plot", plot_out="unwritable")),
    ("item 12: eval --model RUN .", "reader", ReaderCase("eval", files=(".",))),
    ("item 12: CRLF scores like LF", "line-endings", LineEndingCase(tuple(TOY_SENTENCES))),
    ("new: --encoding utf-16 without a BOM", "corpus",
     CorpusCase("a b\nc d\n".encode("utf-16-le"), "eval", encoding="utf-16")),
    ("new: a model too big for memory", "config",
     ConfigCase(toml_text(BASE).encode(), sets=("model.units=1000000000",))),
    ("new: data.max_len = 1000000000", "config",
     ConfigCase(toml_text(BASE).encode(), sets=("data.max_len=1000000000",))),
    ("new: data.max_len = 2**62", "config",
     ConfigCase(toml_text(BASE).encode(), sets=("data.max_len=4611686018427387904",))),
    # configs (#21 item 16)
    ("item 16: train.momentum with adam", "config",
     ConfigCase(toml_text(BASE).encode(), sets=("train.momentum=0.5",))),
    ("item 16: data.seq_len in lines mode", "config",
     ConfigCase(toml_text(BASE).encode(), sets=("data.seq_len=5",))),
    ("item 16: data.val_split beside data.valid_corpus", "config",
     ConfigCase(toml_text(BASE).encode(),
                sets=("data.valid_corpus=corpus.txt", "data.val_split=0.2"))),
]  # fmt: skip
RUNNERS: dict[str, Any] = {
    "generate": run_generate,
    "damage": run_damaged,
    "out": run_out,
    "reader": run_reader,
    "line-endings": run_line_endings,
    "config": run_config,
    "corpus": run_corpus,
}


@pytest.mark.parametrize(("area", "case"), [k[1:] for k in KNOWN], ids=[k[0] for k in KNOWN])
def test_known(templates: Templates, area: str, case: Any) -> None:
    RUNNERS[area](case, templates)
