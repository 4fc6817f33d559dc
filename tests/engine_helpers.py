"""Shared helpers of the engine tests: the plain-decoding reference and the accounting check."""

import numpy as np
import pytest
import torch

from specmemo.actors.engine import DRAFT, TARGET


def greedy_reference(model, prompt, n: int, stop: int | None = None) -> np.ndarray:
    """Plain greedy decoding without any cache: argmax of a full forward, n times."""
    ids = [int(t) for t in prompt]
    out = []
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model(torch.tensor([ids])).logits[0, -1].argmax())
            ids.append(nxt)
            out.append(nxt)
            if nxt == stop:
                break
    return np.array(out, dtype=np.int64)


def assert_accounting_matches_tensors(engine) -> None:
    """Every session's cache holds exactly the bytes of the blocks the manager granted it."""
    usage = engine.memory.usage()
    for sid in usage["sessions"]:
        blocks = engine.memory.session_blocks(sid)
        want_draft = len(blocks.get(DRAFT, [])) * engine.memory.block_bytes(DRAFT)
        want_target = len(blocks.get(TARGET, [])) * engine.memory.block_bytes(TARGET)
        got_draft = engine.draft.held_bytes(sid) if engine.draft.has(sid) else 0
        assert got_draft == want_draft, (sid, got_draft, want_draft)
        assert engine.verifier.held_bytes(sid) == want_target, (sid, engine.verifier.held_bytes(sid), want_target)
    assert engine.draft.held_bytes() + engine.verifier.held_bytes() == usage["live"] <= usage["budget"]


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models run fastest on one thread; on a shared 2-core machine torch's default pool of
    threads makes each tiny matmul ~50x slower. Restored after each test."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_engine(budget_bytes: int, **kw):
    """The in-process Engine on the tiny pair the deployments' `tiny` model names (seed 0), on one
    torch thread: the reference the actor tests compare their tokens with."""
    from specmemo.actors.engine import Engine
    from specmemo.actors.engine.tiny import tiny_pair, tiny_tokenizer

    torch.set_num_threads(1)
    draft, target = tiny_pair(seed=0)
    return Engine(draft, target, tiny_tokenizer(), budget_bytes=budget_bytes, **kw)
