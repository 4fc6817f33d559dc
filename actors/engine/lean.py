"""A lean forward of one sequence through a Llama/Qwen2-family decoder, for the engine's hot path.

transformers' module tree spends about as long in Python as a 4-bit 0.5B draft spends in its
matrix products on a CPU: per decoder layer, a dozen module calls, argument-forwarding
decorators, output capturing and kwargs plumbing around ~50 small tensor ops. `forward` computes
every element with the same float operations as the model's own forward, on the same weights (so
its logits are bit-identical: a test holds it over both families and every precision), in fewer
calls: q, k and v from their fused product at once (what the model's q/k/v parts slice from it),
the rotary embedding of q and k in one elementwise pass, RMSNorm as its ops inline:

    h = embed(ids);  cos, sin = rotary(positions);  mask = the model's own causal mask
    per layer:  q, k, v = qkv(n1(h));  h += o(attn(rope(q), rope(k), v, cache))
                h += down(act(gate(n2(h))) * up(n2(h)))
    logits = head(norm(h)[-keep:])

The new tokens may be the nodes of a token tree (`TreeFeed`): then positions are the nodes' depths
and the mask lets each see the prefix and its ancestors, the mask a batched forward would build.

`supports(model)` says whether a model has that shape (Qwen2 and Llama causal LMs without sliding
windows); anything else goes through the model's own forward.

`forward(..., exact=False)` is for a draft, whose numbers only decide how many tokens the target
accepts: the same layer in about half the tensor ops (torch's fused RMSNorm, one fused q/k/v
product and gate/up product per layer, rotary embedding on queries and keys together, sdpa
called directly). Its logits differ from the model's own in the last bits. A few new tokens of a
draft whose linears are all 4-bit (`quantized.Int4Linear`, fused) go further: every decoder
layer runs in one C call (`native/decode_step.c`), so only the embedding, the final norm and the
head stay in torch.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import torch

from specmemo.native import rows_attention

from .kvcache import BlockKVCache, TreeFeed, batch_inputs
from .precision import compute_dtype

_FAMILIES = ("Qwen2ForCausalLM", "LlamaForCausalLM")
NATIVE_ROWS = 8  # new tokens up to which a draft's layers run natively (catch-up, short extends)


def supports(model, exact: bool = True) -> bool:
    """Whether `forward` computes what `model`'s own forward computes (`exact=False`: nearly). Both
    need the model on one device: they read weights without the decoder layers' hooks, which is
    where a model spread with `device_map` moves its activations between devices."""
    if type(model).__name__ not in _FAMILIES or getattr(model, "training", False):
        return False
    if len(set((getattr(model, "hf_device_map", None) or {}).values())) > 1:
        return False
    config = model.config
    if (
        getattr(config, "use_sliding_window", False)
        or getattr(config, "sliding_window", None)
        and any(t != "full_attention" for t in getattr(config, "layer_types", None) or [])
    ):
        return False
    layer = model.model.layers[0]
    return all(hasattr(layer, n) for n in ("self_attn", "mlp", "input_layernorm", "post_attention_layernorm"))


@functools.cache
def _interfaces(module_name: str, attn_implementation: str):
    # the mask builder and attention function of a model class (looked up once)
    from transformers.masking_utils import create_causal_mask
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    module = __import__(module_name, fromlist=["eager_attention_forward"])
    attention = ALL_ATTENTION_FUNCTIONS.get_interface(attn_implementation, module.eager_attention_forward)
    return create_causal_mask, attention


def forward(
    model,
    ids: torch.Tensor,
    cache,
    keep: int,
    exact: bool = True,
    tree: TreeFeed | None = None,
    head: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Logits [1, keep, V] of the last `keep` of `ids` ([1, q]) appended to `cache` (one
    sequence's transformers Cache): what ``model(input_ids=ids, cache=cache, use_cache=True,
    logits_to_keep=keep).logits`` answers, bit for bit (`exact`), or nearly (see the module doc).
    With `tree` the new tokens are tree nodes (`TreeFeed`: their positions and what each sees), as
    the model's forward computes them with `batch_inputs`' position ids and mask for that tree.
    `head` (a draft's, `exact=False` only) maps the normed hidden states to logits in place of the
    model's LM head (a vocabulary subset: `vocabulary.SessionVocabulary`)."""
    if not exact:
        return _fast_forward(model, ids, cache, keep, tree, head)
    assert head is None, "an exact forward computes the whole head"
    create_causal_mask, attention = _interfaces(type(model).__module__, model.config._attn_implementation)
    base = model.model
    h = base.embed_tokens(ids)
    past = cache.get_seq_length()
    q_len = ids.shape[1]
    if tree is None:
        positions = (torch.arange(q_len, device=h.device) + past).unsqueeze(0)
        mask = create_causal_mask(
            config=base.config, inputs_embeds=h, attention_mask=None, cache=cache, position_ids=positions
        )
    else:
        positions, mask = _tree_inputs(model, past, q_len, tree, h.device)
    cos, sin = base.rotary_emb(h, positions)
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)  # [1, q, 1, d]: over the heads
    for i, part in enumerate(_layers(model)):
        residual = h
        x = _norm(part.norm1, part.eps1, h)
        # one fused product for q, k and v (what the model's q/k/v parts slice from it), and the
        # rotary embedding of q and k as one elementwise pass: the same float operations on every
        # element as the model's per-projection calls, so the same bits
        qkv = part.qkv(x).view(1, q_len, part.heads + 2 * part.kv_heads, part.head_dim)
        rotated = qkv[:, :, : part.heads + part.kv_heads]
        half = part.head_dim // 2
        rotated = (rotated * cos) + (torch.cat((-rotated[..., half:], rotated[..., :half]), dim=-1) * sin)
        query = rotated[:, :, : part.heads].transpose(1, 2)
        key, value = cache.update(
            rotated[:, :, part.heads :].transpose(1, 2), qkv[:, :, part.heads + part.kv_heads :].transpose(1, 2), i
        )
        out, _ = attention(
            part.attn, query, key, value, mask, dropout=0.0, scaling=part.scaling, sliding_window=part.window
        )
        h = residual + part.o(out.reshape(1, q_len, -1).contiguous())
        residual = h
        x = _norm(part.norm2, part.eps2, h)
        gate, up = part.gate_up(x).split(part.intermediate, dim=-1)
        h = residual + part.down(part.act(gate) * up)
    h = _norm(base.norm, _eps(base.norm), h)
    return model.lm_head(h[:, -keep:, :])


