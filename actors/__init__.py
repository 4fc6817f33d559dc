"""specmemo's actors, the kernel that routes between them, and the supervisor."""

from .base import Actor, Call

__all__ = ["Actor", "Call"]
