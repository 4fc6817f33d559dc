"""Tiny random-weight test models and an offline tokenizer, built in milliseconds on the CPU.

Every CI test of the engine runs on these: a target and a draft that share a vocabulary, fp32,
deterministic by seed. The draft is cut from the target (its first `draft_layers` layers, its
embeddings and head) plus Gaussian noise, so `noise=0` with all layers gives a draft that
always agrees and a larger noise a draft that agrees less.
"""

from __future__ import annotations

import contextlib
import os

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

PAD, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
EOS_ID, PAD_ID = 256, 257

# ChatML, the format of the Qwen2.5 chat models.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_ARCHS = {"qwen2": (Qwen2Config, Qwen2ForCausalLM), "llama": (LlamaConfig, LlamaForCausalLM)}


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer without merges: ids 0..255 are bytes, then IM_END (eos), PAD, IM_START (259 in all)."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet, key=lambda c: _byte_of(c)))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([IM_END, PAD, IM_START])
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=IM_END, pad_token=PAD)
    tok.chat_template = CHAT_TEMPLATE
    assert (tok.eos_token_id, tok.pad_token_id, len(tok)) == (EOS_ID, PAD_ID, 259)
    return tok


def _byte_of(ch: str) -> int:
    return _BYTE_OF[ch]


def _bytes_to_unicode() -> dict[int, str]:
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


_BYTE_OF = {ch: b for b, ch in _bytes_to_unicode().items()}


def tiny_config(
    vocab_size: int = 259,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    max_positions: int = 512,
    arch: str = "qwen2",
    init_range: float = 0.2,
):
    """A small fp32 causal-LM config (GQA: `heads` query heads share `kv_heads` K/V heads)."""
    config_cls, _ = _ARCHS[arch]
    special = {"eos_token_id": EOS_ID, "pad_token_id": PAD_ID} if vocab_size == 259 else {}
    return config_cls(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions,
        initializer_range=init_range,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
        **special,
    )


def tiny_model(config, seed: int = 0):
    """Random weights from `config`, the same for the same seed; the global RNG is left as it was."""
    _, model_cls = _ARCHS[config.model_type]
    with _seeded(seed):
        model = model_cls(config)
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = config.pad_token_id
    return model.eval().to(torch.float32)


def tiny_pair(
    seed: int = 0,
    vocab_size: int = 259,
    hidden: int = 32,
    layers: int = 2,
    draft_layers: int = 1,
    noise: float = 0.05,
    arch: str = "qwen2",
    max_positions: int = 512,
):
    """(draft, target): the draft is the target's first `draft_layers` layers plus N(0, noise²) on every weight."""
    target = tiny_model(tiny_config(vocab_size, hidden, layers, max_positions=max_positions, arch=arch), seed)
    draft_config = tiny_config(vocab_size, hidden, draft_layers, max_positions=max_positions, arch=arch)
    draft = tiny_model(draft_config, seed + 1)
    own = draft.state_dict()
    with _seeded(seed + 2), torch.no_grad():
        for name, tensor in target.state_dict().items():
            if name in own:
                own[name].copy_(tensor + noise * torch.randn_like(tensor))
    return draft, target


def save_tiny_pair(directory: str, seed: int = 0, **pair_kwargs) -> dict[str, str]:
    """Save a tiny pair and the tokenizer under `directory`; return {"draft": path, "target": path}."""
    draft, target = tiny_pair(seed=seed, **pair_kwargs)
    tokenizer = tiny_tokenizer()
    paths = {}
    for role, model in (("draft", draft), ("target", target)):
        path = os.path.join(directory, role)
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        paths[role] = path
    return paths


@contextlib.contextmanager
def _seeded(seed: int):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
