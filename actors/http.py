"""The HTTP gateway: an OpenAI-compatible API in front of the verifier.

Serves, on ``host:port`` (127.0.0.1:8000 by default):

- ``POST /v1/chat/completions``: ``messages``, ``max_tokens`` / ``max_completion_tokens``,
  ``temperature``, ``seed``, ``stop``, ``stream`` (server-sent events in the OpenAI chunk format,
  with a final usage chunk when ``stream_options.include_usage``), ``n = 1``, ``top_p = 1``
  (anything else is refused: nucleus sampling would break the lossless rule), and specmemo's own
  ``gamma`` and ``tree``. A response carries ``usage`` and a ``specmemo`` field (accepted drafts
  per step, mean γ, prompt tokens reused from the cache, tokens/s).
- ``GET /v1/models``, ``GET /health``, ``GET /metrics`` (the deployment's counters and every
  actor's gauges in the Prometheus text format).

The API is stateless: each request carries the whole conversation. The gateway keeps up to
``max_sessions`` verifier sessions with the conversation each holds (`SessionPool`); a request
continues in the idle session whose conversation shares the longest prefix of messages with it,
and the verifier reuses the KV of the longest common prefix of tokens (`verifier.complete`), so a
second turn computes only its new tokens. Idle sessions beyond the pool are closed least recently
used first; the memory manager evicts their caches under pressure as for any session.

Errors are OpenAI error bodies with the status clients expect: 400 bad request, 401 missing or
wrong API key, 404 unknown model or path, 413 body or prompt too long, 429 ``Overloaded`` (the
gateway's own in-flight limit included), 503 ``OverBudget`` or an actor down, 504 deadline. A
client that disconnects mid-stream cancels its turn; the verifier closes that session and frees
its blocks everywhere. Slow clients are bounded: a connection with no request in progress (one
still sending its headers included) closes after ``keep_alive_s``, a body must arrive within
``read_timeout_s`` (else 408) and be at most ``max_body_bytes``, headers at most ``max_header_bytes``.

An API key (``api_key_file`` or ``api_key_env``) is required as ``Authorization: Bearer`` on every
path but ``/health``; a non-loopback ``host`` without one is refused when the config is loaded.
"""
from __future__ import annotations

import hmac
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from specmemo.protocol import errors
from specmemo.protocol.methods import Empty

from .base import Actor, Call

