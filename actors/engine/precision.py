"""Weight precision of a served model, chosen from the machine it runs on.

Precisions (the `precision` setting of a model):

- ``float32``: every weight and activation in float32.
- ``bfloat16``: every weight and activation in bfloat16 (fast where the CPU has bf16 units).
- ``int8``: every linear layer (the LM head included) holds int8 weights with one scale per
  output channel; activations are quantized per token (one scale per row) at each call and
  multiplied by `specmemo.native.q8` (AVX-512 VNNI, AVX2 or portable C, chosen at run time, the
  same bits on each) with exact int32 accumulation:

      s_i = max_k |x_ik| / 127
      y_ij = (Σ_k round(x_ik / s_i) · W8_jk) · w_j · s_i  (+ b_j)

  Each row's result depends on that row alone, so verifying γ+1 tokens in one forward computes
  exactly what γ+1 one-token forwards compute (a per-tensor scale, as torch's
  ``quantize_dynamic`` uses, couples the rows and breaks greedy equality). The embedding table
  is kept in bfloat16 (the converted checkpoints are bfloat16: no loss) and looked up into
  float32; norms, attention and the KV cache stay float32.
- ``int4``: every linear layer whose outputs are a multiple of 16 holds 4-bit weights in groups
  of 32 inputs (asymmetric: a float16 scale and zero per output channel and group), the others
  int8; activations are quantized per token as for int8 and multiplied by `specmemo.native.q4`
  (AVX-512 VNNI, AVX2 or portable C, chosen at run time), exact integer dot products per group:

      y_ij = s_i · Σ_g ( scale_jg · Σ_{k∈g} round(x_ik / s_i) · Q_jk + zero_jg · Σ_{k∈g} round(x_ik / s_i) )

  so rows are independent (exact verification, as int8) and the weights are read once per forward
  whatever M is: half the bytes of int8. Groups of 32 keep what a Q4_K GGUF file holds (16 levels
  per 32 weights, a scale and a minimum each); in a checkpoint converted from such a file, the
  tensors the file stored finer (Q4_K_M's 6-bit v and down projections, its head) stay int8
  (`conversion.finer_than_four_bits`), so int4 serves what the file holds, not less.
- ``auto``: on the CPU, `choose` times one decoder layer and (a slice of) the LM head of the loaded model at
  M = 1 and M = γ_max + 1 new tokens in each precision this machine supports and takes the
  fastest (a target by t(1) + t(γ_max + 1), a draft by t(1)); a
  model on an accelerator takes bfloat16.

The chosen precision, the CPU features and the probe's numbers are a `Choice`, kept on the model
(`precision_of`) so actors can report them. The CPU's features are read in `cpu`; the quantized
modules and the conversion to them are in `quantized`.
"""

from __future__ import annotations

import copy
import inspect
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from .attention import use_rowwise_attention
from .conversion import finer_than_four_bits, quantize_linears
from .cpu import CpuFeatures, cpu_features, fast_integer_kernels
from .forked import on_threads
from .quantized import Bf16Embedding, Int4Linear, Int8Linear, LinearPart, SourcePages, release_freed_memory

log = logging.getLogger(__name__)

# the CPU's features and the quantized modules, re-exported: callers import them from here
__all__ = [
    "CHOICES",
    "PRECISIONS",
    "Bf16Embedding",
    "Choice",
    "CpuFeatures",
    "Int4Linear",
    "Int8Linear",
    "LinearPart",
    "SourcePages",
    "apply_precision",
    "choose",
    "compute_dtype",
    "cpu_features",
    "fast_integer_kernels",
    "precision_of",
    "release_freed_memory",
    "weight_bytes",
]

PRECISIONS = ("float32", "bfloat16", "int8", "int4")
CHOICES = PRECISIONS + ("auto",)


# applying a precision


@dataclass
class Choice:
    """The precision a model runs in, why, and what its weights cost."""

    precision: str
    requested: str
    weight_bytes: int
    cpu: dict
    probe_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    stored: str = ""  # the converted weights' entry on disk (`converted.py`): read, written, or why not

    def as_dict(self) -> dict:
        return asdict(self)


def precision_of(model) -> Choice | None:
    """The `Choice` `apply_precision` recorded on the model (None for a model it never saw)."""
    return getattr(model, "_specmemo_precision", None)


