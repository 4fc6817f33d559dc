"""The C kernels behind typed Python objects.

`CsrMatrix`, `HalfMatrix`, `BandSplit` and `Colouring` own the arrays a C struct points into
(so the pointers stay valid while the object lives) and the struct itself. The functions check
every vector handed to C (validate.check_buffer) and turn a failure status into NativeError.
"""

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._pars3 import ffi, lib
from .errors import InvalidOperand, NativeError
from .validate import MAX_INDEX, check_buffer, check_distinct, check_scalar, check_threads

VERSION = int(lib.PARS3_VERSION)


def _ptr(ctype: str, arr: np.ndarray):
    return ffi.from_buffer(ctype + "[]", arr)


def _status(code: int, kernel: str) -> None:
    if code != lib.PARS3_OK:
        raise NativeError(f"{kernel} returned status {code} for arguments the Python layer accepted")


def max_threads() -> int:
    """What OpenMP would use with no thread count given (OMP_NUM_THREADS or the cores)."""
    return int(lib.pars3_max_threads())


@dataclass(frozen=True, eq=False)
class CsrMatrix:
    """A full square matrix in CSR: int64 row offsets, int32 columns, float64 values."""

    n: int
    rowptr: np.ndarray
    col: np.ndarray
    val: np.ndarray
    struct: Any = field(repr=False)  # the cffi struct (and what it points into)

    @classmethod
    def from_scipy(cls, a) -> "CsrMatrix":
        """From a square scipy CSR matrix (already checked by validate.check_matrix)."""
        n = int(a.shape[0])
        assert a.shape == (n, n) and n <= MAX_INDEX
        rowptr = np.ascontiguousarray(a.indptr, dtype=np.int64)
        col = np.ascontiguousarray(a.indices, dtype=np.int32)
        val = np.ascontiguousarray(a.data, dtype=np.float64)
        assert rowptr.shape == (n + 1,) and col.shape == val.shape == (rowptr[-1],)
        s = ffi.new("pars3_csr *")
        keep = [_ptr("int64_t", rowptr), _ptr("int32_t", col), _ptr("double", val)]
        s.n, s.rowptr, s.col, s.val = n, keep[0], keep[1], keep[2]
        return cls(n, rowptr, col, val, (s, keep))


