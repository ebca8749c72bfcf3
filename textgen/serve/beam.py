"""Beam search in the server: off the batch, one search at a time per model, in a worker
thread.

A beam search steps its own beams, so it does not join the batched decoding loop; each
model has one slot (:attr:`~textgen.serve.runs.Served.beams`) and a queue of at most
``--max-waiting`` searches (a 503 with ``Retry-After`` beyond). A stream gets each
beam's text as one chunk when the search ends; a client that goes away stops the search
at its next step and frees the slot.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, Response, StreamingResponse

from textgen.serve import api
from textgen.serve.api import ApiError
from textgen.serve.choices import ChoiceText
from textgen.serve.responses import (
    Admitted,
    all_choices,
    completion_tokens,
    head,
    response_body,
    sse,
    stream_chunk,
)
from textgen.serve.runs import RETRY_AFTER, Service


class _ClientGone(Exception):
    """The client of a beam search went away: the search stops at its next step."""


async def answer(service: Service, admitted: Admitted, request: HttpRequest) -> Response:
    """A beam search runs outside the batch, one at a time per model, in a worker thread;
    a stream gets each beam's text as one chunk when the search ends. A client that goes
    away stops the search at its next step (and frees the model's beam slot)."""
    from textgen.decoding.generate import Strategy

    req, model = admitted.req, admitted.model
    gone = threading.Event()
    generator = model.generator

    def step(ids: np.ndarray, st: Any) -> Any:
        if gone.is_set():
            raise _ClientGone
        return generator.lm.step(ids, st)

    def search(k: int) -> Any:
        return generator.beam(
            admitted.seeds[k],
            strategy=Strategy("beam", beam_width=req.beam_width, length_penalty=req.length_penalty),
            length=req.max_tokens,
            num=req.n,
            stop=req.stop[0] if len(req.stop) == 1 else None,
            step=step,
        )

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        gone.set()

    watcher = asyncio.create_task(watch())
    try:
        return await _beam_run(service, admitted, search)
    except _ClientGone:
        return Response(status_code=499)  # nobody reads it (nginx's "client closed request")
    finally:
        watcher.cancel()


async def _beam_run(service: Service, admitted: Admitted, search: Callable[[int], Any]) -> Response:
    req, model = admitted.req, admitted.model
    if model.beams_waiting >= service.settings.max_waiting:
        raise ApiError(
            503,
            "the server is busy with beam searches; retry later",
            code="queue_full",
            headers={"Retry-After": RETRY_AFTER},
        )
    model.beams_waiting += 1
    try:
        async with model.beams:
            for k in range(len(req.prompts)):
                decoded = await asyncio.to_thread(search, k)
                row_choices = []
                for ids in decoded.ids:
                    choice = ChoiceText(model.tokenizer, admitted.shown[k], req.stop)
                    stopped = False
                    for token in ids:
                        if choice.push(int(token)):
                            stopped = True
                            break
                    short = len(ids) < req.max_tokens
                    choice.finish = "stop" if stopped or short else "length"
                    row_choices.append(choice)
                admitted.choices.append(row_choices)
                service.metrics.tokens.labels(model.name).inc(sum(len(c.ids) for c in row_choices))
    finally:
        model.beams_waiting -= 1
    if not req.stream:
        return JSONResponse(response_body(admitted))

    async def events() -> AsyncIterator[bytes]:
        for index, choice, shown in all_choices(admitted):
            text = choice.text
            if req.chat:
                first = stream_chunk(admitted, index, "", None, None)
                first["choices"][0]["delta"] = {"role": "assistant", "content": ""}
                yield sse(first)
            elif req.echo:
                text = choice.tokenizer.attach(shown, text)
            yield sse(stream_chunk(admitted, index, text, None, None))
            yield sse(stream_chunk(admitted, index, "", None, choice.finish))
        if req.include_usage:
            usage = api.usage(admitted.prompt_tokens, completion_tokens(admitted))
            yield sse(head(admitted, chunk=True) | {"choices": [], "usage": usage})
        yield b"data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")
