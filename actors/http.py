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
from pathlib import Path
from typing import Any

import trio

from specmemo.protocol import errors
from specmemo.protocol.actor_state import ROUTABLE
from specmemo.protocol.methods import Empty, SessionList

from .base import Actor, Call
from .http_turn import Turn
from .openai_api import HttpError, parse_completion
from .session_pool import SessionPool

log = logging.getLogger("specmemo.http")

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


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
        raise ValueError(
            f"the http gateway would listen on {host} without an API key: set api_key_file or "
            "api_key_env, or listen on 127.0.0.1"
        )


class HttpActor(Actor):
    kind = "http"

    def __init__(self, name: str, config: dict[str, Any]) -> None:
        super().__init__(name, config)
        self.verifier = config.get("verifier", "verifier")
        self.peers.kinds[self.verifier] = "verifier"
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
        log.info(
            "OpenAI-compatible API on http://%s:%d/v1 (model '%s'%s)",
            self.host,
            self.port,
            self.model,
            ", API key required" if self.key else "",
        )
        await serve(self.app(), config, mode="asgi")

    def rpc_sessions(self, req: Empty, call: Call) -> SessionList:
        """The verifier sessions the gateway keeps for prefix reuse."""
        return SessionList(
            sessions=sorted(self.pool.sessions),
            active=sorted(s for s, p in self.pool.sessions.items() if p.busy),
            held=0,
        )

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
            return JSONResponse(
                HttpError(404, f"no route {request.method} {request.url.path}", code="not_found").body(),
                status_code=404,
            )

        return Starlette(
            routes=[
                Route("/v1/chat/completions", completions, methods=["POST"]),
                Route("/v1/models", models, methods=["GET"]),
                Route("/health", health, methods=["GET"]),
                Route("/metrics", metrics, methods=["GET"]),
            ],
            exception_handlers={404: not_found, 405: not_found},
        )

    def _authorize(self, header: str) -> None:
        if self.key is None:
            return
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.key.encode()):
            raise HttpError(
                401,
                "a valid API key is required (Authorization: Bearer ...)",
                "invalid_request_error",
                "invalid_api_key",
            )

    async def _models(self):
        from starlette.responses import JSONResponse

        return JSONResponse(
            {"object": "list", "data": [{"id": self.model, "object": "model", "created": 0, "owned_by": "specmemo"}]}
        )

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
            raise HttpError(
                408, f"the request body did not arrive within {self.read_timeout:g} s", code="request_timeout"
            )
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise HttpError(400, f"the body is not valid JSON: {exc}") from None

    async def _completions(self, request):
        from starlette.responses import JSONResponse, StreamingResponse

        if self.inflight >= self.max_inflight:
            raise HttpError(
                429,
                f"{self.inflight} requests in flight (max_inflight {self.max_inflight})",
                "rate_limit_error",
                "overloaded",
            )
        self.inflight += 1  # from here on, every path ends in _leave()
        self.metrics.set("http_inflight", self.inflight, "HTTP requests being served")
        turn = None
        try:
            req = parse_completion(
                await self._read_json(request), self.model, self.max_tokens_cap, self.default_max_tokens
            )
            turn = Turn(self, req)
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

        async def finish() -> None:  # once, whether the body was streamed, cut, or never started
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
        for actor, row in sorted(kernel.actors.items()):
            lines.append(f'specmemo_requests_total{{actor="{actor}"}} {row.requests}')
            for code, n in sorted(row.errors.items()):
                lines.append(f'specmemo_errors_total{{actor="{actor}",code="{code}"}} {n}')
            lines.append(f'specmemo_heartbeat_misses_total{{actor="{actor}"}} {row.heartbeat_misses}')
        for info in actors.actors:
            if info.state not in ROUTABLE:
                continue
            try:
                values = (await self.peers.call(info.name, "metrics", timeout=5)).values
            except errors.SpecmemoError:
                continue
            for name, value in sorted(values.items()):
                lines.append(f'specmemo_{name}{{actor="{info.name}"}} {float(value)!r}')
        return "\n".join(lines) + "\n"
