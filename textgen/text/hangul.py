"""Which jamo may follow which at the jamo level, as precomputed numpy masks over a vocabulary.

At the jamo level (``level = "char"``, ``normalize = "nfd"``) a Hangul syllable is fed
as its conjoining jamo and the output is recomposed to NFC. NFC makes a syllable of an
initial consonant L (U+1100–U+1112), a medial vowel V (U+1161–U+1175) and at most one
final consonant T (U+11A8–U+11C2, compound finals such as ᆪ U+11AA included: each is one
code point), in that order (The Unicode Standard, section 3.12). Any other sequence
leaves conjoining jamo in the text, where they show as loose letters. A decoder that
picks only tokens of :class:`SyllableMask`'s allowed table writes well-formed syllables
whatever its model says:

* after an L only a V (no space, newline, ``<eos>``, ``<pad>``, ``<unk>`` or another L);
* a V only after an L; a T only after a V (one T at most);
* after a V or a T, or any other token, anything but a V or a T;
* the last token of a text (``final``) is never an L, so a text that ends at its length
  ends on a whole syllable (after an L the last token is its V: the text keeps its length);
* conjoining jamo that NFC never composes (old Hangul, the fillers U+115F and U+1160,
  U+A960–U+A97F, U+D7B0–U+D7FF) and, in a vocabulary without any V, the L are never
  picked: they could only be loose;
* every other token (spaces, punctuation, Latin, compatibility jamo such as ㅋ U+314B,
  precomposed syllables, ``<unk>``, ``<eos>``) is an "other": untouched but after an L.

The state of a row is what its previous token was, as far as syllables go (``OTHER``,
``LEAD``, ``VOWEL``, ``TAIL``). A token picked under the mask moves it by its class
alone; a seed's ids, which may hold loose jamo a user typed, go through
:data:`TRANSITION`, where a V not after an L and a T not after a V count as "other". The
mask costs one gather of a (rows, vocab) block of an additive table (0 or ``-inf``), one
add and one gather of the new states per step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

# classes of tokens
C_OTHER, C_LEAD, C_VOWEL, C_TAIL, C_NEVER = 0, 1, 2, 3, 4
CLASSES = 5
# states of a row: the class of its previous token, as far as syllables go
OTHER, LEAD, VOWEL, TAIL = 0, 1, 2, 3
STATES = 4

LEADS = range(0x1100, 0x1113)  # ᄀ … ᄒ, the 19 modern initial consonants
VOWELS = range(0x1161, 0x1176)  # ᅡ … ᅵ, the 21 modern medial vowels
TAILS = range(0x11A8, 0x11C3)  # ᆨ … ᇂ, the 27 modern finals, compound ones included
CONJOINING = ((0x1100, 0x11FF), (0xA960, 0xA97F), (0xD7B0, 0xD7FF))  # all conjoining jamo

# TRANSITION[state, class]: the state after a token of that class
TRANSITION = np.array(
    [
        #  other  lead  vowel  tail   never
        [OTHER, LEAD, OTHER, OTHER, OTHER],  # from OTHER
        [OTHER, LEAD, VOWEL, OTHER, OTHER],  # from LEAD
        [OTHER, LEAD, OTHER, TAIL, OTHER],  # from VOWEL
        [OTHER, LEAD, OTHER, OTHER, OTHER],  # from TAIL
    ],
    dtype=np.int8,
)
# ALLOWED[state, class]: whether a token of that class may come next
ALLOWED = np.array(
    [
        [True, True, False, False, False],  # after another token: no V, no T
        [False, False, True, False, False],  # after an L: only a V
        [True, True, False, True, False],  # after a V: a T, an L or another token
        [True, True, False, False, False],  # after a T: no V, no T
    ]
)


def is_conjoining(ch: str) -> bool:
    """Whether ``ch`` is a conjoining jamo (modern or not)."""
    code = ord(ch)
    return any(lo <= code <= hi for lo, hi in CONJOINING)


def loose_jamo(text: str) -> list[str]:
    """The conjoining jamo NFC leaves in ``text`` (the loose letters), in order. ``text``
    is taken as it is: pass NFC text, as textgen writes it."""
    return [ch for ch in text if is_conjoining(ch)]


def token_class(token: str) -> int:
    """The syllable class of one vocabulary token (a string)."""
    if len(token) != 1:
        return C_NEVER if any(is_conjoining(ch) for ch in token) else C_OTHER
    code = ord(token)
    if code in LEADS:
        return C_LEAD
    if code in VOWELS:
        return C_VOWEL
    if code in TAILS:
        return C_TAIL
    return C_NEVER if is_conjoining(token) else C_OTHER


class SyllableMask:
    """The allowed-next table of one vocabulary, as an additive (0 / ``-inf``) float32
    table: rows ``state`` for any step, rows ``STATES + state`` for a text's last token
    (the graph of :mod:`textgen.export.graph` takes the same table as a constant)."""

    def __init__(self, tokens: Sequence[str]) -> None:
        classes = np.array([token_class(t) for t in tokens], dtype=np.int8)
        if not (classes == C_VOWEL).any():
            classes[classes == C_LEAD] = C_NEVER  # an L could never be completed
        self.classes = classes
        allowed = ALLOWED[:, classes]  # (states, vocab)
        last = allowed & (classes != C_LEAD)  # the last token never opens a syllable
        both = np.concatenate([allowed, last])
        self.allowed = both
        self.additive = np.where(both, 0.0, -np.inf).astype(np.float32)
        self._any, self._last = self.additive[:STATES], self.additive[STATES:]
        # the state after a picked token: its class alone (a pick obeys the mask)
        by_class = np.array([OTHER, LEAD, VOWEL, TAIL, OTHER], dtype=np.int64)
        self.state_after = by_class[classes]
        self.vocab_size = len(tokens)

    @property
    def active(self) -> bool:
        """Whether the vocabulary holds any conjoining jamo (else the mask changes nothing)."""
        return bool((self.classes != C_OTHER).any())

    def start(self, ids: Sequence[int] | np.ndarray) -> int:
        """The state after a seed's ids, which may be anything (its last three decide)."""
        state = OTHER
        for i in np.asarray(ids, dtype=np.int64).reshape(-1)[-3:].tolist():
            state = int(TRANSITION[state, self.classes[i]])
        return state

    def starts(self, ids: Sequence[int] | np.ndarray, rows: int) -> np.ndarray:
        """The state after a seed's ids for ``rows`` rows that all start from it."""
        return np.full(rows, self.start(ids), dtype=np.int64)

    def advance(self, states: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """The rows' states after the tokens ``ids`` (one per row) that were picked under
        the mask from ``states``: a token's class alone says it (one gather)."""
        return self.state_after[ids]

    def rows(self, states: np.ndarray, final: bool = False) -> np.ndarray:
        """The additive (0 / ``-inf``) mask rows for ``states`` (rows, vocab); ``final``
        marks a text's last token."""
        return (self._last if final else self._any)[states]

    def apply(self, logits: np.ndarray, states: np.ndarray, final: bool = False) -> np.ndarray:
        """``logits`` (rows, vocab) with every token that may not come next at ``-inf``
        (a new array; ``logits`` is not written)."""
        return logits + (self._last if final else self._any)[states]


def syllable_mask(tokenizer: Any) -> SyllableMask | None:
    """The mask of a jamo-level tokenizer (``is_jamo``) whose vocabulary holds conjoining
    jamo; None for every other tokenizer (their decoding is unchanged)."""
    if not tokenizer.is_jamo:
        return None
    mask = SyllableMask(list(tokenizer.vocab.tokens))
    return mask if mask.active else None
