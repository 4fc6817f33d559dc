"""specmemo's actors, the kernel that routes between them, and the supervisor."""

if __name__ != "specmemo.actors":  # a second copy of these modules breaks isinstance and except clauses
    raise ImportError(f"import specmemo.actors, not {__name__}: these folders install as specmemo.*")

from .base import Actor, Call

__all__ = ["Actor", "Call"]
