"""Block arithmetic of the KV caches, free of torch (the memory actor imports only this).

A cache holds a whole number of blocks of ``block_tokens`` tokens; ``kv_shape`` reads the
per-token KV layout from a model config.
"""

from __future__ import annotations


def kv_shape(config) -> tuple[int, int, int]:
    """(layers, kv_heads, head_dim) of a causal LM config."""
    text = config.get_text_config(decoder=True)
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    return text.num_hidden_layers, kv_heads, head_dim


def blocks_for(tokens: int, block_tokens: int) -> int:
    return -(-tokens // block_tokens)


def blocks_after_rollback(blocks: int, length: int, block_tokens: int, spare_blocks: int = 1) -> int:
    """Blocks kept after a rollback to `length`: shrink only past `spare_blocks` unused blocks, so
    a length sitting on a block boundary does not reallocate up and down every step."""
    return min(blocks, blocks_for(length, block_tokens) + spare_blocks)


class BlockIds:
    """The logical block ids of one budget: each owned by a (holder, session), freed ids reused
    before new ones are minted (so ids stay dense however sessions come and go)."""

    def __init__(self) -> None:
        self.owner: dict[int, tuple[str, str]] = {}
        self._free: list[int] = []
        self._next = 0

    def take(self, holder: str, session: str) -> int:
        if self._free:
            block = self._free.pop()
        else:
            block, self._next = self._next, self._next + 1
        self.owner[block] = (holder, session)
        return block

    def give(self, block: int) -> None:
        del self.owner[block]
        self._free.append(block)
