"""Jamo decoding writes only well-formed Hangul: every strategy (greedy, sampling, beam),
the server's batched loop and the exported ``generate`` pick only jamo that may follow the
previous token in a syllable, so the NFC text holds no loose conjoining jamo whatever
the model or the temperature; a text cut at its length ends on a whole syllable; other
levels decode as before (their fixtures in test_decoding_fixtures.py are unchanged)."""

from __future__ import annotations

import unicodedata

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from textgen.decoding.generate import Generator, Strategy
from textgen.decoding.numpy_lm import NumpyLM, RNNWeights
from textgen.decoding.sampling import beam_search, decode, greedy, sampler
from textgen.text import CharTokenizer
from textgen.text.hangul import (
    C_LEAD,
    C_NEVER,
    C_OTHER,
    C_TAIL,
    C_VOWEL,
    LEAD,
    OTHER,
    TAIL,
    VOWEL,
    SyllableMask,
    loose_jamo,
    syllable_mask,
    token_class,
)
from textgen.text.vocab import EOS, PAD, PAD_ID, UNK, UNK_ID, Vocab

# every modern syllable's jamo (19 L, 21 V, 27 T), compatibility jamo, Latin, punctuation
SYLLABLES = "".join(chr(c) for c in range(0xAC00, 0xD7A4))
JAMO_TEXT = SYLLABLES + " ㅋㅋ ㅠㅠ abc. 12!\n"
SEEDS = ["대한민국은", "가", "각", "닭", "ㅋㅋ", "abc", "\u1100", "대한 "]  # ᄀ: a loose L


def jamo_tokenizer(extra: tuple[str, ...] = ()) -> CharTokenizer:
    """A jamo-level tokenizer with every modern jamo, ``<eos>`` and ``extra`` tokens."""
    fitted = CharTokenizer.fit([JAMO_TEXT], "char", eos=True, normalize="nfd")
    if not extra:
        return fitted
    vocab = Vocab([*fitted.vocab.tokens, *extra])
    return CharTokenizer("char", vocab, normalize="nfd")


def random_lm(vocab: int, seed: int = 0, units: int = 32, bias: np.ndarray | None = None):
    """An untrained one-layer LSTM with random weights, spread enough to be varied."""
    rng = np.random.default_rng(seed)
    emb = 16
    layer = RNNWeights(
        rng.normal(0, 0.5, (emb, 4 * units)).astype(np.float32),
        rng.normal(0, 0.3, (units, 4 * units)).astype(np.float32),
        rng.normal(0, 0.1, 4 * units).astype(np.float32),
    )
    out_bias = np.zeros(vocab, np.float32) if bias is None else bias.astype(np.float32)
    return NumpyLM(
        "lstm",
        rng.normal(0, 1.0, (vocab, emb)).astype(np.float32),
        [layer],
        rng.normal(0, 1.0, (units, vocab)).astype(np.float32),
        out_bias,
    )


@pytest.fixture(scope="module")
def jamo() -> Generator:
    tok = jamo_tokenizer(extra=("\u112b", "\u1160"))  # an old L and the V filler
    return Generator(random_lm(len(tok.vocab)), tok, warn=lambda _m: None)


def new_text(gen: Generator, seed: str, ids: list[int]) -> str:
    """The whole printed text (seed and continuation, recomposed)."""
    return gen.join(seed, ids)


# -- the table ---------------------------------------------------------------------------
def test_token_classes_follow_unicode_conjoining_jamo():
    assert [token_class(chr(c)) for c in (0x1100, 0x1112)] == [C_LEAD, C_LEAD]
    assert [token_class(chr(c)) for c in (0x1161, 0x1175)] == [C_VOWEL, C_VOWEL]
    assert [token_class(chr(c)) for c in (0x11A8, 0x11AA, 0x11C2)] == [C_TAIL] * 3  # ᆪ too
    # old jamo and the fillers are never composed by NFC: never picked
    never = (0x1113, 0x115F, 0x1160, 0x1176, 0x11C3)
    assert [token_class(chr(c)) for c in never] == [C_NEVER] * len(never)
    assert token_class("\ua960") == token_class("\ud7b0") == C_NEVER
    for other in ("ㅋ", "가", " ", "\n", "a", ".", EOS, UNK, PAD):
        assert token_class(other) == C_OTHER, other