def compute_dtype(model) -> torch.dtype:
    """The dtype of the model's activations and KV cache."""
    choice = precision_of(model)
    if choice is not None:
        return torch.bfloat16 if choice.precision == "bfloat16" else torch.float32
    return next(model.parameters()).dtype


def weight_bytes(model) -> int:
    """Bytes of every parameter and buffer (shared storage counted once) and of the packed
    quantized weights, which torch does not see as tensors of the model."""
    storages = {
        t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
        for t in list(model.parameters()) + list(model.buffers())
    }
    packed = sum(m.packed_bytes for m in model.modules() if isinstance(m, (Int8Linear, Int4Linear)))
    return sum(storages.values()) + packed


def apply_precision(model, precision: str, role: str = "target", converted=None, **probe_options):
    """Convert `model` (in place) to `precision` ("auto" probes first, see `choose`); answers it.
    With `converted` (a `ConvertedCache`), an int8/int4 conversion reads its arrays from the
    model's stored entry, or stores them.

    The chosen `Choice` is kept on the model (`precision_of`). Raises ValueError for an unknown
    precision, or int8/int4 on a model not on the CPU.
    """
    if precision not in CHOICES:
        raise ValueError(f"precision {precision!r} is not one of {', '.join(CHOICES)}")
    requested, probe = precision, dict[str, Any]()
    on_cpu = all(p.device.type == "cpu" for p in model.parameters())
    if precision == "auto":
        # the probe and the int8 kernels are the CPU's; an accelerator takes bfloat16
        precision, probe = choose(model, role=role, **probe_options) if on_cpu else ("bfloat16", {})
    if precision in ("int8", "int4") and not on_cpu:
        raise ValueError(f"precision {precision} runs on the CPU only; use bfloat16 on an accelerator")
    entry = converted.entry(precision) if converted is not None and precision in ("int8", "int4") else None
    _convert(model, precision, exact_rows=role != "draft", entry=entry)
    release_freed_memory()
    stored = entry.describe() if entry is not None else ""
    model._specmemo_precision = Choice(
        precision, requested, weight_bytes(model), cpu_features().as_dict(), probe, stored
    )
    return model


def _convert(model, precision: str, exact_rows: bool = True, entry=None) -> None:
    # exact_rows: with int8/int4, attention computes each row alone too (a target's verification
    # must equal one-token steps; a draft's need not, and keeps sdpa's faster prefill)
    if precision == "float32":
        model.float()
    elif precision == "bfloat16":
        model.to(torch.bfloat16)
    elif precision in ("int8", "int4"):
        if not fast_integer_kernels():
            log.warning("precision %s runs the integer kernels' portable C path here (no AVX2): slow", precision)
        quantize_linears(model, four_bit=precision == "int4", entry=entry)
        if exact_rows:
            use_rowwise_attention(model)  # with exact rows, exact attention: see attention.py
    else:
        raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    model.eval()


# the probe


def _layers_and_head(model) -> tuple[list[nn.Module], nn.Module]:
    base = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    return list(base.layers), model.get_output_embeddings()


def _layer_classes(model, layers: list[nn.Module], precision: str) -> list[tuple[nn.Module, int]]:
    """One layer of each kind and how many there are: all alike, except in an int4 conversion of
    a checkpoint from a 4-bit file, whose layers differ in which linears the file stored finer
    (those stay int8: a Q4_K_M file keeps the down projection of some layers only in 6 bits)."""
    eight = finer_than_four_bits(model) if precision == "int4" else frozenset()
    classes: dict[tuple[str, ...], list] = {}
    for layer in layers:
        key = tuple(sorted(n for n, m in layer.named_modules() if isinstance(m, nn.Linear) and id(m) in eight))
        classes.setdefault(key, [layer, 0])[1] += 1
    return [(layer, count) for layer, count in classes.values()]


def _supported() -> list[str]:
    candidates = ["float32", "bfloat16"]
    if fast_integer_kernels():  # the int8 and int4 kernels have a SIMD path on this CPU
        candidates += ["int8", "int4"]
    return candidates


