"""Korean-first levels: jamo (NFD), sentencepiece subwords and kiwipiepy morphemes."""

import json
import unicodedata

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from textgen.cli import main
from textgen.config import Config
from textgen.corpus.examples import held_out_text, prepare
from textgen.decoding.generate import Generator
from textgen.errors import DataError, UsageError
from textgen.text import fit_tokenizer, tokenizer_from_dict
from textgen.text.base import Tokenizer
from textgen.training.loop import train

from .conftest import ROOT, small_config
from .test_reliability import QUIET

CONSTITUTION = ROOT.parent / "shared" / "data" / "ko" / "constitution.txt"
KO_TEXT = (
    "대한민국은 민주공화국이다.\n"
    "대한민국의 주권은 국민에게 있고, 모든 권력은 국민으로부터 나온다.\n"
    "경마장에 있는 말이 뛰고 있다\n그의 말이 법이다\n가는 말이 고와야 오는 말이 곱다\n"
)
hangul_syllables = st.characters(min_codepoint=0xAC00, max_codepoint=0xD7A3)
hangul_text = st.text(
    st.one_of(hangul_syllables, st.sampled_from(list(" .,·!?\n1a"))), min_size=1, max_size=60
)


def jamo_tokenizer(text: str = KO_TEXT) -> Tokenizer:
    return fit_tokenizer([text], "char", eos=False, normalize="nfd")


def test_jamo_vocabulary_is_small():
    jamo, syllables = jamo_tokenizer(), fit_tokenizer([KO_TEXT], "char", eos=False)
    assert "말" in syllables.vocab and "말" not in jamo.vocab
    assert {"\u1106", "\u1161", "\u11af"} <= set(jamo.vocab.tokens)  # ᄆ ᅡ ᆯ
    assert len(jamo.vocab) < len(syllables.vocab)


@given(hangul_text)
def test_jamo_round_trip_recomposes_to_nfc(text):
    every_jamo = "".join(chr(c) for c in range(0x1100, 0x1200))
    tok = jamo_tokenizer(every_jamo + " .,·!?\n1a")
    ids = tok.encode(text)
    assert all(0x1100 <= ord(t[0]) <= 0x11FF or len(t) == 1 for t in tok.split(text))
    assert tok.decode(ids) == unicodedata.normalize("NFC", text)


def test_generated_jamo_complete_the_seed_syllable():
    tok = jamo_tokenizer()
    ids = tok.encode("ᆫ 말")  # a final consonant, then a new word
    assert tok.attach("그의", tok.continuation("그의", ids)) == "그읜 말"


@pytest.fixture(scope="module")
def subword():
    return {m: fit_tokenizer([KO_TEXT * 3], "subword", eos=True, subword_model=m, vocab_size=300)
            for m in ("bpe", "unigram")}  # fmt: skip


@settings(max_examples=80, deadline=None)
@given(
    st.text(st.characters(blacklist_categories=("Cs",)))
    | st.text(st.sampled_from(["\u2581", "\U0010fffd", "e", "s", " ", "말"]))
)
def test_subword_round_trip_is_lossless(subword, text):
    """decode(encode(x)) == x for any NFC text, sentencepiece's own space mark included."""
    text = unicodedata.normalize("NFC", text)
    for tok in subword.values():
        assert tok.decode(tok.encode(text)) == text
        assert tok.join(tok.split(text)) == text


def test_subword_ids_are_textgen_ids_and_reload_exactly(subword):
    for model, tok in subword.items():
        assert tok.vocab.tokens[:3] == ("<pad>", "<unk>", "<eos>")
        again = tokenizer_from_dict(json.loads(tok.to_json()))
        assert again == tok and again.subword_model == model
        np.testing.assert_array_equal(again.encode(KO_TEXT), tok.encode(KO_TEXT))


def test_subword_vocab_too_small_is_a_clear_error():
    with pytest.raises(DataError, match=r"vocab_size = 100 is too small.*at least"):
        fit_tokenizer([KO_TEXT], "subword", eos=True, vocab_size=100)


# every character of KO_TEXT but these three is there twice or more
SINGLETONS = "郡縣邑"
KO_RARE = KO_TEXT * 2 + "국민은 {}, {}, {}에 있다.\n".format(*SINGLETONS)


