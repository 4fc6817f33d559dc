"""specmemo.native: banded skew-symmetric SpMV (PARS3-style, C + OpenMP) and the MRS solver.

Public surface: Plan (check, reorder, split; matvec and shifted products) with its PlanReport,
mrs / solve / solve_file with SolveResult, the errors, VERSION (of the C library) and
max_threads. Test matrices and Matrix Market I/O are in specmemo.native.matrices.
"""

if __name__ != "specmemo.native":  # a second copy of these modules breaks isinstance and except clauses
    raise ImportError(f"import specmemo.native, not {__name__}: these folders install as specmemo.*")

from .errors import InvalidMatrix, InvalidOperand, NativeError, NotSkewSymmetric, NotSymmetric
from .plan import Plan, PlanReport
from .solver import SolveResult, mrs, solve, solve_file
from .spmv import VERSION, max_threads

__all__ = [
    "VERSION",
    "InvalidMatrix",
    "InvalidOperand",
    "NativeError",
    "NotSkewSymmetric",
    "NotSymmetric",
    "Plan",
    "PlanReport",
    "SolveResult",
    "max_threads",
    "mrs",
    "solve",
    "solve_file",
]
