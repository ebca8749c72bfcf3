"""The streaming id cache: same ids as tokenizing the whole text at once, at any block size."""

from __future__ import annotations

import json
import os
from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from textgen.cli import main
from textgen.config import DataConfig
from textgen.corpus import cache as ids_mod
from textgen.corpus import read as read_mod
from textgen.corpus.examples import Windows, held_out_text, prepare, stream_examples
from textgen.errors import DataError
from textgen.text import fit_tokenizer
from textgen.text.base import Tokenizer

from .conftest import ROOT, TOY_CORPUS

ALPHABET = "ab \n말이가\u1100\u1161\u11a8é\u0301.,!"


def whole_text_ids(text: str, level: str, **options) -> tuple[Tokenizer, np.ndarray]:
    """What the ids must be: fit on the whole text, encode it (the in-memory rule)."""
    if level == "char":
        tok = fit_tokenizer([text], "char", eos=False, **options)
        return tok, tok.encode(text)
    lines = text.splitlines()
    tok = fit_tokenizer(lines, "word", eos=True, **options)
    parts = [tok.encode(line, eos=True) for line in lines if line.strip()]
    return tok, np.concatenate(parts) if parts else np.zeros(0, np.int32)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    text=st.text(alphabet=ALPHABET, min_size=1, max_size=80).filter(lambda t: t.strip()),
    level=st.sampled_from(["char", "word"]),
    block=st.integers(min_value=1, max_value=9),
    nfd=st.booleans(),
)
def test_streamed_ids_equal_whole_text_ids(tmp_path, monkeypatch, text, level, block, nfd):
    monkeypatch.setattr(read_mod, "BLOCK", block)  # many tiny blocks: every boundary case
    monkeypatch.setenv("TEXTGEN_CACHE", str(tmp_path / f"cache-{block}-{level}-{nfd}"))
    corpus = tmp_path / "c.txt"
    corpus.write_text(text, encoding="utf-8")
    normalize = "nfd" if nfd and level == "char" else "nfc"
    options = {"lowercase": level == "word", "strip_punctuation": level == "word"}
    if level == "char":
        options = {"normalize": normalize}
    tok, expected = whole_text_ids(text, level, **options)
    cfg = DataConfig(corpus=str(corpus), level=level, mode="stream", val_split=0.0, **options)
    entry = ids_mod.prepare_ids(cfg)
    assert entry.tokenizer == tok
    np.testing.assert_array_equal(entry.train.read(0, len(entry.train)), expected)