@pytest.mark.parametrize("model", ["bpe", "unigram"])
def test_subword_spells_characters_seen_once_in_byte_pieces(model):
    """The training ids hold byte pieces (the characters seen once), so the model learns
    what bytes cost; every character seen twice or more keeps a piece of its own."""
    from collections import Counter

    counts = Counter(ch for line in KO_RARE.splitlines() for ch in line)
    assert sorted(ch for ch, n in counts.items() if n == 1) == sorted(SINGLETONS)
    tok = fit_tokenizer([KO_RARE], "subword", eos=True, subword_model=model, vocab_size=300)
    pieces = set(tok.vocab.tokens)
    assert not pieces & set(SINGLETONS)
    assert {ch.replace(" ", "\u2581") for ch, n in counts.items() if n > 1} <= pieces
    for ch in SINGLETONS:  # three UTF-8 bytes, each its own byte piece
        spelled = tok.split(ch)
        assert spelled == [f"<0x{b:02X}>" for b in ch.encode("utf-8")]
    ids = np.concatenate([tok.encode(line, eos=True) for line in KO_RARE.splitlines()])
    byte_ids = [i for i in ids if tok.vocab.tokens[i].startswith("<0x")]
    assert len(byte_ids) == 3 * len(SINGLETONS)
    assert tok.decode(ids) == KO_RARE.replace("\n", "")
    assert tok.decode(tok.encode("郡과 縣")) == "郡과 縣"


def test_a_subword_runs_training_ids_hold_the_byte_pieces(tmp_path):
    """What training reads (the id cache of a stream corpus) spells the characters seen once
    in byte pieces, so the model is trained on them."""
    from textgen.config import DataConfig
    from textgen.corpus.cache import prepare_ids

    corpus = tmp_path / "ko.txt"
    corpus.write_text(KO_RARE, encoding="utf-8")
    cfg = DataConfig(corpus=str(corpus), level="subword", subword_model="bpe", vocab_size=300,
                     mode="stream", val_split=0.0)  # fmt: skip
    entry = prepare_ids(cfg)
    ids = entry.train.read(0, len(entry.train))
    pieces = [entry.tokenizer.vocab.tokens[i] for i in ids]
    spelled = [f"<0x{b:02X}>" for b in "".join(SINGLETONS).encode("utf-8")]
    assert [p for p in pieces if p.startswith("<0x")] == spelled