def test_the_allowed_table_is_the_syllable_grammar():
    tok = jamo_tokenizer()
    mask = syllable_mask(tok)
    assert mask is not None
    ids = {name: tok.vocab.id(ch) for name, ch in (("L", "ᄀ"), ("V", "ᅡ"), ("T", "ᆪ"))}
    ids |= {"space": tok.vocab.id(" "), "eos": tok.eos_id, "pad": PAD_ID, "unk": UNK_ID}
    ids["compat"] = tok.vocab.id("ㅋ")
    want = {
        LEAD: {"V"},
        VOWEL: {"L", "T", "space", "eos", "pad", "unk", "compat"},
        TAIL: {"L", "space", "eos", "pad", "unk", "compat"},
        OTHER: {"L", "space", "eos", "pad", "unk", "compat"},
    }
    for state, names in want.items():
        row = mask.allowed[state]
        assert {n for n, i in ids.items() if row[i]} == names, state
        final = mask.allowed[4 + state]  # the last token never opens a syllable
        assert {n for n, i in ids.items() if final[i]} == names - {"L"}, state
    assert np.array_equal(mask.additive == 0, mask.allowed)
    assert np.isneginf(mask.additive[~mask.allowed]).all()


def test_a_seed_sets_the_starting_state_from_its_last_ids():
    tok = jamo_tokenizer()
    mask = syllable_mask(tok)

    def state(text: str) -> int:
        return mask.start(tok.encode(unicodedata.normalize("NFD", text)))

    assert state("가") == VOWEL and state("각") == TAIL and state("ᄀ") == LEAD
    assert state("가 ") == OTHER and state("ㅋ") == OTHER
    # loose jamo a user typed: a V not after an L, a T not after a V are "other"
    assert state("ᅡ") == OTHER and state("ᆨ") == OTHER and state("ㅋᅡᆨ") == OTHER
    assert mask.start([UNK_ID]) == OTHER


def test_only_the_jamo_level_gets_a_mask():
    assert syllable_mask(CharTokenizer.fit([JAMO_TEXT], "char", eos=False)) is None  # nfc
    no_jamo = CharTokenizer.fit(["abc def\n"], "char", eos=False, normalize="nfd")
    assert syllable_mask(no_jamo) is None  # nothing to mask: decoding unchanged
    assert syllable_mask(jamo_tokenizer()) is not None


def test_a_vocabulary_without_vowels_never_opens_a_syllable():
    mask = SyllableMask([PAD, UNK, "ᄀ", "ᆨ", "a"])
    assert mask.start([2]) == OTHER  # a seed ending in that L: no syllable can follow
    for state in (OTHER, 4 + OTHER):  # the only state a row can be in here
        assert mask.allowed[state].tolist() == [True, True, False, False, True]


# -- the CLI's strategies ----------------------------------------------------------------
@pytest.mark.parametrize(
    "strategy",
    [
        Strategy("sample", temperature=2.0),
        Strategy("sample", temperature=2.0, top_k=20),
        Strategy("sample", temperature=1.5, top_p=0.9),
        Strategy("greedy"),
    ],
    ids=["t2", "t2-k20", "t1.5-p0.9", "greedy"],
)
def test_an_untrained_model_writes_no_loose_jamo(jamo, strategy):
    """Hundreds of samples of an untrained model at temperature 2 from seeds ending in
    every state: the recomposed texts hold no conjoining jamo."""
    rows = 0
    for k, seed in enumerate(SEEDS):
        num = 1 if strategy.name == "greedy" else 60
        decoded = jamo.continue_ids(seed, length=40, num=num, strategy=strategy, rng_seed=k)
        for ids in decoded.ids:
            text = new_text(jamo, seed, ids)
            assert loose_jamo(text) == [], (seed, text)
            assert text == unicodedata.normalize("NFC", text)
            rows += 1
    assert rows >= 60 * len(SEEDS) or strategy.name == "greedy"