_RMS_NORMS = ("Qwen2RMSNorm", "LlamaRMSNorm")


def _rms_norm(norm, eps: float, h: torch.Tensor) -> torch.Tensor:
    # transformers' Qwen2RMSNorm/LlamaRMSNorm forward, op for op (so the same bits), without the
    # module call and its hooks
    x = h.to(torch.float32)
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return norm.weight * x.to(h.dtype)


def _norm(norm, eps: float, h: torch.Tensor) -> torch.Tensor:
    # a norm of a class whose forward `_rms_norm` copies runs inline; any other its own module
    return _rms_norm(norm, eps, h) if type(norm).__name__ in _RMS_NORMS else norm(h)


class LayerParts:
    """One decoder layer's parts, looked up once (module attribute lookups cost microseconds)."""

    def __init__(self, layer):
        attn, mlp = layer.self_attn, layer.mlp
        config = attn.config
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim, self.scaling = attn.head_dim, attn.scaling
        self.norm1, self.norm2 = layer.input_layernorm, layer.post_attention_layernorm
        self.eps1, self.eps2 = _eps(self.norm1), _eps(self.norm2)
        self.qkv = getattr(attn, "q_proj_k_proj_v_proj_fused", None) or _Concat(attn.q_proj, attn.k_proj, attn.v_proj)
        self.o = attn.o_proj
        self.gate_up = getattr(mlp, "gate_proj_up_proj_fused", None) or _Concat(mlp.gate_proj, mlp.up_proj)
        self.down, self.act = mlp.down_proj, mlp.act_fn
        self.intermediate = mlp.down_proj.in_features
        self.attn, self.window = attn, getattr(attn, "sliding_window", None)


