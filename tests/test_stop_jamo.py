"""A jamo-level stop string is found in the final text, never in a last syllable that may
still take a final consonant: stop "가" does not end a text that goes on as 각하, and a
stop completed by a text's last token (its length, or ``<eos>`` after it) still cuts it,
just before its first occurrence, in ``textgen generate`` (greedy, sampling, beam, the
terminal printer) and in the server (batched loop, stream, beam) alike."""

from __future__ import annotations

import unicodedata

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_jamo_mask import jamo_tokenizer
from textgen.decoding.generate import Generator, Strategy
from textgen.decoding.numpy_lm import NumpyLM, RNNWeights
from textgen.serve.choices import ChoiceText

SEED = "대통령 "


def nfd_ids(tok, text: str) -> list[int]:
    return [tok.vocab.id(c) for c in unicodedata.normalize("NFD", text)]


class Scripted:
    """A model that writes ``script`` (ids) one token at a time, whatever it is fed."""

    def __init__(self, vocab: int, script: list[int]) -> None:
        self.vocab_size, self.script = vocab, script

    def _logits(self, n: int, t: int) -> np.ndarray:
        out = np.zeros((n, self.vocab_size), np.float32)
        out[:, self.script[min(t, len(self.script) - 1)]] = 10
        return out

    def run(self, ids, state=None):
        ids = np.atleast_2d(ids)
        steps = np.zeros(ids.shape[0], np.int64)
        return self._logits(ids.shape[0], 0)[:, None].repeat(ids.shape[1], 1), steps

    def step(self, ids, state):
        state = state + 1
        return self._logits(len(ids), int(state[0])), state


def scripted(text: str, eos: bool = False) -> Generator:
    tok = jamo_tokenizer()
    script = nfd_ids(tok, text) + ([tok.eos_id] if eos else [])
    return Generator(Scripted(len(tok.vocab), script), tok, warn=lambda _m: None)


def expected(text: str, stop: str) -> str:
    """The seed and ``text`` cut just before the first ``stop``, computed on the final text
    alone (the jamo level is a char level: the spaces before a stop are kept)."""
    return SEED + (text[: text.index(stop)] if stop in text else text)


GAKHA = "각하 만세"
LENGTH = len(unicodedata.normalize("NFD", GAKHA))  # 11 jamo


@pytest.mark.parametrize(
    "stop, want",
    [
        ("가", "대통령 각하 만세"),  # the review's repro: 가 was written, then ᆨ made it 각
        ("각", "대통령 "),  # cut before 각 (the seed is kept as written)
        ("하", "대통령 각"),  # found once the space shows 하 takes no final
        ("마", "대통령 각하 만세"),  # 마 became 만
        ("만세", "대통령 각하 "),  # completed by the last token (the text's length)
        ("세", "대통령 각하 만"),
    ],
)
@pytest.mark.parametrize("how", ["greedy", "beam"])
def test_a_stop_is_found_in_the_final_text_only(stop, want, how):
    gen = scripted(GAKHA)
    strategy = Strategy(how, beam_width=2)
    out = gen.generate(SEED, length=LENGTH, stop=stop, strategy=strategy)[0]
    assert out == want == expected(GAKHA, stop)


def test_a_stop_in_the_last_syllable_before_eos_cuts():
    gen = scripted("각하 가", eos=True)
    decoded = gen.continue_ids(SEED, length=40, stop="가")
    assert gen.finish(SEED, decoded.ids[0], "가") == ("대통령 각하 ", 6)  # 각하 and the space
    assert gen.generate(SEED, length=40)[0] == "대통령 각하 가"


def test_the_ids_of_a_stopped_text_run_one_token_past_an_open_syllable():
    gen = scripted(GAKHA)
    ids = gen.continue_ids(SEED, length=LENGTH, stop="하").ids[0]
    assert len(ids) == 6  # ᄀ ᅡ ᆨ ᄒ ᅡ and the space that closed 하
    assert gen.finish(SEED, ids, "하") == ("대통령 각", 3)


@pytest.mark.parametrize("stop", ["가", "각", "하", "만세", "세", " "])
def test_the_terminal_printer_writes_the_final_text(stop):
    gen = scripted(GAKHA)
    written: list[str] = []
    printer = gen.printer(SEED, written.append, stop)
    decoded = gen.continue_ids(SEED, length=LENGTH, stop=stop, on_token=printer)
    final = gen.join(SEED, decoded.ids[0], stop)
    printer.finish(final)
    assert "".join(written) == final == expected(GAKHA, stop)


SYLLABLES = "가각나낙하학다 "


@settings(max_examples=60, deadline=None)
@given(
    text=st.text(alphabet=SYLLABLES, min_size=1, max_size=10).map(str.strip).filter(bool),
    stop=st.text(alphabet=SYLLABLES, min_size=1, max_size=3).filter(str.strip),
    how=st.sampled_from(["greedy", "beam"]),
)
def test_any_text_is_cut_before_the_first_stop_of_its_final_form(text, stop, how):
    gen = scripted(text)
    length = len(unicodedata.normalize("NFD", text))
    out = gen.generate(SEED, length=length, stop=stop, strategy=Strategy(how, beam_width=2))
    assert out[0] == expected(text, stop)


