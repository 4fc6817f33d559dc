"""One model forward over several sessions' block caches (ragged lengths, one batch)."""

from __future__ import annotations

import inspect

import numpy as np
import torch

from . import lean
from .kvcache import BlockKVCache, GatherCache, TreeFeed, batch_inputs
from .precision import compute_dtype

_CACHE_KW: dict[type, str] = {}


def cache_kwarg(model) -> str:
    """The name under which ``model``'s forward takes a cache: ``cache`` in transformers 5.24+
    (``past_key_values`` still works there but warns, and goes in 5.40), ``past_key_values``
    before."""
    cls = type(model)
    name = _CACHE_KW.get(cls)
    if name is None:
        params = inspect.signature(model.forward).parameters
        name = _CACHE_KW[cls] = "cache" if "cache" in params else "past_key_values"
    return name


def forward_rows(
    model,
    caches: list[BlockKVCache],
    feeds: list[np.ndarray],
    keep_last: list[int],
    trees: list[TreeFeed | None] | None = None,
    exact: bool = True,
    heads: list | None = None,
) -> list[torch.Tensor]:
    """Append feeds[b] (token ids, n_b >= 1) to caches[b] for every row in one forward.

    Answers, for row b, the float32 logits `[keep_last[b], V]` of its last keep_last[b] fed
    tokens, oldest first. Inputs are right-padded with token 0 to q = max n_b; only the
    logits needed are computed (`logits_to_keep`), so a long prefill keeps no prompt logits.
    trees[b], when given, makes row b's new tokens tree nodes (see `TreeFeed`). One row, a
    sequence or a tree, goes through `lean.forward` where the model supports it (`exact=False`:
    its draft path). heads[b], when given, computes row b's logits from its hidden states in place
    of the LM head (a draft's vocabulary subset, `vocabulary.SessionVocabulary`).
    """
    n_new = [len(f) for f in feeds]
    assert len(caches) == len(feeds) == len(keep_last) and all(n >= k >= 0 for n, k in zip(n_new, keep_last))
    assert min(n_new) >= 1
    q = max(n_new)
    keep = max(1, max(q - n + k for n, k in zip(n_new, keep_last)))
    ids = np.zeros((len(feeds), q), dtype=np.int64)
    for b, f in enumerate(feeds):
        ids[b, : len(f)] = f
    device = model.get_input_embeddings().weight.device
    inputs = torch.from_numpy(ids).to(device)
    with torch.inference_mode():
        tree = (trees or [None])[0] if len(caches) == 1 else None
        if len(caches) == 1 and lean.supports(model, exact):
            # one row: the cache itself, a sequence's positions and mask or its tree's
            head = (heads or [None])[0]
            logits = lean.forward(model, inputs, caches[0], keep, exact=exact, tree=tree, head=head)
        elif len(caches) == 1 and tree is None:
            # one row: the cache itself, default positions and transformers' own causal mask
            logits = model(
                input_ids=inputs, **{cache_kwarg(model): caches[0]}, use_cache=True, logits_to_keep=keep
            ).logits
        else:
            lengths = [c.length for c in caches]
            positions, mask = batch_inputs(
                lengths, n_new, q, model.config._attn_implementation, compute_dtype(model), trees
            )
            inputs_kw = {
                "input_ids": inputs,
                "position_ids": positions.to(device),
                "attention_mask": mask.to(device),
                cache_kwarg(model): GatherCache(caches, n_new),
                "use_cache": True,
            }
            if any(h is not None for h in heads or []) and lean.supports(model, exact):
                # the decoder alone, then each row's head (these families' logits are head(hidden))
                hidden = model.model(**inputs_kw).last_hidden_state[:, -keep:]
                logits = torch.stack(
                    [(model.lm_head if h is None else h)(hidden[b]) for b, h in enumerate(heads or [])]
                )
            else:
                logits = model(**inputs_kw, logits_to_keep=keep).logits
    assert logits.shape[:2] == (len(feeds), keep), logits.shape
    first = q - keep
    return [logits[b, n - k - first : n - first].float() for b, (n, k) in enumerate(zip(n_new, keep_last))]