def test_without_the_mask_the_same_model_writes_loose_jamo(jamo):
    """The check above can fail: the mask off, the same model and seeds write loose jamo."""
    gen = Generator(jamo.lm, jamo.tokenizer, warn=lambda _m: None)
    gen.syllables = None
    strategy = Strategy("sample", temperature=2.0)
    decoded = gen.continue_ids("대한민국은", length=40, num=60, strategy=strategy, rng_seed=0)
    loose = sum(len(loose_jamo(new_text(gen, "대한민국은", ids))) for ids in decoded.ids)
    assert loose > 100


def test_beam_search_writes_no_loose_jamo(jamo):
    for seed in SEEDS:
        strategy = Strategy("beam", beam_width=8)
        decoded = jamo.continue_ids(seed, length=25, num=8, strategy=strategy)
        assert len(decoded.ids) == 8
        for ids, logp in zip(decoded.ids, decoded.mean_logprob, strict=True):
            assert loose_jamo(new_text(jamo, seed, ids)) == [], seed
            assert np.isfinite(logp)


def test_a_stop_string_and_the_mask_together(jamo):
    strategy = Strategy("sample", temperature=2.0)
    decoded = jamo.continue_ids("대한", length=60, num=40, strategy=strategy, rng_seed=3, stop=" ")
    for ids in decoded.ids:
        text = jamo.join("대한", ids, " ")
        assert loose_jamo(text) == [] and " " not in text


# -- the end of a text -------------------------------------------------------------------
def lead_loving(tok: CharTokenizer, seed: int = 0) -> NumpyLM:
    """A model that nearly always says an L, else <pad> or a space, and never <eos> (so a
    text runs to its length; <eos> after an L is test_after_an_l_not_even_eos_or_pad)."""
    bias = np.zeros(len(tok.vocab), np.float32)
    for i, t in enumerate(tok.vocab.tokens):
        if token_class(t) == C_LEAD:
            bias[i] = 30.0
    bias[[PAD_ID, tok.vocab.id(" ")]] = 25.0
    bias[tok.eos_id] = -1e4
    return random_lm(len(tok.vocab), seed, bias=bias)


@pytest.mark.parametrize("length", [1, 2, 3, 7, 40])
@pytest.mark.parametrize("name", ["greedy", "sample", "beam"])
def test_a_text_cut_at_its_length_ends_on_a_whole_syllable(length, name):
    """The last token is never an L: after an L it is the L's V, so the text keeps its
    length and ends on a whole syllable (never a dangling L dropped or kept)."""
    tok = jamo_tokenizer()
    gen = Generator(lead_loving(tok), tok, warn=lambda _m: None)
    strategy = Strategy(name, temperature=2.0, beam_width=4)
    for seed in ("가", "ᄀ", "a"):
        num = 4 if name != "greedy" else 1
        decoded = gen.continue_ids(seed, length=length, num=num, strategy=strategy, rng_seed=1)
        for ids in decoded.ids:
            assert len(ids) == length  # an L at the end is masked, and its V is not
            assert token_class(tok.vocab.token(ids[-1])) != C_LEAD
            assert loose_jamo(gen.join(seed, ids)) == [], (seed, ids)
    off = Generator(gen.lm, tok, warn=lambda _m: None)
    off.syllables = None  # the same model unmasked ends on a loose L
    ids = off.continue_ids("a", length=length, strategy=Strategy()).ids[0]
    assert token_class(tok.vocab.token(ids[-1])) == C_LEAD


def test_after_an_l_not_even_eos_or_pad():
    tok = jamo_tokenizer()
    mask = syllable_mask(tok)
    vocab = len(tok.vocab)
    logits = np.zeros((3, vocab), np.float32)
    logits[:, [tok.eos_id, PAD_ID, UNK_ID, tok.vocab.id(" ")]] = [100.0, 99.0, 98.0, 97.0]
    states = np.array([LEAD, VOWEL, OTHER])
    picked = greedy(mask.apply(logits, states))
    assert token_class(tok.vocab.token(picked[0])) == C_VOWEL
    assert picked[1] == picked[2] == tok.eos_id  # elsewhere the specials are untouched
    logits[:, tok.eos_id] = 0.0
    assert greedy(mask.apply(logits, states))[1:].tolist() == [PAD_ID, PAD_ID]


