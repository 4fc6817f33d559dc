"""The method table: how a method is declared, looked up, who may call it, and how its
request and reply are checked at the boundary.

The methods themselves are declared by actor kind in the ``*_messages`` modules;
:mod:`specmemo.protocol.methods` gathers them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import Internal, UnknownMethod
from .schema import from_wire, to_wire

#: Who may call a method, least privileged first; each role may call what the ones before it may.
#: "client": any peer the deployment admits (the SDK, the CLI, the HTTP gateway).
#: "operator": views across every client (metrics, every session id): over ipc and tcp without
#: CURVE every peer is an operator; with CURVE only a key in `curve_operators` (or an actor's).
#: "actor": only a peer registered as an actor (memory grants and releases, draft proposals:
#: one actor's calls to another). The kernel refuses anyone else with Unauthorized before routing.
ROLES = ("client", "operator", "actor")


def may_call(peer_role: str, method_role: str) -> bool:
    """Whether a peer holding `peer_role` may call a method declared with `method_role`."""
    return ROLES.index(peer_role) >= ROLES.index(method_role)


def role_of(kind: str, method_name: str) -> str:
    """The role a call of `kind.method_name` needs (an unknown method: "client"; its actor answers
    UnknownMethod)."""
    spec = METHODS.get(f"{kind}.{method_name}") or METHODS.get(f"actor.{method_name}")
    return spec.role if spec is not None else "client"


@dataclass(frozen=True, slots=True)
class MethodSpec:
    name: str  # "<kind>.<method>"
    request: type
    reply: type | None  # None for streaming methods (they END instead)
    chunk: type | None = None  # stream chunk schema, for streaming methods
    idempotent: bool = False  # safe to retry after ActorDied
    doc: str = ""
    role: str = "client"  # who may call it (ROLES)

    @property
    def streams(self) -> bool:
        return self.chunk is not None


METHODS: dict[str, MethodSpec] = {}


def method(
    name: str,
    request: type,
    reply: type | None = None,
    *,
    role: str,
    chunk: type | None = None,
    idempotent: bool = False,
    doc: str = "",
) -> MethodSpec:
    """Declare a method; `role` (required: a new method must say who may call it) is one of ROLES."""
    if name in METHODS:
        raise ValueError(f"method {name} declared twice")
    if role not in ROLES:
        raise ValueError(f"method {name}: role {role!r} is not one of {ROLES}")
    spec = MethodSpec(name, request, reply, chunk, idempotent, doc, role)
    METHODS[name] = spec
    return spec


def lookup(kind: str, method_name: str) -> MethodSpec:
    spec = METHODS.get(f"{kind}.{method_name}") or METHODS.get(f"actor.{method_name}")
    if spec is None:
        raise UnknownMethod(
            f"actor kind '{kind}' has no method '{method_name}'", detail={"kind": kind, "method": method_name}
        )
    return spec


def validate_request(kind: str, method_name: str, body: Any) -> Any:
    return from_wire(lookup(kind, method_name).request, body, "params")


def result_to_wire(cls: type, value: Any, what: str) -> dict[str, Any]:
    """The wire map of what a handler returned as ``what`` (a reply or a stream chunk), checked
    against its declared message class ``cls``.

    The sender builds the declared class: an instance of ``cls`` is encoded as it is. Anything
    else (another class, None, a plain map) is the handler's bug: :class:`Internal`, naming the
    method's declared class and what came instead.
    """
    if type(value) is cls:
        return to_wire(value)
    raise Internal(
        f"the {what} is a {type(value).__name__}, not the declared {cls.__name__}",
        detail={"expected": cls.__name__, "got": type(value).__name__},
    )
