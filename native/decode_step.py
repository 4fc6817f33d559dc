"""A few new tokens through a stack of q4 decoder layers in one C call (`decode_step.c`; formulas
in decode_step.h): the structs are built once per model, and each step only points every layer at
its cache's current storage.

    stack = DecodeStack(shape, layers)      # layers: one LayerWeights per decoder layer
    stack.step(h, m, length, cos, sin, caches, threads)  # h: float32 [m, hidden], in place
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._decode import ffi, lib
from .errors import NativeError
from .q4 import Q4Weights

_ERRORS = {lib.DECODE_STEP_EINVAL: "invalid arguments", lib.DECODE_STEP_ENOMEM: "out of memory"}


@dataclass(frozen=True)
class Shape:
    hidden: int
    heads: int
    kv_heads: int
    dim: int
    intermediate: int
    scaling: float


@dataclass(frozen=True)
class LayerWeights:
    """A decoder layer's parameters as the C step reads them: RMSNorm weights (float32 [hidden])
    and epsilons, and four q4 linears with their float32 biases (or None)."""

    norm1: np.ndarray
    norm2: np.ndarray
    eps1: float
    eps2: float
    qkv: tuple[Q4Weights, np.ndarray | None]
    o: tuple[Q4Weights, np.ndarray | None]
    gate_up: tuple[Q4Weights, np.ndarray | None]
    down: tuple[Q4Weights, np.ndarray | None]


def _f32(a: np.ndarray) -> np.ndarray:
    if a.dtype != np.float32 or not a.flags.c_contiguous:
        raise ValueError(f"expected a C-contiguous float32 array, got {a.dtype}")
    return a


class DecodeStack:
    """The C structs of a model's decoder layers, holding references to every array they point into."""

    def __init__(self, shape: Shape, layers: list[LayerWeights]) -> None:
        self.shape = shape
        self._keep: list = []
        self._layers = ffi.new("decode_layer[]", max(len(layers), 1))
        for i, w in enumerate(layers):
            s = self._layers[i]
            s.norm1, s.norm2 = self._ptr("float *", _f32(w.norm1)), self._ptr("float *", _f32(w.norm2))
            s.eps1, s.eps2 = w.eps1, w.eps2
            for name in ("qkv", "o", "gate_up", "down"):
                weights, bias = getattr(w, name)
                lin = getattr(s, name)
                lin.n, lin.k, lin.group = weights.n, weights.k, weights.group
                lin.codes = self._ptr("uint8_t *", weights.codes)
                lin.scales = self._ptr("uint16_t *", weights.scales)
                lin.bias = ffi.NULL if bias is None else self._ptr("float *", _f32(bias))
        self._model = ffi.new("decode_model *")
        m = self._model
        m.layers, m.hidden, m.heads, m.kv_heads = len(layers), shape.hidden, shape.heads, shape.kv_heads
        m.dim, m.intermediate, m.scaling, m.layer = shape.dim, shape.intermediate, shape.scaling, self._layers
        self.layers = len(layers)

    def _ptr(self, ctype: str, arr: np.ndarray):
        self._keep.append(arr)
        return ffi.cast(ctype, arr.ctypes.data)

    MAX_ROWS = int(lib.DECODE_STEP_MAX_ROWS)

    def step(
        self,
        h: int,
        m: int,
        length: int,
        cos: int,
        sin: int,
        caches: list[tuple[int, int, int]],
        threads: int,
        visible: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    ) -> None:
        """Run the stack on the hidden states at address h (float32 [m, hidden], in place) of the
        new tokens written at cache slots length .. length + m - 1, with cos and sin (float32 [m, dim])
        of their positions; caches holds each layer's (keys address, values address, capacity), with
        room for the m new slots. Row r sees slots 0 .. length + r, or with `visible` = (counts,
        starts, slots) (int64, as `rows_attention.visibility` answers them) the slots it names."""
        if len(caches) != self.layers:
            raise ValueError(f"{len(caches)} cache layers for {self.layers} decoder layers")
        counts = starts = slots = ffi.NULL
        if visible is not None:
            arrays = [np.ascontiguousarray(a, dtype=np.int64) for a in visible]
            if len(arrays[0]) != m or len(arrays[1]) != m:
                raise ValueError(f"visibility of {len(arrays[0])} rows for {m} new tokens")
            counts, starts, slots = (ffi.cast("int64_t *", a.ctypes.data) for a in arrays)
        for s, (keys, values, capacity) in zip(self._layers, caches):
            s.keys, s.values, s.capacity = ffi.cast("float *", keys), ffi.cast("float *", values), capacity
        status = lib.decode_step(
            self._model,
            m,
            length,
            ffi.cast("float *", cos),
            ffi.cast("float *", sin),
            ffi.cast("float *", h),
            counts,
            starts,
            slots,
            threads,
            lib.Q4_ISA_AUTO,
        )
        if status != lib.DECODE_STEP_OK:
            raise NativeError(f"decode_step: {_ERRORS.get(status, status)}")
