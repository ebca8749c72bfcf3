"""What a level is (textgen.text.base.LEVEL_TRAITS) is declared by each level class, and
each value is the one the code around the level needs."""

from __future__ import annotations

import pytest

from textgen.config import LEVELS, DataConfig
from textgen.corpus.read import split_blocks
from textgen.serve.choices import _cut
from textgen.text import fit_tokenizer, level_class, tokenizer_options
from textgen.text.base import LEVEL_TRAITS, Tokenizer
from textgen.text.char import CharTokenizer
from textgen.text.stream import CharCounter, WordCounter, counter_for
from textgen.text.vocab import PAD, UNK, Vocab
from textgen.text.word import WordTokenizer

# the class-level values each level needs (is_jamo of the char level is per instance)
EXPECTED = {
    "char": dict(keeps_whitespace=True, eos_in_stream=False, tokens_are_chars=True),
    "word": dict(keeps_whitespace=False, eos_in_stream=True, tokens_are_chars=False, is_jamo=False),
    "subword": dict(
        keeps_whitespace=False, eos_in_stream=True, tokens_are_chars=False, is_jamo=False
    ),
    "morpheme": dict(
        keeps_whitespace=False, eos_in_stream=True, tokens_are_chars=False, is_jamo=False
    ),
}


def test_the_table_covers_every_level_and_trait():
    assert set(EXPECTED) == set(LEVELS)
    assert set(LEVEL_TRAITS) == {"keeps_whitespace", "eos_in_stream", "tokens_are_chars", "is_jamo"}


@pytest.mark.parametrize("level", LEVELS)
def test_every_level_class_declares_every_trait_in_its_own_body(level):
    cls = level_class(level)
    missing = [t for t in LEVEL_TRAITS if t not in vars(cls)]
    assert not missing, f"{cls.__name__} inherits {missing} instead of declaring them"


@pytest.mark.parametrize("level", LEVELS)
def test_each_trait_has_the_value_its_level_needs(level):
    cls = level_class(level)
    for trait, value in EXPECTED[level].items():
        assert getattr(cls, trait) is value, (level, trait)


def test_is_jamo_is_the_char_level_with_nfd():
    nfc = fit_tokenizer(["말 하다\n"], "char", eos=False)
    nfd = fit_tokenizer(["말 하다\n"], "char", eos=False, normalize="nfd")
    word = fit_tokenizer(["말 하다\n"], "word", eos=True)
    assert (nfc.is_jamo, nfd.is_jamo, word.is_jamo) == (False, True, False)
    assert nfd.continuation_adds_up is False and nfc.continuation_adds_up is True


def test_a_level_class_that_forgets_a_trait_is_refused_when_defined():
    with pytest.raises(TypeError, match="must declare eos_in_stream, tokens_are_chars"):

        class Forgetful(Tokenizer):
            keeps_whitespace = True
            is_jamo = False

    with pytest.raises(TypeError, match="must declare is_jamo"):

        class NoJamo(Tokenizer):
            keeps_whitespace = eos_in_stream = tokens_are_chars = False

    class Declared(Tokenizer):  # declaring all four is enough
        keeps_whitespace = eos_in_stream = tokens_are_chars = is_jamo = False

    class Inherited(WordTokenizer):  # a subclass of a level inherits that level's traits
        pass

    assert Inherited.eos_in_stream is True and Declared.is_jamo is False


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("mode", ["lines", "stream"])
def test_the_vocabulary_has_eos_in_line_mode_and_where_the_stream_has_it(level, mode):
    cfg = DataConfig(level=level, mode=mode)
    assert tokenizer_options(cfg)["eos"] is (mode == "lines" or EXPECTED[level]["eos_in_stream"])


@pytest.mark.parametrize("level", ["char", "word"])
def test_encode_stream_puts_eos_after_each_line_where_the_level_says(level):
    tok = fit_tokenizer(["ab cd\n\nef\n"], level, eos=True)
    ids = tok.encode_stream("ab cd\n\nef\n").tolist()
    assert (tok.eos_id in ids) is tok.eos_in_stream
    if tok.keeps_whitespace:
        assert tok.decode(ids) == "ab cd\n\nef\n"  # line breaks are tokens
    else:
        assert ids.count(tok.eos_id) == 2  # the two non-blank lines


@pytest.mark.parametrize("level", LEVELS)
def test_the_validation_cut_moves_to_whitespace_unless_tokens_are_chars(level):
    (train, valid), *_ = split_blocks(iter(["hello world"]), 2, level)
    assert train + valid == "hello world"
    assert train == ("he" if EXPECTED[level]["tokens_are_chars"] else "hello")


def test_a_stop_cut_keeps_the_spaces_before_it_only_where_whitespace_is_tokens():
    assert _cut("ab  STOP cd", ["STOP"], keeps_whitespace=True) == "ab  "
    assert _cut("ab  STOP cd", ["STOP"], keeps_whitespace=False) == "ab"
    assert _cut("ab", ["STOP"], keeps_whitespace=False) is None


def test_the_counting_encoder_follows_the_traits_and_refuses_a_level_without_one():
    char = CharTokenizer("char", Vocab([PAD, UNK]))
    word = WordTokenizer("word", Vocab([PAD, UNK]))
    assert isinstance(counter_for(char), CharCounter)
    assert isinstance(counter_for(word), WordCounter)

    class Pieces(Tokenizer):  # a level of neither kind gets no silent word counting
        keeps_whitespace = tokens_are_chars = is_jamo = False
        eos_in_stream = True

    with pytest.raises(ValueError, match="no counting encoder"):
        counter_for(Pieces("subword", Vocab([PAD, UNK])))
