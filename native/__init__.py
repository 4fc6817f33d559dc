"""specmemo.native: banded skew-symmetric SpMV (PARS3-style, C + OpenMP) and the MRS solver.

Public surface: Plan (check, reorder, split; matvec and shifted products), mrs / solve /
solve_file with SolveResult, the errors, VERSION (of the C library) and max_threads.
"""

from .errors import InvalidMatrix, InvalidOperand, KernelError, NotSkewSymmetric, NotSymmetric
from .kernels import VERSION, max_threads
from .plan import Plan, PlanReport

__all__ = [
    "VERSION",
    "InvalidMatrix",
    "InvalidOperand",
    "KernelError",
    "NotSkewSymmetric",
    "NotSymmetric",
    "Plan",
    "PlanReport",
    "max_threads",
]