class _Concat:
    def __init__(self, *linears):
        self.linears = linears

    def __call__(self, x):
        return torch.cat([linear(x) for linear in self.linears], dim=-1)


def _eps(norm) -> float:
    eps = getattr(norm, "variance_epsilon", None) or getattr(norm, "eps", None)
    return 1e-6 if eps is None else float(eps)


def _tree_inputs(model, past: int, q_len: int, tree: TreeFeed, device) -> tuple[torch.Tensor, torch.Tensor]:
    # position ids [1, q] and the 4-D mask of one row's tree feed, as a batched forward builds them
    impl = model.config._attn_implementation
    positions, mask = batch_inputs([past], [q_len], q_len, impl, compute_dtype(model), [tree])
    return positions.to(device), mask.to(device)


def _tree_slots(past: int, tree: TreeFeed) -> tuple:
    # rows_attention's (counts, starts, slots) of each new row: every slot below the tree's base,
    # then the tree slots it sees
    assert tree.visible.shape == (len(tree.positions), past + len(tree.positions) - tree.base)
    prefix = np.arange(tree.base, dtype=np.int64)
    return rows_attention.visibility([[np.concatenate([prefix, tree.base + np.flatnonzero(v)]) for v in tree.visible]])


def _layers(model) -> list[LayerParts]:
    layers = model.__dict__.get("_specmemo_lean_layers")
    if layers is None:
        layers = [LayerParts(layer) for layer in model.model.layers[: model.config.num_hidden_layers]]
        model.__dict__["_specmemo_lean_layers"] = layers
    return layers


def _native_stack(model):
    """The model's decoder layers as one native step (`native.decode_step.DecodeStack`), or None
    when a layer is not all fused 4-bit linears, SiLU and float32 norms on the CPU."""
    if "_specmemo_native_stack" not in model.__dict__:
        model.__dict__["_specmemo_native_stack"] = _build_native_stack(model)
    return model.__dict__["_specmemo_native_stack"]


def _build_native_stack(model):
    return native_stack_for(model.config, _layers(model))


def native_stack_for(config, parts: list[LayerParts]):
    """`parts` (decoder layers as `LayerParts`) as one native step, or None when a layer does not
    qualify (see `_native_stack`)."""
    from specmemo.native.decode_step import DecodeStack, LayerWeights, Shape

    from .quantized import Int4Linear

    if getattr(config, "hidden_act", None) != "silu":
        return None

    def linear(module):
        if not isinstance(module, Int4Linear):
            return None
        bias = None if module.bias is None else module.bias.detach().float().contiguous().numpy()
        return module.weights, bias

    layers = []
    for part in parts:
        qkv, o, gate_up, down = (linear(m) for m in (part.qkv, part.o, part.gate_up, part.down))
        norm1, norm2 = part.norm1.weight, part.norm2.weight
        if qkv is None or o is None or gate_up is None or down is None:
            return None
        if any(w.dtype != torch.float32 or w.device.type != "cpu" for w in (norm1, norm2)):
            return None
        layers.append(
            LayerWeights(norm1.detach().numpy(), norm2.detach().numpy(), part.eps1, part.eps2, qkv, o, gate_up, down)
        )
    first = parts[0]
    shape = Shape(config.hidden_size, first.heads, first.kv_heads, first.head_dim, first.intermediate, first.scaling)
    return DecodeStack(shape, layers)