def test_split_matches_held_out_text_and_vocab_counts_training_part(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("aaa bbb\nccc\nddd zzz\nqqq\n", encoding="utf-8")
    cfg = DataConfig(corpus=str(corpus), level="word", mode="stream", val_split=0.53)
    entry = ids_mod.prepare_ids(cfg)
    held = held_out_text(cfg)
    assert held == "ddd zzz\nqqq\n"
    train_text = corpus.read_text()[: -len(held)]
    tok, expected = whole_text_ids(train_text, "word")
    assert entry.tokenizer == tok  # words only in the held-out part are not in the vocab
    np.testing.assert_array_equal(entry.train.read(0, len(entry.train)), expected)
    assert entry.valid is not None
    np.testing.assert_array_equal(
        entry.valid.read(0, len(entry.valid)), [1, 1, tok.eos_id, 1, tok.eos_id]
    )


def test_cache_is_reused_keyed_by_settings_and_repaired_when_damaged(tmp_path, monkeypatch):
    monkeypatch.setenv("TEXTGEN_CACHE", str(tmp_path / "cache"))  # not shared with other tests
    cfg = DataConfig(corpus=str(TOY_CORPUS), level="char", mode="stream", val_split=0.0)
    first = ids_mod.prepare_ids(cfg)
    again = ids_mod.prepare_ids(cfg)
    assert not first.cached and again.cached and again.folder == first.folder
    other = ids_mod.prepare_ids(replace(cfg, level="word"))
    assert other.folder != first.folder
    with (first.folder / ids_mod.TRAIN).open("r+b") as f:  # a truncated id file
        f.truncate(3)
    repaired = ids_mod.prepare_ids(cfg)
    assert not repaired.cached and repaired.train.intact()


def test_entries_of_an_older_cache_format_are_removed_and_newer_ones_kept(tmp_path, monkeypatch):
    """An entry keyed by an older format is never found again: the next write sweeps it
    rather than leave it on disk forever; a newer installation's entry stays."""
    monkeypatch.setenv("TEXTGEN_CACHE", str(tmp_path / "cache"))
    cfg = DataConfig(corpus=str(TOY_CORPUS), level="char", mode="stream", val_split=0.0)
    entry = ids_mod.prepare_ids(cfg).folder
    root = entry.parent
    for name, made_by in (("older", ids_mod.CACHE_FORMAT - 1), ("newer", ids_mod.CACHE_FORMAT + 1)):
        (root / name).mkdir()
        (root / name / ids_mod.META).write_text(json.dumps({"format": made_by}), encoding="utf-8")
        (root / name / ids_mod.TRAIN).write_bytes(b"\0" * 64)
    ids_mod.prepare_ids(replace(cfg, level="word"))  # a new entry is written: the sweep runs
    assert not (root / "older").exists()
    assert (root / "newer" / ids_mod.TRAIN).exists() and entry.is_dir()
    assert ids_mod.prepare_ids(cfg).cached  # the current entry is still found


def test_resumed_tokenizer_is_used_as_given(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("x y z\nx y\n", encoding="utf-8")
    cfg = DataConfig(corpus=str(corpus), level="word", mode="stream", val_split=0.0)
    mine = fit_tokenizer(["y w"], "word", eos=True)  # knows y and w only
    entry = ids_mod.prepare_ids(cfg, tokenizer=mine)
    assert entry.tokenizer == mine
    y, eos = mine.vocab.id("y"), mine.eos_id
    np.testing.assert_array_equal(entry.train.read(0, len(entry.train)), [1, y, 1, eos, 1, y, eos])


def test_bad_bytes_are_reported_with_their_offset_across_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(read_mod, "BLOCK", 4)
    corpus = tmp_path / "bad.txt"
    corpus.write_bytes(b"hello\nworld\n\xff tail\n")
    cfg = DataConfig(corpus=str(corpus), level="char", mode="stream", val_split=0.0)
    with pytest.raises(DataError, match=r"not valid utf-8 at byte 12 \(0xff\)"):
        ids_mod.prepare_ids(cfg)
    assert not any(
        p.name.endswith(".tmp-" + str(os.getpid())) for p in ids_mod.cache_root().iterdir()
    )


def test_blank_corpus_is_an_error(tmp_path):
    corpus = tmp_path / "blank.txt"
    corpus.write_text(" \n\n\t\n", encoding="utf-8")
    with pytest.raises(DataError, match="is empty"):
        ids_mod.prepare_ids(DataConfig(corpus=str(corpus), mode="stream", val_split=0.0))


def test_windows_read_consecutive_and_scattered_rows_alike(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("abcdefghijklmnopqrstuvwxyz" * 3, encoding="utf-8")
    cfg = DataConfig(corpus=str(corpus), level="char", mode="stream", val_split=0.0, seq_len=5)
    prepared = prepare(cfg)
    assert isinstance(prepared.train, Windows)
    entry = ids_mod.prepare_ids(cfg)
    whole = stream_examples(entry.train.read(0, len(entry.train)), 5)
    idx = np.array([7, 2, 3, 11])
    for rows in (idx, np.arange(4, 9)):
        x, y = prepared.train.rows(rows)
        np.testing.assert_array_equal(x, whole.inputs[rows])
        np.testing.assert_array_equal(y, whole.targets[rows])
    assert prepared.train.num_tokens == whole.num_tokens


def test_prepare_command_reports_and_then_finds_the_cache(tmp_path):
    args = ["prepare", "--config", str(ROOT / "configs" / "shakespeare-char.toml"),
            "--corpus", str(TOY_CORPUS), "--format", "json"]  # fmt: skip
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    info = json.loads(first.output)
    assert info["cached"] is False and info["level"] == "char" and info["id_dtype"] == "uint8"
    assert info["train_tokens"] + info["valid_tokens"] == len(TOY_CORPUS.read_text("utf-8"))
    second = CliRunner().invoke(main, args[:-2])
    assert second.exit_code == 0
    lines = second.output.splitlines()
    assert lines[0] == f"{TOY_CORPUS}: {info['bytes'] / 1e6:.1f} MB found in the cache"
    assert lines[1] == (
        f"  char level, vocabulary {info['vocab_size']:,}, {info['train_tokens']:,} training "
        f"+ {info['valid_tokens']:,} validation tokens (uint8)"
    )
    assert lines[2:] == [f"  cache: {info['cache']}"]


def test_prepare_command_refuses_lines_mode(tmp_path):
    result = CliRunner().invoke(
        main, ["prepare", "--config", str(ROOT / "configs" / "ko-toy.toml")]
    )
    assert result.exit_code == 2
    assert "data.mode" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("encoding", ["cp949", "utf-16", "utf-8-sig"])
def test_other_encodings_stream_like_utf8(tmp_path, monkeypatch, encoding):
    monkeypatch.setattr(read_mod, "BLOCK", 5)
    text = "경마장에 있는 말이\n뛰고 있다\n그의 말이 법이다\n가는 말이 고와야\n"
    corpus = tmp_path / "c.txt"
    corpus.write_bytes(text.encode(encoding))
    cfg = DataConfig(
        corpus=str(corpus), level="char", mode="stream", val_split=0.3, encoding=encoding
    )
    entry = ids_mod.prepare_ids(cfg)
    held = held_out_text(cfg)
    assert held == "가는 말이 고와야\n"
    tok, expected = whole_text_ids(text[: -len(held)], "char")
    assert entry.tokenizer == tok
    np.testing.assert_array_equal(entry.train.read(0, len(entry.train)), expected)
