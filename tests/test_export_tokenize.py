"""The tokenization inside the exported graph equals textgen's own, property by property.

The graph's word split (one code-point table built from Python's ``str.lower`` and
``unicodedata`` at export time, then a split on spaces) must give exactly
``WordTokenizer.split`` of the NFC text, for every option; the jamo decomposition and the
recomposition of generated jamo must be exactly NFD and NFC of Hangul text. Run eagerly
on the graph's own functions (no export needed).
"""

from __future__ import annotations

import unicodedata

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from textgen.text import fit_tokenizer

HANGUL = st.one_of(
    st.characters(min_codepoint=0xAC00, max_codepoint=0xD7A3),  # syllables
    st.characters(min_codepoint=0x1100, max_codepoint=0x11FF),  # conjoining jamo
    st.characters(min_codepoint=0xA960, max_codepoint=0xA97F),  # old jamo, never composed
    st.sampled_from(" .,ab\n"),
)


def _nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


@pytest.fixture(scope="module", params=[(False, False), (True, True)], ids=["plain", "lower+punct"])
def word_graph(request):
    from textgen.export.graph import GenerateGraph
    from textgen.export.step_graph import StepWeights

    lowercase, strip = request.param
    tok = fit_tokenizer(
        ["가는 말이 고와야", "İstanbul, Straße. WORD!"], "word", eos=True,
        lowercase=lowercase, strip_punctuation=strip,
    )  # fmt: skip
    vocab = len(tok.vocab)
    arrays = {
        "cell": np.array("rnn"),
        "embedding": np.zeros((vocab, 2), np.float32),
        "rnn_0_kernel": np.zeros((2, 2), np.float32),
        "rnn_0_recurrent": np.zeros((2, 2), np.float32),
        "rnn_0_bias": np.zeros(2, np.float32),
        "out_kernel": np.zeros((2, vocab), np.float32),
        "out_bias": np.zeros(vocab, np.float32),
    }
    return GenerateGraph(StepWeights(arrays), tok), tok


def _graph_words(graph, text: str) -> list[str]:
    from textgen._tf import tensorflow

    words = graph._words(tensorflow().constant(text)).numpy()
    return [w.decode("utf-8") for w in words]


@settings(max_examples=60, deadline=None)
@given(
    st.text(
        alphabet=st.characters(exclude_categories=("Cs",)),  # UTF-8 text has no surrogates
        max_size=30,
    )
)
def test_word_split_in_graph_equals_textgen(word_graph, text):
    graph, tok = word_graph
    text = _nfc(text)  # what the caller is asked to do
    if tok.lowercase and "\u03a3" in text:  # capital sigma: lower it first, as the
        text = text.lower()  # caller of a lowercasing model is asked to (final sigma)
    assert _graph_words(graph, text) == tok.split(text)


def test_word_final_sigma_is_the_one_difference_and_lowering_first_removes_it(word_graph):
    graph, tok = word_graph
    if not tok.lowercase:
        assert _graph_words(graph, "ΟΔΟΣ ΣΑ") == tok.split("ΟΔΟΣ ΣΑ") == ["ΟΔΟΣ", "ΣΑ"]
        return
    assert tok.split("ΟΔΟΣ ΣΑ") == ["οδος", "σα"]  # Python: final sigma in context
    assert _graph_words(graph, "ΟΔΟΣ ΣΑ") == ["οδοσ", "σα"]  # the table: one code point
    assert _graph_words(graph, "ΟΔΟΣ ΣΑ".lower()) == ["οδος", "σα"]


def test_word_split_special_cases(word_graph):
    graph, tok = word_graph
    for text in ["İstanbul, Straße.", "a\u3000b\x1cc\u2028d", "대한민국·헌법 「전문」", "  "]:
        assert _graph_words(graph, text) == tok.split(text)


@settings(max_examples=80, deadline=None)
@given(st.text(alphabet=HANGUL, max_size=25))
def test_jamo_decomposition_and_recomposition_are_nfd_and_nfc(text):
    from textgen._tf import tensorflow
    from textgen.export.graph import GenerateGraph

    tf = tensorflow()
    graph = GenerateGraph.__new__(GenerateGraph)
    graph.jamo = True
    codes = graph._seed_codes(tf.constant(text))
    decomposed = "".join(map(chr, codes.numpy().tolist()))
    assert decomposed == unicodedata.normalize("NFD", text)
    composed = GenerateGraph.compose(codes).numpy().tolist()
    assert "".join(map(chr, composed)) == _nfc(text)
