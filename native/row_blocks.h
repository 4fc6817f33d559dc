/* What the 4-bit and 8-bit linear kernels (q4.c, q8.c) share: output rows in blocks of 16, up to
 * CHUNK input rows served by one pass over a block's codes, ROW_TILE input rows whose activations
 * stay in cache while every block passes, the prefetch distance, and the dispatch that makes a
 * pass's row count a constant so its accumulators become registers, and the instruction-set paths
 * (which are compiled, what each may use, and a path's pass), which the packers use too.
 * Not part of the cffi interface. */
#ifndef SPECMEMO_ROW_BLOCKS_H
#define SPECMEMO_ROW_BLOCKS_H
#include "q4.h"

#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#define ROW_BLOCKS_X86 1 /* the AVX-512 VNNI and AVX2 paths are compiled */
#include <immintrin.h>
/* What each path may use: what q4_has_isa checks the CPU for. */
#define TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vnni,fma,f16c")))
#define TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#else
#define ROW_BLOCKS_X86 0
#endif

/* A bfloat16 bit pattern as the float32 it is. */
static inline float bf16_to_float(uint16_t bits) {
    uint32_t u = (uint32_t)bits << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Weight `at` as float32, from float32 (w32) or bfloat16 bit patterns (wbf16): a packer's input. */
static inline float load_weight(const float *w32, const uint16_t *wbf16, int64_t at) {
    return w32 ? w32[at] : bf16_to_float(wbf16[at]);
}

/* The packers' path for `isa` (Q4_ISA_AUTO or one): Q4_OK with *avx2 set when they may take their
 * AVX2 one (on both x86 paths), else the status to answer. */
static inline int pack_path(int isa, int *avx2) {
    if (isa < Q4_ISA_AUTO || isa > Q4_ISA_AVX512VNNI)
        return Q4_EINVAL;
    if (isa != Q4_ISA_AUTO && !q4_has_isa(isa))
        return Q4_ENOISA;
    *avx2 = ROW_BLOCKS_X86 && (isa == Q4_ISA_AUTO ? q4_best_isa() : isa) != Q4_ISA_SCALAR;
    return Q4_OK;
}

#if ROW_BLOCKS_X86
/* 8 consecutive weights as float32, from float32 (w32) or bfloat16 bit patterns (wbf16). */
TARGET_AVX2 static inline __m256 load8_weights(const float *w32, const uint16_t *wbf16, int64_t at) {
    if (w32)
        return _mm256_loadu_ps(w32 + at);
    __m128i bits = _mm_loadu_si128((const __m128i *)(wbf16 + at));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(bits), 16));
}
#endif

/* A kernel's pass over one block for an instruction-set path (q4.h's Q4_ISA_*, AUTO resolved):
 * each kernel names its three. */
#if ROW_BLOCKS_X86
#define BLOCK_FOR_ISA(isa, avx512, avx2, scalar) \
    ((isa) == Q4_ISA_AVX512VNNI ? (avx512) : (isa) == Q4_ISA_AVX2 ? (avx2) : (scalar))
#else
#define BLOCK_FOR_ISA(isa, avx512, avx2, scalar) ((void)(isa), (scalar))
#endif

#define BLOCK_ROWS 16
#define CHUNK 9      /* input rows per pass over a block's codes (accumulators stay in registers):
                        a verification of up to 8 drafted tokens is one pass */
/* Bytes of codes ahead of the loads that each pass prefetches (q4 also a quarter of that in
 * scales). The hardware prefetcher alone runs too few lines ahead once a line takes several
 * rows' products: without this, M = 5 took 2.3x the time of M = 1 on a 2-core EPYC streaming
 * 275 MB of q4 codes; with it, 1.1-1.2x. */
#define PREFETCH_BYTES 2048
#define ROW_TILE 32  /* input rows whose activations stay in cache while every block passes */

/* Four activation bytes as one int32, to broadcast. */
static inline int32_t load4(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* rows_fn(j, b, row, R) for R = rows in 1..CHUNK, R a constant at each call. */
#define CALL_WITH_CONSTANT_ROWS(rows_fn, j, b, row, rows) \
    switch (rows) {                                       \
    case 9: rows_fn(j, b, row, 9); break;                 \
    case 8: rows_fn(j, b, row, 8); break;                 \
    case 7: rows_fn(j, b, row, 7); break;                 \
    case 6: rows_fn(j, b, row, 6); break;                 \
    case 5: rows_fn(j, b, row, 5); break;                 \
    case 4: rows_fn(j, b, row, 4); break;                 \
    case 3: rows_fn(j, b, row, 3); break;                 \
    case 2: rows_fn(j, b, row, 2); break;                 \
    default: rows_fn(j, b, row, 1); break;                \
    }

/* rows_fn(j, b, row, R) two rows at a time (R = 2, then 1 for an odd last row): the AVX2 paths,
 * whose 16 registers hold two rows' accumulators. */
#define CALL_IN_PAIRS_OF_ROWS(rows_fn, j, b, row, rows)   \
    do {                                                  \
        for (; (rows) >= 2; (rows) -= 2, (row) += 2)      \
            rows_fn(j, b, row, 2);                        \
        if ((rows) == 1)                                  \
            rows_fn(j, b, row, 1);                        \
    } while (0)

#endif
