"""Loading models from local directories, and refusing what cannot be loaded or paired."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from specmemo.actors.engine.models import (
    CorruptModel,
    ModelNotFound,
    ModelSpec,
    TokenizerMismatch,
    check_tokenizers,
    load_model,
    load_pair,
    load_tokenizer,
    tokenizer_fingerprint,
)

WORDS = ["def", "return", "x", "y", "+", "(", ")", ":", "print", "if", "else", "for", "in", "range"]


def make_tokenizer(words=WORDS, eos="</s>") -> PreTrainedTokenizerFast:
    vocab = {token: index for index, token in enumerate(["<unk>", "<pad>", eos, *words])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>", eos_token=eos)


def save_tiny_model(directory, tokenizer, seed=0, vocab_size=None, layers=2):
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=vocab_size or len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    model = Qwen2ForCausalLM(config).eval()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return model


def test_local_directory_loads_the_saved_weights_and_logits(tmp_path):
    tokenizer = make_tokenizer()
    saved = save_tiny_model(tmp_path, tokenizer)
    model, loaded_tokenizer = load_model(ModelSpec(tmp_path))
    ids = torch.tensor([[3, 4, 5, 6, 7]])
    assert torch.equal(model(ids).logits, saved(ids).logits)
    assert loaded_tokenizer.get_vocab() == tokenizer.get_vocab()
    assert not model.training
    assert not any(parameter.requires_grad for parameter in model.parameters())


def test_dtype_is_applied_to_every_parameter(tmp_path):
    save_tiny_model(tmp_path, make_tokenizer())
    model, _ = load_model(ModelSpec(str(tmp_path), dtype="bfloat16"))
    assert {parameter.dtype for parameter in model.parameters()} == {torch.bfloat16}


def test_unknown_dtype_name_is_refused(tmp_path):
    save_tiny_model(tmp_path, make_tokenizer())
    with pytest.raises(ValueError, match="dtype"):
        load_model(ModelSpec(tmp_path, dtype="int8"))


def test_device_map_on_one_device_loads_the_same_model(tmp_path):
    saved = save_tiny_model(tmp_path, make_tokenizer())
    model, _ = load_model(ModelSpec(tmp_path, device_map="cpu"))
    ids = torch.tensor([[3, 4, 5]])
    assert torch.equal(model(ids).logits, saved(ids).logits)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="spreading a model needs a second device")
def test_device_map_spreads_layers_over_devices(tmp_path):
    saved = save_tiny_model(tmp_path, make_tokenizer())
    placement = {
        "model.embed_tokens": "cpu",
        "model.rotary_emb": "cpu",
        "model.layers.0": "cpu",
        "model.layers.1": 0,
        "model.norm": 0,
        "lm_head": 0,
    }
    model, _ = load_model(ModelSpec(tmp_path, device_map=placement))
    assert model.model.layers[0].mlp.up_proj.weight.device.type == "cpu"
    assert model.lm_head.weight.device.type == "cuda"
    ids = torch.tensor([[3, 4, 5]])
    torch.testing.assert_close(model(ids).logits.cpu(), saved(ids).logits)


def test_missing_directory_raises_model_not_found(tmp_path):
    with pytest.raises(ModelNotFound, match="does not exist"):
        load_model(ModelSpec(tmp_path / "nowhere"))


def test_directory_without_config_raises_model_not_found(tmp_path):
    with pytest.raises(ModelNotFound, match="config.json"):
        load_model(ModelSpec(tmp_path))


def test_directory_without_weights_raises_model_not_found(tmp_path):
    save_tiny_model(tmp_path, make_tokenizer())
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(ModelNotFound, match="no weight files"):
        load_model(ModelSpec(tmp_path))


def test_directory_without_tokenizer_raises_model_not_found(tmp_path):
    save_tiny_model(tmp_path, make_tokenizer())
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).unlink()
    with pytest.raises(ModelNotFound, match="no tokenizer files"):
        load_model(ModelSpec(tmp_path))


def test_truncated_weights_raise_corrupt_model(tmp_path):
    save_tiny_model(tmp_path, make_tokenizer())
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CorruptModel):
        load_model(ModelSpec(tmp_path))


def test_missing_gguf_file_raises_model_not_found(tmp_path):
    with pytest.raises(ModelNotFound):
        load_model(ModelSpec(tmp_path / "model.gguf"))
    with pytest.raises(ModelNotFound, match="not found"):
        load_model(ModelSpec(tmp_path, gguf_file="model.gguf"))


def test_garbage_gguf_file_raises_corrupt_model(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF" + bytes(range(256)) * 4)
    with pytest.raises(CorruptModel):
        load_model(ModelSpec(path))


def test_hub_id_absent_from_the_cache_raises_model_not_found_offline():
    with pytest.raises(ModelNotFound, match="offline"):
        load_tokenizer(ModelSpec("specmemo-tests/no-such-model"))


def test_pair_sharing_a_tokenizer_loads(tmp_path):
    tokenizer = make_tokenizer()
    save_tiny_model(tmp_path / "draft", tokenizer, seed=1, layers=1)
    save_tiny_model(tmp_path / "target", tokenizer, seed=2, layers=2)
    draft, target, loaded = load_pair(ModelSpec(tmp_path / "draft"), ModelSpec(tmp_path / "target"))
    assert draft.config.num_hidden_layers == 1
    assert target.config.num_hidden_layers == 2
    assert tokenizer_fingerprint(loaded) == tokenizer_fingerprint(tokenizer)


def test_pair_with_different_vocabularies_is_refused(tmp_path):
    save_tiny_model(tmp_path / "draft", make_tokenizer(WORDS))
    save_tiny_model(tmp_path / "target", make_tokenizer(list(reversed(WORDS))))
    with pytest.raises(TokenizerMismatch, match="map tokens to ids differently"):
        load_pair(ModelSpec(tmp_path / "draft"), ModelSpec(tmp_path / "target"))


def test_pair_with_different_vocabulary_sizes_is_refused(tmp_path):
    save_tiny_model(tmp_path / "draft", make_tokenizer(WORDS))
    save_tiny_model(tmp_path / "target", make_tokenizer(WORDS + ["while"]))
    with pytest.raises(TokenizerMismatch, match="sizes differ"):
        load_pair(ModelSpec(tmp_path / "draft"), ModelSpec(tmp_path / "target"))


def test_pair_with_different_special_tokens_is_refused():
    plain = make_tokenizer()
    other_eos = make_tokenizer()
    other_eos.eos_token = "<pad>"
    assert plain.get_vocab() == other_eos.get_vocab()
    with pytest.raises(TokenizerMismatch):
        check_tokenizers(plain, other_eos)
    check_tokenizers(plain, make_tokenizer())


def test_pair_with_different_logit_widths_is_refused(tmp_path):
    tokenizer = make_tokenizer()
    save_tiny_model(tmp_path / "draft", tokenizer, vocab_size=len(tokenizer))
    save_tiny_model(tmp_path / "target", tokenizer, vocab_size=len(tokenizer) + 8)
    with pytest.raises(TokenizerMismatch, match="vocabulary"):
        load_pair(ModelSpec(tmp_path / "draft"), ModelSpec(tmp_path / "target"))
