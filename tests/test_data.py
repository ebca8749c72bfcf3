import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from textgen.config import DataConfig
from textgen.corpus.examples import line_examples, pad_pre, prepare, read_corpus, stream_examples
from textgen.errors import DataError
from textgen.text import fit_tokenizer

from .conftest import TOY_CORPUS


def test_toy_lines_are_pre_padded_with_shifted_targets():
    prepared = prepare(DataConfig(corpus=str(TOY_CORPUS), val_split=0.0))
    tok = prepared.tokenizer
    x, y = prepared.train.inputs, prepared.train.targets
    # longest line: 6 words + <eos> = 7 tokens → inputs and targets of length 6
    assert x.shape == y.shape == (3, 6)
    ids = tok.encode("그의 말이 법이다", eos=True)  # 4 tokens, pre-padded to 7
    padded = np.concatenate([np.zeros(3, np.int32), ids])
    np.testing.assert_array_equal(x[1], padded[:-1])
    np.testing.assert_array_equal(y[1], padded[1:])
    # teacher forcing: every target is the next input
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
    # padding sits on the left only, and the content is preserved
    assert list(x[1][:3]) == [0, 0, 0] and 0 not in x[1][3:]
    assert prepared.train.num_tokens == 5 + 3 + 6  # one prediction per token after the first


@settings(max_examples=50, deadline=None)
@given(st.lists(st.lists(st.integers(1, 50), min_size=1, max_size=12), min_size=1, max_size=8))
def test_pad_pre_invariants(seqs):
    length = max(len(s) for s in seqs)
    padded = pad_pre([np.array(s, np.int32) for s in seqs], length)
    assert padded.shape == (len(seqs), length) and padded.dtype == np.int32
    for row, seq in zip(padded, seqs, strict=True):
        assert list(row[length - len(seq) :]) == seq
        assert not row[: length - len(seq)].any()


def test_long_lines_are_cut_into_overlapping_pieces():
    tok = fit_tokenizer(["a b c d e f g"], "word", eos=True)
    examples, cut = line_examples(["a b c d e f g"], tok, 4)
    assert cut == 1
    # 8 tokens (7 words + <eos>) → pieces a b c d | d e f g | g <eos> (every pair once)
    pairs = {
        (int(i), int(t))
        for xi, yi in zip(examples.inputs, examples.targets, strict=True)
        for i, t in zip(xi, yi, strict=True)
        if i
    }
    ids = tok.encode("a b c d e f g", eos=True)
    assert pairs == set(zip(ids[:-1].tolist(), ids[1:].tolist(), strict=True))


def test_stream_windows_shift_by_one():
    ids = np.arange(1, 12, dtype=np.int32)  # 11 ids → 3 windows of 3
    ex = stream_examples(ids, 3)
    np.testing.assert_array_equal(ex.inputs, [[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    np.testing.assert_array_equal(ex.targets, [[2, 3, 4], [5, 6, 7], [8, 9, 10]])


def test_stream_split_holds_out_the_last_characters(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("abcdefghij" * 10, encoding="utf-8")
    prepared = prepare(
        DataConfig(corpus=str(corpus), level="char", mode="stream", seq_len=10, val_split=0.2)
    )
    assert prepared.train.inputs.shape == (7, 10)  # 80 chars → 7 windows of 10 (+1 target)
    assert prepared.val is not None and prepared.val.inputs.shape == (1, 10)
    assert prepared.tokenizer.eos_id is None


def test_lines_val_split_takes_the_last_lines(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(f"w{i} x y" for i in range(10)), encoding="utf-8")
    prepared = prepare(DataConfig(corpus=str(corpus), val_split=0.2))
    assert len(prepared.train) == 8 and len(prepared.val) == 2
    assert "w9" not in prepared.tokenizer.vocab  # vocabulary comes from training lines only


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty"),
        (b"  \n\t\n", "is empty"),
        (b"ok text\n\xff\xfe bad", r"not valid utf-8 at byte 8 \(0xff\)"),
        (b"\x00\x01\x02binary", "looks binary"),
    ],
)
def test_bad_corpus_files(tmp_path, content, message):
    path = tmp_path / "corpus.txt"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        read_corpus(path)


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16"])
def test_read_corpus_gives_the_sha256_of_the_bytes_in_its_one_pass(tmp_path, encoding):
    """Lines mode records read_corpus' sha256 and stream mode scan's: they must agree."""
    import hashlib

    from textgen.corpus.read import scan

    path = tmp_path / "corpus.txt"
    path.write_bytes("\ufeff경마장에\r\n말이 뛴다\n".encode(encoding) * 1000)
    text, sha = read_corpus(path, encoding)
    assert text.startswith("경마장에") and sha == hashlib.sha256(path.read_bytes()).hexdigest()
    assert sha == scan(path, encoding)[0]


def test_missing_corpus(tmp_path):
    with pytest.raises(DataError, match="corpus not found"):
        read_corpus(tmp_path / "nope.txt")


def test_corpus_shorter_than_one_window(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("abc", encoding="utf-8")
    with pytest.raises(DataError, match="too short for one window"):
        prepare(
            DataConfig(corpus=str(path), level="char", mode="stream", seq_len=10, val_split=0.0)
        )
