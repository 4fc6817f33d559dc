"""The methods of the model actors: draft (the small model), verifier (chat sessions) and
the http gateway's view of its sessions."""

from __future__ import annotations

from dataclasses import field
from typing import Any

import numpy as np

from .kernel_messages import Empty
from .memory_messages import Freed, HasReply, SessionRef
from .method_table import method
from .schema import message


@message
class ModelInfo:
    bytes_per_token: int
    vocab_size: int
    max_context: int
    sessions: int = 0
    held: int = 0  # KV bytes its caches hold now
    weight_bytes: int = 0  # its model's weights in the precision it runs
    rss_bytes: int = 0  # the actor process's resident memory
    shared_weights: bool = False  # weights loaded once by the zygote, shared copy-on-write
    precision: Any = None  # {"precision", "requested", "weight_bytes", "cpu", "probe_ms", "stored"}


@message
class DraftOpen:
    session: str
    token_ids: np.ndarray  # int64 committed token ids
    blocks: int
    keep: int = 0


@message
class Held:
    held: int


@message
class ProposeRequest:
    sessions: list[str]
    gammas: list[int]
    blocks: list[int]
    temperature: float | list[float] = 0.0  # one for all rows, or one per row
    seeds: list[int] | None = None
    widths: list[int] | None = None  # per row, the most children a tree node may have (None: chains)
    rates: list[list[float]] | None = None  # per row, a_1..a_w: a sampled tree's growth keys (empty: q's)
    forwards: list[int] | None = None  # per row, the most draft forwards (None: one a node); the rest are leaves


@message
class Proposal:
    tokens: np.ndarray  # int64 [B, Nmax], -1 past a row's node count
    parents: np.ndarray | None = None  # int64 [B, Nmax], each node's parent (−1: the root)
    probs: np.ndarray | None = None  # float32 [B, Nmax, V] of sampled nodes
    seconds: float = 0.0
    token_seconds: float | None = None  # mean forward time of the positions that fed one token a row
    forwards: list[int] | None = None  # the draft forwards each row took


@message
class AcceptRequest:
    session: str
    accepted: int
    tokens: np.ndarray  # int64: the accepted drafts, then the target's token
    blocks: int
    path: list[int] | None = None  # accepted tree nodes (None: the chain's first `accepted`)


@message
class AcceptBatch:
    requests: list[AcceptRequest]  # one per session of the step


@message
class HeldEach:
    held: list[int]  # per request, in order


method(
    "draft.info",
    Empty,
    ModelInfo,
    role="client",
    idempotent=True,
    doc="Bytes per token, vocabulary, context, weights, precision and resident memory.",
)
method("draft.has", SessionRef, HasReply, role="actor", idempotent=True)
method(
    "draft.open",
    DraftOpen,
    Held,
    role="actor",
    idempotent=True,
    doc="(Re)build a session's cache from its committed token ids.",
)
method("draft.extend", DraftOpen, Held, role="actor", doc="A new turn: the first `keep` ids are unchanged.")
method(
    "draft.propose",
    ProposeRequest,
    Proposal,
    role="actor",
    doc="Draft a token tree (a chain at width 1) per session (greedy or top-k, or sampled with q).",
)
method(
    "draft.accept_batch",
    AcceptBatch,
    HeldEach,
    role="actor",
    doc="For each session of a step, keep the accepted path (compacted) and drop every other branch; "
    "NotFound, with nothing changed, unless every session is open.",
)
method("draft.close", SessionRef, Held, role="actor", idempotent=True, doc="Drop a session's cache.")


@message
class OpenChat:
    session: str = ""  # "" = the verifier picks an id


@message
class ChatRequest:
    session: str
    message: str
    max_new_tokens: int = 64
    temperature: float = 0.0
    seed: int = 0
    gamma: int | None = None  # fixed draft nodes per step; None = chosen by the memory actor
    tree: int | None = None  # widest token tree (1: a chain); None = the deployment's


@message
class GenerateRequest:
    prompt_ids: np.ndarray  # int64 token ids; no chat template applied
    max_new_tokens: int = 64
    temperature: float = 0.0
    seed: int = 0
    gamma: int | None = None
    tree: int | None = None


@message
class CompleteRequest:
    """A whole conversation, continued in `session`: the KV of the longest prefix it shares with
    the session's committed tokens is reused (the HTTP gateway's stateless requests)."""

    session: str
    messages: list[dict[str, str]]  # {"role": system|user|assistant, "content": str}, last: user
    max_new_tokens: int = 64
    temperature: float = 0.0
    seed: int = 0
    gamma: int | None = None
    tree: int | None = None


@message
class StepInfo:
    """One speculative step of one session, as its chat chunk reports it."""

    session: str
    gamma: int  # draft nodes granted (0: a plain decoding step)
    accepted: int  # draft tokens the target accepted
    emitted: int  # tokens the step added (accepted, lookup tail tokens taken, the target's own)
    draft_s: float
    target_s: float
    width: int = 1  # the most children a tree node may have (1: a chain)
    forwards: int = 0  # draft forwards the step took (its other nodes were leaves)
    looked_up: int = 0  # emitted tokens a lookup tail proposed (copied from the context)
    batch: int = 1  # sessions in the step's target forward


@message
class ChatChunk:
    tokens: np.ndarray  # int64 token ids accepted in this step
    text: str = ""  # their text (a UTF-8-safe delta)
    done: bool = False
    step: StepInfo | None = None  # this step (None on a final chunk that carries no step)
    stats: dict[str, Any] = field(default_factory=dict)  # the turn so far (+ prompt_tokens, prefilled_tokens)
    reply: str = ""  # the whole reply text, on the final chunk


@message
class SessionList:
    sessions: list[str] = field(default_factory=list)
    active: list[str] = field(default_factory=list)
    held: int = 0  # target cache bytes held


method(
    "verifier.info",
    Empty,
    ModelInfo,
    role="client",
    idempotent=True,
    doc="The target's bytes per token, vocabulary, context, weights, precision and resident memory.",
)
method(
    "verifier.open",
    OpenChat,
    SessionRef,
    role="client",
    doc="Open a chat session owned by the caller; an empty `session` gets a random id, a taken one `Conflict`.",
)
method(
    "verifier.close",
    SessionRef,
    Freed,
    role="client",
    idempotent=True,
    doc="Close a chat session; its blocks are freed everywhere.",
)
method(
    "verifier.chat",
    ChatRequest,
    role="client",
    chunk=ChatChunk,
    doc="One chat turn, streamed: a chunk per speculative step, then END.",
)
method(
    "verifier.complete",
    CompleteRequest,
    role="client",
    chunk=ChatChunk,
    doc="Continue a whole conversation in a session, reusing the KV of its common prefix; streamed like chat.",
)
method(
    "verifier.generate",
    GenerateRequest,
    role="client",
    chunk=ChatChunk,
    doc="Continue raw token ids in a throwaway session (benchmarks), streamed like chat.",
)
method("verifier.sessions", Empty, SessionList, role="operator", idempotent=True)

method(
    "http.sessions",
    Empty,
    SessionList,
    role="operator",
    idempotent=True,
    doc="The verifier sessions the gateway keeps for prefix reuse, and those serving a request now.",
)