def _native_forward(model, stack, ids: torch.Tensor, cache, keep: int, tree: TreeFeed | None, head) -> torch.Tensor:
    base = model.model
    q_len, past = ids.shape[1], cache.get_seq_length()
    h = base.embed_tokens(ids).float().contiguous()
    if tree is None:
        positions, visible = (torch.arange(q_len, device=h.device) + past).unsqueeze(0), None
    else:
        positions, visible = (
            torch.from_numpy(np.asarray(tree.positions, dtype=np.int64)).view(1, q_len),
            _tree_slots(past, tree),
        )
    cos, sin = base.rotary_emb(h, positions)
    cos, sin = cos.float().contiguous(), sin.float().contiguous()
    rows = []
    for layer in cache.layers:
        layer.reserve(q_len)
        rows.append((layer.keys.data_ptr(), layer.values.data_ptr(), layer.capacity))
    stack.step(h.data_ptr(), q_len, past, cos.data_ptr(), sin.data_ptr(), rows, torch.get_num_threads(), visible)
    for layer in cache.layers:
        layer.length += q_len
    h = torch.rms_norm(h[:, -keep:, :], (h.shape[-1],), base.norm.weight, _eps(base.norm))
    return (model.lm_head if head is None else head)(h)


def _native_cache(cache, stack) -> bool:
    # a block cache of float32 layers on the CPU, one a decoder layer (a draft sits on one device,
    # see supports(), and a block cache's layers share one dtype: the first layer speaks for all)
    return (
        isinstance(cache, BlockKVCache)
        and len(cache.layers) == stack.layers
        and cache.layers[0].keys.dtype == torch.float32
        and cache.layers[0].keys.device.type == "cpu"
    )


def _fast_forward(model, ids: torch.Tensor, cache, keep: int, tree: TreeFeed | None, head) -> torch.Tensor:
    if ids.shape[1] <= NATIVE_ROWS:
        stack = _native_stack(model)
        if stack is not None and _native_cache(cache, stack):
            return _native_forward(model, stack, ids, cache, keep, tree, head)
    base = model.model
    h = base.embed_tokens(ids)
    q_len, past = ids.shape[1], cache.get_seq_length()
    mask = None
    if tree is not None:
        positions, mask = _tree_inputs(model, past, q_len, tree, h.device)
    else:
        positions = (torch.arange(q_len, device=h.device) + past).unsqueeze(0)
        if q_len > 1 and past > 0:  # row j sees the past and the new tokens up to itself
            mask = torch.ones(q_len, past + q_len, dtype=torch.bool, device=h.device).tril(past)
    cos, sin = base.rotary_emb(h, positions)
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)  # [1, q, 1, d]: over the heads
    hidden = h.shape[-1]
    for i, part in enumerate(_layers(model)):
        x = torch.rms_norm(h, (hidden,), part.norm1.weight, part.eps1)
        qkv = part.qkv(x).view(1, q_len, part.heads + 2 * part.kv_heads, part.head_dim)
        rotated = qkv[:, :, : part.heads + part.kv_heads]
        half = part.head_dim // 2
        rotated = rotated * cos + torch.cat((-rotated[..., half:], rotated[..., :half]), dim=-1) * sin
        query = rotated[:, :, : part.heads].transpose(1, 2)
        key = rotated[:, :, part.heads :].transpose(1, 2)
        value = qkv[:, :, part.heads + part.kv_heads :].transpose(1, 2)
        key, value = cache.update(key, value, i)
        out = torch.nn.functional.scaled_dot_product_attention(
            query,
            key,
            value,
            attn_mask=mask,
            is_causal=mask is None and q_len > 1 and tree is None,
            scale=part.scaling,
            enable_gqa=part.heads != part.kv_heads,
        )
        h = h + part.o(out.transpose(1, 2).reshape(1, q_len, -1))
        x = torch.rms_norm(h, (hidden,), part.norm2.weight, part.eps2)
        gate, up = part.gate_up(x).split(part.intermediate, dim=-1)
        h = h + part.down(part.act(gate) * up)
    h = torch.rms_norm(h, (hidden,), base.norm.weight, _eps(base.norm))
    return (model.lm_head if head is None else head)(h[:, -keep:, :])
