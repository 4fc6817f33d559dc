"""Block KV caches: one contiguous K and V per layer whose capacity is a whole number of blocks.

`BlockKVCache` is a transformers `Cache` (usable as `past_key_values`, also under `generate`)
holding one sequence. New tokens are written in place; attention sees views of the valid
prefix; capacity grows by reallocating to the next block and shrinks by reallocating when a
rollback leaves more than `spare_blocks` whole blocks unused, so the bytes it holds are
exactly `blocks x block_bytes` at every moment (the memory manager's accounting).

`GatherCache` runs one forward over several sessions' caches (batched speculative decoding):
each row writes its own new tokens into its own `BlockKVCache` in place, and attention sees a
transient right-padded copy `[B, kv_heads, max_len, head_dim]`, masked by `batch_mask`.
Per-session storage stays exact and sessions join or leave a batch at no cost.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from .attention import NAME as ROWWISE
from .blocks import blocks_after_rollback, blocks_for, kv_shape  # noqa: F401 (re-exported)
from .precision import compute_dtype, weight_bytes


class BlockLayer(CacheLayerMixin):
    """One layer of one sequence: keys and values `[1, kv_heads, blocks*block_tokens, head_dim]`."""

    is_sliding = False
    is_croppable = True

    def __init__(self, kv_heads: int, head_dim: int, block_tokens: int, dtype, device, spare_blocks: int = 1):
        super().__init__()
        self.block_tokens, self.spare_blocks = block_tokens, spare_blocks
        self.dtype, self.device = dtype, torch.device(device)
        self.keys = torch.empty((1, kv_heads, 0, head_dim), dtype=dtype, device=self.device)
        self.values = torch.empty_like(self.keys)
        self.length = 0
        self.is_initialized = True

    @property
    def capacity(self) -> int:
        return self.keys.shape[-2]

    @property
    def blocks(self) -> int:
        return self.capacity // self.block_tokens

    def held_bytes(self) -> int:
        return self.keys.untyped_storage().nbytes() + self.values.untyped_storage().nbytes()

    def resize(self, blocks: int) -> None:
        """Reallocate to exactly `blocks` blocks, keeping the valid prefix."""
        capacity = blocks * self.block_tokens
        assert capacity >= self.length, (blocks, self.length)
        if capacity == self.capacity:
            return
        shape = (1, self.keys.shape[1], capacity, self.keys.shape[-1])
        keys = torch.empty(shape, dtype=self.dtype, device=self.device)
        values = torch.empty(shape, dtype=self.dtype, device=self.device)
        keys[:, :, : self.length].copy_(self.keys[:, :, : self.length])
        values[:, :, : self.length].copy_(self.values[:, :, : self.length])
        self.keys, self.values = keys, values

    def lazy_initialization(self, key_states, value_states) -> None:
        self.is_initialized = True

    def write(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Append `[1, kv_heads, n, head_dim]` in place, growing to the next block if it does not fit."""
        n = key_states.shape[-2]
        assert key_states.shape[0] == 1 and key_states.shape[1:] == (self.keys.shape[1], n, self.keys.shape[-1])
        self.reserve(n)
        self.keys[:, :, self.length : self.length + n].copy_(key_states)
        self.values[:, :, self.length : self.length + n].copy_(value_states)
        self.length += n

    def reserve(self, n: int) -> None:
        """Make room for `n` more tokens, growing to the next block if they do not fit (a caller
        that writes the slots itself, as the native draft step does, then adds n to `length`)."""
        if self.length + n > self.capacity:
            self.resize(blocks_for(self.length + n, self.block_tokens))

    def update(self, key_states, value_states, *args, **kwargs):
        self.write(key_states, value_states)
        return self.keys[:, :, : self.length], self.values[:, :, : self.length]

    def rollback(self, n: int, blocks: int | None = None) -> None:
        """Forget the last `n` tokens; keep `blocks` blocks (default: the spare-block rule)."""
        assert 0 <= n <= self.length, (n, self.length)
        self.length -= n
        if blocks is None:
            blocks = blocks_after_rollback(self.blocks, self.length, self.block_tokens, self.spare_blocks)
        self.resize(blocks)

    def compact(self, start: int, slots: list[int]) -> None:
        """Keep slots [0, start) and then `slots` (increasing, all >= start), moved down to
        [start, start + len(slots)); forget the rest (capacity unchanged: `rollback` frees)."""
        assert all(start <= a < b for a, b in zip(slots, slots[1:] + [self.length])), (start, slots, self.length)
        if slots != list(range(start, start + len(slots))):
            index = torch.tensor(slots, dtype=torch.long, device=self.device)
            end = start + len(slots)
            self.keys[:, :, start:end] = self.keys.index_select(2, index)
            self.values[:, :, start:end] = self.values.index_select(2, index)
        self.length = start + len(slots)

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError("crop takes a negative count of tokens to remove")
        self.rollback(-tokens_to_remove)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self.length = 0
        self.resize(0)

    def reorder_cache(self, beam_idx) -> None:
        raise NotImplementedError("a BlockLayer holds one sequence")