def choose(
    model,
    gamma_max: int = 8,
    candidates: list[str] | None = None,
    repeats: int = 5,
    clock: Callable[[], float] = time.perf_counter,
    role: str = "target",
    threads: int | None = None,
) -> tuple[str, dict[str, dict[str, float]]]:
    """The fastest precision for `model` here (of those within `NEAR` of the fastest, the one of
    fewest weight bits), and the probe's estimates in ms per forward.

    For each candidate a copy of the first decoder layer and of a slice of the LM head (its time
    scaled to the whole head) is converted and timed (the fastest of `repeats`: on a shared
    machine noise only ever adds time) on M = 1 and
    M = γ_max + 1 new tokens after a 64-token context;
    a forward costs n_layers · t_layer + t_head (in int4, a layer of each kind times its count:
    see `_layer_classes`). A target's score is t(1) + t(γ_max + 1) (plain
    steps and verifications); a draft's is t(1), its proposals being one token per forward.
    `role` ("target" or "draft") also decides how the copies attend (exact rows for a target). `clock` is the
    timing source (tests replace it). `threads`: the torch threads the model will serve on, when not
    this process's: the probe then runs in a forked child on that many (a zygote loads on one thread,
    and a precision that reads fewer bytes gains more from a second thread than one that computes
    more), falling back to this process's threads if the child fails.
    """
    if threads is not None and threads != torch.get_num_threads() and hasattr(os, "fork"):
        answer = on_threads(lambda: _probe(model, gamma_max, candidates, repeats, clock, role), threads)
        if answer is not None:
            precision, probe = answer
            return str(precision), probe
    return _probe(model, gamma_max, candidates, repeats, clock, role)


def _probe(model, gamma_max: int, candidates: list[str] | None, repeats: int, clock, role: str):
    # `choose`'s timings, in this process, on its threads
    layers, head = _layers_and_head(model)
    config = model.config.get_text_config(decoder=True)
    hidden = config.hidden_size
    candidates = candidates or _supported()
    probe: dict[str, dict[str, float]] = {}
    evict = _evictor()
    for precision in candidates:
        times = dict.fromkeys((f"M={m}" for m in (1, gamma_max + 1)), 0.0)
        for i, (layer, count) in enumerate(_layer_classes(model, layers, precision)):
            sample, scale = _head_sample(head)
            part = nn.ModuleDict({"layer": copy.deepcopy(layer), "head": sample})
            _convert(part, precision, exact_rows=role != "draft")
            dtype = torch.bfloat16 if precision == "bfloat16" else torch.float32
            stack, native_rows = _native_step(part["layer"], config, precision, role)
            for m in (1, gamma_max + 1):
                if stack is not None and m <= native_rows:
                    times[f"M={m}"] += _time_native(stack, config, hidden, m, repeats, clock, evict) * count
                else:
                    times[f"M={m}"] += _time_part(part, config, hidden, m, dtype, repeats, clock, evict) * count
                if i == 0:
                    times[f"M={m}"] += _time_head(part["head"], hidden, m, dtype, repeats, clock, evict) * scale
            del part
        probe[precision] = {k: round(v * 1e3, 3) for k, v in times.items()}

    def score(p: str) -> float:
        return probe[p]["M=1"] if role == "draft" else sum(probe[p].values())

    fastest = min(score(p) for p in probe)
    near = [p for p in probe if score(p) <= fastest * (1 + NEAR)]
    return min(near, key=lambda p: (WEIGHT_BITS.get(p, 32), score(p))), probe


#: Within this fraction of the fastest probe, the precision with the fewest weight bits wins: less
#: memory, and the probe's own noise is about this large (int4 and int8 targets swapped places
#: between runs on one machine when the fastest alone decided).
NEAR = 0.10
WEIGHT_BITS = {"int4": 4, "int8": 8, "bfloat16": 16, "float32": 32}


HEAD_SAMPLE = 8  # the probe times 1/8 of the LM head's rows and scales (a GEMV/GEMM is linear in rows)


def _head_sample(head) -> tuple[nn.Module, float]:
    """A copy of a slice of the LM head's output rows (a multiple of 128, so int4 packs it), and
    the factor that scales its time to the whole head's: a whole float32 copy of a 152k-row head
    would be ~1 GB of transient memory at load."""
    if not isinstance(head, nn.Linear) or head.out_features < 2 * 128 * HEAD_SAMPLE:
        return copy.deepcopy(head), 1.0
    rows = head.out_features // HEAD_SAMPLE // 128 * 128
    sample = nn.Linear(head.in_features, rows, bias=head.bias is not None, device="meta")
    sample.weight = nn.Parameter(head.weight.detach()[:rows].clone(), requires_grad=False)
    if head.bias is not None:
        sample.bias = nn.Parameter(head.bias.detach()[:rows].clone(), requires_grad=False)
    return sample, head.out_features / rows


