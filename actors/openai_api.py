"""The OpenAI chat completions API as this gateway speaks it: the request, validated at the
boundary into a :class:`Completion`, and errors as OpenAI error bodies (:class:`HttpError`), with
the HTTP status of each specmemo wire error (:func:`from_wire_error`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from specmemo.protocol import errors

#: OpenAI message roles and the chat template's role each becomes.
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class HttpError(Exception):
    """An error answered as an OpenAI error body."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.code, self.param = status, message, kind, code, param

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def from_wire_error(exc: errors.SpecmemoError) -> HttpError:
    """The HTTP status and OpenAI error type of a specmemo wire error."""
    reason = exc.detail.get("reason", "") if isinstance(exc.detail, dict) else ""
    message = exc.message or str(exc)
    if reason == "ContextTooLong":
        return HttpError(413, message, "invalid_request_error", "context_length_exceeded", "messages")
    table: dict[type, tuple[int, str, str]] = {
        errors.InvalidInput: (400, "invalid_request_error", "invalid_input"),
        errors.BadRequest: (400, "invalid_request_error", "bad_request"),
        errors.MessageTooLarge: (413, "invalid_request_error", "request_too_large"),
        errors.Overloaded: (429, "rate_limit_error", "overloaded"),
        errors.OverBudget: (503, "server_error", "over_budget"),
        errors.ActorDied: (503, "server_error", "actor_down"),
        errors.UnknownActor: (503, "server_error", "actor_down"),
        errors.DeadlineExceeded: (504, "server_error", "deadline_exceeded"),
        errors.Conflict: (409, "invalid_request_error", "conflict"),
        errors.NotFound: (404, "invalid_request_error", "not_found"),
    }
    status, kind, code = table.get(type(exc), (500, "server_error", "internal"))
    return HttpError(status, message, kind, code)


@dataclass
class Completion:
    """A validated chat completion request."""

    messages: list[dict[str, str]]
    max_tokens: int
    temperature: float
    seed: int
    stop: list[str]
    stream: bool
    include_usage: bool
    gamma: int | None = None
    tree: int | None = None


def parse_completion(body: Any, model: str, max_tokens_cap: int, default_max_tokens: int) -> Completion:
    """Validate an OpenAI chat completion body; HttpError(400/404) names the offending field."""
    if not isinstance(body, dict):
        raise HttpError(400, "the request body must be a JSON object")
    if body.get("model", model) != model:
        raise HttpError(
            404,
            f"the model '{body.get('model')}' does not exist; this server serves '{model}'",
            "invalid_request_error",
            "model_not_found",
            "model",
        )
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise HttpError(400, "'messages' must be a non-empty array", param="messages")
    plain = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise HttpError(400, f"messages[{i}].role must be one of {sorted(ROLES)}", param=f"messages[{i}].role")
        content = m.get("content")
        if isinstance(content, list):
            if not all(
                isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content
            ):
                raise HttpError(
                    400, f"messages[{i}].content: only text parts are supported", param=f"messages[{i}].content"
                )
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise HttpError(
                400, f"messages[{i}].content must be a string or text parts", param=f"messages[{i}].content"
            )
        plain.append({"role": ROLES[m["role"]], "content": content})
    if plain[-1]["role"] != "user":
        raise HttpError(400, "the last message must be the user's", param="messages")
    for name in ("tools", "functions", "tool_choice", "response_format", "logit_bias"):
        if body.get(name) not in (None, {"type": "text"}, "none", {}):
            raise HttpError(400, f"'{name}' is not supported by this server", param=name)
    if body.get("logprobs"):
        raise HttpError(400, "'logprobs' is not supported by this server", param="logprobs")
    for name in ("frequency_penalty", "presence_penalty"):
        if body.get(name) not in (None, 0, 0.0):
            raise HttpError(400, f"'{name}' must be 0: penalties would change the target's distribution", param=name)
    if body.get("n", 1) != 1:
        raise HttpError(400, "'n' must be 1", param="n")
    if body.get("top_p", 1) not in (1, 1.0, None):
        raise HttpError(400, "'top_p' must be 1: nucleus sampling is not lossless under speculation", param="top_p")
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    limit = default_max_tokens if limit is None else limit
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= max_tokens_cap:
        raise HttpError(400, f"'max_tokens' must be an integer from 1 to {max_tokens_cap}", param="max_tokens")
    temperature = body.get("temperature", 1.0)
    if temperature is None:
        temperature = 1.0
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not 0 <= temperature <= 2:
        raise HttpError(400, "'temperature' must be a number from 0 to 2", param="temperature")
    seed = body.get("seed", 0)
    if seed is None:
        seed = 0
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise HttpError(400, "'seed' must be an integer", param="seed")
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise HttpError(400, "'stop' must be a string or up to 4 non-empty strings", param="stop")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise HttpError(400, "'stream' must be a boolean", param="stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise HttpError(400, "'stream_options' must be an object", param="stream_options")
    extra = {}
    for name in ("gamma", "tree"):
        value = body.get(name)
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value < (0 if name == "gamma" else 1)
        ):
            raise HttpError(400, f"'{name}' must be a non-negative integer", param=name)
        extra[name] = value
    return Completion(
        plain, limit, float(temperature), seed % (1 << 63), stop, stream, bool(options.get("include_usage")), **extra
    )
