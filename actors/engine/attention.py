"""Row-wise attention: each query row computed alone, over exactly the keys it may see.

Speculative verification is exact only if a forward of M new tokens computes, for every row,
what M one-token forwards compute. Fused attention kernels (sdpa) do not promise that: the
blocking of their reductions depends on M and on the masked key length, so rows differ in the
last bits and greedy decoding can flip at near-ties. This attention function computes query row
j of batch row b as a one-token decode would:

    n = keys row j may see (a prefix: the mask's allowed slots, or Lk − M + j + 1 when causal)
    o_bj = softmax(q_bj · K_b[:n]ᵀ · scale) · V_b[:n]           (per KV-head group, GQA)

so prefill, verification and plain decoding all give bit-identical rows. A tree node's row
sees the prefix and its ancestors, gathered in slot order: what a one-token decode of its path sees.
In float32 on the CPU (the int8 and int4 precisions) every case runs in
`specmemo.native.rows_attention`, one call a layer, with the same per-row guarantee (so tree,
batch, chain and one-token rows all agree); other dtypes and devices take the loop below.
Together with per-token int8 linears (`quantized.Int8Linear`, exact integer accumulation) the target's greedy output is
the same whatever M its forwards use. The cost is one small matmul pair per row per layer,
which is negligible for M ≤ γ_max + 1 and modest for prefill.

Registered with transformers as ``"specmemo_rowwise"`` (masks built like sdpa's: boolean, or
None when purely causal). `use_rowwise_attention(model)` switches a loaded model to it.
"""

from __future__ import annotations

import torch

from specmemo.native import rows_attention

NAME = "specmemo_rowwise"


def rowwise_attention(
    module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None, **kwargs
):
    # query [B, H, M, d]; key, value [B, kvH, Lk, d]; answers ([B, M, H, d], None)
    batch, heads, rows, dim = query.shape
    kv_heads, keys = key.shape[1], key.shape[2]
    assert heads % kv_heads == 0 and value.shape[:3] == key.shape[:3]
    group = heads // kv_heads
    scale = dim**-0.5 if scaling is None else scaling
    if _native(query, key, value):
        return _native_attention(query, key, value, _native_visibility(attention_mask, batch, rows, keys), scale), None
    visible = _visible_keys(attention_mask, batch, rows, keys)
    out = query.new_empty((batch, rows, heads, value.shape[-1]))
    for b in range(batch):
        for j in range(rows):
            seen = visible[b][j]
            k, v = (
                (key[b, :, :seen], value[b, :, :seen])
                if isinstance(seen, int)
                else (key[b].index_select(1, seen), value[b].index_select(1, seen))
            )
            q = query[b, :, j].reshape(kv_heads, group, dim)  # head h uses kv head h // group
            scores = torch.matmul(q, k.transpose(1, 2)) * scale  # [kvH, G, n]
            probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype)
            out[b, j] = torch.matmul(probs, v).reshape(heads, -1)
    return out, None


def _native(query, key, value) -> bool:
    # float32 on the CPU, keys and values rows of d floats (a cache layer's view, or a batch's copy)
    if not (query.dtype == key.dtype == value.dtype == torch.float32) or query.device.type != "cpu":
        return False
    d = key.shape[-1]
    return key.stride() == value.stride() and key.stride(-1) == 1 and key.stride(-2) == d and value.shape[-1] == d


# (mask, (batch, rows, keys), its visibility) of the last call: every layer of a forward shares one mask
_LAST: tuple = (None, None, None)


def _native_visibility(mask, batch: int, rows: int, keys: int) -> tuple:
    # rows_attention's (counts, starts, slots) of `mask`, computed once for the layers of a forward
    # (the same mask object with the same sizes; no mask: the sizes decide alone)
    global _LAST
    last_mask, sizes, visibility = _LAST
    if last_mask is mask and sizes == (batch, rows, keys):
        return visibility
    visible = _visible_keys(mask, batch, rows, keys)
    visibility = rows_attention.visibility([[n if isinstance(n, int) else n.numpy() for n in row] for row in visible])
    _LAST = (mask, (batch, rows, keys), visibility)
    return visibility


def _native_attention(query, key, value, visibility: tuple, scale: float) -> torch.Tensor:
    # native/rows_attention.c: each (row, head) alone, as the loop below, in one call a layer
    batch, heads, rows, dim = query.shape
    q = query.transpose(1, 2).contiguous()  # [B, M, H, d]
    out = torch.empty_like(q)
    counts, starts, slots = visibility
    # a dimension of size 1 may carry any stride: it is never stepped over
    head_stride = key.stride(1) if key.shape[1] > 1 else key.shape[2] * dim
    batch_stride = key.stride(0) if batch > 1 else 0
    rows_attention.attend_ptr(
        (batch, rows, heads, key.shape[1], dim, key.shape[2]),
        (head_stride, batch_stride),
        q.data_ptr(),
        key.data_ptr(),
        value.data_ptr(),
        counts.ctypes.data,
        None if starts is None else starts.ctypes.data,
        None if slots is None else slots.ctypes.data,
        float(scale),
        out.data_ptr(),
        torch.get_num_threads(),
    )
    return out


def _visible_keys(mask, batch: int, rows: int, keys: int) -> list[list]:
    # per query row: how many leading key slots it sees (an int) when its allowed slots form a
    # prefix, else the indices of its allowed slots (a tree node sees the prefix and its ancestors,
    # in slot order, which is the order a one-token decode of its path would see them in)
    if mask is None:
        return [[keys - rows + j + 1 for j in range(rows)]] * batch
    allowed = mask if mask.dtype == torch.bool else mask == 0
    allowed = allowed[:, 0] if allowed.dim() == 4 else allowed
    allowed = allowed.expand(batch, rows, allowed.shape[-1])[..., :keys]
    counts = allowed.sum(-1)
    prefix = torch.cumprod(allowed.to(torch.int8), dim=-1).sum(-1) == counts
    out = counts.tolist()
    if not bool(prefix.all()):
        for b, j in (~prefix).nonzero().tolist():
            out[b][j] = allowed[b, j].nonzero().view(-1)
    return out


def register() -> str:
    """Register the attention (and sdpa's mask builder) under `NAME` with transformers; idempotent."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(NAME, rowwise_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
    return NAME


def use_rowwise_attention(module) -> None:
    """Make `module` (a model, or a part of one such as a decoder layer) attend row by row."""
    register()
    if hasattr(module, "set_attn_implementation"):
        module.set_attn_implementation(NAME)
        return
    for part in module.modules():  # attention layers read their config's implementation
        config = getattr(part, "config", None)
        if config is not None and hasattr(config, "_attn_implementation"):
            config._attn_implementation = NAME
