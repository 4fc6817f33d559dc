"""cffi build of the pars3 kernels (out-of-line API mode), run by `pip install` through setup.py.

The cdef mirrors pars3.h. OpenMP is required: the build compiles a tiny OpenMP program
first and stops with a message saying what is missing if that fails.
"""

import os
import shutil
import subprocess
import sysconfig
import tempfile

from cffi import FFI

HERE = os.path.relpath(os.path.dirname(os.path.abspath(__file__)))
SOURCES = sorted(
    os.path.join(HERE, name) for name in os.listdir(HERE) if name.endswith(".c") and not name.startswith("_")
)
COMPILE_ARGS = ["-O3", "-std=c11", "-fopenmp"]
LINK_ARGS = ["-fopenmp"]

CDEF = """
#define PARS3_VERSION ...
#define PARS3_OK ...
#define PARS3_EINVAL ...

typedef struct {
    int64_t n;
    const int64_t *rowptr;
    const int32_t *col;
    const double *val;
} pars3_csr;

typedef struct {
    int64_t n;
    const int64_t *rowptr;
    const int32_t *col;
    const double *val;
    const double *diag;
    int32_t sign;
    const uint16_t *off;
    const float *val32;
} pars3_half;

typedef struct {
    int32_t nblocks;
    const int64_t *row_start;
    const int64_t *win_start;
    const int64_t *buf_off;
    const int64_t *head_off;
    const int64_t *mid_start;
    const int64_t *inner_start;
    const int64_t *far_off;
    const int32_t *far_target;
    const int32_t *far_source;
    const double *far_val;
} pars3_band;

typedef struct {
    int32_t ncolours;
    const int64_t *colour_off;
    const int32_t *rows;
} pars3_colouring;

int pars3_csr_spmv(const pars3_csr *A, const double *x, double *y);
int pars3_half_spmv(const pars3_half *A, const double *x, double *y);
int pars3_band_spmv(const pars3_half *A, const pars3_band *P, double alpha, const double *u,
                    const double *x, double *y, double *work, int32_t threads);
int pars3_colour_rows(const pars3_half *A, const int64_t *trowptr, const int32_t *tcol,
                      int32_t *colour, int32_t *mark);
int pars3_colour_spmv(const pars3_half *A, const pars3_colouring *C, const double *x, double *y,
                      int32_t threads);
int pars3_triad(int64_t n, double s, const double *b, const double *c, double *a, int32_t threads);
int pars3_dot(int64_t n, const double *x, const double *y, int32_t threads, double *out);
int pars3_mrs_update(int64_t n, double r1, double r2, double rho, double cg, double beta,
                     const double *v, const double *w, const double *d1, double *d2, double *x,
                     double *vnext, int32_t threads);
int pars3_max_threads(void);
"""

OPENMP_PROBE = """
#include <omp.h>
int main(void) { int n = 0;
#pragma omp parallel reduction(+:n)
n += 1;
return n == omp_get_max_threads() ? 0 : 1; }
"""


def require_openmp() -> None:
    """Compile, link and run a tiny OpenMP program; raise with a clear message if it fails."""
    cc = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()
    if shutil.which(cc[0]) is None:
        raise RuntimeError(f"specmemo.native needs a C compiler; {cc[0]!r} was not found (set CC)")
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        exe = os.path.join(tmp, "probe")
        with open(src, "w") as f:
            f.write(OPENMP_PROBE)
        proc = subprocess.run(cc + ["-fopenmp", src, "-o", exe], capture_output=True, text=True)
        if proc.returncode != 0 or subprocess.run([exe]).returncode != 0:
            raise RuntimeError(
                "specmemo.native needs OpenMP: compiling a test program with "
                f"`{' '.join(cc)} -fopenmp` failed. Install a compiler with OpenMP "
                "(gcc with libgomp, or clang with libomp) or set CC to one.\n" + proc.stderr
            )


ffi = FFI()
ffi.cdef(CDEF)
ffi.set_source(
    "specmemo.native._pars3",
    '#include "pars3.h"',
    sources=SOURCES,
    include_dirs=[HERE],
    extra_compile_args=COMPILE_ARGS,
    extra_link_args=LINK_ARGS,
)

if __name__ in ("__main__", "__cffi__"):
    require_openmp()

if __name__ == "__main__":
    ffi.compile(verbose=True)
