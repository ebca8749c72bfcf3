import unicodedata

from hypothesis import given
from hypothesis import strategies as st

from textgen.text import fit_tokenizer, load_tokenizer, tokenizer_from_dict
from textgen.text.vocab import EOS, PAD, UNK, Vocab


def test_specials_have_fixed_ids_and_frequency_order():
    tok = fit_tokenizer(["b a b", "c b a"], "word", eos=True)
    assert tok.vocab.tokens[:3] == (PAD, UNK, EOS)
    assert tok.vocab.tokens[3:] == ("b", "a", "c")  # by count, ties by first appearance


def test_encode_appends_eos_and_maps_unknown_to_unk():
    tok = fit_tokenizer(["그의 말이 법이다"], "word", eos=True)
    ids = tok.encode("그의 낯선 말이", eos=True)
    assert ids.dtype.name == "int32"
    assert list(ids) == [tok.vocab.id("그의"), 1, tok.vocab.id("말이"), tok.eos_id]
    assert tok.unknown_tokens("그의 낯선 말이 낯선") == ["낯선"]


def test_max_vocab_and_min_freq():
    text = ["a a a b b c"]
    assert fit_tokenizer(text, "word", eos=False, max_vocab=3).vocab.tokens == (PAD, UNK, "a")
    assert fit_tokenizer(text, "word", eos=False, min_freq=2).vocab.tokens == (PAD, UNK, "a", "b")


def test_lowercase_and_punctuation_never_touch_hangul():
    tok = fit_tokenizer([""], "word", eos=False, lowercase=True, strip_punctuation=True)
    assert tok.split("Hello, 세계! 대한민국·헌법 (Korea).") == [
        "hello",
        "세계",
        "대한민국",
        "헌법",
        "korea",
    ]


def test_char_level_is_nfc_code_points():
    decomposed = unicodedata.normalize("NFD", "말이")
    tok = fit_tokenizer([decomposed], "char", eos=False)
    assert tok.split(decomposed) == ["말", "이"]


@given(st.text())
def test_char_round_trip_any_unicode(text):
    tok = fit_tokenizer([text], "char", eos=False)
    assert tok.decode(tok.encode(text)) == unicodedata.normalize("NFC", text)


# The words "<pad>" and "<eos>" in a text are the special tokens by design (PTB writes its
# "<unk>" literally); decoding leaves padding and ends of lines out, so they cannot round trip.
SPECIAL_WORDS = {"<pad>", "<eos>"}


@given(
    st.lists(
        st.text(min_size=1).filter(lambda s: s.split() and not SPECIAL_WORDS & set(s.split())),
        max_size=5,
    )
)
def test_word_round_trip_modulo_whitespace(lines):
    tok = fit_tokenizer(lines, "word", eos=True)
    for line in lines:
        expected = " ".join(unicodedata.normalize("NFC", line).split())
        assert tok.decode(tok.encode(line, eos=True)) == expected


@given(st.text(), st.sampled_from(["word", "char"]))
def test_json_round_trip(text, level):
    tok = fit_tokenizer([text], level, eos=level == "word", lowercase=True)
    again = tokenizer_from_dict(__import__("json").loads(tok.to_json()))
    assert again == tok
    assert list(again.encode(text)) == list(tok.encode(text))


def test_newer_format_version_is_refused(tmp_path):
    import json

    import pytest

    from textgen.errors import DataError

    tok = fit_tokenizer(["a b"], "word", eos=True)
    data = tok.to_dict() | {"format_version": 99}
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(DataError, match="format version 99 is newer"):
        load_tokenizer(path)


def test_vocab_requires_specials_first():
    import pytest

    with pytest.raises(ValueError):
        Vocab(["a", PAD, UNK])
