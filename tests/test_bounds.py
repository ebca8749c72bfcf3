"""Bad input costs bounded memory and time: each case has a limit or a streaming path and
a one-line error, and the id cache trusts no entry it cannot verify."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from textgen.cli import main
from textgen.config import DataConfig
from textgen.corpus import cache as ids_mod
from textgen.corpus import examples as data_mod
from textgen.corpus import read as read_mod
from textgen.decoding import generate as generate_mod
from textgen.decoding.generate import Generator
from textgen.errors import DataError
from textgen.rundir import load_bundle
from textgen.text import stream as stream_mod
from textgen.text.subword import _sample_lines

from .conftest import ROOT, TOY_CONFIG
from .test_ids import whole_text_ids
from .test_run_dir import assert_one_line_error


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def stream_config(corpus: Path, level: str = "word", **kw) -> DataConfig:
    return DataConfig(corpus=str(corpus), level=level, mode="stream", val_split=0.0, **kw)


# -- one very long line ---------------------------------------------------------------------
def test_a_long_line_is_read_whole_across_many_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(read_mod, "BLOCK", 1000)
    words = " ".join(f"w{i % 97}" for i in range(20_000))  # one line of ~100 blocks
    text = f"first line\n{words}\nlast line\n"
    corpus = tmp_path / "c.txt"
    corpus.write_text(text, encoding="utf-8")
    blocks = list(read_mod.text_blocks(corpus))
    assert "".join(blocks) == text and all(b.endswith("\n") for b in blocks)
    entry = ids_mod.prepare_ids(stream_config(corpus))
    _, expected = whole_text_ids(text, "word")
    np.testing.assert_array_equal(entry.train.read(0, len(entry.train)), expected)


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16"])
def test_a_line_past_the_limit_is_one_line_error(tmp_path, monkeypatch, encoding):
    monkeypatch.setattr(read_mod, "BLOCK", 4096)
    monkeypatch.setattr(read_mod, "MAX_LINE_BYTES", 50_000)
    corpus = tmp_path / "c.txt"
    corpus.write_bytes(("short\n" + "x" * 200_000 + "\n").encode(encoding))
    result = invoke(
        "prepare", "--config", TOY_CONFIG, "--corpus", corpus, "--encoding", encoding,
        "--set", "data.mode=stream", "--quiet",
    )  # fmt: skip
    assert_one_line_error(result, 1, "has a line longer than 0 MB; stream-mode text needs")


# -- a vocabulary of unique words -----------------------------------------------------------
def test_a_corpus_of_unique_words_stops_at_the_distinct_token_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(stream_mod, "MAX_DISTINCT", 1000)
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(f"u{i} v{i}" for i in range(2000)), encoding="utf-8")
    with pytest.raises(DataError, match=r"more than 1,000 distinct tokens.*subword"):
        ids_mod.prepare_ids(stream_config(corpus))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.integers(0, 300), max_size=50), max_size=12))
def test_counts_grow_by_doubling_and_equal_a_bincount(blocks):
    counts, size, seen = np.zeros(0, np.int64), 0, []
    for block in blocks:
        ids = np.asarray(block, np.int64)
        size = max(size, int(ids.max()) + 1 if len(ids) else 0)
        counts = stream_mod.add_counts(counts, ids, size)
        seen.extend(block)
        assert len(counts) >= size
    expected = np.bincount(np.asarray(seen, np.int64), minlength=size)
    np.testing.assert_array_equal(counts[:size], expected[:size])
    assert not counts[size:].any()


# -- subword fitting -----------------------------------------------------------------------
def test_subword_fitting_keeps_a_bounded_uniform_sample():
    lines = [f"line {i:05d}" for i in range(5000)]  # 10 characters each
    assert _sample_lines(iter(lines[:20]), budget=1000) == lines[:20]  # within: all, in order
    sample = _sample_lines(iter(lines), budget=1000)
    assert len(sample) == 101 and len(set(sample)) == 101 and set(sample) <= set(lines)
    assert max(sample) > lines[2500], "the sample reaches the end of the corpus"
    assert sample == _sample_lines(iter(lines), budget=1000)  # a fixed seed


# -- lines mode, max_len = 0 ----------------------------------------------------------------
def test_padding_every_line_to_one_huge_line_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(data_mod, "MAX_PADDED_IDS", 10_000)
    corpus = tmp_path / "c.txt"
    lines = ["a b c"] * 50
    lines[7] = " ".join(["a"] * 5000)
    corpus.write_text("\n".join(lines), encoding="utf-8")
    result = invoke("train", "--config", TOY_CONFIG, "--corpus", corpus, "--out", tmp_path / "r")
    assert_one_line_error(result, 1, "non-blank line 8 has 5,000 tokens")
    assert "set data.max_len" in result.stderr
    ok = invoke(
        "train", "--config", TOY_CONFIG, "--corpus", corpus, "--out", tmp_path / "r2",
        "--set", "data.max_len=20", "--set", "train.epochs=1", "--quiet",
    )  # fmt: skip
    assert ok.exit_code == 0, ok.output


# -- seeds and lengths ----------------------------------------------------------------------
def spy_on_runs(monkeypatch) -> list[tuple[int, ...]]:
    """The shapes of the ids every ``NumpyLM.run`` call is given (the seed's chunks)."""
    from textgen.decoding.numpy_lm import NumpyLM

    shapes: list[tuple[int, ...]] = []
    original = NumpyLM.run

    def run(self, ids, state=None):
        shapes.append(np.shape(ids))
        return original(self, ids, state)

    monkeypatch.setattr(NumpyLM, "run", run)
    return shapes


def chunks(total: int, size: int, rows: int) -> list[tuple[int, int]]:
    """The (rows, time) shapes of ``total`` seed tokens cut into chunks of ``size``."""
    return [(rows, min(size, total - start)) for start in range(0, total, size)]


def test_a_long_seed_runs_in_chunks_with_the_same_result(toy_run, monkeypatch):
    bundle = load_bundle(toy_run)
    generator = Generator(bundle.lm, bundle.tokenizer)
    seed_ids = generator.encode_seed(" ".join(["그의 말이 법이다"] * 40))
    assert len(seed_ids) == 120
    shapes = spy_on_runs(monkeypatch)
    whole_logits, whole_state = generator.prefill(seed_ids, 2)
    assert shapes == [(2, 120)]  # the default bound holds the whole seed
    vocab = bundle.lm.vocab_size
    monkeypatch.setattr(generate_mod, "PREFILL_LOGITS", 2 * 7 * vocab)  # chunks of 7 tokens
    shapes.clear()
    logits, state = generator.prefill(seed_ids, 2)
    assert shapes == chunks(120, 7, 2)  # 17 chunks of 7, then one of 1
    np.testing.assert_allclose(logits, whole_logits, rtol=1e-5, atol=1e-5)
    for a, b in zip(state, whole_state, strict=True):
        for x, y in zip(a, b, strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)


def test_a_megabyte_seed_generates(toy_run, monkeypatch):
    """A seed of 350k tokens goes through the network in chunks whose logits stay under the
    bound (lowered here so that the toy's small vocabulary needs several chunks)."""
    vocab = load_bundle(toy_run).lm.vocab_size
    bound = 1 << 20
    monkeypatch.setattr(generate_mod, "PREFILL_LOGITS", bound)
    shapes = spy_on_runs(monkeypatch)
    seed = "그의 " * 350_000  # ~1 MB of text, 350k tokens
    result = invoke("generate", "--model", toy_run, "--seed", seed.strip(), "--length", "3")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("그의 그의")
    size = bound // vocab
    assert 350_000 // size >= 4  # the bound really cuts the seed
    assert shapes == chunks(350_000, size, 1)
    assert all(rows * time * vocab <= bound for rows, time in shapes)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--length", "1000000000000"], "--length must be at most 1,000,000"),
        (["-n", "100000"], "-n/--num-samples must be at most 10,000"),
    ],
)
def test_absurd_sizes_are_refused_before_any_memory_is_taken(toy_run, args, message):
    result = invoke("generate", "--model", toy_run, "--seed", "그의", *args)
    assert_one_line_error(result, 2, message)