@dataclass(frozen=True, eq=False)
class HalfMatrix:
    """Half storage: the strict lower triangle L in CSR (columns ascending in each row) and,
    for a symmetric matrix, its diagonal. sign -1: A = L - L^T; sign +1: A = L + D + L^T."""

    n: int
    rowptr: np.ndarray
    col: np.ndarray | None  # None in a compact matrix that keeps `off` instead
    val: np.ndarray | None  # None in a compact matrix that keeps `val32` or `vcode` instead
    diag: np.ndarray | None
    sign: int
    struct: Any = field(repr=False)  # the cffi struct (and what it points into)
    off: np.ndarray | None = None  # uint16 i - j per entry: bands narrower than 65536
    val32: np.ndarray | None = None  # float32 values (products and sums stay in double)
    vcode: np.ndarray | None = None  # uint8 per entry: its value is vtab[vcode]
    vtab: np.ndarray | None = None  # the matrix's distinct values (at most 256), float64
    rlen: np.ndarray | None = None  # uint8 entries per row (with `off`, rows of at most 255)
    uniform: np.ndarray | None = None  # uint8 per group of PARS3_GROUP rows: 1 for a uniform group

    @classmethod
    def from_lower(cls, lower, diag: np.ndarray | None, sign: int) -> "HalfMatrix":
        """From a scipy CSR strict lower triangle with sorted columns in each row."""
        n = int(lower.shape[0])
        assert lower.shape == (n, n) and n <= MAX_INDEX and sign in (-1, 1)
        assert sign == 1 or diag is None
        rowptr = np.ascontiguousarray(lower.indptr, dtype=np.int64)
        col = np.ascontiguousarray(lower.indices, dtype=np.int32)
        val = np.ascontiguousarray(lower.data, dtype=np.float64)
        assert rowptr.shape == (n + 1,) and col.shape == val.shape == (rowptr[-1],)
        s = ffi.new("pars3_half *")
        keep = [_ptr("int64_t", rowptr), _ptr("int32_t", col), _ptr("double", val)]
        s.n, s.rowptr, s.col, s.val, s.sign = n, keep[0], keep[1], keep[2], sign
        if diag is not None:
            diag = np.ascontiguousarray(diag, dtype=np.float64)
            assert diag.shape == (n,)
            keep.append(_ptr("double", diag))
            s.diag = keep[-1]
        return cls(n, rowptr, col, val, diag, sign, (s, keep))

    @property
    def nnz(self) -> int:
        return int(self.rowptr[-1])

    def row_of_entries(self) -> np.ndarray:
        return np.repeat(np.arange(self.n, dtype=np.int64), np.diff(self.rowptr))

    def columns(self) -> np.ndarray:
        """The int32 column of every entry (rebuilt from the offsets in a compact matrix)."""
        if self.col is not None:
            return self.col
        return (self.row_of_entries() - self.off).astype(np.int32)

    def values(self) -> np.ndarray:
        """The float64 value of every entry (widened from float32, or looked up in the table of
        distinct values, in a compact matrix)."""
        if self.val is not None:
            return self.val
        if self.vcode is not None:
            assert self.vtab is not None
            return self.vtab[self.vcode]
        assert self.val32 is not None, "a matrix keeps float64 or float32 values, or codes"
        return self.val32.astype(np.float64)

    def compacted(self, offsets: bool = True, float32: bool = False, coded: bool = True) -> "HalfMatrix":
        """The same matrix in the compact forms the band kernel reads (pars3.h): 16-bit row
        offsets instead of 32-bit columns when `offsets` and every entry is within 65535 of its
        row (else columns are kept), and then 1-byte row lengths beside the row offsets when no
        row holds more than 255 entries, with the flags of the uniform row groups the kernel runs
        as vectors (`uniform_groups`); a 1-byte code per entry into a table of the distinct values
        when `coded` and there are at most 256 of them (bit for bit: lossless); else float32
        values when `float32` (the caller accepts their rounding; with `coded` the table then
        holds the rounded values). Only pars3_band_spmv takes a compact matrix."""
        col, val = self.columns(), self.values()
        if float32:
            val = val.astype(np.float32).astype(np.float64)
        distance = self.row_of_entries() - col
        use_off = offsets and (distance.max(initial=0) <= np.iinfo(np.uint16).max)
        off = np.ascontiguousarray(distance, dtype=np.uint16) if use_off else None
        lengths = np.diff(self.rowptr)
        short_rows = use_off and lengths.max(initial=0) <= np.iinfo(np.uint8).max
        rlen = np.ascontiguousarray(lengths, dtype=np.uint8) if short_rows else None
        uniform = uniform_groups(self.rowptr, lengths, off) if rlen is not None and off is not None else None
        vcode, vtab = value_codes(val) if coded else (None, None)
        val32 = np.ascontiguousarray(val, dtype=np.float32) if float32 and vcode is None else None
        s = ffi.new("pars3_half *")
        s.n, s.sign = self.n, self.sign
        s.ntab = 0 if vtab is None else len(vtab)
        keep = []
        for name, ctype, arr in (
            ("rowptr", "int64_t", self.rowptr),
            ("col", "int32_t", col if off is None else None),
            ("off", "uint16_t", off),
            ("val", "double", val if val32 is None and vcode is None else None),
            ("val32", "float", val32),
            ("vcode", "uint8_t", vcode),
            ("vtab", "double", vtab),
            ("rlen", "uint8_t", rlen),
            ("uniform", "uint8_t", uniform),
            ("diag", "double", self.diag),
        ):
            if arr is not None:  # a field left NULL is a form the kernel does not read
                keep.append(_ptr(ctype, arr))
                setattr(s, name, keep[-1])
        return HalfMatrix(
            self.n,
            self.rowptr,
            None if off is not None else col,
            None if val32 is not None or vcode is not None else val,
            self.diag,
            self.sign,
            (s, keep),
            off,
            val32,
            vcode,
            vtab,
            rlen,
            uniform,
        )


GROUP, GROUP_SLOTS = int(lib.PARS3_GROUP), int(lib.PARS3_GROUP_SLOTS)


