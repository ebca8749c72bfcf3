"""The OpenAI shapes of a request's answer: the whole response, the stream's chunks and
their server-sent-event bytes, and the logprobs of each token.

A request in flight is a :class:`Admitted`: the checked request bound to its model, its
decoding jobs and the text of each choice (:class:`~textgen.serve.choices.ChoiceText`).
The functions here only read it (and record a token's logprob entry on its choice), so
the batched path (:mod:`~textgen.serve.completions`) and beam search
(:mod:`~textgen.serve.beam`) answer in the same shapes.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from textgen.serve import api
from textgen.serve.api import Request
from textgen.serve.batcher import Job, Tokens
from textgen.serve.choices import ChoiceText
from textgen.serve.runs import Served


@dataclass
class Admitted:
    """A request checked and admitted to its model, with one job and ``n`` choices per
    prompt (its seeds encoded, its jobs submitted to the batch, its feed of events)."""

    req: Request
    model: Served
    seeds: list[np.ndarray]
    shown: list[str]
    started: float
    jobs: list[Job] = field(default_factory=list)
    choices: list[list[ChoiceText]] = field(default_factory=list)
    feed: Any = None

    @property
    def prompt_tokens(self) -> int:
        """The tokens of the prompts' seeds, for ``usage``."""
        return sum(len(s) for s in self.seeds)


def logprob_entry(choice: ChoiceText, token: int, event: Tokens, row: int) -> Any:
    """``(token text, logprob, {alternative: logprob})`` when logprobs were asked for."""
    if event.logprob is None:
        return None
    top = {}
    if event.top_ids is not None:
        for tid, lp in zip(event.top_ids[row], event.top_logprob[row], strict=True):
            top[choice.token_text(int(tid))] = float(lp)
    entry = (choice.token_text(token), float(event.logprob[row]), top)
    choice.logprobs.append(entry)
    return entry


def _pieces(choice: ChoiceText) -> list[tuple[str, int]]:
    """Each token's piece of the final text and where it starts: the text from where the
    token's text began to where the next one's did (clipped to the text and kept in
    order), so the pieces joined are the text, spaces and recomposed syllables included."""
    text, entries = choice.text, choice.logprobs
    starts, at = [], 0
    for offset in choice.offsets[: len(entries)]:
        at = max(at, min(offset, len(text)))
        starts.append(at)
    ends = [*starts[1:], len(text)]
    return [(text[a:b], a) for a, b in zip(starts, ends, strict=True)]


def _logprobs_completion(choice: ChoiceText, base: int) -> dict[str, Any]:
    entries, pieces = choice.logprobs, _pieces(choice)
    return {
        "tokens": [piece for piece, _ in pieces],
        "token_logprobs": [e[1] for e in entries],
        "top_logprobs": [e[2] for e in entries],
        "text_offset": [base + at for _, at in pieces],
    }


def _logprobs_chat(entries: list[Any], tokens: list[str] | None = None) -> dict[str, Any]:
    def item(token: str, logprob: float) -> dict[str, Any]:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}

    tokens = tokens if tokens is not None else [e[0] for e in entries]
    return {
        "content": [
            item(token, e[1]) | {"top_logprobs": [item(t, lp) for t, lp in e[2].items()]}
            for token, e in zip(tokens, entries, strict=True)
        ]
    }


def head(admitted: Admitted, *, chunk: bool) -> dict[str, Any]:
    """The fields every body of the request starts with: its id and time (made on the
    first call, the same for all its chunks), the object's kind and the model."""
    if not hasattr(admitted, "id"):
        admitted.id = ("chatcmpl-" if admitted.req.chat else "cmpl-") + uuid.uuid4().hex  # type: ignore[attr-defined]
        admitted.created = int(time.time())  # type: ignore[attr-defined]
    if admitted.req.chat:
        kind = "chat.completion.chunk" if chunk else "chat.completion"
    else:
        kind = "text_completion"
    return {
        "id": admitted.id,
        "object": kind,
        "created": admitted.created,
        "model": admitted.model.name,
    }  # type: ignore[attr-defined]