@settings(max_examples=60, deadline=None)
@given(
    text=st.text(alphabet=SYLLABLES, min_size=1, max_size=10).map(str.strip).filter(bool),
    stops=st.lists(st.text(alphabet=SYLLABLES, min_size=1, max_size=3), min_size=1, max_size=3),
)
def test_a_choice_is_cut_before_the_first_stop_of_its_final_form(text, stops):
    """The server's ChoiceText, token by token: the stream's deltas joined equal the final
    text, which is the text cut before the first stop to be complete in it (the earliest
    of those complete by then, as at other levels), or the whole text."""
    tok = jamo_tokenizer()
    choice = ChoiceText(tok, SEED.strip(), stops)
    sent = []
    for token in nfd_ids(tok, text):
        if choice.push(token):
            choice.finish = "stop"
            break
        sent.append(choice.delta())
    else:
        choice.finish = "length"
    sent.append(choice.flush())
    ends = [text.index(s) + len(s) for s in stops if s in text]
    found = [text.index(s) for s in stops if ends and s in text[: min(ends)]]
    want = text[: min(found)] if found else text
    assert choice.text == "".join(sent) == want
    assert choice.finish == ("stop" if found else "length")


# -- the server --------------------------------------------------------------------------
def bigram(tok, follows: dict[str, str]) -> NumpyLM:
    """A SimpleRNN without recurrence that writes ``follows[c]`` after jamo ``c``."""
    size = len(tok.vocab)
    out = np.zeros((size, size), np.float32)
    for a, b in follows.items():
        out[tok.vocab.id(a), tok.eos_id if b == "<eos>" else tok.vocab.id(b)] = 30.0
    layer = RNNWeights(
        np.eye(size, dtype=np.float32), np.zeros((size, size), np.float32), np.zeros(size)
    )
    return NumpyLM("rnn", np.eye(size, dtype=np.float32), [layer], out, np.zeros(size))


@pytest.fixture(scope="module")
def served():
    """Two models after a seed ending in a space: one writes 각 각 각 …, one writes 가 and
    then <eos>."""
    from tests.test_serve_support import LiveServer, loader_of
    from textgen.serve.runs import Settings

    tok = jamo_tokenizer()
    gak = bigram(tok, {" ": "\u1100", "\u1100": "\u1161", "\u1161": "\u11a8", "\u11a8": " "})
    ga = bigram(tok, {" ": "\u1100", "\u1100": "\u1161", "\u1161": "<eos>"})
    assert Generator(gak, tok).generate(SEED, length=8)[0] == "대통령 각 각 "
    assert Generator(ga, tok).generate(SEED, length=8)[0] == "대통령 가"
    server = LiveServer(
        {
            "gak": loader_of(gak, tok),
            "ga": loader_of(ga, tok),
        },
        Settings(max_batch=8),
    )
    yield server
    server.close()


def _choices(server, stream: bool = False, **body):
    import json

    import httpx

    from tests.test_serve_support import sse_events

    body = dict(prompt=SEED, temperature=0) | body
    if not stream:
        response = httpx.post(server.url + "/v1/completions", json=body, timeout=60)
        assert response.status_code == 200, response.text
        return [(c["text"], c["finish_reason"]) for c in response.json()["choices"]]
    body["stream"] = True
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=60) as r:
        events = [json.loads(e) for e in sse_events(r) if e != "[DONE]"]
    texts: dict[int, str] = {}
    finish: dict[int, str | None] = {}
    for event in events:
        for c in event["choices"]:
            texts[c["index"]] = texts.get(c["index"], "") + c["text"]
            finish[c["index"]] = c.get("finish_reason") or finish.get(c["index"])
    return [(texts[i], finish[i]) for i in sorted(texts)]


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
@pytest.mark.parametrize(
    "model, stop, max_tokens, want",
    [
        ("gak", "가", 12, ("각 각 각 ", "length")),  # never 가: not cut
        ("gak", "각", 12, ("", "stop")),
        ("gak", "각 각", 12, ("", "stop")),
        ("gak", "각", 3, ("", "stop")),  # completed by the last token
        ("gak", "가", 2, ("", "stop")),  # 가 is final when the text ends there
        ("ga", "가", 12, ("", "stop")),  # <eos> after 가
        ("ga", "나", 12, ("가", "stop")),
    ],
)
def test_the_server_finds_a_stop_in_the_final_text(served, strategy, model, stop, max_tokens, want):
    body = dict(model=model, stop=stop, max_tokens=max_tokens, strategy=strategy)
    assert _choices(served, **body) == [want]
    assert _choices(served, stream=True, **body) == [want]  # the stream's finish_reason too