def uniform_groups(rowptr: np.ndarray, lengths: np.ndarray, off: np.ndarray, chunk: int = 65_536) -> np.ndarray:
    """uint8 flags, one per whole group of GROUP rows: 1 when its rows hold the same number of
    entries (at most GROUP_SLOTS) and entry e of every row lies at the same offset from its row
    (pars3.h). Worked out in chunks of groups, so the temporaries stay small."""
    groups = len(lengths) // GROUP
    flags = np.zeros(groups, dtype=np.uint8)
    for lo in range(0, groups, chunk):
        hi = min(groups, lo + chunk)
        size = lengths[lo * GROUP : hi * GROUP].reshape(hi - lo, GROUP)
        first = size[:, 0]
        same = (size == first[:, None]).all(axis=1) & (first <= GROUP_SLOTS)
        for slots in np.unique(first[same]):
            members = np.flatnonzero(same & (first == slots))
            if slots == 0:
                flags[lo + members] = 1
                continue
            start = rowptr[(lo + members) * GROUP]
            index = start[:, None, None] + (np.arange(GROUP) * slots)[None, :, None] + np.arange(slots)[None, None, :]
            offsets = off[index]
            flags[lo + members[(offsets == offsets[:, :1, :]).all(axis=(1, 2))]] = 1
    return flags


MAX_CODES = 256  # distinct values a 1-byte code can name


def value_codes(val: np.ndarray) -> tuple[np.ndarray, np.ndarray] | tuple[None, None]:
    """(codes, table) with table[codes] equal to `val` bit for bit, when `val` holds at most
    MAX_CODES distinct float64 bit patterns (so -0.0 and 0.0, or two NaNs, stay apart); else
    (None, None). The table comes from a sample first (most matrices that do not qualify fail it
    at once, and a lookup in 256 sorted values is cheaper than sorting every entry)."""
    bits = np.ascontiguousarray(val, dtype=np.float64).view(np.int64)
    if len(bits) == 0:
        return None, None
    table = np.unique(bits[:65_536])
    for _ in range(2):
        if len(table) > MAX_CODES:
            return None, None
        codes = np.minimum(np.searchsorted(table, bits), len(table) - 1)
        if np.array_equal(table[codes], bits):
            break
        table = np.unique(bits)  # a value the sample missed
    else:
        return None, None
    return np.ascontiguousarray(codes, dtype=np.uint8), np.ascontiguousarray(table).view(np.float64)


@dataclass(frozen=True, eq=False)
class BandSplit:
    """The arrays of a pars3_band struct (see pars3.h); built by split.split_band."""

    row_start: np.ndarray  # (T+1,) int64
    win_start: np.ndarray  # (T,) int64
    buf_off: np.ndarray  # (T+1,) int64
    head_off: np.ndarray  # (T+1,) int64
    mid_start: np.ndarray  # (head_off[T],) int64
    inner_start: np.ndarray  # (head_off[T],) int64
    far_off: np.ndarray  # (T+1,) int64
    far_target: np.ndarray  # (far_off[T],) int32
    far_source: np.ndarray  # (far_off[T],) int32
    far_val: np.ndarray  # (far_off[T],) float64
    struct: Any = field(repr=False, default=None)

    def __post_init__(self):
        t = len(self.win_start)
        assert t >= 1 and self.row_start.shape == self.buf_off.shape == self.head_off.shape == (t + 1,)
        assert self.far_off.shape == (t + 1,)
        assert self.mid_start.shape == self.inner_start.shape == (self.head_off[-1],)
        assert self.far_target.shape == self.far_source.shape == self.far_val.shape == (self.far_off[-1],)
        s = ffi.new("pars3_band *")
        keep = [
            _ptr("int64_t", self.row_start),
            _ptr("int64_t", self.win_start),
            _ptr("int64_t", self.buf_off),
            _ptr("int64_t", self.head_off),
            _ptr("int64_t", self.mid_start),
            _ptr("int64_t", self.inner_start),
            _ptr("int64_t", self.far_off),
            _ptr("int32_t", self.far_target),
            _ptr("int32_t", self.far_source),
            _ptr("double", self.far_val),
        ]
        s.nblocks = t
        (
            s.row_start,
            s.win_start,
            s.buf_off,
            s.head_off,
            s.mid_start,
            s.inner_start,
            s.far_off,
            s.far_target,
            s.far_source,
            s.far_val,
        ) = keep
        object.__setattr__(self, "struct", (s, keep))

    @property
    def blocks(self) -> int:
        return len(self.win_start)

    @property
    def work_size(self) -> int:
        return int(self.buf_off[-1])

    @property
    def middle_count(self) -> int:
        return int((self.inner_start - self.mid_start).sum())

    @property
    def outer_count(self) -> int:
        return int(self.far_off[-1])


