"""The echo actor's methods: a small built-in actor for tests and benchmarks."""

from __future__ import annotations

from typing import Any

from .kernel_messages import Empty
from .method_table import method
from .schema import message


@message
class EchoRequest:
    data: Any = None


@message
class EchoReply:
    data: Any = None


@message
class SleepRequest:
    seconds: float


@message
class SleepReply:
    slept: float


@message
class FailRequest:
    kind: str = "internal"  # internal | bad_request | exit
    message: str = "failure requested"


@message
class CountRequest:
    n: int
    delay: float = 0.0


@message
class CountChunk:
    i: int


method(
    "echo.echo",
    EchoRequest,
    EchoReply,
    role="client",
    idempotent=True,
    doc="Returns `data` unchanged (arrays included).",
)
method("echo.sleep", SleepRequest, SleepReply, role="client", doc="Sleeps, honouring deadline and cancel.")
method(
    "echo.fail",
    FailRequest,
    Empty,
    role="client",
    doc="Fails on request: `internal` raises, `bad_request` refuses, `exit` kills the process.",
)
method("echo.count", CountRequest, role="client", chunk=CountChunk, doc="Streams i = 0..n-1, one chunk each.")