def _evictor() -> Callable[[], None]:
    """A function that pushes the probe's weights out of the CPU's caches. In a forward every
    layer's weights stream from memory, but one layer and a head slice (15-30 MB) fit in a 32 MB
    L3: timed warm, precisions that read more bytes (int8 against int4) would look as fast as
    they compute (docs/decisions.md has the runs that picked wrong)."""
    l3 = os.sysconf("SC_LEVEL3_CACHE_SIZE") if "SC_LEVEL3_CACHE_SIZE" in os.sysconf_names else 0
    buffer = torch.zeros(max(64 << 20, 2 * max(l3, 0)) // 4)

    def evict() -> None:
        buffer.add_(1.0)

    return evict


def _time_head(head, hidden: int, m: int, dtype, repeats: int, clock, evict=lambda: None) -> float:
    x = torch.randn(1, m, hidden).to(dtype)
    samples = []
    with torch.inference_mode():
        head(x)
        for _ in range(repeats):
            evict()
            start = clock()
            head(x)
            samples.append(clock() - start)
    return min(samples)


def _time_part(part, config, hidden: int, m: int, dtype, repeats: int, clock, evict=lambda: None) -> float:
    # one decoder layer over m new tokens after a 64-token context (a DynamicCache prefilled once)
    from transformers import DynamicCache

    layer = part["layer"]
    head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    context = 64
    samples = []
    with torch.inference_mode():
        for _ in range(repeats + 1):
            cache = DynamicCache(config=config)
            kv_heads = config.num_key_value_heads
            cache.update(
                torch.zeros(1, kv_heads, context, head_dim, dtype=dtype),
                torch.zeros(1, kv_heads, context, head_dim, dtype=dtype),
                0,
            )
            x = torch.randn(1, m, hidden).to(dtype)
            positions = torch.arange(context, context + m).view(1, m)
            cos_sin = _rotary(config, positions, dtype, head_dim)
            evict()
            start = clock()
            layer(
                x,
                attention_mask=None,
                position_ids=positions,
                use_cache=True,
                position_embeddings=cos_sin,
                **{_cache_name(layer): cache},
            )
            samples.append(clock() - start)
    return min(samples[1:])


def _native_step(layer, config, precision: str, role: str) -> tuple[Any, int]:
    # a draft's int4 layers run in one native call per forward of up to NATIVE_ROWS tokens (lean.py),
    # faster than the torch layer this probe times otherwise: time what the forward will run.
    # Answers (the layer's native step or None, the most rows it takes)
    if role != "draft" or precision != "int4":
        return None, 0
    from . import lean  # here: lean imports the KV cache, which imports this module

    return lean.native_stack_for(config, [lean.LayerParts(layer)]), lean.NATIVE_ROWS


def _time_native(stack, config, hidden: int, m: int, repeats: int, clock, evict) -> float:
    # the layer's native step over m new tokens after a 64-token context in a cache of its own
    head_dim = stack.shape.dim
    context = 64
    keys = torch.zeros(config.num_key_value_heads, context + m, head_dim)
    values = torch.zeros_like(keys)
    rows = [(keys.data_ptr(), values.data_ptr(), context + m)]
    cos, sin = (
        t.contiguous() for t in _rotary(config, torch.arange(context, context + m).view(1, m), torch.float32, head_dim)
    )
    samples = []
    for _ in range(repeats + 1):
        h = torch.randn(1, m, hidden)
        evict()
        start = clock()
        stack.step(h.data_ptr(), m, context, cos.data_ptr(), sin.data_ptr(), rows, torch.get_num_threads())
        samples.append(clock() - start)
    return min(samples[1:])


def _cache_name(layer) -> str:
    return "cache" if "cache" in inspect.signature(layer.forward).parameters else "past_key_values"


def _rotary(config, positions, dtype, head_dim: int):
    # cos and sin of the rotary angles (their values matter little: this only times the layer)
    base = float(getattr(config, "rope_theta", None) or 10000.0)
    angles = positions.float()[..., None] / (base ** (torch.arange(0, head_dim, 2).float() / head_dim))
    emb = torch.cat([angles, angles], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)
