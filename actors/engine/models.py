"""Loading causal language models and checking that a draft/target pair can speculate together.

A model comes from one of three sources, named by `ModelSpec.source`:

- a local directory holding a transformers checkpoint (`config.json` plus weights),
- a GGUF file, given as its path (or as a directory plus `gguf_file=`); transformers
  dequantizes it on load,
- a hub id such as ``"Qwen/Qwen2.5-Coder-1.5B-Instruct"``; without ``allow_network=True`` only
  the local Hugging Face cache is consulted (``local_files_only``), so loading is offline by
  default.

Errors (from `errors.py`), each with one meaning:

- `ModelNotFound`: nothing usable is at the named place (no directory, no GGUF file, no config
  or weights, a hub id absent from the local cache while offline).
- `CorruptModel`: files are there but cannot be read as a model (truncated, garbage).
- `TokenizerMismatch`: draft and target do not share one vocabulary, so draft tokens cannot be
  verified by the target.
"""

from __future__ import annotations

import gc
import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .converted import ConvertedCache, default_root
from .errors import CorruptModel, ModelNotFound, TokenizerMismatch
from .precision import apply_precision


@dataclass(frozen=True)
class ModelSpec:
    """Where a model comes from and how to place it.

    source: local directory, path to a ``.gguf`` file, or hub id.
    gguf_file: GGUF file name inside `source` (a directory or hub repo), if not given in `source`.
    dtype: torch dtype name ("float32", "bfloat16", "float16") or "auto" (the checkpoint's) to
        load the weights in; `precision` then converts them.
    precision: "float32", "bfloat16", "int8" or "auto" (probe this machine and pick the fastest,
        see `precision.py`); None keeps the loaded dtype.
    gamma_max: the longest chain verified in one forward, for the "auto" probe (M = γ_max + 1).
    role: "target" or "draft": what the "auto" probe optimizes (a draft's attention need not be exact).
    device: device the whole model goes to when `device_map` is None.
    device_map: passed through to transformers/accelerate (e.g. "auto") to spread a big model.
    allow_network: let a hub id be fetched from the network; off by default.
    attn_implementation: "sdpa" or "eager"; None lets transformers choose.
    threads: the torch threads the model will run with, for the "auto" probe; None: this process's
        (a zygote loads on one thread for the forks that serve on more).
    converted_cache: keep an int8/int4 conversion of a local checkpoint on disk and load it from
        there next time (`converted.py`: where, and ``SPECMEMO_CONVERTED=off``).
    """

    source: str | Path
    gguf_file: str | None = None
    dtype: str = "float32"
    device: str = "cpu"
    device_map: str | dict[str, Any] | None = None
    allow_network: bool = False
    attn_implementation: str | None = "sdpa"
    precision: str | None = None
    gamma_max: int = 8
    role: str = "target"
    threads: int | None = None
    converted_cache: bool = True


@dataclass(frozen=True)
class _Resolved:
    location: str
    gguf_file: str | None
    is_local: bool


_WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin", "*.pt")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")

_READ_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ValueError,
    RuntimeError,
    KeyError,
    IndexError,
    EOFError,
    struct.error,
)
try:
    from safetensors import SafetensorError

    _READ_ERRORS = _READ_ERRORS + (SafetensorError,)
except ImportError:
    pass


def _looks_like_path(source: str) -> bool:
    return source.startswith(("/", "./", "../", "~")) or source.endswith(".gguf") or "\\" in source


def _resolve(spec: ModelSpec) -> _Resolved:
    source = str(spec.source)
    path = Path(source).expanduser()
    if path.is_file():
        if spec.gguf_file is not None:
            raise ValueError(f"gguf_file={spec.gguf_file!r} given but source {source!r} is already a file")
        if path.suffix != ".gguf":
            raise ModelNotFound(f"{source}: a model file must be a .gguf file; pass a directory otherwise")
        return _Resolved(str(path.parent), path.name, True)
    if path.is_dir():
        if spec.gguf_file is not None:
            if not (path / spec.gguf_file).is_file():
                raise ModelNotFound(f"GGUF file {spec.gguf_file!r} not found in {path}")
            return _Resolved(str(path), spec.gguf_file, True)
        if not (path / "config.json").is_file():
            raise ModelNotFound(f"{path} has no config.json: not a transformers checkpoint directory")
        if not any(any(path.glob(pattern)) for pattern in _WEIGHT_PATTERNS):
            raise ModelNotFound(f"{path} has a config.json but no weight files")
        return _Resolved(str(path), None, True)
    if _looks_like_path(source):
        raise ModelNotFound(f"model path {source!r} does not exist")
    return _Resolved(source, spec.gguf_file, False)


def _torch_dtype(name: str) -> torch.dtype | str:
    if name == "auto":
        return "auto"
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype {name!r} is not a torch floating-point dtype name")
    return dtype


def _hub_options(spec: ModelSpec, resolved: _Resolved) -> dict[str, Any]:
    options: dict[str, Any] = {"local_files_only": resolved.is_local or not spec.allow_network}
    if resolved.gguf_file is not None:
        options["gguf_file"] = resolved.gguf_file
    return options


def _not_found_offline(spec: ModelSpec, exc: BaseException) -> ModelNotFound:
    hint = "" if spec.allow_network else " (offline: pass allow_network=True to download it)"
    return ModelNotFound(f"hub model {spec.source!r} is not in the local cache{hint}: {exc}")


