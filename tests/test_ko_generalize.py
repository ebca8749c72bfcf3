"""The yardstick of Korean models on text of another kind: the unigram baseline fitted to a
run's training text, the ``<unk>`` accounting both share, line breaks read in the spelling
the model was trained on, and the training part that baseline is fitted to."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from textgen import config as config_mod
from textgen.corpus.examples import held_out_text, training_text
from textgen.decoding.numpy_lm import NumpyLM, RNNWeights
from textgen.evaluate import evaluate_text, evaluate_unigram, unigram_log_probs
from textgen.rundir import Bundle
from textgen.text import fit_tokenizer


def constant_bundle(tok, probs: dict[str, float], mode: str = "stream") -> Bundle:
    """A model whose next-token distribution is ``probs`` whatever the input."""
    vocab, units = len(tok.vocab), 3
    layer = RNNWeights(np.zeros((2, 4 * units)), np.zeros((units, 4 * units)), np.zeros(4 * units))
    bias = np.log([probs[t] for t in tok.vocab.tokens])
    lm = NumpyLM("lstm", np.zeros((vocab, 2)), [layer], np.zeros((units, vocab)), bias)
    window = ["data.seq_len=4"] if mode == "stream" else []  # windows of 4: several pieces
    cfg = config_mod.Config().with_overrides([f'data.mode="{mode}"', *window])
    return Bundle(None, cfg, tok, lm, {})


WORD_PROBS = {"<pad>": 0.05, "<unk>": 0.05, "<eos>": 0.3, "b": 0.4, "a": 0.2}


def word_bundle(mode: str = "stream") -> Bundle:
    tok = fit_tokenizer(["b b a"], "word", eos=True)
    assert tok.vocab.tokens == ("<pad>", "<unk>", "<eos>", "b", "a")
    return constant_bundle(tok, WORD_PROBS, mode)


def test_unigram_baseline_by_hand():
    """Add-one counts of the training targets over every token but <pad>; the scored text
    is read exactly as the model reads it, and <unk> is charged its own probability."""
    bundle = word_bundle()
    # training stream b b a <eos>; targets b a <eos> → counts+1: unk 1, eos 2, b 2, a 2
    logp = unigram_log_probs(bundle, "b b a\n")
    assert logp[0] == -math.inf
    assert np.exp(logp[1:]).tolist() == pytest.approx([1 / 7, 2 / 7, 2 / 7, 2 / 7])
    result = evaluate_unigram(bundle, "b b a\n", "a c\nb\n")
    # stream a <unk> <eos> b <eos>; targets <unk> <eos> b <eos>
    assert result.tokens == 4 and result.characters == 6 and result.unknown == 1
    assert result.nll == pytest.approx(math.log(7) + 3 * math.log(7 / 2))
    assert result.unknown_nll == pytest.approx(math.log(7))
    assert result.unknown_bits_per_char == pytest.approx(math.log2(7) / 6)
    model = evaluate_text(bundle, "a c\nb\n")  # the same tokens, charged by the network
    assert (model.tokens, model.characters, model.unknown) == (4, 6, 1)
    assert model.unknown_nll == pytest.approx(-math.log(WORD_PROBS["<unk>"]), abs=1e-5)
    assert model.nll == pytest.approx(-math.log(0.05) - 2 * math.log(0.3) - math.log(0.4), abs=1e-5)


def test_unigram_baseline_in_lines_mode_skips_each_lines_first_token():
    bundle = word_bundle("lines")
    # lines "b a", "b b": targets a <eos> | b <eos> → counts+1: unk 1, eos 3, b 2, a 2
    logp = unigram_log_probs(bundle, "b a\n\nb b\n")
    assert np.exp(logp[1:]).tolist() == pytest.approx([1 / 8, 3 / 8, 2 / 8, 2 / 8])
    result = evaluate_unigram(bundle, "b a\n\nb b\n", "a c\n")  # targets <unk> <eos>
    assert result.tokens == 2 and result.unknown == 1
    assert result.nll == pytest.approx(math.log(8) + math.log(8 / 3))


def test_evaluations_add_their_unknown_share():
    bundle = word_bundle()
    one, two = evaluate_text(bundle, "a c\n"), evaluate_text(bundle, "c c b\n")
    total = one + two
    assert total.unknown == 2  # the first c of "c c b" is read, not predicted
    assert total.unknown_nll == pytest.approx(2 * -math.log(0.05), abs=1e-5)
    assert total.as_dict()["unknown_bits_per_char"] == pytest.approx(total.unknown_bits_per_char)


def char_bundle(corpus: str) -> Bundle:
    tok = fit_tokenizer([corpus], "char", eos=False)
    probs = {t: 1.0 for t in tok.vocab.tokens}
    total = sum(probs.values())
    return constant_bundle(tok, {t: p / total for t, p in probs.items()})


@pytest.mark.parametrize("text", ["가나\n다\n", "가나\r\n다\r\n"])
def test_a_crlf_trained_char_model_reads_either_spelling_as_its_own(text):
    """A model that saw every line break as \\r\\n is charged for \\r\\n on an LF text too
    (it never saw a bare \\n), and a line break counts one character either way."""
    crlf = char_bundle("가나다\r\n")
    assert "\r" in crlf.tokenizer.vocab
    result = evaluate_text(crlf, text)
    assert result.characters == 5
    assert result == evaluate_text(crlf, "가나\r\n다\r\n")
    assert result.tokens == 6  # 가 나 \r \n 다 \r \n, scored from the second
    lf = char_bundle("가나다\n")  # and a model that never saw \r reads \r\n as \n
    assert evaluate_text(lf, text) == evaluate_text(lf, "가나\n다\n")
    assert evaluate_text(lf, text).tokens == 4


@settings(max_examples=40, deadline=None)
@given(st.text(alphabet="가나다 ab\n\r!", max_size=40))
def test_the_baseline_scores_the_tokens_the_model_scores(text):
    bundle = char_bundle("가나 다\r\nab\r\n")
    model = evaluate_text(bundle, text)
    base = evaluate_unigram(bundle, "가나 다\r\nab\r\n", text)
    assert (base.tokens, base.characters, base.unknown) == (
        model.tokens,
        model.characters,
        model.unknown,
    )
    assert 0 <= base.unknown_nll <= base.nll + 1e-9


@pytest.mark.parametrize("mode", ["stream", "lines"])
def test_training_text_is_the_corpus_before_the_held_out_tail(tmp_path, mode):
    corpus = tmp_path / "c.txt"
    lines = [f"{'가나다라'[i % 4]}줄 {i}" for i in range(30)]
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    cfg = config_mod.DataConfig(corpus=str(corpus), level="char", mode=mode, val_split=0.2)
    train, held = training_text(cfg), held_out_text(cfg)
    assert held and train
    assert train.splitlines() + held.splitlines() == lines
    whole = config_mod.DataConfig(corpus=str(corpus), level="char", mode=mode, val_split=0.0)
    assert training_text(whole).splitlines() == lines