@dataclass(frozen=True, eq=False)
class Colouring:
    """Rows grouped by colour (no two rows of a colour touch the same y entry)."""

    colour_off: np.ndarray  # (C+1,) int64
    rows: np.ndarray  # (n,) int32
    struct: Any = field(repr=False, default=None)

    def __post_init__(self):
        assert self.colour_off.ndim == 1 and self.rows.shape == (self.colour_off[-1],)
        s = ffi.new("pars3_colouring *")
        keep = [_ptr("int64_t", self.colour_off), _ptr("int32_t", self.rows)]
        s.ncolours, s.colour_off, s.rows = len(self.colour_off) - 1, keep[0], keep[1]
        object.__setattr__(self, "struct", (s, keep))

    @property
    def colours(self) -> int:
        return len(self.colour_off) - 1

    @classmethod
    def of(cls, half: HalfMatrix) -> "Colouring":
        # greedy distance-2 colouring in C needs L^T (rows touching each y entry)
        n = half.n
        order = np.argsort(half.columns(), kind="stable")
        trow = np.repeat(np.arange(n, dtype=np.int32), np.diff(half.rowptr))[order]
        trowptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(half.columns(), minlength=n), out=trowptr[1:])
        colour = np.empty(n, dtype=np.int32)
        mark = np.empty(n, dtype=np.int32)
        _status(
            lib.pars3_colour_rows(
                half.struct[0],
                _ptr("int64_t", trowptr),
                _ptr("int32_t", trow),
                _ptr("int32_t", colour),
                _ptr("int32_t", mark),
            ),
            "pars3_colour_rows",
        )
        rows = np.argsort(colour, kind="stable").astype(np.int32)
        colour_off = np.zeros(int(colour.max(initial=-1)) + 2, dtype=np.int64)
        np.cumsum(np.bincount(colour, minlength=len(colour_off) - 1), out=colour_off[1:])
        return cls(colour_off, rows)


