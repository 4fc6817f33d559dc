"""Checks that run before any C call: matrices, vectors, scalars and thread counts.

Everything the C kernels index with is checked here, so a bad argument raises a typed error
(errors.py) instead of reaching C, where it could read or write out of bounds.
"""

import numbers

import numpy as np
import scipy.sparse as sp

from .errors import InvalidMatrix, InvalidOperand, NotSkewSymmetric, NotSymmetric

MAX_INDEX = 2**31 - 1  # column indices are int32
MAX_NNZ = 2**31 - 1  # refused past this many stored nonzeros (full matrix)
MAX_THREADS = 256
KINDS = ("skew", "symmetric")


def check_matrix(matrix, kind: str = "skew", tol: float = 1e-12) -> sp.csr_array:
    """Return `matrix` as a canonical float64 CSR array after checking it.

    Refuses (InvalidMatrix) anything that is not a 2-D square real matrix with at least one
    row, finite entries, at most MAX_INDEX rows and MAX_NNZ nonzeros; then NotSkewSymmetric
    (kind "skew": |A + A^T| > tol * max|A| somewhere, the diagonal included) or NotSymmetric
    (kind "symmetric": |A - A^T| > tol * max|A|), naming the worst entries.
    """
    if kind not in KINDS:
        raise InvalidOperand(f"kind must be one of {KINDS}, got {kind!r}")
    if not (isinstance(tol, numbers.Real) and np.isfinite(tol) and tol >= 0):
        raise InvalidOperand(f"tol must be a finite number >= 0, got {tol!r}")
    if not (sp.issparse(matrix) or isinstance(matrix, np.ndarray)):
        raise InvalidMatrix(f"expected a scipy sparse matrix or a 2-D numpy array, got {type(matrix).__name__}")
    if len(matrix.shape) != 2 or matrix.shape[0] != matrix.shape[1]:
        raise InvalidMatrix(f"matrix must be square, got shape {tuple(matrix.shape)}")
    n = int(matrix.shape[0])
    if n == 0:
        raise InvalidMatrix("matrix has no rows")
    if n > MAX_INDEX:
        raise InvalidMatrix(f"matrix has {n} rows; at most {MAX_INDEX} are supported (int32 indices)")
    dtype = np.dtype(matrix.dtype)
    if dtype.kind not in "fiu" or dtype.itemsize > 8:
        raise InvalidMatrix(f"matrix dtype {dtype} is not supported (real float64, float32, float16 or integer)")
    nnz = matrix.nnz if sp.issparse(matrix) else int(np.count_nonzero(matrix))
    if nnz > MAX_NNZ:
        raise InvalidMatrix(f"matrix has {nnz} nonzeros; at most {MAX_NNZ} are supported")
    a = sp.csr_array(matrix, dtype=np.float64)  # shares the caller's arrays when it can
    if not a.has_canonical_format or not a.data.all():
        # The clean-ups below work in place: on a copy, so that the caller's matrix (or a
        # read-only array received from the wire) is never written.
        a = a.copy()
        a.sum_duplicates()
        a.eliminate_zeros()
        a.sort_indices()
    if a.nnz > MAX_NNZ:
        raise InvalidMatrix(f"matrix has {a.nnz} nonzeros; at most {MAX_NNZ} are supported")
    bad = ~np.isfinite(a.data)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        i = int(np.searchsorted(a.indptr, k, side="right") - 1)
        raise InvalidMatrix(
            f"matrix has {int(bad.sum())} non-finite entries, the first at ({i}, {int(a.indices[k])}): {a.data[k]}"
        )
    _check_symmetry(a, kind, tol)
    return a


