/* colour[i] = smallest colour not used by an earlier row that touches a y entry row i touches.
 * Row i touches T(i) = {i} + cols(L[i,:]); rows touching k are k itself and the rows of
 * column k of L (row k of L^T, given as trowptr/tcol). Greedy distance-2 colouring in row
 * order (row i itself is touched only by later rows); mark (n entries) is scratch.
 * Colours are 0 .. max(colour). */
#include "pars3.h"

static void forbid_touchers(int64_t k, int64_t i, const int64_t *trowptr, const int32_t *tcol,
                            const int32_t *colour, int32_t *mark)
{
    if (k < i)
        mark[colour[k]] = (int32_t)i;
    for (int64_t e = trowptr[k]; e < trowptr[k + 1]; e++)
        if (tcol[e] < i)
            mark[colour[tcol[e]]] = (int32_t)i;
}

int pars3_colour_rows(const pars3_half *A, const int64_t *trowptr, const int32_t *tcol,
                      int32_t *colour, int32_t *mark)
{
    if (!A || !trowptr || !colour || !mark || A->n < 0 || !A->rowptr)
        return PARS3_EINVAL;
    const int64_t n = A->n;
    for (int64_t i = 0; i < n; i++)
        mark[i] = -1;
    for (int64_t i = 0; i < n; i++) {
        for (int64_t k = A->rowptr[i]; k < A->rowptr[i + 1]; k++)
            forbid_touchers(A->col[k], i, trowptr, tcol, colour, mark);
        int32_t c = 0;
        while (mark[c] == (int32_t)i)
            c++;
        colour[i] = c;
    }
    return PARS3_OK;
}
