"""Linear layers with 4-bit weights and per-token 8-bit activations (`q4.c`; math and layout in q4.h).

    w = pack(weight, group=64)            # weight: float [n, k], n % 16 == 0, k % group == 0
    y = linear(x, w, threads=2)           # x: float32 [m, k] -> float32 [m, n]

A row's result depends on that row alone (exact integer dot products, one fixed float order), so
a product of M rows equals M products of one row bit for bit, on every instruction-set path
(`ISAS`; `best_isa()` is what this CPU runs fastest). `reference` computes the same quantity with
numpy, independently of the C code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._decode import ffi, lib
from .errors import NativeError

BLOCK_ROWS = 16
ISAS = {"scalar": lib.Q4_ISA_SCALAR, "avx2": lib.Q4_ISA_AVX2, "avx512vnni": lib.Q4_ISA_AVX512VNNI}
_NAMES = {v: k for k, v in ISAS.items()}
_ERRORS = {
    lib.Q4_EINVAL: "invalid arguments",
    lib.Q4_ENOISA: "this CPU lacks the requested instruction set",
    lib.Q4_ENOMEM: "out of memory",
}


@dataclass(frozen=True)
class Q4Weights:
    """A packed weight: codes (uint8, n/16 x k/8 x 64) and float16 scales and zeros
    (n/16 x k/group x 2 x 16), for W[i, j] ~ scale[i, g] * q[i, j] + zero[i, g]."""

    n: int
    k: int
    group: int
    codes: np.ndarray
    scales: np.ndarray

    @property
    def nbytes(self) -> int:
        return self.codes.nbytes + self.scales.nbytes

    def rows(self, start: int, stop: int) -> Q4Weights:
        """Output rows start .. stop - 1 (multiples of 16): views of the same arrays."""
        if start % BLOCK_ROWS or stop % BLOCK_ROWS or not 0 <= start < stop <= self.n:
            raise ValueError(f"rows {start}..{stop} of {self.n} are not whole blocks of {BLOCK_ROWS}")
        blocks = slice(start // BLOCK_ROWS, stop // BLOCK_ROWS)
        return Q4Weights(stop - start, self.k, self.group, self.codes[blocks], self.scales[blocks])

    def writable(self) -> bool:
        """Whether the arrays have the layout's shapes, dtypes and C order, and can be written (what
        `pack` fills)."""
        return fits(self.arrays(), layout(self.n, self.k, self.group), writeable=True)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"codes": self.codes, "scales": self.scales}

    @classmethod
    def from_arrays(cls, n: int, k: int, group: int, arrays: dict) -> Q4Weights:
        """The weight of stored `codes` and `scales` (a stored copy, say), or ValueError if they do not
        make an n x k one in groups of `group`."""
        check_layout(arrays, layout(n, k, group), f"q4 {n} x {k}")
        return cls(n, k, group, arrays["codes"], arrays["scales"])


Layout = dict[str, tuple[tuple[int, ...], type]]


def layout(n: int, k: int, group: int) -> Layout:
    """The shape and dtype of each array of an n x k weight (q4.h)."""
    return {
        "codes": ((n // BLOCK_ROWS, k // 8, 64), np.uint8),
        "scales": ((n // BLOCK_ROWS, k // group, 2, BLOCK_ROWS), np.uint16),
    }


def fits(arrays: dict, layout: Layout, writeable: bool = False) -> bool:
    """Whether each array of `layout` is in `arrays` with its shape and dtype, C-contiguous (and,
    with `writeable`, writable): a packed weight's arrays, q4's or q8's."""
    return all(
        name in arrays
        and arrays[name].shape == shape
        and arrays[name].dtype == dtype
        and arrays[name].flags.c_contiguous
        and (arrays[name].flags.writeable or not writeable)
        for name, (shape, dtype) in layout.items()
    )


def check_layout(arrays: dict, layout: Layout, what: str) -> None:
    """ValueError unless `arrays` fit `layout` (`fits`), naming the first array that does not."""
    for name, (shape, dtype) in layout.items():
        if not fits(arrays, {name: (shape, dtype)}):
            got = arrays.get(name)
            found = "missing" if got is None else f"{got.dtype} {got.shape}"
            raise ValueError(f"{what}: {name} {found}, not a C-contiguous {np.dtype(dtype)} {shape}")


def product_output(x: np.ndarray, k: int, n: int, out: np.ndarray | None) -> np.ndarray:
    """The y [m, n] a product of x [m, k] writes (`out`, or a new array), once both are checked to
    be C-contiguous float32 arrays of those shapes (what q4's and q8's `linear` pass to C)."""
    if x.dtype != np.float32 or x.ndim != 2 or x.shape[1] != k or not x.flags.c_contiguous:
        raise ValueError(f"x must be a C-contiguous float32 [m, {k}] array, not {x.dtype} {x.shape}")
    m = x.shape[0]
    if out is None:
        return np.empty((m, n), dtype=np.float32)
    if out.dtype != np.float32 or out.shape != (m, n) or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous float32 [{m}, {n}] array")
    return out


