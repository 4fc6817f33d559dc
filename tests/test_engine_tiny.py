"""The tiny test models and tokenizer: deterministic, offline, loadable from disk."""

import numpy as np
import torch
from engine_helpers import greedy_reference, one_torch_thread  # noqa: F401
from transformers import AutoModelForCausalLM, AutoTokenizer

from specmemo.actors.engine import Engine
from specmemo.actors.engine.tiny import EOS_ID, PAD_ID, save_tiny_pair, tiny_pair, tiny_tokenizer


def test_the_same_seed_builds_the_same_models_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = tiny_pair(seed=7)
    after = torch.rand(1)
    b = tiny_pair(seed=7)
    c = tiny_pair(seed=8)
    assert torch.equal(before, after)
    for one, two in zip(a, b):
        assert all(torch.equal(x, y) for x, y in zip(one.parameters(), two.parameters()))
    assert not torch.equal(a[1].lm_head.weight, c[1].lm_head.weight)


def test_a_noiseless_full_depth_draft_is_the_target():
    draft, target = tiny_pair(seed=3, noise=0.0, draft_layers=2)
    ids = torch.arange(5)[None]
    with torch.no_grad():
        assert torch.equal(draft(ids).logits, target(ids).logits)


def test_the_tokenizer_round_trips_text_and_renders_chatml():
    tok = tiny_tokenizer()
    text = "héllo, wörld! ✓"
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    ids = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, return_dict=False)
    assert tok.decode(ids) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert (tok.eos_token_id, tok.pad_token_id) == (EOS_ID, PAD_ID)


def test_a_saved_pair_loads_from_disk_and_decodes_the_same(tmp_path):
    paths = save_tiny_pair(str(tmp_path), seed=4, noise=0.05, draft_layers=2)
    draft = AutoModelForCausalLM.from_pretrained(paths["draft"])
    target = AutoModelForCausalLM.from_pretrained(paths["target"])
    tok = AutoTokenizer.from_pretrained(paths["target"])
    assert tok.eos_token_id == EOS_ID and tok.chat_template
    _, original = tiny_pair(seed=4, noise=0.05, draft_layers=2)
    prompt = np.arange(10, 20)
    ids, _ = Engine(draft, target, tok, block_tokens=4, gamma=2).generate_ids(prompt, 10)
    assert ids.tolist() == greedy_reference(original, prompt, 10).tolist()
