"""Moving a vector into a plan's order and back (what every solve and matvec pays on top of the
products): numpy's fancy indexing against the C gather/scatter (`native/permute.c`) on 1 and 2
threads, on the RCM order of the scrambled 4M-row convection grid.

    .venv/bin/python bench/permute.py [--reps 20]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from spmv import median_seconds  # noqa: E402

from specmemo.actors.engine.cpu import cpu_features  # noqa: E402
from specmemo.native import matrices  # noqa: E402
from specmemo.native.plan import reordered_lower  # noqa: E402
from specmemo.native.spmv import permuted  # noqa: E402


def scatter_numpy(perm: np.ndarray, xp: np.ndarray) -> np.ndarray:
    """What Plan.unpermute did before the C scatter."""
    out = np.empty_like(xp)
    out[perm] = xp
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--side", type=int, default=2000, help="the grid's side (2000: n = 4M)")
    args = p.parse_args(argv)
    a = matrices.scramble(matrices.convection_2d(args.side, args.side), 1)
    perm, _ = reordered_lower(a)
    x = np.random.default_rng(0).standard_normal(perm.shape[0])
    xp = x[perm]
    fns = {
        ("gather", "numpy"): lambda: x[perm],
        ("scatter", "numpy"): lambda: scatter_numpy(perm, xp),
    }
    for t in (1, 2):
        fns[("gather", f"C, {t} thread(s)")] = lambda t=t: permuted(perm, x, t)
        fns[("scatter", f"C, {t} thread(s)")] = lambda t=t: permuted(perm, xp, t, inverse=True)
    assert np.array_equal(permuted(perm, x, 2), x[perm]) and np.array_equal(permuted(perm, xp, 2, inverse=True), x)
    seconds = median_seconds(fns, args.reps)
    cpu = cpu_features().as_dict()
    flags = ", ".join(cpu["flags"])
    print(f"Command: `python bench/permute.py --reps {args.reps}`; CPU `{cpu['model']}` (flags {flags});")
    print(f"n = {perm.shape[0]:,}, RCM order of the scrambled convection grid; medians of {args.reps}.\n")
    print("| direction | how | ms | x numpy |")
    print("|---|---|---:|---:|")
    for (direction, how), s in seconds.items():
        print(f"| {direction} | {how} | {1e3 * s:.1f} | {seconds[(direction, 'numpy')] / s:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