# -- the id cache ---------------------------------------------------------------------------
def test_a_cache_entry_with_other_ids_of_the_same_size_is_rebuilt(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("a b c\nb c d\n" * 50, encoding="utf-8")
    cfg = stream_config(corpus)
    entry = ids_mod.prepare_ids(cfg)
    good = entry.train.read(0, len(entry.train)).copy()
    raw = bytearray(entry.train.path.read_bytes())
    raw[0] ^= 0x01  # same size, other ids
    entry.train.path.write_bytes(bytes(raw))
    again = ids_mod.prepare_ids(cfg)
    assert not again.cached
    np.testing.assert_array_equal(again.train.read(0, len(again.train)), good)


def test_abandoned_temporary_folders_are_swept_and_live_ones_kept(tmp_path, monkeypatch):
    monkeypatch.setenv(ids_mod.CACHE_ENV, str(tmp_path / "cache"))
    root = tmp_path / "cache"
    dead, alive = root / "k1.tmp-dead", root / "k2.tmp-alive"
    for folder in (dead, alive):
        folder.mkdir(parents=True)
        (folder / "train.prov").write_bytes(b"\0" * 1000)
    (dead / ids_mod.OWNER).write_text("")  # its owner died: nobody holds the lock
    holder = ids_mod._hold(alive / ids_mod.OWNER)
    try:
        corpus = tmp_path / "c.txt"
        corpus.write_text("a b\n" * 20, encoding="utf-8")
        ids_mod.prepare_ids(stream_config(corpus))
        assert not dead.exists() and alive.exists()
    finally:
        os.close(holder)


def test_sigterm_during_prepare_leaves_no_temporary_folder(tmp_path):
    corpus = tmp_path / "big.txt"
    rng = np.random.default_rng(0)
    words = np.array([f"w{i}" for i in range(5000)])
    with corpus.open("w", encoding="utf-8") as fh:
        for _ in range(40):
            fh.write("\n".join(" ".join(row) for row in rng.choice(words, (20_000, 10))) + "\n")
    cache = tmp_path / "cache"
    env = dict(os.environ, TEXTGEN_CACHE=str(cache))
    proc = subprocess.Popen(
        [sys.executable, "-m", "textgen", "prepare", "--config", str(TOY_CONFIG),
         "--corpus", str(corpus), "--set", "data.mode=stream", "--quiet"],
        cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not list(cache.glob("*.tmp-*/*")):
        assert proc.poll() is None, f"prepare ended before the signal: {proc.stderr.read()}"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "terminated" in err and "Traceback" not in err, err
    assert list(cache.glob("*.tmp-*")) == []