class BlockKVCache(Cache):
    """The KV cache of one sequence of one model, in blocks of `block_tokens` tokens."""

    def __init__(self, config, block_tokens: int = 16, dtype=torch.float32, device="cpu", spare_blocks: int = 1):
        """`device` is one device for every layer, or a list with each layer's device (the device
        of that layer's attention weights when a model is spread with `device_map`)."""
        n_layers, kv_heads, head_dim = kv_shape(config)
        devices = list(device) if isinstance(device, (list, tuple)) else [device] * n_layers
        assert len(devices) == n_layers, (len(devices), n_layers)
        self.block_tokens = block_tokens
        element = torch.tensor([], dtype=dtype).element_size()
        self.block_bytes = 2 * n_layers * kv_heads * head_dim * element * block_tokens
        layers = [BlockLayer(kv_heads, head_dim, block_tokens, dtype, d, spare_blocks) for d in devices]
        super().__init__(layers=layers)

    @property
    def length(self) -> int:
        return self.layers[0].length

    @property
    def blocks(self) -> int:
        return self.layers[0].blocks

    def held_bytes(self) -> int:
        """Bytes of every K/V storage this cache holds (storage, not views)."""
        return sum(layer.held_bytes() for layer in self.layers)

    def resize(self, blocks: int) -> None:
        for layer in self.layers:
            layer.resize(blocks)

    def rollback(self, n: int, blocks: int | None = None) -> None:
        for layer in self.layers:
            layer.rollback(n, blocks)

    def keep_path(self, start: int, slots: list[int], blocks: int | None = None) -> None:
        """Keep the first `start` tokens and then the tokens at `slots` (an accepted path through a
        tree whose nodes sit past `start`), compacted in place; free the rest down to `blocks`."""
        for layer in self.layers:
            layer.compact(start, slots)
            layer.rollback(0, blocks)


class GatherLayer(CacheLayerMixin):
    """One layer of a batch: writes row b's first `n_new[b]` new tokens into its own cache layer,
    returns all rows right-padded with zeros to the longest (finite, so masked slots add 0·V)."""

    is_sliding = False

    def __init__(self, rows: list[BlockLayer], n_new: list[int]):
        super().__init__()
        self.rows, self.n_new = rows, n_new
        self.is_initialized = True

    def lazy_initialization(self, key_states, value_states) -> None:
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        batch, kv_heads, q, head_dim = key_states.shape
        assert batch == len(self.rows) and max(self.n_new) <= q
        for b, (row, n) in enumerate(zip(self.rows, self.n_new)):
            if n:
                row.write(key_states[b : b + 1, :, :n], value_states[b : b + 1, :, :n])
        if batch == 1:
            row = self.rows[0]
            return row.keys[:, :, : row.length], row.values[:, :, : row.length]
        width = max(row.length for row in self.rows)
        keys = key_states.new_zeros((batch, kv_heads, width, head_dim))
        values = torch.zeros_like(keys)
        for b, row in enumerate(self.rows):
            keys[b, :, : row.length] = row.keys[0, :, : row.length]
            values[b, :, : row.length] = row.values[0, :, : row.length]
        return keys, values

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return max(row.length for row in self.rows) + query_length, 0

    def get_seq_length(self) -> int:
        return max(row.length for row in self.rows)

    def get_max_length(self) -> int:
        return -1