def all_choices(admitted: Admitted) -> list[tuple[int, ChoiceText, str]]:
    """Every choice of every prompt, in the response's order: ``(index, choice, the seed
    as the model reads it)``."""
    out = []
    for k, choices in enumerate(admitted.choices):
        for row, choice in enumerate(choices):
            out.append((k * admitted.req.n + row, choice, admitted.shown[k]))
    return out


def completion_tokens(admitted: Admitted) -> int:
    """The tokens generated over all the choices, for ``usage``."""
    return sum(len(c.ids) for _, c, _ in all_choices(admitted))


def response_body(admitted: Admitted) -> dict[str, Any]:
    """The body of a request answered whole (not streamed), once its choices ended."""
    req = admitted.req
    choices = []
    for index, choice, shown in all_choices(admitted):
        if req.chat:
            item: dict[str, Any] = {
                "index": index,
                "message": {"role": "assistant", "content": choice.text},
                "logprobs": (
                    _logprobs_chat(choice.logprobs, [p for p, _ in _pieces(choice)])
                    if req.logprobs is not None
                    else None
                ),
                "finish_reason": choice.finish,
            }
        else:
            prefix = choice.tokenizer.attach(shown, "") if req.echo else ""
            text = choice.tokenizer.attach(shown, choice.text) if req.echo else choice.text
            logprobs = None
            if req.logprobs is not None:
                logprobs = _logprobs_completion(choice, len(prefix))
            item = {
                "index": index,
                "text": text,
                "logprobs": logprobs,
                "finish_reason": choice.finish,
            }
        choices.append(item)
    return head(admitted, chunk=False) | {
        "choices": choices,
        "usage": api.usage(admitted.prompt_tokens, completion_tokens(admitted)),
    }


def sse(data: Any) -> bytes:
    """One server-sent event carrying ``data`` as compact JSON (UTF-8, not escaped)."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return b"data: " + text.encode("utf-8") + b"\n\n"


def stream_chunk(admitted: Admitted, index: int, text: str, entry: Any, finish: str | None) -> dict:
    """The stream chunk of choice ``index``: its new ``text``, the logprob ``entry`` of
    its token (or None) and its ``finish`` reason (None while it goes on)."""
    req = admitted.req
    if req.chat:
        delta = {"content": text} if text else {}
        item = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        if entry is not None:  # the token's string is the text this chunk carries
            item["logprobs"] = _logprobs_chat([entry], [text])
    else:
        item = {"index": index, "text": text, "logprobs": None, "finish_reason": finish}
        if entry is not None:
            item["logprobs"] = {
                "tokens": [text],  # the text this chunk carries (the pieces join to it)
                "token_logprobs": [entry[1]],
                "top_logprobs": [entry[2]],
                "text_offset": [entry[3]],  # no echo with logprobs: the text starts at 0
            }
    return head(admitted, chunk=True) | {"choices": [item]}


class FastChunks:
    """The chunk of one new piece of text without logprobs, the stream's commonest event,
    written from a template: the same bytes as ``sse(stream_chunk(...))``, at a fraction
    of the cost of building and encoding its dict for every token."""

    def __init__(self, admitted: Admitted) -> None:
        fields = json.dumps(head(admitted, chunk=True), ensure_ascii=False, separators=(",", ":"))
        self.start = b"data: " + fields[:-1].encode("utf-8") + b',"choices":[{"index":'
        if admitted.req.chat:
            self.middle, self.end = b',"delta":{"content":', b'},"logprobs":null,'
        else:
            self.middle, self.end = b',"text":', b',"logprobs":null,'
        self.end += b'"finish_reason":null}]}\n\n'

    def text(self, index: int, text: str) -> bytes:
        piece = json.dumps(text, ensure_ascii=False).encode("utf-8")
        return b"".join((self.start, str(index).encode(), self.middle, piece, self.end))
