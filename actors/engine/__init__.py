"""The engine: block KV caches, the memory model and manager, and speculative decoding cores."""

from .draft import DraftCore
from .engine import Engine, check_pair
from .errors import (
    BadPrompt,
    ContextTooLong,
    EngineError,
    OverBudget,
    SessionBusy,
    TokenizerMismatch,
    UnknownSession,
)
from .kvcache import BlockKVCache
from .manager import MemoryManager
from .speculative import SpecStats, StepStats, verify_chain
from .verifier import DRAFT, TARGET, Driver, VerifierCore

__all__ = [
    "DRAFT",
    "TARGET",
    "BadPrompt",
    "BlockKVCache",
    "ContextTooLong",
    "DraftCore",
    "Driver",
    "Engine",
    "EngineError",
    "MemoryManager",
    "OverBudget",
    "SessionBusy",
    "SpecStats",
    "StepStats",
    "TokenizerMismatch",
    "UnknownSession",
    "VerifierCore",
    "check_pair",
    "verify_chain",
]
