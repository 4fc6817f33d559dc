"""Skew-symmetric test matrices, generated (no downloads), and Matrix Market I/O.

Families (each scrambled by a seeded random symmetric permutation so RCM has work to do):
  convection2d  S = vx (I kron Dx) + vy (Dy kron I) on a k x k grid, D = tridiag(-1/2, 0, 1/2)
  convection3d  the same on a k x k x k grid
  random        the skew part (A - A^T)/2 of a random sparse matrix
  saddle        [[0, B], [-B^T, 0]] with a random sparse B
  outliers      a random band plus a few long-range entries

CLI: python -m specmemo.native.matrices FAMILY SIZE [--seed S] [--output PATH]
"""

import argparse
import sys

import numpy as np
import scipy.io
import scipy.sparse as sp


def difference(k: int) -> sp.csr_array:
    """D = tridiag(-1/2, 0, 1/2), k x k: the central first difference, skew-symmetric."""
    return sp.diags_array([-0.5 * np.ones(k - 1), 0.5 * np.ones(k - 1)], offsets=[-1, 1], shape=(k, k)).tocsr()


def convection_2d(nx: int, ny: int, vx: float = 1.0, vy: float = 1.0) -> sp.csr_array:
    """S = vx (I_ny kron Dx) + vy (Dy kron I_nx), n = nx*ny, bandwidth nx."""
    s = vx * sp.kron(sp.eye_array(ny), difference(nx)) + vy * sp.kron(difference(ny), sp.eye_array(nx))
    return sp.csr_array(s)


def convection_3d(nx: int, ny: int, nz: int, v: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> sp.csr_array:
    """S = vx (I kron I kron Dx) + vy (I kron Dy kron I) + vz (Dz kron I kron I), n = nx*ny*nz."""
    ix, iy, iz = sp.eye_array(nx), sp.eye_array(ny), sp.eye_array(nz)
    s = (
        v[0] * sp.kron(iz, sp.kron(iy, difference(nx)))
        + v[1] * sp.kron(iz, sp.kron(difference(ny), ix))
        + v[2] * sp.kron(difference(nz), sp.kron(iy, ix))
    )
    return sp.csr_array(s)


def random_skew(n: int, density: float, seed: int) -> sp.csr_array:
    """(A - A^T)/2 for a random sparse A with normal entries."""
    rng = np.random.default_rng(seed)
    a = sp.random_array((n, n), density=density, rng=rng, data_sampler=rng.standard_normal, format="csr")
    return sp.csr_array((a - a.T) / 2)


def saddle(m: int, k: int, density: float, seed: int) -> sp.csr_array:
    """[[0, B], [-B^T, 0]] with B m x k random sparse."""
    rng = np.random.default_rng(seed)
    b = sp.random_array((m, k), density=density, rng=rng, data_sampler=rng.standard_normal, format="csr")
    return sp.csr_array(sp.block_array([[None, b], [-b.T, None]], format="csr"))


def band_with_outliers(n: int, band: int, density: float, outliers: int, seed: int) -> sp.csr_array:
    """Skew part of a random band of half-width `band` plus `outliers` long-range entries."""
    rng = np.random.default_rng(seed)
    per_row = max(1, int(round(density * band))) if band > 0 else 0
    rows = np.repeat(np.arange(n), per_row)
    cols = rows - rng.integers(1, band + 1, size=rows.size) if band > 0 else rows
    keep = cols >= 0
    rows, cols = rows[keep], cols[keep]
    if n > 1 and outliers > 0:
        i = rng.integers(1, n, size=outliers)
        j = rng.integers(0, np.maximum(i, 1))
        rows, cols = np.concatenate([rows, i]), np.concatenate([cols, j])
    vals = rng.standard_normal(rows.size)
    lower = sp.csr_array((vals, (rows, cols)), shape=(n, n))
    lower.sum_duplicates()
    return sp.csr_array(lower - lower.T)


def scramble(a, seed: int) -> sp.csr_array:
    """P A P^T for a random permutation P (skew- or symmetry is kept)."""
    p = np.random.default_rng(seed).permutation(a.shape[0])
    return sp.csr_array(sp.csr_array(a)[p][:, p])


def generate(family: str, size: int, seed: int = 0, scrambled: bool = True) -> sp.csr_array:
    """A matrix of `family` with about `size` rows (exactly, except for the grids: k^2, k^3)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    a = FAMILIES[family](size, seed)
    return scramble(a, seed + 1) if scrambled else a


def _grid2(size, seed):
    k = max(1, int(round(size**0.5)))
    return convection_2d(k, k)


def _grid3(size, seed):
    k = max(1, int(round(size ** (1 / 3))))
    return convection_3d(k, k, k)


def _random(size, seed):
    return random_skew(size, min(1.0, 8.0 / size), seed)


def _saddle(size, seed):
    m = max(1, (2 * size) // 3)
    return saddle(m, max(1, size - m), min(1.0, 4.0 / max(1, size - m)), seed)


def _outliers(size, seed):
    band = max(1, min(size - 1, 20))
    return band_with_outliers(size, band, 0.25, max(1, size // 100), seed)


FAMILIES = {
    "convection2d": _grid2,
    "convection3d": _grid3,
    "random": _random,
    "saddle": _saddle,
    "outliers": _outliers,
}


def write_mtx(path, a, symmetry: str = "skew-symmetric") -> None:
    """Write Matrix Market; "skew-symmetric" stores the strict lower triangle only."""
    scipy.io.mmwrite(path, sp.coo_array(a), symmetry=symmetry)


def read_mtx(source) -> sp.csr_array:
    """Read Matrix Market from a path or a binary file object such as io.BytesIO (a
    skew-symmetric file expands to the full matrix)."""
    return sp.csr_array(scipy.io.mmread(source))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m specmemo.native.matrices", description=__doc__.split("\n")[0])
    parser.add_argument("family", choices=sorted(FAMILIES))
    parser.add_argument("size", type=int, help="about this many rows")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", "-o", default=None, help="the .mtx path (default FAMILY-SIZE.mtx)")
    args = parser.parse_args(argv)
    a = generate(args.family, args.size, args.seed)
    path = args.output or f"{args.family}-{args.size}.mtx"
    write_mtx(path, a)
    print(f"wrote {path}: n={a.shape[0]} nnz={a.nnz}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
