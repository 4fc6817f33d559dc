"""Linear layers with int8 weights and per-token 8-bit activations (`q8.c`; math and layout in q8.h).

    w = quantize_pack(weight)             # weight: float [n, k] (or bfloat16 bits) -> Q8Weights, in C
    y = linear(x, w, threads=2)           # x: float32 [m, k] -> float32 [m, n]

    codes, scale = quantize(weight)       # the same in numpy: int8 [n, k], float32 [n]
    w = pack(codes, scale)                # ... and the layout (`reference_pack` does both)

Any n and k (the layout pads them). A row's result depends on that row alone (exact integer dot
products, then the same two float multiplies), so a product of M rows equals M products of one
row bit for bit, on every instruction-set path (`q4.ISAS`, the same paths as the 4-bit kernel).
`reference` computes the same quantity with numpy, independently of the C code: the same bits.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from . import q4
from ._decode import ffi, lib

BLOCK_ROWS = q4.BLOCK_ROWS


@dataclass(frozen=True)
class Q8Weights:
    """A packed weight: codes (int8, ceil(n/16) x kp/4 x 64, kp = k rounded up to 8), and per
    padded output row its float32 scale and int32 code sum, for W[i, j] ~ scale[i] * c[i, j]."""

    n: int
    k: int
    codes: np.ndarray
    scales: np.ndarray
    sums: np.ndarray

    @property
    def nbytes(self) -> int:
        return self.codes.nbytes + self.scales.nbytes + self.sums.nbytes

    def arrays(self) -> dict[str, np.ndarray]:
        return {"codes": self.codes, "scales": self.scales, "sums": self.sums}

    @functools.cached_property
    def pointers(self) -> tuple:
        """The C pointers to codes, scales and sums, made once: numpy's `.ctypes` costs microseconds
        a call, and a forward makes a call a layer."""
        return (
            ffi.cast("int8_t *", self.codes.ctypes.data),
            ffi.cast("float *", self.scales.ctypes.data),
            ffi.cast("int32_t *", self.sums.ctypes.data),
        )

    def writable(self) -> bool:
        """Whether the arrays have the layout's shapes and dtypes, C order, and can be written (what
        `pack_rows` fills)."""
        return q4.fits(self.arrays(), _layout(self.n, self.k), writeable=True)

    @classmethod
    def from_arrays(cls, n: int, k: int, arrays: dict) -> Q8Weights:
        """The weight of `arrays()` (a stored copy, say), or ValueError if they do not make an n x k one."""
        q4.check_layout(arrays, _layout(n, k), f"q8 {n} x {k}")
        return cls(n, k, arrays["codes"], arrays["scales"], arrays["sums"])


def quantize(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Codes c (int8 in -127..127, [n, k]) and float32 scale [n]: per row, scale = max |w| / 127
    with NaN ignored (the smallest positive float for an all-zero row) and c = round(w / scale),
    half to even (0 where that is NaN: a NaN weight, or an infinite one in a row of infinite scale)."""
    w = np.asarray(weight, dtype=np.float32)
    magnitude = np.abs(w)
    top = np.where(np.isnan(magnitude), np.float32(0), magnitude).max(axis=1)
    scale = np.maximum(top / np.float32(127.0), np.finfo(np.float32).tiny).astype(np.float32)
    with np.errstate(invalid="ignore"):
        codes = np.rint(w / scale[:, None])
    return np.clip(np.where(np.isnan(codes), 0, codes), -127, 127).astype(np.int8), scale


def zeros(n: int, k: int) -> Q8Weights:
    """An all-zero packed weight of n x k (what `pack_rows` fills)."""
    if n < 1 or not 1 <= k <= lib.Q8_MAX_K:
        raise ValueError(f"a q8 weight is n >= 1 by 1 <= k <= {lib.Q8_MAX_K}, not {n} x {k}")
    return Q8Weights(n, k, *(np.zeros(shape, dtype) for shape, dtype in _layout(n, k).values()))


