"""Causal attention, each query row computed alone (`rows_attention.c`; the math and layouts are
in rows_attention.h): a forward of M tokens computes, bit for bit, what M one-token forwards
compute, for a batch of sequences and for token-tree rows alike.

    out = attend(q, k, v, visible, scale)
    # q [batch, m, heads, dim]; k, v [batch, kv_heads, keys, dim]; visible[b][j]: a count (the
    # first n keys) or the key slots row (b, j) sees, in order

`reference` computes the same attention with numpy in float64, independently of the C code.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ._decode import ffi, lib
from .errors import NativeError


def attend_ptr(
    shape: tuple[int, int, int, int, int, int],
    strides: tuple[int, int],
    q: int,
    k: int,
    v: int,
    counts: int,
    starts: int | None,
    slots: int | None,
    scale: float,
    out: int,
    threads: int,
) -> None:
    """`attend` on raw addresses (torch tensors' `data_ptr()`). shape: (batch, m, heads, kv_heads,
    dim, keys); strides: (head_stride, batch_stride) of k and v in floats; q and out float32
    [batch, m, heads, dim]; counts (and starts, slots, or None for prefixes) int64."""
    batch, m, heads, kv_heads, dim, keys = shape
    status = lib.rows_attention(
        batch,
        m,
        heads,
        kv_heads,
        dim,
        keys,
        strides[0],
        strides[1],
        ffi.cast("float *", q),
        ffi.cast("float *", k),
        ffi.cast("float *", v),
        ffi.cast("int64_t *", counts),
        ffi.NULL if starts is None else ffi.cast("int64_t *", starts),
        ffi.NULL if slots is None else ffi.cast("int64_t *", slots),
        scale,
        ffi.cast("float *", out),
        threads,
    )
    if status != lib.ROWS_ATTENTION_OK:
        reason = "out of memory" if status == lib.ROWS_ATTENTION_ENOMEM else "invalid arguments"
        raise NativeError(f"rows_attention: {reason}")


def visibility(visible: Sequence[Sequence]) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """counts, starts, slots (the last two None when every row sees a prefix) of visible[b][j]."""
    rows = [x for row in visible for x in row]
    if all(isinstance(x, (int, np.integer)) for x in rows):
        return np.array(rows, dtype=np.int64), None, None
    lists = [np.arange(x) if isinstance(x, (int, np.integer)) else np.asarray(x, dtype=np.int64) for x in rows]
    counts = np.array([len(x) for x in lists], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    slots = np.concatenate(lists).astype(np.int64) if lists else np.zeros(0, dtype=np.int64)
    return counts, starts, slots


def attend(q: np.ndarray, k: np.ndarray, v: np.ndarray, visible, scale: float, threads: int = 1) -> np.ndarray:
    """Row (b, j) of q attends over the keys visible[b][j] names (see the module doc)."""
    q, k, v = (np.ascontiguousarray(a, dtype=np.float32) for a in (q, k, v))
    batch, m, heads, dim = q.shape
    if k.shape != v.shape or k.ndim != 4 or k.shape[0] != batch or k.shape[3] != dim:
        raise ValueError(f"shapes do not match: q {q.shape}, k {k.shape}, v {v.shape}")
    counts, starts, slots = visibility(visible)
    if counts.shape != (batch * m,):
        raise ValueError(f"visible must name {batch} x {m} rows")
    out = np.empty_like(q)
    kv_heads, keys = k.shape[1], k.shape[2]
    attend_ptr(
        (batch, m, heads, kv_heads, dim, keys),
        (keys * dim, kv_heads * keys * dim),
        q.ctypes.data,
        k.ctypes.data,
        v.ctypes.data,
        counts.ctypes.data,
        None if starts is None else starts.ctypes.data,
        None if slots is None else slots.ctypes.data,
        scale,
        out.ctypes.data,
        threads,
    )
    return out


def simd(on: bool) -> bool:
    """Let calls take the CPU's SIMD path (the default) or only the portable loop, which computes
    the same bits; answers the previous setting. For tests and benchmarks; not thread-safe."""
    return bool(lib.rows_attention_simd(1 if on else 0))


def reference(q: np.ndarray, k: np.ndarray, v: np.ndarray, visible, scale: float) -> np.ndarray:
    """The same attention in float64 with numpy's exp (a row seeing nothing gets zeros)."""
    batch, m, heads, _ = q.shape
    group = heads // k.shape[1]
    out = np.zeros(q.shape, dtype=np.float64)
    for b in range(batch):
        for j in range(m):
            seen = visible[b][j]
            index = np.arange(seen) if isinstance(seen, (int, np.integer)) else np.asarray(seen, dtype=np.int64)
            if len(index) == 0:
                continue
            for h in range(heads):
                keys = k[b, h // group, index].astype(np.float64)
                s = keys @ q[b, j, h].astype(np.float64) * scale
                p = np.exp(s - s.max())
                out[b, j, h] = p @ v[b, h // group, index].astype(np.float64) / p.sum()
    return out
