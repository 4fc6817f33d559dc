"""The errors specmemo.native raises; each has one meaning.

All but NativeError are ValueError subclasses raised before any C call, so a caller (the
solver actor) can map them to the protocol's BadRequest. NativeError means a C kernel returned
a failure status for arguments the Python layer had accepted: a bug, not bad input.
"""


class InvalidMatrix(ValueError):
    """The matrix is refused: not square, empty, unsupported dtype, NaN or inf, or too large."""


class NotSkewSymmetric(InvalidMatrix):
    """A matrix given as skew-symmetric has entries with A[i,j] != -A[j,i] (beyond tolerance).

    `offending` lists up to ten (i, j, A[i,j], A[j,i]) tuples, worst first.
    """

    def __init__(self, message: str, offending: list[tuple[int, int, float, float]]):
        super().__init__(message)
        self.offending = offending


class NotSymmetric(InvalidMatrix):
    """A matrix given as symmetric has entries with A[i,j] != A[j,i] (beyond tolerance).

    `offending` lists up to ten (i, j, A[i,j], A[j,i]) tuples, worst first.
    """

    def __init__(self, message: str, offending: list[tuple[int, int, float, float]]):
        super().__init__(message)
        self.offending = offending


class InvalidOperand(ValueError):
    """A vector, scalar or thread count passed with a matrix is refused (dtype, shape, layout,
    aliasing, NaN or inf, out of range)."""


class NativeError(RuntimeError):
    """A C kernel returned a failure status for arguments already validated: a bug."""