def _layout(n: int, k: int) -> q4.Layout:
    # the arrays of an n x k weight, in `arrays()` order: their shapes and dtypes (q8.h)
    rows, kp = -(-n // BLOCK_ROWS) * BLOCK_ROWS, -(-k // 8) * 8
    return {
        "codes": ((rows // BLOCK_ROWS, kp // 4, 64), np.int8),
        "scales": ((rows,), np.float32),
        "sums": ((rows,), np.int32),
    }


def pack_rows(w: Q8Weights, first: int, rows, bfloat16: bool = False, isa: str | None = None) -> None:
    """Quantize float rows [r, k] (numpy or anything `np.asarray` takes; with `bfloat16`, a uint16
    array of bfloat16 bit patterns) into rows first .. first + r - 1 of `w`, in C (`q8_pack`;
    `isa` forces a path, None: the fastest): bit for bit `quantize` then `pack`."""
    rows = np.ascontiguousarray(rows, dtype=np.uint16 if bfloat16 else np.float32)
    if rows.ndim != 2 or rows.shape[1] != w.k or not 0 <= first <= w.n - rows.shape[0]:
        raise ValueError(f"cannot pack {rows.shape} rows at row {first} of a {w.n} x {w.k} weight")
    if not w.writable():
        raise ValueError("pack_rows writes into the arrays of `zeros(n, k)`: writable, C-contiguous, of its shapes")
    address = rows.ctypes.data
    args = (ffi.NULL, ffi.cast("uint16_t *", address)) if bfloat16 else (ffi.cast("float *", address), ffi.NULL)
    isa_code = lib.Q4_ISA_AUTO if isa is None else q4.ISAS[isa]
    status = lib.q8_pack(rows.shape[0], w.k, *args, first, w.n, *w.pointers, isa_code)
    q4.check("q8_pack", status)


def quantize_pack(weight, bfloat16: bool = False, isa: str | None = None) -> Q8Weights:
    """A whole float weight [n, k] quantized and laid out in C (`pack_rows`)."""
    weight = np.asarray(weight)
    w = zeros(*weight.shape)
    pack_rows(w, 0, weight, bfloat16, isa)
    return w


def reference_pack(weight) -> Q8Weights:
    """`quantize_pack` in numpy: `quantize`, then `pack` (the independent reference of the C code)."""
    return pack(*quantize(weight))


def pack(codes: np.ndarray, scale: np.ndarray) -> Q8Weights:
    """The q8.h layout of int8 codes [n, k] in -127..127 (−128 is refused: the AVX2 path cannot
    negate it) and their float32 row scales [n]."""
    codes = np.asarray(codes)
    n, k = codes.shape
    if codes.dtype != np.int8 or scale.shape != (n,) or n < 1 or not 1 <= k <= lib.Q8_MAX_K or codes.min() < -127:
        raise ValueError(
            f"q8.pack takes int8 codes in -127..127 [n, k <= {lib.Q8_MAX_K}] and [n] scales, "
            f"not {codes.dtype} {codes.shape}"
        )
    rows, kp = -(-n // BLOCK_ROWS) * BLOCK_ROWS, -(-k // 8) * 8
    # a quad of 4 codes is one int32: the layout is a transpose of int32s within each block of 16 rows
    blocked = np.empty((rows // BLOCK_ROWS, kp // 4, BLOCK_ROWS), dtype=np.int32)
    sums = np.zeros(rows, dtype=np.int32)
    step = BLOCK_ROWS * 1024  # a chunk of rows at a time: no padded copy of a whole LM head
    for start in range(0, rows, step):
        end = min(start + step, rows)
        padded = np.zeros((end - start, kp), dtype=np.int8)
        padded[: max(0, min(end, n) - start), :k] = codes[start:end]
        blocked[start // BLOCK_ROWS : end // BLOCK_ROWS] = (
            padded.view(np.int32).reshape(-1, BLOCK_ROWS, kp // 4).transpose(0, 2, 1)
        )
        sums[start:end] = padded.sum(axis=1, dtype=np.int32)
    scales = np.zeros(rows, dtype=np.float32)
    scales[:n] = scale
    return Q8Weights(n, k, blocked.view(np.int8).reshape(rows // BLOCK_ROWS, kp // 4, 64), scales, sums)


def unpack_codes(w: Q8Weights) -> np.ndarray:
    """The int8 codes [n, k] of a packed weight."""
    blocks, quads, _ = w.codes.shape
    return (
        w.codes.reshape(blocks, quads, BLOCK_ROWS, 4)
        .transpose(0, 2, 1, 3)
        .reshape(blocks * BLOCK_ROWS, quads * 4)[: w.n, : w.k]
    )


def linear(x: np.ndarray, w: Q8Weights, threads: int = 1, isa: str | None = None, out: np.ndarray | None = None):
    """y = x W^T for float32 x [m, k] (C-contiguous); `isa` forces a path (None: the fastest)."""
    out = q4.product_output(x, w.k, w.n, out)
    code = lib.Q4_ISA_AUTO if isa is None else q4.ISAS[isa]
    linear_ptr(x.shape[0], w, x.ctypes.data, out.ctypes.data, threads, code)
    return out


def linear_ptr(m: int, w: Q8Weights, x: int, y: int, threads: int, isa: int = lib.Q4_ISA_AUTO) -> None:
    """`linear` on raw addresses (a torch tensor's `data_ptr()`) of C-contiguous float32 buffers
    x [m, k] and y [m, n]."""
    status = lib.q8_linear(
        m,
        w.n,
        w.k,
        *w.pointers,
        ffi.cast("float *", x),
        ffi.cast("float *", y),
        threads,
        isa,
    )
    q4.check("q8_linear", status)


def reference(x: np.ndarray, w: Q8Weights) -> np.ndarray:
    """The quantity `linear` computes, by numpy: exact integer dot products, then the same two
    float32 multiplies (so the same bits)."""
    a, sa = q4.quantize_activations(x)
    dots = a @ unpack_codes(w).astype(np.int64).T
    return (dots.astype(np.float32) * w.scales[: w.n][None, :]) * sa[:, None]
