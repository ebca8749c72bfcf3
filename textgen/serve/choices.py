"""The text of one choice as its tokens arrive: deltas to stream, stop strings, logprobs.

A choice's new text is the tokenizer's :meth:`~textgen.text.base.Tokenizer.continuation`
of its ids after the seed as the model reads it, exactly as ``textgen generate`` writes
it. A stream never takes back what it sent, so a delta holds back the characters a later
token may still change (a jamo syllable that may take a final consonant) and an end that
may be the start of a stop string; :meth:`ChoiceText.flush` sends the rest at the end.

A stop string is looked for as ``textgen generate --stop`` does: at the jamo level not in
a last syllable that may still take a final consonant (stop "가" does not end 각하), and
once more in the final text when the choice ends (setting :attr:`ChoiceText.finish`), so
a stop completed by the last token still cuts it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from textgen.decoding.generate import held_back, stable_text
from textgen.text.base import Tokenizer

WINDOW = 8  # ids decoded again per token where texts do not simply add up
CONTEXT = 24  # ids decoded before the window, for the context their text needs
MARGIN = 4  # characters at the join that must agree between the two decodings


@dataclass
class ChoiceText:
    """The growing text of one choice, cut at the first of its stop strings."""

    tokenizer: Tokenizer
    seed: str  # the seed as the model reads it
    stops: list[str]
    ids: list[int] = field(default_factory=list)
    sent: str = ""  # new text already sent
    text: str = ""  # new text so far (cut at a stop string once one is found)
    offsets: list[int] = field(default_factory=list)  # where each token's text starts
    logprobs: list[Any] = field(default_factory=list)  # (token, logprob, top) per token

    def __post_init__(self) -> None:
        self._whole = ""  # the new text of all ids, uncut
        self._recent: deque[str] = deque(maxlen=WINDOW)  # whole texts of the last ids
        self._finish: str | None = None
        self._checked = 0  # the length of the whole text already searched for a stop
        self._stopped = False  # a stop string was found (text is cut there)

    @property
    def finish(self) -> str | None:
        """Why the choice ended ("stop", "length"), None while it goes on."""
        return self._finish

    @finish.setter
    def finish(self, reason: str | None) -> None:
        """End the choice: its text is now final, so a stop string in the part that was
        held back (a jamo syllable that could still change) cuts it, and the choice then
        ended at a stop (its reason becomes "stop")."""
        if reason is not None and self._finish is None and not self._stopped:
            cut = _cut(self._whole, self.stops, self.tokenizer.keeps_whitespace, self._checked)
            if cut is not None:
                self.text, self._stopped, reason = cut, True, "stop"
        self._finish = reason

    def push(self, token: int) -> bool:
        """Add a token; True when a stop string has now appeared (the text is cut there).

        Where the text of the ids is the texts of each id put end to end (the char level
        but jamo, the word level), a token costs the length of its own text; elsewhere
        (jamo, subword, morpheme) only the last ids are decoded again (:meth:`_tail`), so
        a token's cost does not grow with the text on the event loop."""
        self.offsets.append(len(self.text))
        self.ids.append(token)
        if self.tokenizer.continuation_adds_up:
            self._whole += self.tokenizer.continuation(self.seed, (token,))
        else:
            self._whole = self._tail()
            self._recent.append(self._whole)
        stable = stable_text(self.tokenizer, self._whole)
        cut = _cut(stable, self.stops, self.tokenizer.keeps_whitespace, self._checked)
        self._checked = len(stable)
        self.text = self._whole if cut is None else cut
        self._stopped = cut is not None
        return self._stopped

    def _tail(self) -> str:
        """The continuation of all ids, decoding only a window of the last ones.

        The whole text of the ids up to ``w`` (``WINDOW`` ids back) is known from that
        step; decoding ``CONTEXT`` more ids before ``w`` with the window (or the seed, when
        the window reaches it) gives what the window adds. Its text before ``w`` must end
        as the known text does over a margin (the characters a later token could still
        change); it then replaces that margin. Where the margins disagree (decoding is
        less local than that), the whole continuation is computed, as before."""
        ids, tok = self.ids, self.tokenizer
        w = len(ids) - WINDOW
        if w <= CONTEXT or len(self._recent) < WINDOW:
            return tok.continuation(self.seed, ids)
        known = self._recent[0]  # the whole text of ids[:w] (pushed WINDOW - 1 steps ago)
        c = w - CONTEXT
        before = tok.continuation("", ids[c:w])
        after = tok.continuation("", ids[c:])
        margin = min(MARGIN + tok.unstable_tail(known), len(before), len(known))
        if after.startswith(before[: len(before) - margin]) and (
            margin == 0 or before[-margin:] == known[-margin:]
        ):
            return known[: len(known) - margin] + after[len(before) - margin :]
        return tok.continuation(self.seed, ids)

    def delta(self) -> str:
        """What of the new text can be sent now (and mark it sent)."""
        settled = (
            self.text
            if self.finish is not None
            else held_back(self.tokenizer, self.text, self.stops)
        )
        if not settled.startswith(self.sent) or len(settled) <= len(self.sent):
            return ""
        out, self.sent = settled[len(self.sent) :], settled
        return out

    def flush(self) -> str:
        """The rest of the final text (after :attr:`finish` is set)."""
        rest = self.text[len(self.sent) :] if self.text.startswith(self.sent) else ""
        self.sent = self.text
        return rest

    def token_text(self, token: int) -> str:
        return self.tokenizer.vocab.token(int(token))


def _cut(text: str, stops: list[str], keeps_whitespace: bool, start: int = 0) -> str | None:
    """``text`` up to the earliest of ``stops`` (without the spaces before it unless the
    level ``keeps_whitespace``, as ``textgen generate --stop`` cuts), or None when none
    occurs. Only an occurrence ending after ``start`` is new (the text before it had none)."""
    found = []
    for stop in stops:
        at = text.find(stop, max(0, start - len(stop) + 1))
        if at >= 0:
            found.append(at)
    if not found:
        return None
    head = text[: min(found)]
    return head if keeps_whitespace else head.rstrip()