def csr_spmv(a: CsrMatrix, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """y = A x (serial full CSR); returns y."""
    check_buffer(x, a.n, "x")
    check_buffer(y, a.n, "y", writeable=True)
    check_distinct(y, x)
    _status(lib.pars3_csr_spmv(a.struct[0], _ptr("double", x), _ptr("double", y)), "pars3_csr_spmv")
    return y


def _full_storage(a: HalfMatrix, kernel: str) -> None:
    if a.col is None or a.val is None:
        raise InvalidOperand(
            f"{kernel} reads 32-bit columns and float64 values; this matrix is compact "
            "(only band_spmv reads that: build the plan with compact=False)"
        )


def half_spmv(a: HalfMatrix, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """y = (L + D + sign L^T) x, serial; returns y."""
    _full_storage(a, "half_spmv")
    check_buffer(x, a.n, "x")
    check_buffer(y, a.n, "y", writeable=True)
    check_distinct(y, x)
    _status(lib.pars3_half_spmv(a.struct[0], _ptr("double", x), _ptr("double", y)), "pars3_half_spmv")
    return y


def band_spmv(
    a: HalfMatrix,
    split: BandSplit,
    x: np.ndarray,
    y: np.ndarray,
    work: np.ndarray,
    alpha: float = 0.0,
    u: np.ndarray | None = None,
    threads: int | None = None,
    scale: float = 1.0,
) -> np.ndarray:
    """y = alpha u + scale (L + D + sign L^T) x with the 3-part split; u None means no shift
    term. work holds split.work_size doubles; threads defaults to split.blocks. Returns y."""
    check_buffer(x, a.n, "x")
    check_buffer(y, a.n, "y", writeable=True)
    check_buffer(work, split.work_size, "work", writeable=True)
    if int(split.row_start[-1]) != a.n:
        raise InvalidOperand(f"the split covers {int(split.row_start[-1])} rows, the matrix has {a.n}")
    alpha = check_scalar(alpha, "alpha")
    scale = check_scalar(scale, "scale")
    threads = check_threads(split.blocks if threads is None else threads)
    if u is not None:
        check_buffer(u, a.n, "u")
    check_distinct(y, x, u, work)
    check_distinct(work, x, u)
    _status(
        lib.pars3_band_spmv(
            a.struct[0],
            split.struct[0],
            alpha,
            ffi.NULL if u is None else _ptr("double", u),
            scale,
            _ptr("double", x),
            _ptr("double", y),
            _ptr("double", work),
            threads,
        ),
        "pars3_band_spmv",
    )
    return y


def colour_spmv(a: HalfMatrix, colouring: Colouring, x: np.ndarray, y: np.ndarray, threads: int) -> np.ndarray:
    """y = (L + D + sign L^T) x colour by colour; returns y."""
    _full_storage(a, "colour_spmv")
    check_buffer(x, a.n, "x")
    check_buffer(y, a.n, "y", writeable=True)
    if int(colouring.colour_off[-1]) != a.n:
        raise InvalidOperand(f"the colouring covers {int(colouring.colour_off[-1])} rows, the matrix has {a.n}")
    threads = check_threads(threads)
    check_distinct(y, x)
    _status(
        lib.pars3_colour_spmv(a.struct[0], colouring.struct[0], _ptr("double", x), _ptr("double", y), threads),
        "pars3_colour_spmv",
    )
    return y


def dot(x: np.ndarray, y: np.ndarray, threads: int) -> float:
    """x . y over equal-length float64 vectors, on `threads` OpenMP threads."""
    n = x.shape[0] if isinstance(x, np.ndarray) and x.ndim == 1 else -1
    check_buffer(x, n, "x")
    check_buffer(y, n, "y")
    threads = check_threads(threads)
    out = ffi.new("double *")
    _status(lib.pars3_dot(n, _ptr("double", x), _ptr("double", y), threads, out), "pars3_dot")
    return float(out[0])


def permuted(perm: np.ndarray, src: np.ndarray, threads: int, inverse: bool = False) -> np.ndarray:
    """A new vector: src[perm] (the band's order), or with `inverse` the x with x[perm] = src
    (back to the input's order). `perm` must be a permutation of 0..n-1 (a plan's own: C does
    not check its entries)."""
    n = perm.shape[0] if isinstance(perm, np.ndarray) and perm.ndim == 1 else -1
    if not (isinstance(perm, np.ndarray) and perm.dtype == np.int64 and perm.flags.c_contiguous):
        raise InvalidOperand("perm must be a contiguous int64 vector")
    check_buffer(src, n, "src")
    threads = check_threads(threads)
    dst = np.empty(n)
    fn, name = (lib.pars3_scatter, "pars3_scatter") if inverse else (lib.pars3_gather, "pars3_gather")
    _status(fn(n, _ptr("int64_t", perm), _ptr("double", src), _ptr("double", dst), threads), name)
    return dst


def triad(a: np.ndarray, b: np.ndarray, c: np.ndarray, s: float, threads: int) -> np.ndarray:
    """a = b + s c over equal-length float64 vectors; returns a."""
    n = a.shape[0] if isinstance(a, np.ndarray) and a.ndim == 1 else -1
    check_buffer(a, n, "a", writeable=True)
    check_buffer(b, n, "b")
    check_buffer(c, n, "c")
    check_distinct(a, b, c)
    s = check_scalar(s, "s")
    threads = check_threads(threads)
    _status(lib.pars3_triad(n, s, _ptr("double", b), _ptr("double", c), _ptr("double", a), threads), "pars3_triad")
    return a


def mrs_update(
    r1: float,
    r2: float,
    rho: float,
    cg: float,
    vscale: float,
    v: np.ndarray,
    d1: np.ndarray,
    d2: np.ndarray,
    x: np.ndarray,
    threads: int,
) -> None:
    """d2 <- (vscale v - r1 d1 - r2 d2)/rho; x <- x + cg d2 (one pass)."""
    n = x.shape[0] if isinstance(x, np.ndarray) and x.ndim == 1 else -1
    for name, arr in (("v", v), ("d1", d1)):
        check_buffer(arr, n, name)
    for name, arr in (("d2", d2), ("x", x)):
        check_buffer(arr, n, name, writeable=True)
    check_distinct(d2, v, d1, x)
    check_distinct(x, v, d1)
    scalars = ((r1, "r1"), (r2, "r2"), (rho, "rho"), (cg, "cg"), (vscale, "vscale"))
    r1, r2, rho, cg, vscale = (check_scalar(s, name) for s, name in scalars)
    if rho == 0.0:
        raise InvalidOperand("rho must be nonzero")
    threads = check_threads(threads)
    _status(
        lib.pars3_mrs_update(
            n,
            r1,
            r2,
            rho,
            cg,
            vscale,
            _ptr("double", v),
            _ptr("double", d1),
            _ptr("double", d2),
            _ptr("double", x),
            threads,
        ),
        "pars3_mrs_update",
    )
