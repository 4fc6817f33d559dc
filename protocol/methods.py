"""Every method of every actor, in one place: name, request, reply, stream chunk.

``docs/protocol.md`` documents these tables for writers of other clients. A method is
addressed as ``<actor kind>.<method>``; a request names the actor instance in its route
frame and the bare method in its header. The table and its checks live in
:mod:`.method_table`; each actor kind's messages and methods in its own ``*_messages`` module,
imported here in the order the documentation lists them.
"""
from __future__ import annotations

from .method_table import (METHODS, ROLES, MethodSpec, lookup, may_call, method, result_to_wire,
                           role_of, validate_request)
from .schema import from_wire, message, to_wire
from .control import Notice, ReadyBody
from .kernel_messages import (Empty, PingReply, ActorInfo, ActorsReply,
                              KernelMetricsReply, ActorMetricsReply)
from .echo_messages import (EchoRequest, EchoReply, SleepRequest, SleepReply, FailRequest,
                            CountRequest, CountChunk)
from .solver_messages import (RegisterMatrix, MatrixReport, MatrixId, MatvecRequest, MatvecReply,
                              SolveRequest, SolveReply, Dropped, MatrixList)
from .memory_messages import (AddHolder, HolderReply, SessionRef, OpenSession, HasReply,
                              PrefillRequest, GrantAnswer, GrantItem, CommitItem, GrantBatch,
                              CommitBatch, Answers, Freed, Costs, Usage, Reserve, ReserveReply,
                              Unreserve)
from .model_messages import (ModelInfo, DraftOpen, Held, ProposeRequest, Proposal, AcceptRequest,
                             AcceptBatch, HeldEach,
                             OpenChat, ChatRequest, GenerateRequest, CompleteRequest, ChatChunk,
                             SessionList)

__all__ = [
    "Notice", "ReadyBody", "METHODS", "ROLES", "MethodSpec", "lookup", "may_call", "method", "result_to_wire",
    "role_of", "validate_request", "from_wire", "message", "to_wire", "Empty", "PingReply",
    "ActorInfo", "ActorsReply", "KernelMetricsReply", "ActorMetricsReply",
    "EchoRequest", "EchoReply", "SleepRequest", "SleepReply", "FailRequest", "CountRequest",
    "CountChunk", "RegisterMatrix", "MatrixReport", "MatrixId", "MatvecRequest", "MatvecReply",
    "SolveRequest", "SolveReply", "Dropped", "MatrixList", "AddHolder", "HolderReply",
    "SessionRef", "OpenSession", "HasReply", "PrefillRequest", "GrantAnswer", "GrantItem",
    "CommitItem", "GrantBatch", "CommitBatch", "Answers", "Freed", "Costs", "Usage", "Reserve",
    "ReserveReply", "Unreserve", "ModelInfo", "DraftOpen", "Held", "ProposeRequest", "Proposal",
    "AcceptRequest", "AcceptBatch", "HeldEach", "OpenChat", "ChatRequest", "GenerateRequest", "CompleteRequest",
    "ChatChunk", "SessionList",
]