# -- a property over random logits -------------------------------------------------------
def scripted(vocab: int, seed: int, scale: float):
    """A fake ``next`` whose logits are random (any token may be the favourite)."""
    rng = np.random.default_rng(seed)

    def next_fn(ids: np.ndarray, state: int):
        return rng.normal(0, scale, (len(ids), vocab)).astype(np.float32), state

    return next_fn


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    scale=st.sampled_from([0.1, 1.0, 5.0, 50.0]),
    length=st.integers(1, 30),
    rows=st.integers(1, 6),
    start=st.sampled_from([OTHER, LEAD, VOWEL, TAIL]),
    how=st.sampled_from(["greedy", "t2", "k3", "p05", "beam"]),
)
def test_random_logits_never_make_a_loose_jamo(seed, scale, length, rows, start, how):
    """Whatever logits a model gives, the picked ids are well-formed syllables: NFC of
    their text (after a seed that leaves the state ``start``) holds no conjoining jamo."""
    tok = jamo_tokenizer()
    mask = syllable_mask(tok)
    vocab = len(tok.vocab)
    next_fn = scripted(vocab, seed, scale)
    prefix = {OTHER: "a", LEAD: "\u1100", VOWEL: "\u1100\u1161", TAIL: "\u1100\u1161\u11a8"}
    seed_text = prefix[start]
    assert mask.start(tok.encode(seed_text)) == start
    logits, _ = next_fn(np.zeros(rows, np.int64), 0)
    states = np.full(rows, start)
    if how == "beam":
        out = beam_search(
            next_fn, logits[:1], 0, width=rows, length=length, num=rows,
            stop_id=tok.eos_id, mask=mask, mask_states=states[:1],
        )  # fmt: skip
    else:
        pick = {
            "greedy": greedy,
            "t2": sampler(2.0),
            "k3": sampler(1.0, top_k=3),
            "p05": sampler(1.0, top_p=0.5),
        }[how]
        out = decode(
            next_fn, logits, 0, length=length, pick=pick, stop_id=tok.eos_id,
            rng=np.random.default_rng(seed), mask=mask, mask_states=states,
        )  # fmt: skip
    for ids in out.ids:
        text = unicodedata.normalize("NFC", seed_text + tok.decode(ids))
        assert loose_jamo(text) == [], [tok.vocab.token(i) for i in ids]
        if len(ids) == length:  # cut at its length: never on an L
            assert token_class(tok.vocab.token(ids[-1])) != C_LEAD


# -- the server --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def served():
    """A live server of an untrained jamo model and of a model that loves L."""
    from tests.test_serve_support import LiveServer, loader_of
    from textgen.serve.runs import Settings

    tok = jamo_tokenizer()
    lm = random_lm(len(tok.vocab), seed=2)
    leads = lead_loving(tok, seed=3)
    server = LiveServer(
        {
            "jamo": loader_of(lm, tok),
            "leads": loader_of(leads, tok),
        },
        Settings(max_batch=64),
    )
    yield server
    server.close()


