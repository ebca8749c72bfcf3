"""The request and response shapes of the OpenAI completions API, checked field by field.

A request body is parsed into a :class:`Request` or refused with an :class:`ApiError`
naming the field (``param``), in the error shape of the OpenAI API and the servers that
follow it (llama.cpp's, vLLM's): ``{"error": {"message", "type", "param", "code"}}``.
Every field the API defines is either honoured or refused with a 400 naming it (a
``logit_bias``, a penalty, a ``suffix``, token-id prompts); a field the API does not
define is refused too, so that a misspelt option is never silently dropped.

Statuses: 400 for a malformed body or a bad field, 401 without the API key, 404 for an
unknown model or path, 413 for a body over the size limit, 422 for a prompt that is
well-formed but cannot be generated from (empty, or no token of it in the model's
vocabulary), 503 while the models load or when the queue is full (with ``Retry-After``).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

MAX_LOGPROBS = 20  # alternatives per token, as vLLM's default bound (OpenAI's is 5)
MAX_STOPS = 4  # stop strings per request, as the OpenAI API
MAX_PROMPTS = 64  # prompts of one completions request
MAX_BEAM_WIDTH = 64  # beams of one search in the server (each search runs on its own)
MAX_SEED = 2**63
MIN_TEMPERATURE = 1e-6  # a temperature below it counts as 0 (greedy)

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    500: "server_error",
    503: "unavailable_error",
}


class ApiError(Exception):
    """An HTTP error answered in the OpenAI error shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, param=self.param, code=self.code)


