"""The engine: block KV caches, the memory model and manager, and speculative decoding cores.

Names are imported from their modules on first use (PEP 562), so that the memory actor,
which needs only the manager and the errors, starts without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DraftCore": "draft",
    "Engine": "engine",
    "check_pair": "engine",
    "BadPrompt": "errors",
    "ContextTooLong": "errors",
    "EngineError": "errors",
    "OverBudget": "errors",
    "SessionBusy": "errors",
    "TokenizerMismatch": "errors",
    "UnknownSession": "errors",
    "BlockKVCache": "kvcache",
    "MemoryManager": "manager",
    "SpecStats": "speculative",
    "StepStats": "speculative",
    "verify_chain": "speculative",
    "DRAFT": "driver",
    "TARGET": "driver",
    "Driver": "driver",
    "TurnEvent": "driver",
    "VerifierCore": "verifier",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
