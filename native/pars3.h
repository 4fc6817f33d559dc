/* pars3: banded skew-symmetric (and symmetric) sparse matrix-vector products.
 *
 * Every kernel takes const inputs, writes only into buffers the caller owns,
 * allocates nothing, and returns PARS3_OK or a negative status. Column
 * indices are 32-bit, row offsets 64-bit: up to 2^31-1 rows, and as many
 * nonzeros as memory holds (the Python layer refuses more than 2^31-1).
 */
#ifndef PARS3_H
#define PARS3_H

#include <stdint.h>

#define PARS3_VERSION 4          /* bumped when a struct or signature changes */
#define PARS3_OK 0
#define PARS3_EINVAL (-1)        /* a null pointer, a negative size, threads < 1 */
#define PARS3_GROUP 8            /* rows of a uniform group */
#define PARS3_GROUP_SLOTS 8      /* the most entries a row of a uniform group holds */

/* A full square matrix in CSR. */
typedef struct {
    int64_t n;                   /* rows = columns */
    const int64_t *rowptr;       /* n+1 offsets into col and val */
    const int32_t *col;          /* rowptr[n] column indices */
    const double *val;           /* rowptr[n] values */
} pars3_csr;

/* Half storage: the strict lower triangle L in CSR, plus the diagonal.
 * sign = -1: A = L - L^T (skew-symmetric, diag must be NULL);
 * sign = +1: A = L + D + L^T (symmetric, diag may be NULL for D = 0). */
typedef struct {
    int64_t n;                   /* rows = columns */
    const int64_t *rowptr;       /* n+1 offsets into col and val */
    const int32_t *col;          /* rowptr[n] column indices, ascending in a row, each < its row */
    const double *val;           /* rowptr[n] values of L */
    const double *diag;          /* n values of D, or NULL */
    int32_t sign;                /* -1 or +1, as above */
    /* Compact forms, read by pars3_band_spmv only (the others need col and val):
     * off: when not NULL, entry k of row i lies in column i - off[k] (col may be NULL): 2 bytes
     *      an entry instead of 4, for bands narrower than 65536;
     * val32: when not NULL, the values as floats (val may be NULL): 4 bytes instead of 8;
     *      products and sums stay in double;
     * vcode: when not NULL, entry k's value is vtab[vcode[k]] (val and val32 may be NULL): 1 byte
     *      an entry for a matrix of at most 256 distinct values (a constant-coefficient stencil),
     *      the table a few cache lines that stay in L1;
     * rlen: when not NULL, row i holds rlen[i] entries (rows of at most 255), so a row costs 1
     *      byte of offsets instead of 8 (rowptr is then read only where a row block starts);
     * uniform: when not NULL (with off and rlen), uniform[g] = 1 says rows [G g, G g + G) form a
     *      uniform group (G = PARS3_GROUP): each holds the same number L <= PARS3_GROUP_SLOTS of
     *      entries, and entry e of each lies at the same offset from its row, as in a stencil's
     *      interior; the kernel then runs them as vectors. n / G flags (the last partial group
     *      has none). */
    const uint16_t *off;
    const float *val32;
    const uint8_t *vcode;
    const double *vtab;
    int64_t ntab;                /* values in vtab */
    const uint8_t *rlen;
    const uint8_t *uniform;
} pars3_half;

/* The 3-part split of a banded half-storage matrix over T row blocks.
 * Block t owns rows [row_start[t], row_start[t+1]). An entry (i, j) of row i
 * in block t is
 *   inner:  j >= row_start[t]             -> y[j] written directly;
 *   middle: win_start[t] <= j < row_start[t] -> added into block t's window buffer;
 *   outer:  j < win_start[t]              -> added by the owner of row j after the
 *                                            barrier, from the far lists below.
 * Only the first head_rows[t] rows of a block hold middle or outer entries. */
typedef struct {
    int32_t nblocks;             /* T */
    const int64_t *row_start;    /* T+1 row offsets of the blocks */
    const int64_t *win_start;    /* T first rows of the windows; window t is [win_start[t], row_start[t]) */
    const int64_t *buf_off;      /* T+1 offsets of the window buffers in work; buf_off[T] doubles in all */
    const int64_t *head_off;     /* T+1 offsets of the head rows of each block in mid_start/inner_start */
    const int64_t *mid_start;    /* head_off[T] entry indices: first middle entry of each head row */
    const int64_t *inner_start;  /* head_off[T] entry indices: first inner entry of each head row */
    const int64_t *far_off;      /* T+1 offsets of each owner block's outer entries */
    const int32_t *far_target;   /* far_off[T] columns j (the y entry written), all in the owner block */
    const int32_t *far_source;   /* far_off[T] rows i (the x entry read) */
    const double *far_val;       /* far_off[T] values L[i, j] */
} pars3_band;

/* Rows grouped by colour: no two rows of one colour touch the same y entry. */
typedef struct {
    int32_t ncolours;            /* C */
    const int64_t *colour_off;   /* C+1 offsets into rows */
    const int32_t *rows;         /* n row indices, grouped by colour, ascending within one */
} pars3_colouring;

int pars3_csr_spmv(const pars3_csr *A, const double *x, double *y);
int pars3_half_spmv(const pars3_half *A, const double *x, double *y);
int pars3_band_spmv(const pars3_half *A, const pars3_band *P, double alpha, const double *u,
                    double scale, const double *x, double *y, double *work, int32_t threads);
int pars3_colour_rows(const pars3_half *A, const int64_t *trowptr, const int32_t *tcol,
                      int32_t *colour, int32_t *mark);
int pars3_colour_spmv(const pars3_half *A, const pars3_colouring *C, const double *x, double *y,
                      int32_t threads);
int pars3_triad(int64_t n, double s, const double *b, const double *c, double *a, int32_t threads);
int pars3_dot(int64_t n, const double *x, const double *y, int32_t threads, double *out);
int pars3_mrs_update(int64_t n, double r1, double r2, double rho, double cg, double vscale,
                     const double *v, const double *d1, double *d2, double *x, int32_t threads);
/* dst[k] = src[perm[k]] (gather) and dst[perm[k]] = src[k] (scatter), k < n; perm is a
 * permutation of 0..n-1 (a plan's own, not checked here); dst must not overlap src. */
int pars3_gather(int64_t n, const int64_t *perm, const double *src, double *dst, int32_t threads);
int pars3_scatter(int64_t n, const int64_t *perm, const double *src, double *dst, int32_t threads);
int pars3_max_threads(void);

#endif
