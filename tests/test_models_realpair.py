"""The pulled default pair: one tokenizer, weights equal to the official GGUF, a sane continuation.

Needs `specmemo models pull` to have run; skipped otherwise. Never downloads.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from specmemo.actors.engine import pull
from specmemo.actors.engine.models import check_tokenizers, load_model, load_tokenizer

pytestmark = [
    pytest.mark.realpair,
    pytest.mark.skipif(not pull.is_cached(), reason="default pair not pulled (specmemo models pull)"),
]


def test_draft_and_target_share_one_tokenizer_and_logit_width():
    draft_spec, target_spec = pull.default_pair_specs()
    draft, target = load_tokenizer(draft_spec), load_tokenizer(target_spec)
    check_tokenizers(draft, target)
    assert draft.eos_token == "<|im_end|>"
    assert draft.chat_template and "<|im_start|>" in draft.chat_template
    widths = {
        json.loads((path / "config.json").read_text())["vocab_size"] for path in pull.default_pair_paths().values()
    }
    assert widths == {151936}


def test_saved_configs_carry_rope_theta_and_no_quantization():
    for path in pull.default_pair_paths().values():
        config = json.loads((path / "config.json").read_text())
        assert config["rope_theta"] == 1_000_000.0
        assert "quantization_config" not in config
        marker = json.loads((path / pull.MARKER).read_text())
        assert marker["gguf_sha256"] in {pull.DRAFT.sha256, pull.TARGET.sha256}


@pytest.mark.parametrize("packed", pull.DEFAULT_PAIR, ids=lambda p: p.role)
def test_converted_weights_equal_the_gguf_tensors_dequantized_by_gguf_py(packed):
    import gguf
    from safetensors import safe_open

    gguf_path = pull._cache(None) / packed.gguf_name
    if not gguf_path.is_file():
        pytest.skip("the verified GGUF file was removed from the cache")
    reader = gguf.GGUFReader(gguf_path)
    tensors = {tensor.name: tensor for tensor in reader.tensors}
    names = {
        "blk.0.attn_q.weight": "model.layers.0.self_attn.q_proj.weight",
        "blk.0.ffn_down.weight": "model.layers.0.mlp.down_proj.weight",
        "blk.1.attn_v.weight": "model.layers.1.self_attn.v_proj.weight",
        "output_norm.weight": "model.norm.weight",
    }
    with safe_open(str(pull.default_pair_paths()[packed.role] / "model.safetensors"), "pt") as saved:
        for gguf_name, hf_name in names.items():
            tensor = tensors[gguf_name]
            expected = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
            expected = torch.from_numpy(np.array(expected, dtype=np.float32))
            actual = saved.get_tensor(hf_name)
            assert actual.dtype == torch.bfloat16
            assert actual.shape == expected.shape, gguf_name
            assert torch.equal(actual, expected.to(torch.bfloat16)), gguf_name


def test_target_answers_a_coding_request_with_code():
    _, target_spec = pull.default_pair_specs(dtype="bfloat16")
    model, tokenizer = load_model(target_spec)
    messages = [{"role": "user", "content": "Write a Python function square(x) that returns x squared."}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=False)
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False)
    reply = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    assert "def square" in reply
