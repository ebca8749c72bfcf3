"""``POST /v1/completions`` and ``POST /v1/chat/completions``: a request read and checked,
bound to its model, submitted to the model's batcher, and answered whole or streamed.

The body is read up to the size limit (a 413 as soon as it is over), checked by
:mod:`~textgen.serve.api`, its prompts encoded (a 422 for one with no known token) and
its jobs queued all or none (a 503 with ``Retry-After`` when the queue is full). A beam
search goes to :mod:`~textgen.serve.beam` instead. A client that goes away cancels its
jobs, so their rows leave the batch at the next step.
"""

from __future__ import annotations

import asyncio
import time
import unicodedata
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, Response, StreamingResponse

from textgen.serve import api, beam
from textgen.serve.api import ApiError, Request
from textgen.serve.batcher import Job, QueueFull
from textgen.serve.choices import ChoiceText
from textgen.serve.feed import Feed, GenerationFailed, ShuttingDown, run
from textgen.serve.responses import (
    Admitted,
    FastChunks,
    all_choices,
    completion_tokens,
    head,
    response_body,
    sse,
    stream_chunk,
)
from textgen.serve.runs import RETRY_AFTER, Served, Service


async def _read_body(request: HttpRequest, limit: int) -> bytes:
    """The body, or a 413 as soon as it is known to be over ``limit`` bytes."""
    declared = request.headers.get("content-length")
    too_big = ApiError(
        413, f"the request body is over the limit of {limit:,} bytes", code="body_too_large"
    )
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


def _pick_model(service: Service, name: str | None) -> Served:
    if name is None or name == "":
        if len(service.models) == 1:
            return next(iter(service.models.values()))
        raise api.bad(
            "model", f"is required: this server serves {', '.join(service.models)}", "missing_field"
        )
    model = service.models.get(name)
    if model is None:
        raise ApiError(
            404,
            f"model {name!r} is not served here; served: {', '.join(service.models)}",
            param="model",
            code="model_not_found",
        )
    return model


def _admit(service: Service, req: Request, started: float) -> Admitted:
    from textgen.errors import TextgenError

    model = _pick_model(service, req.model)
    seeds, shown = [], []
    for i, prompt in enumerate(req.prompts):
        where = "messages" if req.chat else ("prompt" if len(req.prompts) == 1 else f"prompt[{i}]")
        try:
            seeds.append(model.generator.encode_seed(prompt))
        except TextgenError as err:
            raise ApiError(422, f"{where}: {err}", param=where, code="invalid_prompt") from None
        shown.append(model.generator.seed_text(prompt))
    req.stop = [unicodedata.normalize("NFC", s) for s in req.stop]
    return Admitted(req, model, seeds, shown, started)


