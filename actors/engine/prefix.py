"""KV of prompt prefixes that new sessions start from (a prefix cache, as vLLM's and llama.cpp's).

Chat prompts share their beginning: every MT-Bench first turn of the default pair starts with the
same 24 tokens of system prompt and chat template, about half of a short prompt. A store keeps the
KV of recent prompts in chunks of `chunk` tokens, each keyed by every id up to its end (a chained
digest: a chunk is found only after the same whole prefix). A cache that starts empty takes the
longest run of stored chunks that begins its context, and its model computes only the rest.

The values are the ones a prefill of the same prefix computes: a token's K and V depend only on
the tokens before it. With row-wise attention and per-token quantized linears (the int8 and int4
precisions) they are the same bits whatever else the forward held, so greedy output is unchanged;
in float32 and bfloat16, where sdpa's blocking may differ with the forward's length, they agree as
a cached multi-turn conversation's do.

The store holds at most `tokens` tokens (least recently used chunks leave first); its bytes,
`capacity_bytes`, are reserved in the memory manager's budget beside the KV of the sessions.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np
import torch

PREFIXES = "prefixes"  # the key of a store's reservation in the memory manager
DEFAULT_TOKENS = 128  # per model: the default pair's 24-token system prefix several times over
CHUNK = 8


class PrefixStore:
    """Chunks of prompt KV by prefix (see the module doc)."""

    def __init__(self, tokens: int, bytes_per_token: int, chunk: int = CHUNK):
        if tokens < 0 or chunk < 1:
            raise ValueError(f"a prefix store needs tokens >= 0 and chunk >= 1, not {tokens}, {chunk}")
        self.chunk, self.max_chunks = chunk, tokens // chunk
        self.capacity_bytes = self.max_chunks * chunk * bytes_per_token
        self._chunks: OrderedDict[bytes, list[tuple[torch.Tensor, torch.Tensor]]] = OrderedDict()
        self.hits = 0  # tokens taken from the store

    def _keys(self, ids: np.ndarray, count: int):
        digest = b""
        for c in range(count):
            piece = np.ascontiguousarray(ids[c * self.chunk : (c + 1) * self.chunk], dtype=np.int64)
            digest = hashlib.blake2b(digest + piece.tobytes(), digest_size=16).digest()
            yield digest

    def restore(self, ids: np.ndarray, cache) -> int:
        """Write into `cache` (empty) the KV of the longest stored prefix of `ids`, in whole chunks;
        answers its length in tokens. The cache must have room for them."""
        assert cache.get_seq_length() == 0
        found = []
        for key in self._keys(ids, min(len(ids) // self.chunk, self.max_chunks)):
            layers = self._chunks.get(key)
            if layers is None:
                break
            self._chunks.move_to_end(key)
            found.append(layers)
        for layers in found:
            for layer, (keys, values) in zip(cache.layers, layers):
                layer.write(keys, values)
        self.hits += len(found) * self.chunk
        return len(found) * self.chunk

    def insert(self, ids: np.ndarray, cache) -> None:
        """Keep the chunks of `ids` (the tokens resident in `cache`, from its first) it lacks."""
        count = min(cache.get_seq_length(), len(ids), self.max_chunks * self.chunk) // self.chunk
        for c, key in enumerate(self._keys(ids, count)):
            if key in self._chunks:
                self._chunks.move_to_end(key)
                continue
            span = slice(c * self.chunk, (c + 1) * self.chunk)
            self._chunks[key] = [
                (layer.keys[:, :, span].clone(), layer.values[:, :, span].clone()) for layer in cache.layers
            ]
            while len(self._chunks) > self.max_chunks:
                self._chunks.popitem(last=False)

    def held_tokens(self) -> int:
        return len(self._chunks) * self.chunk