def check(name: str, status: int) -> None:
    """Raise NativeError unless a decoding kernel (q4's or q8's) answered Q4_OK."""
    if status != lib.Q4_OK:
        raise NativeError(f"{name}: {_ERRORS.get(status, status)}")


def best_isa() -> str:
    """The fastest path this CPU runs: "avx512vnni", "avx2" or "scalar"."""
    return _NAMES[lib.q4_best_isa()]


def available_isas() -> list[str]:
    return [name for name, code in ISAS.items() if lib.q4_has_isa(code)]


def quantize(weight: np.ndarray, group: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Codes q (uint8 in 0..15, [n, k]) and float16 scale and zero ([n, k/group]): per row and
    group, the 16 levels span [min, max]; codes are chosen against the float16-rounded scale.
    Where they are not plain numbers the rule is explicit: a group holding a NaN has the quiet NaN
    (0x7E00) as scale and zero and codes 0; a zero extreme is +0 (numpy's reductions may answer
    -0 or +0); a code that is NaN (inf - inf) is 0."""
    n, k = weight.shape
    grouped = np.asarray(weight, dtype=np.float32).reshape(n, k // group, group)
    nan = np.isnan(grouped).any(-1)
    low, high = (np.where(nan, np.float32(np.nan), x + np.float32(0)) for x in (grouped.min(-1), grouped.max(-1)))
    with np.errstate(over="ignore", invalid="ignore"):
        scale = ((high - low) / 15).astype(np.float16)
        zero = low.astype(np.float16)
    s, z = scale.astype(np.float32)[..., None], zero.astype(np.float32)[..., None]
    with np.errstate(divide="ignore", invalid="ignore"):
        codes = np.where(s > 0, np.rint((grouped - z) / s), 0)
    return np.clip(np.where(np.isnan(codes), 0, codes), 0, 15).astype(np.uint8).reshape(n, k), scale, zero


def pack(
    weight, group: int = 64, bfloat16: bool = False, isa: str | None = None, out: Q4Weights | None = None
) -> Q4Weights:
    """Quantize a float weight [n, k] (numpy or anything `np.asarray` takes; with `bfloat16`, a
    uint16 array of bfloat16 bit patterns) and lay it out for `linear`, in C (`q4_pack`; `isa`
    forces a path, None: the fastest): bit for bit `reference_pack`. n must be a multiple of 16,
    k of `group`, `group` of 8 (at most 1024). `out`: arrays of that shape to write into (a slice
    of a bigger weight's blocks, `empty(...).rows(start, stop)`), else new ones."""
    weight = np.ascontiguousarray(weight, dtype=np.uint16 if bfloat16 else np.float32)
    n, k = weight.shape
    if n % BLOCK_ROWS or group % 8 or not 8 <= group <= lib.Q4_MAX_GROUP or k % group:
        raise ValueError(f"cannot pack a {n}x{k} weight in groups of {group}")
    if out is None:
        out = empty(n, k, group)
    elif (out.n, out.k, out.group) != (n, k, group) or not out.writable():
        raise ValueError(f"cannot pack a {n}x{k} weight in groups of {group} into {out.n}x{out.k}, {out.group}")
    codes, scales = out.codes, out.scales
    address = weight.ctypes.data
    args = (ffi.NULL, ffi.cast("uint16_t *", address)) if bfloat16 else (ffi.cast("float *", address), ffi.NULL)
    code = lib.Q4_ISA_AUTO if isa is None else ISAS[isa]
    status = lib.q4_pack(
        n, k, group, *args, ffi.cast("uint8_t *", codes.ctypes.data), ffi.cast("uint16_t *", scales.ctypes.data), code
    )
    check("q4_pack", status)
    return out


def empty(n: int, k: int, group: int) -> Q4Weights:
    """Uninitialized arrays of a packed n x k weight (what `pack` fills)."""
    return Q4Weights(n, k, group, *(np.empty(shape, dtype) for shape, dtype in layout(n, k, group).values()))


def reference_pack(weight, group: int = 64) -> Q4Weights:
    """`pack` in numpy: `quantize`, then the layout (the independent reference of the C code)."""
    codes, scale, zero = quantize(np.asarray(weight, dtype=np.float32), group)
    n, k = codes.shape
    return Q4Weights(n, k, group, layout_codes(codes), layout_scales(scale, zero))


def half_from_float(x: np.ndarray) -> np.ndarray:
    """float16 bit patterns of float32 `x` as `q4_pack` rounds them (numpy's `astype(float16)`)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty(x.shape, dtype=np.uint16)
    status = lib.q4_half_from_float(x.size, ffi.cast("float *", x.ctypes.data), ffi.cast("uint16_t *", out.ctypes.data))
    check("q4_half_from_float", status)
    return out


def layout_codes(codes: np.ndarray) -> np.ndarray:
    n, k = codes.shape
    # [block, row r, octet o, half h, t] -> [block, octet, r, t]: low nibble h = 0, high h = 1
    q = codes.reshape(n // BLOCK_ROWS, BLOCK_ROWS, k // 8, 2, 4)
    packed = q[:, :, :, 0, :] | (q[:, :, :, 1, :] << 4)
    return np.ascontiguousarray(packed.transpose(0, 2, 1, 3)).reshape(n // BLOCK_ROWS, k // 8, 64)


def layout_scales(scale: np.ndarray, zero: np.ndarray) -> np.ndarray:
    n, groups = scale.shape
    both = np.stack([scale, zero], axis=-1).reshape(n // BLOCK_ROWS, BLOCK_ROWS, groups, 2)
    return np.ascontiguousarray(both.transpose(0, 2, 3, 1)).view(np.uint16)


def unpack_codes(w: Q4Weights) -> np.ndarray:
    """The codes q [n, k] back from the layout (for tests and the reference)."""
    packed = w.codes.reshape(w.n // BLOCK_ROWS, w.k // 8, BLOCK_ROWS, 4)
    halves = np.stack([packed & 15, packed >> 4], axis=3)  # [block, octet, r, h, t]
    return np.ascontiguousarray(halves.transpose(0, 2, 1, 3, 4)).reshape(w.n, w.k)


def unpack_scales(w: Q4Weights) -> tuple[np.ndarray, np.ndarray]:
    s = w.scales.view(np.float16).astype(np.float32)  # [block, group, 2, r]
    s = s.transpose(0, 3, 1, 2).reshape(w.n, w.k // w.group, 2)
    return s[..., 0], s[..., 1]


def linear(
    x: np.ndarray,
    w: Q4Weights,
    threads: int = 1,
    isa: str | None = None,
    out: np.ndarray | None = None,
    blocks: np.ndarray | None = None,
):
    """y = x W^T for float32 x [m, k] (C-contiguous); `isa` forces a path (None: the fastest).
    With `blocks` (16-row weight blocks, each listed once) only their columns of y are written,
    bit for bit what the whole product writes there; the other columns of `out` keep what they held."""
    out = product_output(x, w.k, w.n, out)
    m = x.shape[0]
    code = lib.Q4_ISA_AUTO if isa is None else ISAS[isa]
    index = None if blocks is None else np.ascontiguousarray(blocks, dtype=np.int64)
    linear_ptr(m, w, w.codes.ctypes.data, w.scales.ctypes.data, x.ctypes.data, out.ctypes.data, threads, code, index)
    return out


def linear_ptr(
    m: int,
    w: Q4Weights,
    codes: int,
    scales: int,
    x: int,
    y: int,
    threads: int,
    isa: int = lib.Q4_ISA_AUTO,
    blocks: np.ndarray | None = None,
) -> None:
    """`linear` on raw addresses (a torch tensor's `data_ptr()`), for a caller that holds w's codes
    and scales and C-contiguous float32 buffers x [m, k] and y [m, n] at those addresses; `blocks`
    a C-contiguous int64 array or None."""
    args = (m, w.n, w.k, w.group, ffi.cast("uint8_t *", codes), ffi.cast("uint16_t *", scales))
    tail = (ffi.cast("float *", x), ffi.cast("float *", y), threads, isa)
    if blocks is None:
        name, status = "q4_linear", lib.q4_linear(*args, *tail)
    else:
        index = ffi.cast("int64_t *", blocks.ctypes.data)
        name, status = "q4_linear_blocks", lib.q4_linear_blocks(*args, index, len(blocks), *tail)
    check(name, status)


def quantize_activations(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row int8 codes and scales as q4.c computes them (round half to even)."""
    x = np.asarray(x, dtype=np.float32)
    amax = np.abs(x).max(axis=1)
    inv = np.where(amax > 0, np.float32(127.0) / np.where(amax > 0, amax, 1), 0).astype(np.float32)
    a = np.clip(np.rint(x * inv[:, None]), -127, 127).astype(np.int64)
    return a, (amax / np.float32(127.0)).astype(np.float32)


def reference(x: np.ndarray, w: Q4Weights) -> np.ndarray:
    """The quantity `linear` computes, by numpy in float64 (exact integer sums, then scaled)."""
    a, sa = quantize_activations(x)
    q = unpack_codes(w).astype(np.int64)
    scale, zero = unpack_scales(w)
    groups = w.k // w.group
    dots = np.einsum("mgj,ngj->mng", a.reshape(-1, groups, w.group), q.reshape(w.n, groups, w.group))
    sums = a.reshape(-1, groups, w.group).sum(-1)  # [m, g]
    total = (dots * scale[None].astype(np.float64)).sum(-1) + sums.astype(np.float64) @ zero.T.astype(np.float64)
    return total * sa[:, None].astype(np.float64)