def route(service: Service, *, chat: bool) -> Callable[[HttpRequest], Any]:
    """The route of ``/v1/completions`` (``/v1/chat/completions`` when ``chat``)."""

    async def handler(request: HttpRequest) -> Response:
        started = time.monotonic()
        body = await _read_body(request, service.settings.max_body_bytes)
        data = api.parse_json(body)
        req = api.parse(
            data,
            chat=chat,
            max_tokens_limit=service.settings.max_tokens_limit,
            max_n=service.settings.max_batch,
        )
        service.check_ready()
        admitted = _admit(service, req, started)
        if req.strategy == "beam":
            return await beam.answer(service, admitted, request)
        _submit(service, admitted)
        if req.stream:
            return StreamingResponse(
                _stream(service, admitted),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        watch = asyncio.create_task(_cancel_on_disconnect(request, admitted))
        try:
            async for _ in run(admitted):
                pass
        except ShuttingDown as err:
            headers = {"Retry-After": RETRY_AFTER}
            raise ApiError(503, str(err), code="shutting_down", headers=headers) from None
        except GenerationFailed as err:
            raise ApiError(500, str(err), code="generation_failed") from None
        finally:
            watch.cancel()
            service.feeds.discard(admitted.feed)
            for job in admitted.jobs:
                job.cancel()
        return JSONResponse(response_body(admitted))

    return handler


async def _cancel_on_disconnect(request: HttpRequest, admitted: Admitted) -> None:
    """Cancel a non-streamed request's jobs when its client goes away (the body is read,
    so the next message is the disconnect): their rows leave the batch at the next step,
    or the queue, instead of decoding up to max_tokens for nobody."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            for job in admitted.jobs:
                job.cancel()
            return


def _submit(service: Service, admitted: Admitted) -> None:
    from textgen.decoding.sampling import sampler

    req, model = admitted.req, admitted.model
    pick = None
    if req.strategy == "sample":
        pick = sampler(req.temperature, req.top_k, req.top_p)
    for seed_ids, shown in zip(admitted.seeds, admitted.shown, strict=True):
        job = Job(
            seed_ids=seed_ids,
            n=req.n,
            max_tokens=req.max_tokens,
            pick=pick,
            rng=np.random.default_rng(req.seed),
            stop_id=model.tokenizer.eos_id,
            logprobs=req.logprobs,
            created=admitted.started,
            mask=model.generator.syllables,
        )
        job.index = len(admitted.jobs)  # type: ignore[attr-defined]
        admitted.jobs.append(job)
        admitted.choices.append(
            [ChoiceText(model.tokenizer, shown, req.stop) for _ in range(req.n)]
        )
    limit = model.batcher.max_waiting
    if len(admitted.jobs) > limit:  # it could never be queued: not a 503 to retry forever
        raise api.bad(
            "prompt", f"at most {limit} prompts per request on this server (--max-waiting)"
        )
    try:
        model.batcher.submit_all(admitted.jobs)  # all the prompts or none
    except QueueFull:
        raise ApiError(
            503,
            f"the server is busy: its queue of {limit} waiting prompts is full; retry later",
            code="queue_full",
            headers={"Retry-After": RETRY_AFTER},
        ) from None
    admitted.feed = Feed(service, admitted)
    service.feeds.add(admitted.feed)
    for job in admitted.jobs:  # events are handled from here on (none can be missed: the
        job.feed = admitted.feed  # type: ignore[attr-defined]  # loop runs them after this)


async def _stream(service: Service, admitted: Admitted) -> AsyncIterator[bytes]:
    """The server-sent events of a streamed request; the jobs are cancelled when the
    client goes away (the generator is closed), so their rows leave at the next step."""
    req = admitted.req
    try:
        for index, choice, shown in all_choices(admitted):
            if req.chat:
                first = stream_chunk(admitted, index, "", None, None)
                first["choices"][0]["delta"] = {"role": "assistant", "content": ""}
                yield sse(first)
            elif req.echo:
                yield sse(
                    stream_chunk(admitted, index, choice.tokenizer.attach(shown, ""), None, None)
                )
        try:
            fast = FastChunks(admitted)
            async for news in run(admitted):
                events = []
                for index, text, entry, finish in news:
                    if entry is not None:
                        events.append(sse(stream_chunk(admitted, index, text, entry, None)))
                    elif text:
                        events.append(fast.text(index, text))
                    if finish is not None:
                        events.append(sse(stream_chunk(admitted, index, "", None, finish)))
                if events:
                    yield b"".join(events)  # one write for all the steps that are ready
                # a fast model makes news faster than a client reads it: let the other
                # requests (and the disconnect check) run between steps
                await asyncio.sleep(0)
        except GenerationFailed as err:
            status, code = (
                (503, "shutting_down")
                if isinstance(err, ShuttingDown)
                else (500, "generation_failed")
            )
            yield b"event: error\n" + sse(api.error_body(status, str(err), code=code))
            yield b"data: [DONE]\n\n"
            return
        if req.include_usage:
            usage = api.usage(admitted.prompt_tokens, completion_tokens(admitted))
            yield sse(head(admitted, chunk=True) | {"choices": [], "usage": usage})
        yield b"data: [DONE]\n\n"
    finally:
        service.feeds.discard(admitted.feed)
        for job in admitted.jobs:
            job.cancel()
