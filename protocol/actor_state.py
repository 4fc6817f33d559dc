"""The one vocabulary of an actor's life.

The supervisor keeps it per child process, the kernel's registry per name, the zygote client
for the zygote, and ``kernel.actors`` sends it as ``ActorInfo.state``. The life of a
supervised actor::

    waiting -> starting -> ready -> restarting -> starting -> ...
                                 \\-> stopped (not restarted, or the deployment stopped)
                                 \\-> failed  (restarted too often: the deployment stops)

An actor that registers without being supervised by this kernel (started by hand, or by a
kernel with ``spawn`` off) is ``external`` while it is registered and ``stopped`` after it went
away; it may register again.
"""

from __future__ import annotations

import enum


class ActorState(enum.StrEnum):
    WAITING = "waiting"  # configured, not started: waits for its `after` actors (or the zygote)
    STARTING = "starting"  # its process runs, not registered yet (no READY)
    READY = "ready"  # registered and routable, supervised by this kernel
    EXTERNAL = "external"  # registered and routable, started by someone else
    RESTARTING = "restarting"  # it died; it is started again after a backoff
    STOPPED = "stopped"  # not running and not restarted (its restart policy, or a stop)
    FAILED = "failed"  # given up: died too often, or cannot be started here


#: The states in which the kernel routes calls to an actor.
ROUTABLE = frozenset({ActorState.READY, ActorState.EXTERNAL})
