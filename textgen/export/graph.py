"""The whole ``generate`` loop as TensorFlow operations, for export: the seed's text to
ids, the step of :mod:`textgen.export.step_graph` over them and over each picked token,
and the ids back to text, all in the graph of a SavedModel's ``generate`` signature.

**Tokenization inside the graph** (``generate``), level by level:

* word: the seed's code points go through one table, fixed at export time from Python's
  own ``str.lower`` / ``unicodedata`` so that it is exactly what textgen does (lowercasing
  and punctuation stripping when the run uses them, every Unicode white space to a
  space), then the text is split on spaces and the words looked up in the vocabulary.
* char: one token per code point.
* jamo (char level, ``normalize = "nfd"``): Hangul syllables are decomposed into
  conjoining jamo, and the output recomposed, with Unicode's conjoining-jamo arithmetic
  (``S = 0xAC00 + (L·21 + V)·28 + T``). The loop picks only jamo that may follow the
  previous token in a syllable, with the tables of :class:`textgen.text.hangul.SyllableMask`
  as constants (the state carried from the seed's ids, the last token never an L), so the
  text holds no loose jamo, as ``textgen generate``'s does.

The word table is per code point, so the one context rule of Python's ``str.lower``,
a word-final capital sigma (``ΟΔΟΣ`` → ``οδος``), comes out as ``σ``: a caller of a
lowercasing model that may see Greek capitals passes ``seed.lower()`` (lowering twice
changes nothing else).

What is left to the caller is Unicode NFC of the seed (TensorFlow has no normalizer):
textgen reads every seed as ``unicodedata.normalize("NFC", seed)``, which is the seed
itself for text typed or stored composed. At the jamo level the graph does the Hangul
part of NFD; any other canonical decomposition (``é`` → ``e`` + U+0301) is the caller's,
and the output's non-Hangul characters are not recomposed.
"""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Mapping
from typing import Any

import numpy as np

from textgen._tf import tensorflow, traced
from textgen.export.step_graph import StepWeights, step_module
from textgen.text.hangul import STATES, TRANSITION, syllable_mask
from textgen.text.vocab import EOS, PAD, PAD_ID, UNK, UNK_ID

MAX_TOKENS = 1_000_000  # generate's max_tokens, at most (textgen generate's --length bound)
SPECIALS = (PAD, UNK, EOS)  # spelled in a seed they are text, read as <unk> (as textgen does)

# Unicode's conjoining-jamo constants (The Unicode Standard, section 3.12)
S_BASE, L_BASE, V_BASE, T_BASE = 0xAC00, 0x1100, 0x1161, 0x11A7
L_COUNT, V_COUNT, T_COUNT = 19, 21, 28
N_COUNT = V_COUNT * T_COUNT  # 588
S_COUNT = L_COUNT * N_COUNT  # 11172


@functools.lru_cache(maxsize=4)
def word_char_map(
    lowercase: bool, strip_punctuation: bool
) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str]]]:
    """What textgen's word level does to each code point before splitting, as a table.

    Returns the code points that change, what each becomes (one code point; white space
    becomes a space), and the few whose lowercase is longer than one code point
    (``İ`` → ``i̇``), which the graph replaces as strings first.
    """
    from textgen.text.word import _KERAS_FILTERS

    keys, values, longer = [], [], []
    for code in range(0x110000):
        if 0xD800 <= code <= 0xDFFF:
            continue  # not in UTF-8 text
        ch = chr(code)
        out = ch.lower() if lowercase else ch
        if strip_punctuation:
            out = "".join(
                " " if unicodedata.category(c).startswith("P") or c in _KERAS_FILTERS else c
                for c in out
            )
        out = "".join(" " if c.isspace() else c for c in out)
        if out == ch:
            continue
        if len(out) == 1:
            keys.append(code)
            values.append(ord(out))
        else:
            longer.append((ch, out))
    return np.asarray(keys, np.int64), np.asarray(values, np.int64), longer