log = logging.getLogger("specmemo.http")

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class HttpError(Exception):
    """An error answered as an OpenAI error body."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None) -> None:
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


# ---------------------------------------------------------------- the request


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
        raise HttpError(404, f"the model '{body.get('model')}' does not exist; this server serves '{model}'",
                        "invalid_request_error", "model_not_found", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise HttpError(400, "'messages' must be a non-empty array", param="messages")
    plain = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise HttpError(400, f"messages[{i}].role must be one of {sorted(ROLES)}", param=f"messages[{i}].role")
        content = m.get("content")
        if isinstance(content, list):
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise HttpError(400, f"messages[{i}].content: only text parts are supported",
                                param=f"messages[{i}].content")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise HttpError(400, f"messages[{i}].content must be a string or text parts", param=f"messages[{i}].content")
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
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < (0 if name == "gamma" else 1)):
            raise HttpError(400, f"'{name}' must be a non-negative integer", param=name)
        extra[name] = value
    return Completion(plain, limit, float(temperature), seed % (1 << 63), stop, stream,
                      bool(options.get("include_usage")), **extra)


# ---------------------------------------------------------------- prefix reuse


@dataclass
class _Pooled:
    conversation: list[dict[str, str]] = field(default_factory=list)   # prompts and replies it holds
    busy: bool = False
    last_used: float = 0.0


class SessionPool:
    """The verifier sessions this gateway keeps, with the conversation each holds.

    `pick` answers the idle session whose conversation shares the longest prefix of messages with
    a request (None when none shares even one message); `finish` records the conversation a turn
    left there; `forget` drops a session the verifier closed. Synchronous and testable alone."""

    def __init__(self, max_sessions: int) -> None:
        assert max_sessions >= 1
        self.max_sessions = max_sessions
        self.sessions: dict[str, _Pooled] = {}

    def pick(self, messages: list[dict[str, str]]) -> str | None:
        best, best_len = None, 0
        for sid, s in self.sessions.items():
            if s.busy:
                continue
            shared = 0
            for a, b in zip(s.conversation, messages):
                if a != b:
                    break
                shared += 1
            if shared > best_len or (shared == best_len and best is not None and shared
                                     and s.last_used > self.sessions[best].last_used):
                best, best_len = sid, shared
        return best if best_len > 0 else None

    def take(self, session: str) -> None:
        s = self.sessions.setdefault(session, _Pooled())
        s.busy, s.last_used = True, time.monotonic()

    def finish(self, session: str, conversation: list[dict[str, str]]) -> None:
        s = self.sessions.get(session)
        if s is not None:
            s.conversation, s.busy, s.last_used = conversation, False, time.monotonic()

    def forget(self, session: str) -> None:
        self.sessions.pop(session, None)

    def surplus(self) -> list[str]:
        """Idle sessions to close, least recently used first, so that one more fits."""
        idle = sorted((s.last_used, sid) for sid, s in self.sessions.items() if not s.busy)
        extra = len(self.sessions) + 1 - self.max_sessions
        return [sid for _, sid in idle[:max(0, extra)]]


# ---------------------------------------------------------------- the actor


def api_key(config: dict[str, Any]) -> str | None:
    """The bearer token from `api_key_file` or the environment variable `api_key_env`."""
    if config.get("api_key_file"):
        key = Path(config["api_key_file"]).expanduser().read_text().strip()
        if not key:
            raise ValueError(f"api_key_file {config['api_key_file']} is empty")
        return key
    if config.get("api_key_env"):
        key = os.environ.get(config["api_key_env"], "").strip()
        if not key:
            raise ValueError(f"environment variable {config['api_key_env']} (api_key_env) is empty or unset")
        return key
    return None


def check_bind(config: dict[str, Any]) -> None:
    """Refuse a non-loopback bind address without an API key (ValueError names the fix)."""
    host = str(config.get("host", "127.0.0.1"))
    if host not in LOOPBACK and not (config.get("api_key_file") or config.get("api_key_env")):
        raise ValueError(f"the http gateway would listen on {host} without an API key: set api_key_file or "
                         "api_key_env, or listen on 127.0.0.1")


class HttpActor(Actor):
    kind = "http"

    def __init__(self, name: str, config: dict[str, Any]) -> None:
        super().__init__(name, config)
        self.verifier = config.get("verifier", "verifier")
        self.model = str(config.get("model_id", "specmemo"))
        self.host = str(config.get("host", "127.0.0.1"))
        self.port = int(config.get("port", 8000))
        self.max_body = int(config.get("max_body_bytes", 1 << 20))
        self.read_timeout = float(config.get("read_timeout_s", 10))
        self.max_tokens_cap = int(config.get("max_tokens", 4096))
        self.default_max_tokens = int(config.get("default_max_tokens", 256))
        self.max_inflight = int(config.get("max_inflight", 32))
        self.deadline_s = float(config.get("deadline_s", 600))
        self.pool = SessionPool(int(config.get("max_sessions", 16)))
        self.inflight = 0
        self.key: str | None = None
        self.bound: list[str] = []

    async def on_start(self) -> None:
        check_bind(self.config)
        self.key = api_key(self.config)

    async def background(self) -> None:
        from hypercorn.config import Config
        from hypercorn.trio import serve

        config = Config()
        config.bind = [f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"]
        # a connection without a request in progress (a slow client still sending its headers
        # included) is closed after keep_alive_s; a request's body must arrive within
        # read_timeout_s (`_read_json`). hypercorn's own read_timeout is not used: it would also
        # cut a response that takes longer than that to start (a long prefill).
        config.keep_alive_timeout = float(self.config.get("keep_alive_s", 5))
        config.h11_max_incomplete_size = int(self.config.get("max_header_bytes", 16 * 1024))
        config.graceful_timeout = 1.0
        config.accesslog = None
        config.errorlog = logging.getLogger("specmemo.http.server")
        self.metrics.set("http_inflight", 0, "HTTP requests being served")
        log.info("OpenAI-compatible API on http://%s:%d/v1 (model '%s'%s)", self.host, self.port, self.model,
                 ", API key required" if self.key else "")
        await serve(self.app(), config, mode="asgi")

    def rpc_sessions(self, req: Empty, call: Call) -> dict:
        """The verifier sessions the gateway keeps for prefix reuse."""
        return {"sessions": sorted(self.pool.sessions),
                "active": sorted(s for s, p in self.pool.sessions.items() if p.busy), "held": 0}

    # ------------------------------------------------------------ the ASGI app

    def app(self):
        from starlette.applications import Starlette
        from starlette.responses import JSONResponse, PlainTextResponse
        from starlette.routing import Route

        async def guarded(request, handler):
            try:
                if request.url.path != "/health":
                    self._authorize(request.headers.get("authorization", ""))
                return await handler(request)
            except HttpError as exc:
                return JSONResponse(exc.body(), status_code=exc.status)

        async def completions(request):
            return await guarded(request, self._completions)

        async def models(request):
            return await guarded(request, lambda r: self._models())

        async def health(request):
            return JSONResponse({"status": "ok", "model": self.model})

        async def metrics(request):
            async def render(r):
                return PlainTextResponse(await self._metrics_text(), media_type="text/plain; version=0.0.4")
            return await guarded(request, render)

        async def not_found(request, exc):
            return JSONResponse(HttpError(404, f"no route {request.method} {request.url.path}",
                                          code="not_found").body(), status_code=404)

        return Starlette(routes=[Route("/v1/chat/completions", completions, methods=["POST"]),
                                 Route("/v1/models", models, methods=["GET"]),
                                 Route("/health", health, methods=["GET"]),
                                 Route("/metrics", metrics, methods=["GET"])],
                         exception_handlers={404: not_found, 405: not_found})

    def _authorize(self, header: str) -> None:
        if self.key is None:
            return
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.key.encode()):
            raise HttpError(401, "a valid API key is required (Authorization: Bearer ...)",
                            "invalid_request_error", "invalid_api_key")

    async def _models(self):
        from starlette.responses import JSONResponse
        return JSONResponse({"object": "list", "data": [{"id": self.model, "object": "model",
                                                         "created": 0, "owned_by": "specmemo"}]})

    async def _read_json(self, request) -> Any:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            raise HttpError(413, f"request body over {self.max_body} bytes", code="request_too_large")
        body = bytearray()
        with trio.move_on_after(self.read_timeout) as scope:
            async for part in request.stream():
                body += part
                if len(body) > self.max_body:
                    raise HttpError(413, f"request body over {self.max_body} bytes", code="request_too_large")
        if scope.cancelled_caught:
            raise HttpError(408, f"the request body did not arrive within {self.read_timeout:g} s",
                            code="request_timeout")
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise HttpError(400, f"the body is not valid JSON: {exc}") from None

    async def _completions(self, request):
        from starlette.responses import JSONResponse, StreamingResponse

        if self.inflight >= self.max_inflight:
            raise HttpError(429, f"{self.inflight} requests in flight (max_inflight {self.max_inflight})",
                            "rate_limit_error", "overloaded")
        self.inflight += 1          # from here on, every path ends in _leave()
        self.metrics.set("http_inflight", self.inflight, "HTTP requests being served")
        turn = None
        try:
            req = parse_completion(await self._read_json(request), self.model, self.max_tokens_cap,
                                   self.default_max_tokens)
            turn = _Turn(self, req)
            first = await turn.start()
        except BaseException:
            if turn is None:
                self._leave()
                raise
            with trio.CancelScope(shield=True):
                await turn.close()
            self._leave()
            raise
        if not req.stream:
            try:
                body = await turn.collect(first)
            finally:
                with trio.CancelScope(shield=True):
                    await turn.close()
                self._leave()
            return JSONResponse(body)

        closed = False

        async def finish() -> None:       # once, whether the body was streamed, cut, or never started
            nonlocal closed
            if not closed:
                closed = True
                with trio.CancelScope(shield=True):
                    await turn.close()
                self._leave()

        async def events():
            try:
                async for event in turn.events(first):
                    yield f"data: {json.dumps(event)}\n\n"
                yield "data: [DONE]\n\n"
            finally:
                await finish()

        class Events(StreamingResponse):
            async def __call__(self, scope, receive, send) -> None:
                try:
                    await super().__call__(scope, receive, send)
                finally:
                    await finish()

        return Events(events(), media_type="text/event-stream", headers={"cache-control": "no-cache"})

    def _leave(self) -> None:
        self.inflight -= 1
        self.metrics.set("http_inflight", self.inflight, "HTTP requests being served")

    async def _metrics_text(self) -> str:
        lines = []
        kernel = await self.peers.call("kernel", "metrics", timeout=10)
        actors = await self.peers.call("kernel", "actors", timeout=10)
        for actor, row in sorted(kernel["actors"].items()):
            lines.append(f'specmemo_requests_total{{actor="{actor}"}} {row["requests"]}')
            for code, n in sorted(row["errors"].items()):
                lines.append(f'specmemo_errors_total{{actor="{actor}",code="{code}"}} {n}')
            lines.append(f'specmemo_heartbeat_misses_total{{actor="{actor}"}} {row["heartbeat_misses"]}')
        for info in actors["actors"]:
            if info["state"] not in ("ready", "external"):
                continue
            try:
                values = (await self.peers.call(info["name"], "metrics", timeout=5))["values"]
            except errors.SpecmemoError:
                continue
            for name, value in sorted(values.items()):
                lines.append(f'specmemo_{name}{{actor="{info["name"]}"}} {float(value)!r}')
        return "\n".join(lines) + "\n"


class _Turn:
    """One chat completion: picks or opens a session, streams `verifier.complete`, applies the
    stop strings, and leaves the session pooled (finished) or closed (cut short)."""

    def __init__(self, actor: HttpActor, req: Completion) -> None:
        self.actor, self.req = actor, req
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.session: str | None = None
        self.stream = None
        self.text = ""                 # the reply so far, stop strings applied
        self.reply_tokens = 0
        self.stats: dict[str, Any] = {}
        self.gammas: list[int] = []
        self.finished = False          # the verifier ended the turn (EOS or max_tokens)
        self.finish_reason = "length"
        self.started = time.perf_counter()
        self.first_token_s: float | None = None

    async def start(self) -> dict:
        a = self.actor
        try:
            for stale in a.pool.surplus():
                a.pool.forget(stale)
                try:
                    await a.peers.call(a.verifier, "close", session=stale, timeout=30)
                except errors.SpecmemoError:
                    pass
            self.session = a.pool.pick(self.req.messages)
            if self.session is None:
                self.session = (await a.peers.call(a.verifier, "open", session="", timeout=30))["session"]
            a.pool.take(self.session)
            self.stream = a.peers.stream(a.verifier, "complete", session=self.session, messages=self.req.messages,
                                         max_new_tokens=self.req.max_tokens, temperature=self.req.temperature,
                                         seed=self.req.seed, gamma=self.req.gamma, tree=self.req.tree,
                                         timeout=a.deadline_s)
            return await self.stream.__anext__()
        except errors.SpecmemoError as exc:
            raise from_wire_error(exc) from None
        except StopAsyncIteration:
            raise HttpError(502, "the verifier ended the turn without a reply", "server_error") from None

    def _take(self, chunk: dict) -> tuple[str, bool]:
        """The text this chunk adds (cut at a stop string), and whether the turn is over."""
        if self.first_token_s is None:
            self.first_token_s = time.perf_counter() - self.started
        self.stats = chunk.get("stats") or self.stats
        if chunk.get("step"):
            self.gammas.append(int(chunk["step"]["gamma"]))
        self.reply_tokens += len(chunk["tokens"])
        done = bool(chunk.get("done"))
        self.finished = self.finished or done
        before = self.text
        whole = chunk.get("reply") or before + chunk.get("text", "") if done else before + chunk.get("text", "")
        for stop in self.req.stop:
            at = whole.find(stop, max(0, len(before) - len(stop) + 1))
            if at >= 0:
                self.text, self.finish_reason = whole[:at], "stop"
                return self.text[len(before):], True
        self.text = whole
        if done:
            self.finish_reason = "length" if self.reply_tokens >= self.req.max_tokens else "stop"
        return whole[len(before):], done

    async def _next(self) -> dict | None:
        try:
            return await self.stream.__anext__()
        except errors.SpecmemoError as exc:
            raise from_wire_error(exc) from None
        except StopAsyncIteration:
            return None

    async def collect(self, first: dict) -> dict:
        chunk: dict | None = first
        while chunk is not None:
            _, over = self._take(chunk)
            chunk = None if over else await self._next()
        return {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.actor.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": self.text},
                             "finish_reason": self.finish_reason}],
                "usage": self.usage(), "specmemo": self.extension()}

    async def events(self, first: dict):
        head = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.actor.model}
        yield {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
        chunk: dict | None = first
        while chunk is not None:
            delta, over = self._take(chunk)
            if delta:
                yield {**head, "choices": [{"index": 0, "delta": {"content": delta}, "finish_reason": None}]}
            try:
                chunk = None if over else await self._next()
            except HttpError as exc:
                yield exc.body()
                return
        yield {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": self.finish_reason}]}
        if self.req.include_usage:
            yield {**head, "choices": [], "usage": self.usage(), "specmemo": self.extension()}

    def usage(self) -> dict:
        prompt = int(self.stats.get("prompt_tokens", 0))
        return {"prompt_tokens": prompt, "completion_tokens": self.reply_tokens,
                "total_tokens": prompt + self.reply_tokens}

    def extension(self) -> dict:
        return {"session": self.session, "prefilled_tokens": int(self.stats.get("prefilled_tokens", 0)),
                "reused_tokens": int(self.stats.get("prompt_tokens", 0)) - int(self.stats.get("prefilled_tokens", 0)),
                "accepted_per_step": float(self.stats.get("mean_accepted", 0.0)),
                "gamma_mean": sum(self.gammas) / len(self.gammas) if self.gammas else 0.0,
                "tokens_per_s": float(self.stats.get("tokens_per_s", 0.0)),
                "time_to_first_token_s": self.first_token_s}

    async def close(self) -> None:
        """Pool the session with the conversation it now holds when the verifier finished the turn;
        otherwise (cut short by a stop string, a disconnect or an error) close it and forget it."""
        a = self.actor
        if self.stream is not None:
            await self.stream.aclose()
        if self.session is None:
            return
        if self.finished:
            a.pool.finish(self.session, self.req.messages + [{"role": "assistant", "content": self.text}])
            return
        a.pool.forget(self.session)
        with trio.move_on_after(10):
            try:   # a cancelled turn's session is closed by the verifier itself: NotFound or Conflict here
                await a.peers.call(a.verifier, "close", session=self.session, timeout=10)
            except errors.SpecmemoError:
                pass
