"""The actor kinds: each kind's class, named "module:Class" so it is imported only in its own process."""

from __future__ import annotations

#: Actor kinds and their classes, importable by name in the actor process.
ACTOR_KINDS: dict[str, str] = {
    "echo": "specmemo.actors.echo:EchoActor",
    "solver": "specmemo.actors.solver:SolverActor",
    "memory": "specmemo.actors.memory:MemoryActor",
    "draft": "specmemo.actors.draft:DraftActor",
    "verifier": "specmemo.actors.verifier:VerifierActor",
    "http": "specmemo.actors.http:HttpActor",
}

#: The kinds that hold a model (torch and transformers, seconds to import; the zygote forks them).
MODEL_KINDS = ("draft", "verifier")
