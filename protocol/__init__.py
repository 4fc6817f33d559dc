"""specmemo's wire protocol, trio/ZeroMQ transport and client SDK."""

if __name__ != "specmemo.protocol":  # a second copy of these modules breaks isinstance and except clauses
    raise ImportError(f"import specmemo.protocol, not {__name__}: these folders install as specmemo.*")

from .client import AsyncClient, Client
from .endpoint import find_endpoint
from .errors import (
    ActorDied,
    BadRequest,
    Cancelled,
    Conflict,
    DeadlineExceeded,
    Internal,
    InvalidInput,
    MessageTooLarge,
    NotFound,
    OverBudget,
    Overloaded,
    SpecmemoError,
    Unauthorized,
    UnknownActor,
    UnknownMethod,
    VersionMismatch,
)
from .methods import METHODS, MethodSpec
from .wire import PROTOCOL_VERSION, Command, Header, Message

__all__ = [
    "AsyncClient",
    "Client",
    "find_endpoint",
    "METHODS",
    "MethodSpec",
    "PROTOCOL_VERSION",
    "Command",
    "Header",
    "Message",
    "SpecmemoError",
    "BadRequest",
    "UnknownActor",
    "UnknownMethod",
    "ActorDied",
    "DeadlineExceeded",
    "Overloaded",
    "VersionMismatch",
    "Internal",
    "Cancelled",
    "MessageTooLarge",
    "NotFound",
    "OverBudget",
    "Conflict",
    "InvalidInput",
    "Unauthorized",
]