class GatherCache(Cache):
    """A one-forward view over several `BlockKVCache`s; row b takes its first `n_new[b]` inputs."""

    def __init__(self, caches: list[BlockKVCache], n_new: list[int]):
        assert len(caches) == len(n_new) and len({len(c.layers) for c in caches}) == 1
        layers = [GatherLayer([c.layers[i] for c in caches], list(n_new)) for i in range(len(caches[0].layers))]
        super().__init__(layers=layers)


@dataclass(frozen=True)
class TreeFeed:
    """How the n tokens fed to one row attend when they are tree nodes rather than a sequence.

    The row's cache is a sequence up to slot `base`, then tree nodes: slots [base, length) from
    earlier forwards of the same tree, then the n new ones. `visible` bool [n, length + n − base]
    says which of those tree slots each new token sees (its ancestors and itself); every token
    sees all of [0, base). `positions` int [n] are the new tokens' position ids (base − 1 + depth).
    """

    base: int
    visible: np.ndarray
    positions: np.ndarray


def batch_inputs(
    lengths: list[int],
    n_new: list[int],
    q: int,
    attn_implementation: str,
    dtype,
    trees: list[TreeFeed | None] | None = None,
) -> tuple:
    """Position ids `[B, q]` and the 4-D mask `[B, 1, q, K]` for a `GatherCache` forward.

    Row b holds `lengths[b]` tokens before the forward; its query j sits at slot lengths[b]+j
    and may see slots s <= lengths[b]+j, or, when trees[b] is given, the slots below its base and
    the tree slots it marks visible, at the positions it gives. Dummy queries (j >= n_new[b]) see
    slot 0 only, so no softmax row is empty. K = max(lengths[b] + n_new[b]) is the padded width
    of the keys.
    """
    batch = len(lengths)
    width = max(length + n for length, n in zip(lengths, n_new))
    start = torch.tensor(lengths).view(batch, 1)
    positions = start + torch.arange(q).view(1, q)
    slots = torch.arange(width).view(1, 1, width)
    real = torch.arange(q).view(1, q, 1) < torch.tensor(n_new).view(batch, 1, 1)
    allowed = torch.where(real, slots <= positions.view(batch, q, 1), slots == 0)
    for b, tree in enumerate(trees or []):
        if tree is None:
            continue
        n, end = n_new[b], lengths[b] + n_new[b]
        assert tree.visible.shape == (n, end - tree.base) and tree.positions.shape == (n,)
        allowed[b, :n, tree.base : end] = torch.from_numpy(tree.visible)
        allowed[b, :n, end:] = False
        positions[b, :n] = torch.from_numpy(np.asarray(tree.positions, dtype=np.int64))
    mask = allowed.view(batch, 1, q, width)
    if attn_implementation not in ("sdpa", ROWWISE):
        mask = torch.zeros(mask.shape, dtype=dtype).masked_fill(~mask, torch.finfo(dtype).min)
    return positions, mask