def error_body(
    status: int, message: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """``{"error": {"message", "type", "param", "code"}}`` for an HTTP status."""
    kind = ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def bad(param: str, message: str, code: str = "invalid_value") -> ApiError:
    return ApiError(400, f"{param}: {message}", param=param, code=code)


@dataclass
class Request:
    """A checked completions or chat request; ``prompts`` are the seeds, one per prompt."""

    chat: bool
    model: str | None
    prompts: list[str]
    max_tokens: int = 16
    strategy: str = "sample"
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    beam_width: int = 4
    length_penalty: float = 1.0
    n: int = 1
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    logprobs: int | None = None
    echo: bool = False
    stream: bool = False
    include_usage: bool = False


COMMON = {
    "model",
    "max_tokens",
    "temperature",
    "top_p",
    "n",
    "stop",
    "seed",
    "stream",
    "stream_options",
    "user",
    "top_k",
    "strategy",
    "beam_width",
    "length_penalty",
    "frequency_penalty",
    "presence_penalty",
    "logit_bias",
}
COMPLETION_FIELDS = COMMON | {"prompt", "logprobs", "echo", "suffix", "best_of"}
CHAT_FIELDS = COMMON | {"messages", "logprobs", "top_logprobs", "max_completion_tokens"}


def parse_json(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or a 400 saying where it is malformed."""
    try:
        data = json.loads(body)
    except UnicodeDecodeError:
        raise ApiError(400, "the body is not UTF-8 JSON", code="invalid_json") from None
    except json.JSONDecodeError as err:
        raise ApiError(
            400,
            f"the body is not valid JSON: {err.msg} at line {err.lineno} column {err.colno}",
            code="invalid_json",
        ) from None
    except RecursionError:
        raise ApiError(400, "the body is nested too deeply", code="invalid_json") from None
    except ValueError as err:  # an integer over Python's digit limit (4,300 digits)
        raise ApiError(400, f"the body is not valid JSON: {err}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object", code="invalid_json")
    if _SURROGATE.search(body):
        _check_surrogates(data)
    return data


# a \uD800-\uDFFF escape: JSON may spell a lone surrogate, which is no character (UTF-8
# cannot encode it, so it could be neither tokenized nor answered)
_SURROGATE = re.compile(rb"\\u[dD][89abcdefABCDEF]")


def _check_surrogates(data: Any) -> None:
    """A 400 naming the first string (key or value) that holds a lone surrogate."""
    todo: list[tuple[str, Any]] = [("", data)]
    while todo:
        where, value = todo.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise bad(where or "body", "holds a lone surrogate (not a character)") from None
        elif isinstance(value, dict):
            for key, item in value.items():
                try:
                    key.encode("utf-8")
                except UnicodeEncodeError:
                    name = ascii(key)[1:-1]
                    message = f"field name {name} holds a lone surrogate"
                    raise bad(where or "body", message) from None
                todo.append((f"{where}.{key}" if where else key, item))
        elif isinstance(value, list):
            todo.extend((f"{where}[{i}]", item) for i, item in enumerate(value))


def _int(data: dict[str, Any], name: str, default: int | None, lo: int, hi: int) -> int | None:
    value = data.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise bad(name, f"must be an integer, got {json.dumps(value)[:40]}", "invalid_type")
    if not lo <= value <= hi:
        raise bad(name, f"must be in [{lo}, {hi}], got {str(value)[:40]}")
    return value


def _float(data: dict[str, Any], name: str, default: float) -> float:
    value = data.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad(name, f"must be a number, got {json.dumps(value)[:40]}", "invalid_type")
    try:
        value = float(value)
    except OverflowError:  # an integer too large for a float
        raise bad(name, f"is out of range, got {json.dumps(value)[:40]}...") from None
    if not math.isfinite(value):
        raise bad(name, f"must be a finite number, got {value}")
    return value


def _bool(data: dict[str, Any], name: str) -> bool:
    value = data.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise bad(name, f"must be true or false, got {json.dumps(value)[:40]}", "invalid_type")
    return value


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise bad(name, f"must be a string, got {json.dumps(value)[:40]}", "invalid_type")
    return value


def parse(data: dict[str, Any], *, chat: bool, max_tokens_limit: int, max_n: int) -> Request:
    """Check every field of a completions (or chat, with ``chat``) request body."""
    allowed = CHAT_FIELDS if chat else COMPLETION_FIELDS
    for name in data:
        if name not in allowed:
            raise ApiError(400, f"{name}: unknown field", param=name, code="unsupported_parameter")
    for name in ("frequency_penalty", "presence_penalty"):
        if _float(data, name, 0.0) != 0.0:
            raise bad(name, "is not supported (only 0)", "unsupported_parameter")
    if data.get("logit_bias"):
        raise bad("logit_bias", "is not supported", "unsupported_parameter")
    if data.get("suffix") not in (None, ""):
        raise bad("suffix", "is not supported (an RNN LM does not infill)", "unsupported_parameter")

    model = data.get("model")
    if model is not None:
        model = _text(model, "model")
    prompts = [_messages(data.get("messages"))] if chat else _prompts(data.get("prompt"))

    req = Request(chat=chat, model=model, prompts=prompts)
    limit_name = "max_tokens"
    if chat and data.get("max_completion_tokens") is not None:
        if data.get("max_tokens") is not None:
            raise bad("max_completion_tokens", "give max_tokens or max_completion_tokens, not both")
        limit_name = "max_completion_tokens"
    # a chat answer runs to <eos> or the server's limit, as OpenAI's and vLLM's run to the
    # context's end; a completion keeps the API's default of 16 tokens
    default = max_tokens_limit if chat else 16
    req.max_tokens = _int(data, limit_name, default, 1, max_tokens_limit)  # type: ignore[assignment]
    req.n = _int(data, "n", 1, 1, max_n)  # type: ignore[assignment]
    best_of = _int(data, "best_of", None, 1, max_n)
    if best_of is not None and best_of != req.n:
        raise bad("best_of", "is not supported (only equal to n)", "unsupported_parameter")
    req.temperature = _float(data, "temperature", 1.0)
    if req.temperature < 0:
        raise bad("temperature", f"must be >= 0, got {req.temperature}")
    if req.temperature < MIN_TEMPERATURE:  # a softmax of logits / 1e-320 is NaN
        req.temperature = 0.0
    req.top_p = _float(data, "top_p", 1.0)
    if not 0 < req.top_p <= 1:
        raise bad("top_p", f"must be in (0, 1], got {req.top_p}")
    req.top_k = _int(data, "top_k", 0, 0, 1 << 31)  # type: ignore[assignment]
    strategy = data.get("strategy")
    if strategy is None:
        strategy = "greedy" if req.temperature == 0 else "sample"
    if strategy not in ("greedy", "sample", "beam"):
        raise bad("strategy", f"must be greedy, sample or beam, got {json.dumps(strategy)[:40]}")
    if strategy == "sample" and req.temperature == 0:
        raise bad("temperature", "must be > 0 when sampling (use strategy greedy for argmax)")
    req.strategy = strategy
    req.beam_width = _int(data, "beam_width", 4, 1, MAX_BEAM_WIDTH)  # type: ignore[assignment]
    req.length_penalty = _float(data, "length_penalty", 1.0)
    if data.get("strategy") is not None:
        _unused_by(strategy, data, req)
    if strategy == "beam" and req.n > req.beam_width:
        raise bad(
            "n",
            f"is more than beam_width {req.beam_width}: a beam search keeps at most "
            "beam_width texts",
        )
    req.stop = _stops(data.get("stop"))
    req.seed = _int(data, "seed", None, 0, MAX_SEED - 1)
    if chat:
        if _bool(data, "logprobs"):
            req.logprobs = _int(data, "top_logprobs", 0, 0, MAX_LOGPROBS)
        elif data.get("top_logprobs") is not None:
            raise bad("top_logprobs", "needs logprobs: true")
    else:
        req.logprobs = _int(data, "logprobs", None, 0, MAX_LOGPROBS)
        req.echo = _bool(data, "echo")
        if req.echo and req.logprobs is not None:
            raise bad(
                "echo",
                "is not supported with logprobs (the prompt's tokens have none)",
                "unsupported_parameter",
            )
    if req.logprobs is not None and strategy == "beam":
        raise bad("logprobs", "is not supported with strategy beam", "unsupported_parameter")
    req.stream = _bool(data, "stream")
    options = data.get("stream_options")
    if options is not None:
        if not req.stream:
            raise bad("stream_options", "is only allowed with stream: true")
        if not isinstance(options, dict):
            raise bad("stream_options", "must be an object", "invalid_type")
        for name in options:
            if name != "include_usage":
                raise ApiError(
                    400,
                    f"stream_options.{name}: unknown field",
                    param=f"stream_options.{name}",
                    code="unsupported_parameter",
                )
        req.include_usage = _bool(options, "include_usage")
    if data.get("user") is not None:
        _text(data["user"], "user")
    return req


# the fields each strategy does not use, with the value that means "not used": a client
# may send those (temperature 1, top_p 1 are OpenAI's defaults), any other is a 400
NEUTRAL: dict[str, tuple[Any, ...]] = {
    "temperature": (0, 1),
    "top_k": (0,),
    "top_p": (1,),
    "seed": (),
    "beam_width": (),
    "length_penalty": (1,),
}
UNUSED = {
    "greedy": ("temperature", "top_k", "top_p", "seed", "beam_width", "length_penalty"),
    "sample": ("beam_width", "length_penalty"),
    "beam": ("temperature", "top_k", "top_p", "seed"),
}


def _unused_by(strategy: str, data: dict[str, Any], req: Request) -> None:
    """With an explicit strategy, a field it does not use is a 400 naming it (unless it
    holds its neutral value), never silently dropped."""
    for name in UNUSED[strategy]:
        value = data.get(name)
        if name == "temperature":
            value = None if value is None else req.temperature  # tiny ones count as 0
        if value is not None and value not in NEUTRAL[name]:
            raise bad(name, f"is not used by strategy {strategy}", "unsupported_parameter")


def _prompts(value: Any) -> list[str]:
    if value is None:
        raise bad("prompt", "is required", "missing_field")
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(p, str) for p in value):
        if len(value) > MAX_PROMPTS:
            raise bad("prompt", f"at most {MAX_PROMPTS} prompts per request, got {len(value)}")
        return list(value)
    if (
        isinstance(value, list)
        and value
        and all(
            isinstance(p, int) or (isinstance(p, list) and all(isinstance(q, int) for q in p))
            for p in value
        )
    ):
        raise bad(
            "prompt", "token-id prompts are not supported; send text", "unsupported_parameter"
        )
    raise bad("prompt", "must be a string or a non-empty list of strings", "invalid_type")


def _messages(value: Any) -> str:
    """The chat messages' contents joined by newlines: the seed (an RNN LM has no template)."""
    if not isinstance(value, list) or not value:
        raise bad("messages", "must be a non-empty list of messages", "invalid_type")
    parts = []
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise bad(where, "must be an object with role and content", "invalid_type")
        role = message.get("role")
        if not isinstance(role, str):
            raise bad(f"{where}.role", "must be a string", "invalid_type")
        content = message.get("content")
        if isinstance(content, list):
            texts = []
            for j, part in enumerate(content):
                if not isinstance(part, dict) or part.get("type") != "text":
                    raise bad(
                        f"{where}.content[{j}]",
                        "only text parts are supported",
                        "unsupported_parameter",
                    )
                texts.append(_text(part.get("text"), f"{where}.content[{j}].text"))
            content = "".join(texts)
        elif content is None:
            content = ""
        parts.append(_text(content, f"{where}.content"))
    return "\n".join(parts)


def _stops(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise bad("stop", "must be a string or a list of strings", "invalid_type")
    if len(value) > MAX_STOPS:
        raise bad("stop", f"at most {MAX_STOPS} stop strings, got {len(value)}")
    return [s for s in value if s]


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
