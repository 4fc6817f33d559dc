"""MRS: minimal residual for shifted skew-symmetric systems (alpha I + S) x = b (Idema and Vuik).

Skew Lanczos builds an orthonormal basis with S V_j = V_{j+1} T_j, T_j tridiagonal and
skew; so (alpha I + S) V_j = V_{j+1} (alpha I + T_j), which two Givens rotations per step
reduce to upper triangular form as in MINRES. The residual norm |g| falls monotonically and
is known without forming the residual. Per iteration: one fused product, one dot product and
one fused vector update (mrs_update.c), all in the RCM-permuted space of the plan (b is
permuted in, x out). The Lanczos vectors are kept unnormalized: v_j is stored as w_{j-1}, the
last product's output, with its factor 1/beta_{j-1} passed to the product and the update, which
saves the pass that would write w / beta (a read and a write of n doubles an iteration).
"""

import math
import time
from dataclasses import dataclass, field

import numpy as np

from .errors import InvalidOperand
from .plan import Plan
from .spmv import dot, mrs_update
from .validate import as_vector, check_scalar


@dataclass(frozen=True)
class SolveResult:
    """The outcome of a solve; converged is False when maxiter ran out or the recurrence broke
    down (alpha I + S singular on the Krylov space), and x is then the last iterate."""

    x: np.ndarray = field(repr=False)
    converged: bool
    iterations: int
    residual: float  # true ||b - (alpha I + S) x|| / ||b||, computed at the end
    history: tuple[float, ...] = field(repr=False)  # recurrence estimate |g_j| / ||b||, per iteration
    seconds: float  # wall time of the iteration, without building the plan
    alpha: float
    tol: float

    def summary(self) -> dict:
        """Plain numbers for the wire (no x, no history)."""
        return {
            "converged": self.converged,
            "iterations": self.iterations,
            "residual": self.residual,
            "seconds": self.seconds,
            "alpha": self.alpha,
            "tol": self.tol,
        }


class Rotations:
    """The Givens rotations of MRS's QR of (alpha I + T_j): each step applies the two previous
    rotations to the new column (.., -beta_prev, alpha, beta) and makes the one that zeroes beta."""

    def __init__(self) -> None:
        self.c1, self.s1, self.c2, self.s2 = 1.0, 0.0, 1.0, 0.0

    def step(self, alpha: float, beta_prev: float, beta: float) -> tuple[float, float, float, float, float]:
        """(r1, r2, rho, c, s) of this column; rho == 0 means a breakdown (c, s are then 0)."""
        r2 = -self.s2 * beta_prev  # rotation j-2
        t = -self.c2 * beta_prev
        r1 = self.c1 * t + self.s1 * alpha  # rotation j-1
        t2 = -self.s1 * t + self.c1 * alpha
        rho = math.hypot(t2, beta)  # rotation j zeroes beta
        c, s = (t2 / rho, beta / rho) if rho != 0.0 else (0.0, 0.0)
        return r1, r2, rho, c, s

    def advance(self, c: float, s: float) -> None:
        self.c2, self.s2, self.c1, self.s1 = self.c1, self.s1, c, s


def iterate(
    b: np.ndarray,
    beta0: float,
    alpha: float,
    tol: float,
    maxiter: int,
    x: np.ndarray,
    product,
    norm,
    threads: int,
    vectors: list[np.ndarray],
    own: slice = slice(None),
) -> tuple[bool, list[float]]:
    """MRS's iterations on x (in place), shared by the one-process and the distributed solver.

    Vectors have x's length; `own` is the part of them this process updates (all of them in one
    process; a rank's own rows, after its halo). `product(v, w, scale, a, v_prev)` makes
    w = scale S v + a v_prev on the own rows; `norm(w)` is ||w|| over every process. `vectors`
    are five zeroed vectors of that length to work in (a Workspace's).
    Answers whether it converged and the recurrence's |g_j| / ||b|| per iteration."""
    history: list[float] = []
    if beta0 == 0.0:
        return True, history
    # v_j = scale * v, with v as stored: b at first, then each product's output w_{j-1}, whose
    # norm is beta_{j-1}; so w_j = S v_j + beta_{j-1} v_{j-1} = scale S v + (beta_{j-1} scale_prev) v_prev
    v, v_prev, w, d1, d2 = vectors
    v[own] = b
    scale, scale_prev = 1.0 / beta0, 0.0
    beta_prev, g = 0.0, beta0
    rotations = Rotations()
    for _ in range(maxiter):
        product(v, w, scale, beta_prev * scale_prev, v_prev)
        beta = norm(w)
        r1, r2, rho, c, s = rotations.step(alpha, beta_prev, beta)
        if rho == 0.0:
            break
        # d_j = (v_j - r1 d_{j-1} - r2 d_{j-2}) / rho over d_{j-2}; x += c g d_j
        mrs_update(r1, r2, rho, c * g, scale, v[own], d1[own], d2[own], x[own], threads)
        g = -s * g
        history.append(abs(g) / beta0)
        if abs(g) <= tol * beta0:
            return True, history
        if beta == 0.0:
            break
        d1, d2 = d2, d1
        rotations.advance(c, s)
        v_prev, v, w = v, w, v_prev  # v_{j+1} = w_j / beta_j
        scale_prev, scale = scale, 1.0 / beta
        beta_prev = beta
    return False, history