@given(st.lists(st.sampled_from(list("가나다라마바사 .郡\u00e9😀")), min_size=1, max_size=80))
def test_character_coverage_leaves_out_exactly_the_singletons(chars):
    """sentencepiece keeps characters, most frequent first, while the kept ones cover less
    than character_coverage of the text: the value given sits between the share of the
    characters seen twice or more and that share less their rarest one."""
    from collections import Counter

    from textgen.text.subword import MIN_COVERAGE, character_coverage

    text = "".join(chars)
    counts = Counter(text)
    total, once = len(text), sum(n == 1 for n in counts.values())
    coverage = character_coverage([text[: len(text) // 2], text[len(text) // 2 :]])
    if not once:
        assert coverage == 1.0
        return
    kept = total - once
    assert coverage == max(MIN_COVERAGE, coverage)
    if coverage > MIN_COVERAGE:
        rarest_kept = min((n for n in counts.values() if n > 1), default=0)
        assert (kept - rarest_kept) / total < coverage <= kept / total


def test_subword_tokenizer_with_a_tampered_vocabulary_is_refused(subword):
    data = json.loads(subword["bpe"].to_json())
    data["vocab"][5] = "tampered"
    with pytest.raises(Exception, match="does not match"):
        tokenizer_from_dict(data)


def test_levels_share_the_held_out_text(tmp_path):
    corpus = tmp_path / "ko.txt"
    corpus.write_text(KO_TEXT * 4, encoding="utf-8")
    held = {
        level: held_out_text(small_config(corpus, data={"level": level, "mode": "stream",
                                                        "val_split": 0.3}).data)
        for level in ("word", "char", "subword")
    }  # fmt: skip
    assert len(set(held.values())) == 1
    text = KO_TEXT * 4
    assert text.endswith(held["char"]) and text[-len(held["char"]) - 1] == "\n"  # a line start
    assert 0.25 * len(text) <= len(held["char"]) <= 0.3 * len(text)


@pytest.mark.parametrize("level, extra", [("subword", {"vocab_size": 400}), ("char", {})])
def test_korean_levels_train_generate_and_eval(tmp_path, level, extra):
    corpus = tmp_path / "ko.txt"
    corpus.write_text(KO_TEXT * 6, encoding="utf-8")
    data = {"level": level, "mode": "stream", "seq_len": 16, "val_split": 0.2} | extra
    if level == "char":
        data["normalize"] = "nfd"
    cfg = small_config(corpus, data=data, train={"epochs": 2, "jit_compile": False})
    run = tmp_path / "run"
    train(cfg, run, **QUIET)
    runner = CliRunner()
    result = runner.invoke(
        main, ["generate", "--model", str(run), "--seed", "대한민국은", "--length", "15"]
    )
    assert result.exit_code == 0, result.output
    assert result.output.startswith("대한민국은")
    assert unicodedata.is_normalized("NFC", result.output)
    result = runner.invoke(main, ["eval", "--model", str(run), "--valid", "--format", "json"])
    assert result.exit_code == 0, result.output
    scores = json.loads(result.output)["validation"]
    held = held_out_text(cfg.data)
    assert scores["characters"] == len(unicodedata.normalize("NFC", held.rstrip("\n"))) + 1
    assert 0 < scores["bits_per_char"] < 20


def test_eval_needs_files_or_valid(toy_run):
    result = CliRunner().invoke(main, ["eval", "--model", str(toy_run)])
    assert result.exit_code == 2 and "--valid" in result.output
    result = CliRunner().invoke(main, ["eval", "--model", str(toy_run), "--valid"])
    assert result.exit_code == 1 and "held out no validation text" in result.output


def test_nfd_only_at_char_level():
    with pytest.raises(UsageError, match="char"):
        Config().with_overrides(["data.level=word", "data.normalize=nfd"])


def test_morpheme_level():
    pytest.importorskip("kiwipiepy")
    tok = fit_tokenizer(KO_TEXT.splitlines(), "morpheme", eos=True)
    tokens = tok.split("경마장에 있는 말이")
    assert tokens[:3] == ["경마장/NNG", "에/JKB", "▁있/VV"]
    assert tok.join(tokens) == "경마장에 있는 말이"
    assert tokenizer_from_dict(json.loads(tok.to_json())) == tok
    ids = tok.encode(" 있는 말이")
    assert tok.attach("경마장에", tok.continuation("경마장에", ids)) == "경마장에 있는 말이"


def test_morpheme_level_without_kiwipiepy_says_how_to_install(monkeypatch):
    import sys

    from textgen.text import morpheme

    morpheme.analyzer.cache_clear()
    monkeypatch.setitem(sys.modules, "kiwipiepy", None)
    with pytest.raises(UsageError, match=r"pip install 'textgen\[ko\]'"):
        fit_tokenizer(["말이"], "morpheme", eos=True)
    morpheme.analyzer.cache_clear()


def test_constitution_jamo_vocabulary_is_3x_smaller():
    if not CONSTITUTION.exists():
        pytest.skip("shared Korean corpus not present")
    cfg = Config().with_overrides(
        [f"data.corpus={json.dumps(str(CONSTITUTION))}", "data.level=char", "data.mode=stream"]
    )
    syllables = prepare(cfg.data).tokenizer
    jamo = prepare(cfg.with_overrides(["data.normalize=nfd"]).data).tokenizer
    assert len(syllables.vocab) >= 3 * len(jamo.vocab)


def test_streamed_jamo_text_equals_the_final_text():
    """Streaming holds back a syllable that a generated final consonant may complete."""
    tok = jamo_tokenizer()
    shown: list[str] = []
    printer = Generator(None, tok).printer("그의", shown.append)
    ids = tok.encode("ᆫ 말이")
    for token in ids:
        printer(0, int(token))
        assert not any(0x1100 <= ord(c) <= 0x11FF for c in "".join(shown))  # no loose jamo
    final = Generator(None, tok).join("그의", list(ids))
    printer.finish(final)
    assert final == "그읜 말이"
    assert "".join(shown) == final