class CacheHolder:
    """What the draft and the target side share: a model in eval mode, the facts their caches are
    sized from (dtype, device, KV bytes per token, vocabulary, context), and a new block cache.
    `exact`: forwards compute what the model's own forward computes, bit for bit (a target's
    must; a draft's may take `lean`'s faster, nearly equal path). `prefix_tokens`: the size of
    its `prefix.PrefixStore` (0: none)."""

    def __init__(
        self,
        model,
        block_tokens: int,
        spare_blocks: int,
        max_context: int | None = None,
        exact: bool = True,
        prefix_tokens: int = 0,
    ):
        from .memory_model import kv_bytes_per_token
        from .prefix import PrefixStore

        self.model = model.eval()
        self.exact = exact
        self.block_tokens, self.spare_blocks = block_tokens, spare_blocks
        self.dtype = compute_dtype(model)
        self.layer_devices = layer_devices(model)
        self.device = self.layer_devices[0]
        self.bytes_per_token = kv_bytes_per_token(model.config, torch.tensor([], dtype=self.dtype).element_size())
        self.weight_bytes = weight_bytes(model)
        text = model.config.get_text_config(decoder=True)
        self.vocab_size = text.vocab_size
        self.max_context = max_context or getattr(text, "max_position_embeddings", None) or 1 << 30
        # KV of recent prompts' prefixes, for caches that start empty (`prefix_tokens` at most)
        self.prefixes = PrefixStore(prefix_tokens, self.bytes_per_token)

    def time_forwards(
        self, ms: tuple[int, ...], context: int = 64, repeats: int = 3, fastest: bool = False
    ) -> dict[int, float]:
        """Seconds of one forward of m new tokens after `context` tokens, for each m (median of
        `repeats`, or with `fastest` their minimum), on a throwaway cache of a few blocks outside
        any budget. The repeats are rounds over all the ms, so a shared machine's pace, which
        drifts over seconds, moves every m's samples alike and leaves the curve's shape."""
        from .batch import forward_rows
        from .speculative import Timer

        ids = np.arange(context + max(ms), dtype=np.int64) % self.vocab_size
        cache, heads = self.new_cache(), [self.session_head(ids)]
        forward_rows(self.model, [cache], [ids[:context]], [1], exact=self.exact, heads=heads)
        samples: dict[int, list[float]] = {m: [] for m in ms}
        for _ in range(repeats):
            for m in ms:
                with Timer() as timer:
                    forward_rows(self.model, [cache], [ids[context : context + m]], [m], exact=self.exact, heads=heads)
                cache.rollback(m)
                samples[m].append(timer.seconds)
        return {m: min(s) if fastest else sorted(s)[len(s) // 2] for m, s in samples.items()}

    def fill(self, cache: BlockKVCache, ids: np.ndarray, resident: int, head=None) -> int:
        """Make all but the last of `ids` resident in `cache`, which holds their first `resident`:
        an empty cache first takes the longest stored prefix (`prefixes`), the model computes the
        rest (with `head`, a draft's vocabulary subset), and the store keeps its chunks. Answers
        the tokens the model computed."""
        from .batch import forward_rows

        if resident == 0:
            resident = self.prefixes.restore(ids[:-1], cache)
        if len(ids) - 1 <= resident:
            return 0
        forward_rows(self.model, [cache], [ids[resident:-1]], [0], exact=self.exact, heads=[head])
        self.prefixes.insert(ids, cache)
        return len(ids) - 1 - resident

    def session_head(self, ids: np.ndarray):
        """The head a session with context `ids` computes its logits with (None: the model's)."""
        return None

    def new_cache(self) -> BlockKVCache:
        return BlockKVCache(self.model.config, self.block_tokens, self.dtype, self.layer_devices, self.spare_blocks)


def layer_devices(model) -> list[torch.device]:
    """The device of each decoder layer's KV: where that layer's attention weights live (a model
    spread with `device_map` has layers on several devices; a layer without weights on a device
    inherits the model's first parameter's device)."""
    base = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    fallback = next(model.parameters()).device
    devices = []
    for layer in base.layers:
        attention = getattr(layer, "self_attn", layer)
        tensor = next(iter(attention.parameters()), None)
        if tensor is None:
            tensor = next(iter(attention.buffers()), None)
        devices.append(tensor.device if tensor is not None else fallback)
    return devices
