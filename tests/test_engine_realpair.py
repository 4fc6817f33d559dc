"""The engine on the pulled Qwen2.5-Coder pair (fp32): speculative greedy equals the target's own.

Needs `specmemo models pull` to have run; skipped otherwise. Never downloads.
"""

import numpy as np
import pytest
import torch

from specmemo.actors.engine import Engine, pull
from specmemo.actors.engine.models import load_pair

pytestmark = [
    pytest.mark.realpair,
    pytest.mark.skipif(not pull.is_cached(), reason="default pair not pulled (specmemo models pull)"),
]


@pytest.fixture(autouse=True)
def two_torch_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_speculative_greedy_chat_equals_target_greedy_on_the_real_pair():
    draft, target, tokenizer = load_pair(*pull.default_pair_specs(dtype="float32"))
    message = "Write a Python function that checks whether a number is prime."
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": message}], add_generation_prompt=True, return_dict=False
    )
    with torch.no_grad():
        want = target.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False)[0, len(prompt) :]
    engine = Engine(draft, target, tokenizer, block_tokens=16, gamma=4)
    text, ids, stats = engine.chat("s", message, max_new_tokens=12)
    assert ids.tolist() == want.tolist()
    assert stats["tokens_per_step"] > 2.0  # the 0.5B draft mostly agrees with the 1.5B target on code
    usage = engine.usage()
    assert usage["held"]["draft"] + usage["held"]["target"] == usage["live"]
    assert np.isclose(engine.draft.bytes_per_token, 2 * 24 * 2 * 64 * 4)