def load_tokenizer(spec: ModelSpec):
    """The tokenizer of the model `spec` names (read from the GGUF metadata for a GGUF file)."""
    from transformers import AutoTokenizer

    resolved = _resolve(spec)
    if resolved.is_local and resolved.gguf_file is None:
        if not any((Path(resolved.location) / name).is_file() for name in _TOKENIZER_FILES):
            raise ModelNotFound(f"{resolved.location} has no tokenizer files ({', '.join(_TOKENIZER_FILES)})")
    try:
        return AutoTokenizer.from_pretrained(resolved.location, **_hub_options(spec, resolved))
    except _READ_ERRORS as exc:
        if not resolved.is_local:
            raise _not_found_offline(spec, exc) from exc
        raise CorruptModel(f"cannot read a tokenizer from {spec.source}: {exc}") from exc


def load_model(spec: ModelSpec):
    """Load the causal LM and tokenizer `spec` names; returns (model, tokenizer), model in eval mode.

    Raises ModelNotFound, CorruptModel (see the module docstring) and ValueError for a bad
    dtype name.
    """
    return _load_weights(spec), load_tokenizer(spec)


def _load_weights(spec: ModelSpec):
    from transformers import AutoModelForCausalLM

    resolved = _resolve(spec)
    options = _hub_options(spec, resolved)
    options["dtype"] = _torch_dtype(spec.dtype)
    if spec.device_map is not None:
        options["device_map"] = spec.device_map
    if spec.attn_implementation is not None:
        options["attn_implementation"] = spec.attn_implementation
    try:
        model = AutoModelForCausalLM.from_pretrained(resolved.location, **options)
    except _READ_ERRORS as exc:
        if not resolved.is_local:
            raise _not_found_offline(spec, exc) from exc
        raise CorruptModel(f"cannot read a model from {spec.source}: {exc}") from exc
    if spec.device_map is None:
        model.to(spec.device)
    model.eval()
    model.requires_grad_(False)
    if spec.precision is not None:
        converted = _converted_cache(spec, resolved, model)
        apply_precision(
            model, spec.precision, gamma_max=spec.gamma_max, role=spec.role, threads=spec.threads, converted=converted
        )
    settle_heap()
    return model


def _converted_cache(spec: ModelSpec, resolved: _Resolved, model) -> ConvertedCache | None:
    # a local checkpoint's store, when asked for and not turned off (a hub id's files are the hub
    # cache's, and a model spread over devices is not converted); keyed by the dtypes the weights
    # were loaded in (a bfloat16 checkpoint loaded as "auto" or as "bfloat16" shares one entry)
    root = default_root()
    if not (spec.converted_cache and resolved.is_local and root is not None and spec.device_map is None):
        return None
    dtypes = "+".join(sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters()}))
    try:
        return ConvertedCache(root, resolved.location, resolved.gguf_file, dtype=dtypes)
    except OSError:
        return None


def settle_heap() -> None:
    """Collect the loading's garbage, then move every object alive now (the model's modules,
    transformers' and torch's own: hundreds of thousands) out of the cyclic collector's
    reach. Each full collection would otherwise walk them all during decoding (docs/decisions.md).
    Forked actors inherit the frozen state, and fewer pages are written by the collector after
    the fork."""
    gc.collect()
    gc.freeze()


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 over the token->id map and the special tokens: equal iff two tokenizers map alike.

    Covers the full vocabulary (added tokens included), the special-token roles (bos, eos, pad,
    unk) with their ids, and the list of all special tokens.
    """
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: (item[1], item[0]))
    roles = {
        role: [getattr(tokenizer, f"{role}_token", None), getattr(tokenizer, f"{role}_token_id", None)]
        for role in ("bos", "eos", "pad", "unk")
    }
    record = {"vocab": vocab, "roles": roles, "special": sorted(tokenizer.all_special_tokens)}
    return hashlib.sha256(json.dumps(record, ensure_ascii=False).encode()).hexdigest()


def check_tokenizers(draft_tokenizer, target_tokenizer) -> None:
    """Raise TokenizerMismatch unless the two tokenizers map every token (and special role) alike."""
    if len(draft_tokenizer) != len(target_tokenizer):
        raise TokenizerMismatch(
            f"tokenizer sizes differ: draft {len(draft_tokenizer)} tokens, target {len(target_tokenizer)}"
        )
    if tokenizer_fingerprint(draft_tokenizer) != tokenizer_fingerprint(target_tokenizer):
        raise TokenizerMismatch(
            "draft and target tokenizers map tokens to ids differently (vocabulary or special tokens differ)"
        )


def load_pair(draft_spec: ModelSpec, target_spec: ModelSpec):
    """Load a draft/target pair and refuse it unless they share a tokenizer and a logit width.

    Returns (draft, target, tokenizer). The tokenizers are compared before any weights are read.
    Raises TokenizerMismatch, plus the errors of `load_model`.
    """
    from .engine import check_pair

    draft_tokenizer = load_tokenizer(draft_spec)
    target_tokenizer = load_tokenizer(target_spec)
    check_tokenizers(draft_tokenizer, target_tokenizer)
    draft = _load_weights(draft_spec)
    target = _load_weights(target_spec)
    check_pair(draft, target, target_tokenizer)
    return draft, target, target_tokenizer