def _literal(text: str) -> str:
    """An RE2 pattern matching ``text`` literally."""
    return "".join(f"\\x{{{ord(c):x}}}" for c in text)


class GenerateGraph:
    """``generate(seed, max_tokens, temperature, rng_seed) → text`` for word and char runs."""

    def __init__(self, weights: StepWeights, tokenizer: Any) -> None:
        tf = tensorflow()
        self.weights = weights
        self.level = tokenizer.level
        self.jamo = tokenizer.is_jamo
        tokens = list(tokenizer.vocab.tokens)
        self.eos_id = tokenizer.eos_id
        mask = syllable_mask(tokenizer)  # the jamo level's syllable rules (None elsewhere)
        self.mask = None
        if mask is not None:
            self.mask = (
                tf.constant(mask.additive),  # (2 * STATES, vocab): 0 or -inf
                tf.constant(TRANSITION.astype(np.int32)),  # (STATES, classes)
                tf.constant(mask.classes.astype(np.int32)),  # (vocab,)
            )
        # id → the text it adds: "" for <pad> and <eos>, which decoding leaves out
        shown = ["" if i == PAD_ID or i == self.eos_id else t for i, t in enumerate(tokens)]
        self.token_text = tf.constant(shown, tf.string)
        known = [(t, i) for i, t in enumerate(tokens) if t not in SPECIALS]
        if self.level == "word":
            self.vocab = tf.lookup.StaticHashTable(
                tf.lookup.KeyValueTensorInitializer(
                    tf.constant([t for t, _ in known], tf.string),
                    tf.constant([i for _, i in known], tf.int64),
                ),
                default_value=UNK_ID,
            )
            keys, values, longer = word_char_map(tokenizer.lowercase, tokenizer.strip_punctuation)
            self.char_map = tf.lookup.StaticHashTable(
                tf.lookup.KeyValueTensorInitializer(tf.constant(keys), tf.constant(values)),
                default_value=-1,
            )
            self.longer = longer
        else:
            singles = [(ord(t), i) for t, i in known if len(t) == 1]
            self.vocab = tf.lookup.StaticHashTable(
                tf.lookup.KeyValueTensorInitializer(
                    tf.constant([c for c, _ in singles], tf.int64),
                    tf.constant([i for _, i in singles], tf.int64),
                ),
                default_value=UNK_ID,
            )

    def tables(self) -> list[Any]:
        """The lookup tables, for a ``tf.Module`` to track."""
        return [self.vocab] + ([self.char_map] if self.level == "word" else [])

    # -- text → ids -------------------------------------------------------------------
    def _words(self, seed: Any) -> Any:
        tf = tensorflow()
        for source, target in self.longer:
            rewrite = target.replace("\\", "\\\\")  # RE2 rewrites: only \\ and \\N are special
            seed = tf.strings.regex_replace(seed, _literal(source), rewrite)
        codes = tf.cast(tf.strings.unicode_decode(seed, "UTF-8", errors="strict"), tf.int64)
        mapped = self.char_map.lookup(codes)
        codes = tf.where(mapped >= 0, mapped, codes)
        text = tf.strings.unicode_encode(tf.cast(codes, tf.int32), "UTF-8")
        words = tf.strings.split(text, sep=" ")
        return tf.boolean_mask(words, tf.strings.length(words) > 0)

    def _seed_codes(self, seed: Any) -> Any:
        """The seed's code points as the model reads them (jamo: syllables decomposed)."""
        tf = tensorflow()
        codes = tf.cast(tf.strings.unicode_decode(seed, "UTF-8", errors="strict"), tf.int64)
        if not self.jamo:
            return codes
        index = codes - S_BASE
        syllable = (index >= 0) & (index < S_COUNT)
        lead = tf.where(syllable, L_BASE + index // N_COUNT, codes)
        vowel = tf.where(syllable, V_BASE + (index % N_COUNT) // T_COUNT, -1)
        trail = tf.where(syllable & (index % T_COUNT > 0), T_BASE + index % T_COUNT, -1)
        spread = tf.reshape(tf.stack([lead, vowel, trail], axis=1), [-1])
        return tf.boolean_mask(spread, spread >= 0)

    @staticmethod
    def compose(codes: Any) -> Any:
        """Recompose conjoining jamo ``L V`` and ``L V T`` into syllables (NFC's Hangul part)."""
        tf = tensorflow()
        n = tf.size(codes)
        pad = tf.constant([-1], codes.dtype)
        is_l = (codes >= L_BASE) & (codes < L_BASE + L_COUNT)
        is_v = (codes >= V_BASE) & (codes < V_BASE + V_COUNT)
        is_t = (codes > T_BASE) & (codes < T_BASE + T_COUNT)
        prev = tf.concat([pad, codes[:-1]], 0)
        prev2 = tf.concat([pad, pad, codes[:-2]], 0)[:n]
        prev_l = (prev >= L_BASE) & (prev < L_BASE + L_COUNT)
        prev_v = (prev >= V_BASE) & (prev < V_BASE + V_COUNT)
        prev2_l = (prev2 >= L_BASE) & (prev2 < L_BASE + L_COUNT)
        v_joins = is_v & prev_l  # this V joins the L before it
        t_joins = is_t & prev_v & prev2_l  # this T joins the L V before it
        nxt = tf.concat([codes[1:], pad], 0)
        nxt2 = tf.concat([codes[2:], pad, pad], 0)[:n]
        next_v_joins = tf.concat([v_joins[1:], [False]], 0)
        next2_t_joins = tf.concat([t_joins[2:], [False, False]], 0)[:n]
        starts = is_l & next_v_joins
        syllable = (
            S_BASE
            + ((codes - L_BASE) * V_COUNT + (nxt - V_BASE)) * T_COUNT
            + tf.where(next2_t_joins, nxt2 - T_BASE, tf.zeros_like(codes))
        )
        out = tf.where(starts, syllable, codes)
        return tf.boolean_mask(out, ~(v_joins | t_joins))

    # -- the loop ---------------------------------------------------------------------
    def generate(self, seed: Any, max_tokens: Any, temperature: Any, rng_seed: Any) -> Any:
        tf = tensorflow()
        checks = [
            tf.debugging.assert_greater_equal(
                max_tokens, 1, message="max_tokens must be at least 1"
            ),
            tf.debugging.assert_less_equal(
                max_tokens, MAX_TOKENS, message=f"max_tokens must be at most {MAX_TOKENS}"
            ),
            tf.debugging.assert_greater_equal(
                temperature, 0.0, message="temperature must be >= 0 (0 = greedy)"
            ),
        ]
        with tf.control_dependencies(checks):
            if self.level == "word":
                words = self._words(seed)
                ids = self.vocab.lookup(words)
                shown_seed = tf.strings.reduce_join(words, separator=" ")
            else:
                codes = self._seed_codes(seed)
                ids = self.vocab.lookup(codes)
        ids = tf.cast(ids, tf.int32)
        empty = tf.debugging.assert_positive(tf.size(ids), message="the seed is empty")
        with tf.control_dependencies([empty]):  # checked first: an empty seed has no token
            unknown = tf.debugging.assert_equal(
                tf.reduce_any(ids != UNK_ID),
                True,
                message="no token of the seed is in the vocabulary of the model",
            )
        with tf.control_dependencies([unknown]):
            ids = tf.identity(ids)
        weights = self.weights
        state = tf.zeros([1, weights.state_size], tf.float32)
        logits = tf.zeros([1, weights.vocab_size], tf.float32)

        syllables = self.mask

        def advance(syl: Any, token: Any) -> Any:
            """The syllable state after ``token`` (a scalar id)."""
            if syllables is None:
                return syl
            _, transition, classes = syllables
            return tf.gather_nd(transition, tf.stack([syl, tf.gather(classes, token)]))

        def feed(i: Any, logits: Any, state: Any, syl: Any) -> tuple[Any, Any, Any, Any]:
            logits, state = weights.step(tf.reshape(ids[i], [1]), state)
            return i + 1, logits, state, advance(syl, ids[i])

        _, logits, state, syl = tf.while_loop(
            lambda i, *_: i < tf.size(ids),
            feed,
            (tf.constant(0), logits, state, tf.constant(0, tf.int32)),
        )
        eos = -1 if self.eos_id is None else self.eos_id
        picked = tf.TensorArray(tf.int32, size=0, dynamic_size=True)

        def pick(t: Any, logits: Any) -> Any:
            def sample() -> Any:
                seed = tf.stack([rng_seed, tf.cast(t, tf.int64)])
                drawn = tf.random.stateless_categorical(
                    logits / temperature, 1, seed=seed, dtype=tf.int32
                )
                return drawn[:, 0]

            def greedy() -> Any:
                return tf.argmax(logits, axis=-1, output_type=tf.int32)

            return tf.cond(temperature > 0, sample, greedy)

        def allowed(t: Any, logits: Any, syl: Any) -> Any:
            """``logits`` with the jamo that may not come next at -inf (the last token of
            the text, at ``max_tokens``, never an L)."""
            if syllables is None:
                return logits
            additive = syllables[0]
            row = syl + tf.where(t + 1 >= max_tokens, STATES, 0)
            return logits + tf.gather(additive, row)[None]

        def body(t: Any, kept: Any, logits: Any, state: Any, picked: Any, syl: Any) -> tuple:
            token = pick(t, allowed(t, logits, syl))
            syl = advance(syl, token[0])
            done = token[0] == eos  # <eos> ends the text and is not part of it
            picked = picked.write(t, token[0])
            kept = tf.where(done, kept, t + 1)
            logits, state = tf.cond(
                done | (t + 1 >= max_tokens),
                lambda: (logits, state),
                lambda: weights.step(token, state),
            )
            return tf.where(done, max_tokens, t + 1), kept, logits, state, picked, syl

        _, kept, _, _, picked, _ = tf.while_loop(
            lambda t, *_: t < max_tokens,
            body,
            (tf.constant(0), tf.constant(0), logits, state, picked, syl),
        )
        new = tf.gather(self.token_text, picked.stack()[:kept])
        if self.level == "word":
            new = tf.boolean_mask(new, tf.strings.length(new) > 0)
            text = tf.strings.reduce_join(new, separator=" ")
            return tf.cond(
                tf.strings.length(text) > 0,
                lambda: shown_seed + " " + text,
                lambda: shown_seed,
            )
        if not self.jamo:
            return seed + tf.strings.reduce_join(new)
        generated = tf.cast(
            tf.strings.unicode_decode(tf.strings.reduce_join(new), "UTF-8"), tf.int64
        )
        whole = self.compose(tf.concat([codes, generated], 0))
        return tf.strings.unicode_encode(tf.cast(whole, tf.int32), "UTF-8")


def generate_module(arrays: Mapping[str, np.ndarray], tokenizer: Any) -> Any:
    """A ``tf.Module`` with ``step`` and ``generate`` functions with input signatures."""
    tf = tensorflow()
    module = step_module(arrays)
    graph = GenerateGraph(module.weights, tokenizer)
    module.graph = graph
    module.tables = graph.tables()  # tracked, so the SavedModel stores them

    @traced(
        input_signature=[
            tf.TensorSpec([], tf.string, name="seed"),
            tf.TensorSpec([], tf.int32, name="max_tokens"),
            tf.TensorSpec([], tf.float32, name="temperature"),
            tf.TensorSpec([], tf.int64, name="rng_seed"),
        ],
    )
    def generate(seed: Any, max_tokens: Any, temperature: Any, rng_seed: Any) -> dict[str, Any]:
        return {"text": graph.generate(seed, max_tokens, temperature, rng_seed)}

    module.generate = generate
    return module
