"""The vectors a solve works in, kept with its plan between solves.

MRS needs six vectors of n doubles (x, the Lanczos vectors v, v_prev and w, the directions d1
and d2). Fresh arrays each solve cost page faults on every page of every vector (hundreds of MB
on a grid of millions of rows), where zeroing resident ones is one streaming pass. The memory
budget already counts these vectors as part of a plan (plan.footprint), so keeping them costs
nothing the budget does not hold.
"""

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

VECTORS = 6  # x, v, v_prev, w, d1, d2


class Workspace:
    """Zeroed vectors of n doubles, allocated on first use and reused; one solve at a time uses
    them, and a solve that finds them taken (a concurrent caller) gets fresh ones."""

    def __init__(self, n: int) -> None:
        self.n = n
        self._arrays: list[np.ndarray] | None = None
        self._lock = threading.Lock()

    @contextmanager
    def zeroed(self) -> Iterator[list[np.ndarray]]:
        if not self._lock.acquire(blocking=False):
            yield [np.zeros(self.n) for _ in range(VECTORS)]
            return
        try:
            if self._arrays is None:
                self._arrays = [np.empty(self.n) for _ in range(VECTORS)]
            for arr in self._arrays:
                arr.fill(0.0)
            yield self._arrays
        finally:
            self._lock.release()