def mrs(plan: Plan, b, alpha: float, tol: float = 1e-10, maxiter: int | None = None) -> SolveResult:
    """Solve (alpha I + S) x = b to ||r|| <= tol ||b|| with at most maxiter products
    (default 10 n). Raises InvalidOperand for a symmetric plan or bad b, alpha, tol, maxiter."""
    if plan.kind != "skew":
        raise InvalidOperand("MRS solves shifted skew-symmetric systems; this plan is symmetric")
    alpha = check_scalar(alpha, "alpha")
    tol = check_scalar(tol, "tol")
    if tol < 0:
        raise InvalidOperand(f"tol must be >= 0, got {tol}")
    n = plan.n
    maxiter = 10 * n if maxiter is None else maxiter
    if isinstance(maxiter, bool) or not isinstance(maxiter, (int, np.integer)) or maxiter < 0:
        raise InvalidOperand(f"maxiter must be an integer >= 0, got {maxiter!r}")
    b = as_vector(b, n, "b")
    start = time.perf_counter()
    bp = plan.permute(b)
    beta0 = math.sqrt(dot(bp, bp, plan.threads))
    work = plan.work()
    with plan.workspace.zeroed() as (xp, *vectors):
        converged, history = iterate(
            bp,
            beta0,
            alpha,
            tol,
            maxiter,
            xp,
            product=lambda v, w, scale, a, v_prev: plan.apply(v, w, a, v_prev, work, scale=scale),
            norm=lambda w: math.sqrt(dot(w, w, plan.threads)),
            threads=plan.threads,
            vectors=vectors,
        )
        seconds = time.perf_counter() - start
        x = plan.unpermute(xp)
        residual = _residual(plan, alpha, bp, xp, vectors[0]) / beta0 if beta0 > 0 else 0.0
    return SolveResult(x, converged, len(history), residual, tuple(history), seconds, alpha, tol)


def _residual(plan: Plan, alpha: float, bp: np.ndarray, xp: np.ndarray, out: np.ndarray) -> float:
    """||b - (alpha I + S) x|| in the permuted space, the residual made in `out`."""
    r = plan.apply(xp, out, alpha, xp)
    r -= bp
    return math.sqrt(dot(r, r, plan.threads))


def solve(
    matrix, b, alpha: float, tol: float = 1e-10, maxiter: int | None = None, threads: int | None = None
) -> SolveResult:
    """Plan `matrix` (checked skew-symmetric) and solve (alpha I + S) x = b with MRS."""
    return mrs(Plan.build(matrix, "skew", threads), b, alpha, tol, maxiter)


def solve_file(
    path, alpha: float = 1.0, tol: float = 1e-10, maxiter: int | None = None, threads: int | None = None
) -> SolveResult:
    """Solve (alpha I + S) x = b for S read from a Matrix Market file, with b = (alpha I + S) 1
    (consistent even when S is singular; the exact solution is all ones when it is not)."""
    # imported here, not at the top: the package imports this module, and matrices is also run
    # as a script (python -m specmemo.native.matrices), which must find it not yet imported
    from .matrices import read_mtx

    plan = Plan.build(read_mtx(path), "skew", threads)
    b = plan.shifted(check_scalar(alpha, "alpha"), np.ones(plan.n))
    return mrs(plan, b, alpha, tol, maxiter)
