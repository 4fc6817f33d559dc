"""Typed errors of the wire protocol.

Every failure that crosses the wire is one of these classes; each has one stable integer
code and one meaning. A remote error is raised in the caller as the same class, with the
remote ``origin`` (actor name) and, for ``Internal``, the remote traceback text.
"""

from __future__ import annotations

from typing import Any


class SpecmemoError(Exception):
    """Base class of every error that has a wire code."""

    code: int = 0
    name: str = "SpecmemoError"

    def __init__(
        self, message: str = "", *, detail: dict[str, Any] | None = None, origin: str = "", traceback: str = ""
    ) -> None:
        super().__init__(message)
        self.message = message
        self.detail = dict(detail or {})
        self.origin = origin
        self.traceback = traceback

    def __str__(self) -> str:
        where = f" (from {self.origin})" if self.origin else ""
        return f"{self.name}: {self.message}{where}"

    def to_wire(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "name": self.name,
            "message": self.message,
            "detail": self.detail,
            "origin": self.origin,
            "traceback": self.traceback,
        }


class BadRequest(SpecmemoError):
    """Malformed frames, bad msgpack, or a body that violates the method's schema."""

    code, name = 1, "BadRequest"


class UnknownActor(SpecmemoError):
    """No live actor is registered under the requested name."""

    code, name = 2, "UnknownActor"


class UnknownMethod(SpecmemoError):
    """The actor exists but has no such method."""

    code, name = 3, "UnknownMethod"


class ActorDied(SpecmemoError):
    """The actor handling the call died (or was stopped) before it replied."""

    code, name = 4, "ActorDied"


class DeadlineExceeded(SpecmemoError):
    """The call's deadline passed before a reply arrived (the callee stops working on it)."""

    code, name = 5, "DeadlineExceeded"


class Overloaded(SpecmemoError):
    """The callee's queue is full; retry later. Returned at once instead of queueing without bound."""

    code, name = 6, "Overloaded"


class VersionMismatch(SpecmemoError):
    """The peer speaks another protocol version (magic matched, version byte did not)."""

    code, name = 7, "VersionMismatch"


class Internal(SpecmemoError):
    """An unexpected exception in the callee; ``traceback`` holds the remote traceback text."""

    code, name = 8, "Internal"


class Cancelled(SpecmemoError):
    """The call was cancelled by the caller (or its client went away)."""

    code, name = 9, "Cancelled"


class MessageTooLarge(SpecmemoError):
    """A message is larger than the configured maximum message size."""

    code, name = 10, "MessageTooLarge"


class NotFound(SpecmemoError):
    """A named resource (a matrix id, a session) does not exist."""

    code, name = 20, "NotFound"


class OverBudget(SpecmemoError):
    """A memory request cannot be met within the byte budget, even after shrinking and eviction."""

    code, name = 21, "OverBudget"


class Conflict(SpecmemoError):
    """The resource is busy with another caller (e.g. two clients writing one chat session)."""

    code, name = 22, "Conflict"


class InvalidInput(SpecmemoError):
    """Well-formed request whose values are refused by the domain (not skew-symmetric, prompt too long, ...)."""

    code, name = 23, "InvalidInput"


class Unauthorized(SpecmemoError):
    """The peer may not do this (e.g. register under a name held by a live actor)."""

    code, name = 24, "Unauthorized"


ERROR_CLASSES: dict[int, type[SpecmemoError]] = {
    cls.code: cls
    for cls in (
        BadRequest,
        UnknownActor,
        UnknownMethod,
        ActorDied,
        DeadlineExceeded,
        Overloaded,
        VersionMismatch,
        Internal,
        Cancelled,
        MessageTooLarge,
        NotFound,
        OverBudget,
        Conflict,
        InvalidInput,
        Unauthorized,
    )
}


def error_from_wire(body: Any) -> SpecmemoError:
    """Rebuild a typed error from an error body; a malformed body becomes ``Internal``."""
    if not isinstance(body, dict):
        return Internal(f"malformed error body: {body!r:.200}")
    cls = ERROR_CLASSES.get(body.get("code", -1), Internal)
    detail = body.get("detail")
    return cls(
        str(body.get("message", "")),
        detail=detail if isinstance(detail, dict) else None,
        origin=str(body.get("origin", "")),
        traceback=str(body.get("traceback", "")),
    )