def _post(server, **body):
    import httpx

    response = httpx.post(server.url + "/v1/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["choices"]


def test_the_servers_batched_loop_writes_no_loose_jamo(served):
    """Eight prompts of 16 choices each at temperature 2 in one request: 128 rows, run as
    batches of up to 64 rows of the running loop, and two more requests beside them. A
    choice's text is its continuation: its first jamo may complete the prompt's last
    syllable (a T after 가, the V after a loose ᄀ), so the check is on prompt + text."""
    from concurrent.futures import ThreadPoolExecutor

    bodies = [
        dict(model="jamo", prompt=SEEDS, n=16, max_tokens=40, temperature=2.0, seed=1),
        dict(model="jamo", prompt="대한", n=8, max_tokens=33, temperature=2.0, top_k=9, seed=2),
        dict(model="jamo", prompt="가", n=1, max_tokens=40, strategy="greedy", temperature=0),
    ]
    with ThreadPoolExecutor(len(bodies)) as pool:
        results = list(pool.map(lambda b: _post(served, **b), bodies))
    assert [len(r) for r in results] == [16 * len(SEEDS), 8, 1]
    for body, choices in zip(bodies, results, strict=True):
        prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
        for choice in choices:
            seed, text = prompts[choice["index"] // body["n"]], choice["text"]
            assert loose_jamo(text[2:]) == [], (seed, text)  # at most V T join the prompt
            assert text or seed != "\u1100"  # never <eos> right after an L
            assert loose_jamo(served_whole(seed, text)) == [], (seed, text)


def served_whole(seed: str, text: str) -> str:
    """A prompt followed by its continuation, as textgen writes it (recomposed)."""
    return unicodedata.normalize("NFC", seed + text)


def test_the_servers_stream_and_beam_write_no_loose_jamo(served):
    import json

    import httpx

    from tests.test_serve_support import sse_events

    body = dict(model="jamo", prompt="대한민국", n=4, max_tokens=40, temperature=2.0, seed=5)
    with httpx.stream("POST", served.url + "/v1/completions", json=body | {"stream": True}) as r:
        events = [json.loads(e) for e in sse_events(r) if e != "[DONE]"]
    texts = [""] * 4
    for event in events:
        for choice in event["choices"]:
            texts[choice["index"]] += choice["text"]
    assert all(texts) and all(loose_jamo(served_whole("대한민국", t)) == [] for t in texts)
    assert all(loose_jamo(t[2:]) == [] for t in texts), texts
    beams = _post(served, model="jamo", prompt="대한", n=4, max_tokens=30, strategy="beam")
    assert len(beams) == 4
    assert all(loose_jamo(served_whole("대한", c["text"])) == [] for c in beams), beams


@pytest.mark.parametrize("max_tokens", [1, 2, 5])
def test_the_server_ends_a_text_at_max_tokens_on_a_whole_syllable(served, max_tokens):
    for strategy in ("greedy", "sample"):
        extra = {"temperature": 0} if strategy == "greedy" else {"temperature": 2.0, "seed": 4}
        choices = _post(
            served, model="leads", prompt=["a", "\u1100", "가"], n=3,
            max_tokens=max_tokens, strategy=strategy, **extra,
        )  # fmt: skip
        for choice in choices:
            seed = ["a", "\u1100", "가"][choice["index"] // 3]
            assert choice["finish_reason"] == "length"
            assert loose_jamo(served_whole(seed, choice["text"])) == [], choice["text"]


# -- the exported generate ---------------------------------------------------------------
def exported_generate(lm: NumpyLM, tok: CharTokenizer):
    """The SavedModel's ``generate`` function for ``lm`` (traced, not saved: the same graph)."""
    from textgen.export.graph import generate_module

    arrays = {"cell": np.array(lm.cell), **lm.arrays()}
    module = generate_module(arrays, tok)

    def run(seed: str, max_tokens: int, temperature: float, rng_seed: int) -> str:
        out = module.generate(
            seed=np.array(seed), max_tokens=np.int32(max_tokens),
            temperature=np.float32(temperature), rng_seed=np.int64(rng_seed),
        )  # fmt: skip
        return out["text"].numpy().decode("utf-8")

    return run


def test_the_exported_generate_writes_no_loose_jamo():
    """The SavedModel's generate loop of an untrained jamo model at temperature 2: no loose
    jamo; greedy equals ``textgen generate``'s greedy (the same mask); and a model that
    loves L ends every text at max_tokens on a whole syllable."""
    pytest.importorskip("tensorflow")
    tok = jamo_tokenizer()
    lm = random_lm(len(tok.vocab), seed=4)
    generate = exported_generate(lm, tok)
    gen = Generator(lm, tok, warn=lambda _m: None)
    for k, seed in enumerate(SEEDS):
        for rng_seed in range(12):
            text = generate(seed, 40, 2.0, 100 * k + rng_seed)
            assert loose_jamo(text) == [], (seed, text)
        assert generate(seed, 30, 0.0, 0) == gen.generate(seed, length=30)[0]
    leads = exported_generate(lead_loving(tok, seed=5), tok)
    for max_tokens in (1, 2, 5):
        for seed in ("a", "\u1100", "가"):
            assert loose_jamo(leads(seed, max_tokens, 0.0, 0)) == []
            assert loose_jamo(leads(seed, max_tokens, 2.0, 3)) == []