def _check_symmetry(a: sp.csr_array, kind: str, tol: float) -> None:
    # skew: A + A^T must vanish; symmetric: A - A^T must, both relative to max|A|.
    if a.nnz == 0:
        return
    t = a.T.tocsr()
    defect = (a + t if kind == "skew" else a - t).tocoo()
    scale = float(np.abs(a.data).max())
    bad = np.abs(defect.data) > tol * scale
    if not bad.any():
        return
    rows, cols, vals = defect.row[bad], defect.col[bad], np.abs(defect.data[bad])
    keep = rows >= cols  # each pair appears twice; name it once, by its lower entry
    rows, cols, vals = rows[keep], cols[keep], vals[keep]
    order = np.argsort(-vals, kind="stable")[:10]
    offending = [(int(rows[k]), int(cols[k]), float(a[rows[k], cols[k]]), float(a[cols[k], rows[k]])) for k in order]
    count = int(keep.sum())
    i, j, aij, aji = offending[0]
    if kind == "skew":
        raise NotSkewSymmetric(
            f"matrix is not skew-symmetric: {count} entries break A[i,j] = -A[j,i] beyond "
            f"tol={tol:g} * max|A|; worst: A[{i},{j}] = {aij!r}, A[{j},{i}] = {aji!r}",
            offending,
        )
    raise NotSymmetric(
        f"matrix is not symmetric: {count} entries break A[i,j] = A[j,i] beyond "
        f"tol={tol:g} * max|A|; worst: A[{i},{j}] = {aij!r}, A[{j},{i}] = {aji!r}",
        offending,
    )


def as_vector(x, n: int, name: str) -> np.ndarray:
    """Return `x` as a C-contiguous float64 vector of length n (copied only if needed).

    Refuses (InvalidOperand) non-real dtypes, the wrong shape, and NaN or inf."""
    try:
        arr = np.asarray(x)
    except Exception as exc:
        raise InvalidOperand(f"{name} is not an array: {exc}") from None
    if arr.dtype.kind not in "fiu" or arr.dtype.itemsize > 8:
        raise InvalidOperand(f"{name} dtype {arr.dtype} is not supported (real float or integer)")
    if arr.shape != (n,):
        raise InvalidOperand(f"{name} must have shape ({n},), got {arr.shape}")
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    if not np.isfinite(arr).all():
        k = int(np.flatnonzero(~np.isfinite(arr))[0])
        raise InvalidOperand(f"{name} has non-finite entries, the first at {k}: {arr[k]}")
    return arr


def check_buffer(x, n: int, name: str, writeable: bool = False) -> None:
    """Check a buffer handed to C as is: a float64 numpy vector of length n, C-contiguous,
    and writeable when it is an output."""
    if not isinstance(x, np.ndarray):
        raise InvalidOperand(f"{name} must be a numpy array, got {type(x).__name__}")
    if x.dtype != np.float64:
        raise InvalidOperand(f"{name} must have dtype float64, got {x.dtype}")
    if x.shape != (n,):
        raise InvalidOperand(f"{name} must have shape ({n},), got {x.shape}")
    if not x.flags.c_contiguous:
        raise InvalidOperand(f"{name} must be C-contiguous")
    if writeable and not x.flags.writeable:
        raise InvalidOperand(f"{name} must be writeable")


def check_distinct(out: np.ndarray, *inputs: np.ndarray | None) -> None:
    """The output must not overlap an input: the kernels read inputs while writing out."""
    for x in inputs:
        if x is not None and np.may_share_memory(out, x):
            raise InvalidOperand("the output vector must not overlap an input vector")


def check_scalar(value, name: str) -> float:
    """A real, finite scalar, returned as float."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise InvalidOperand(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not np.isfinite(value):
        raise InvalidOperand(f"{name} must be finite, got {value}")
    return value


def check_threads(threads) -> int:
    """A thread count in 1 .. MAX_THREADS."""
    if isinstance(threads, (bool, np.bool_)) or not isinstance(threads, numbers.Integral):
        raise InvalidOperand(f"threads must be an integer, got {type(threads).__name__}")
    count = int(threads)
    if not 1 <= count <= MAX_THREADS:
        raise InvalidOperand(f"threads must be in 1..{MAX_THREADS}, got {count}")
    return count
