/* decode_step: a few new tokens of one sequence through a stack of Llama/Qwen2-style decoder
 * layers whose linears are q4 (q4.h), in one call: a draft's hot path. In torch a layer is ~25 small tensor operations,
 * and on a CPU their overhead costs about what the layer's 4-bit products cost.
 *
 * Per layer, for the hidden state h of new token r (r < m) at position p = length + r:
 *   x = rmsnorm(h, norm1);  [q k v] = qkv(x) + bias;  q, k = rope(q, k, cos_r, sin_r)  (rotate-half)
 *   keys[g][p] = k_g, values[g][p] = v_g  (the layer's cache, [kv_heads][capacity][dim])
 *   o_h = softmax_t(scaling <q_h, keys[g(h)][t]>) . values[g(h)][t],  t <= p  (causal), or t in the
 *         slots the row is given (a token-tree node: the prefix and its ancestors, in slot order)
 *   h += o(o_1..o_heads) + bias
 *   x = rmsnorm(h, norm2);  [a b] = gate_up(x) + bias;  h += down(silu(a) * b) + bias
 *
 * float32 throughout, as the torch path computes it (not bit for bit: a draft's numbers only
 * decide which tokens it proposes; the target verifies every one). The caller makes room in
 * every cache layer for positions length .. length + m - 1 first, and counts them in afterwards.
 */
#ifndef DECODE_STEP_H
#define DECODE_STEP_H
#include <stdint.h>

#define DECODE_STEP_OK 0
#define DECODE_STEP_EINVAL (-1)  /* a null pointer, a bad size, no room in a cache layer */
#define DECODE_STEP_ENOMEM (-2)

/* A q4 linear: y[n] = W x[k] (+ bias), W packed as q4.h lays it out. bias may be NULL. */
typedef struct {
    int64_t n;
    int64_t k;
    int64_t group;
    const uint8_t *codes;
    const uint16_t *scales;
    const float *bias;
} decode_linear;

typedef struct {
    const float *norm1;          /* [hidden] */
    const float *norm2;          /* [hidden] */
    float eps1;
    float eps2;
    decode_linear qkv;           /* n = (heads + 2 kv_heads) dim: q, then k, then v */
    decode_linear o;             /* n = hidden, k = heads dim */
    decode_linear gate_up;       /* n = 2 intermediate: gate, then up */
    decode_linear down;          /* n = hidden, k = intermediate */
    float *keys;                 /* [kv_heads][capacity][dim] */
    float *values;
    int64_t capacity;
} decode_layer;

typedef struct {
    int64_t layers;
    int64_t hidden;
    int64_t heads;
    int64_t kv_heads;
    int64_t dim;
    int64_t intermediate;
    float scaling;
    decode_layer *layer;         /* [layers] */
} decode_model;

#define DECODE_STEP_MAX_ROWS 16

/* h [m][hidden] in and out; cos and sin [m][dim] of the new tokens' positions (length .. length + m - 1
 * for a sequence; a tree node's depth otherwise). New token r is written at cache slot length + r. With
 * counts NULL row r sees slots 0 .. length + r; otherwise it sees what counts, starts and slots say,
 * as rows_attention.h takes them (a tree node: the prefix and its ancestors), every slot below length + m. */
int decode_step(const decode_model *model, int64_t m, int64_t length, const float *cos, const float *sin,
                float *h, const int64_t *counts, const int64_t *starts, const int64_t *slots, int threads,
                int isa);

#endif
