"""Weight precision of a served model, chosen from the machine it runs on.

Precisions (the `precision` setting of a model):

- ``float32``: every weight and activation in float32.
- ``bfloat16``: every weight and activation in bfloat16 (fast where the CPU has bf16 units).
- ``int8``: every linear layer (the LM head included) holds int8 weights with one scale per
  output channel; activations are quantized per token (one scale per row) at each call and
  multiplied by fbgemm's u8·s8 kernels with exact int32 accumulation:

      s_i = max_k |x_ik| / q_max          (q_max = 127, or 63 without VNNI: see below)
      y_ij = s_i · w_j · Σ_k round(x_ik / s_i) · W8_jk  (+ b_j)

  Each row's result depends on that row alone, so verifying γ+1 tokens in one forward computes
  exactly what γ+1 one-token forwards compute (a per-tensor scale, as torch's
  ``quantize_dynamic`` uses, couples the rows and breaks greedy equality). The embedding table
  is kept in bfloat16 (the converted checkpoints are bfloat16: no loss) and looked up into
  float32; norms, attention and the KV cache stay float32. Without VNNI, fbgemm's AVX2 kernels
  add u8·s8 pairs in saturating int16, so activations then use 7 bits (u8 codes ≤ 127), as
  torch's ``reduce_range`` does.
- ``int4`` (drafts): 4-bit weights in groups of 128 inputs (asymmetric), bfloat16 activations,
  torch's weight-only CPU kernel. Half the bytes of int8 at one token per forward, but the cost
  grows linearly with the rows, and rows are not promised independent: a draft's precision
  (its proposals are one token per forward, and the target verifies every token), not a target's.
  A layer whose shape does not pack (outputs not a multiple of 16) stays int8.
- ``auto``: on the CPU, `choose` times one decoder layer and (a slice of) the LM head of the loaded model at
  M = 1 and M = γ_max + 1 new tokens in each precision this machine supports and takes the
  fastest (a target by t(1) + t(γ_max + 1), a draft by t(1), int4 among its candidates); a
  model on an accelerator takes bfloat16.

The chosen precision, the CPU features and the probe's numbers are a `Choice`, kept on the model
(`precision_of`) so actors can report them.
"""

from __future__ import annotations

import copy
import ctypes
import functools
import inspect
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .attention import use_rowwise_attention

PRECISIONS = ("float32", "bfloat16", "int8", "int4")
CHOICES = PRECISIONS + ("auto",)


@dataclass(frozen=True)
class CpuFeatures:
    """What decides which kernels are fast: the CPU model and the flags that matter."""

    model: str
    flags: tuple[str, ...]
    capability: str

    @property
    def vnni(self) -> bool:
        return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & set(self.flags))

    @property
    def bf16(self) -> bool:
        return bool({"avx512_bf16", "amx_bf16"} & set(self.flags))

    def as_dict(self) -> dict:
        return {"model": self.model, "flags": list(self.flags), "capability": self.capability,
                "vnni": self.vnni, "bf16": self.bf16}


_FLAGS_OF_NOTE = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16",
                  "amx_bf16", "amx_int8", "amx_tile", "asimd", "sve", "bf16", "i8mm")


@functools.cache
def cpu_features() -> CpuFeatures:
    """The CPU model name, its SIMD flags of note, and torch's dispatch capability."""
    model, flags = "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model == "unknown":
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return CpuFeatures(model, tuple(f for f in _FLAGS_OF_NOTE if f in flags),
                       torch.backends.cpu.get_cpu_capability())


def int8_supported() -> bool:
    return "fbgemm" in torch.backends.quantized.supported_engines


def int4_supported() -> bool:
    return hasattr(torch, "_weight_int4pack_mm_for_cpu") and hasattr(torch, "_convert_weight_to_int4pack_for_cpu")


# int8 modules


class Int8Linear(nn.Module):
    """A linear layer with per-channel int8 weights and per-token int8 activations (see module doc).

    Given several linears of one input size it is their fusion: one product of the concatenated
    weights (output channels are independent, so each part is exactly what it would be alone).
    """

    def __init__(self, linear: nn.Linear | list[nn.Linear], activation_bits: int = 8,
                 source: "SourcePages | None" = None):
        super().__init__()
        assert activation_bits in (7, 8)
        parts = linear if isinstance(linear, list) else [linear]
        assert len({p.in_features for p in parts}) == 1 and len({p.bias is None for p in parts}) == 1
        self.splits = [p.out_features for p in parts]
        self.in_features, self.out_features = parts[0].in_features, sum(self.splits)
        bias = None if parts[0].bias is None else torch.cat([p.bias.detach().float() for p in parts])
        # rows quantized a block at a time: a float32 copy of a whole LM head (152k x 1.5k) would
        # be several times the int8 result
        codes = torch.empty(self.out_features, self.in_features, dtype=torch.int8)
        scale = torch.empty(self.out_features, dtype=torch.float32)
        row = 0
        for part in parts:
            for rows in _row_blocks(part.weight.detach(), source):
                block = rows.float()
                s = (block.abs().amax(dim=1) / 127.0).clamp_min(torch.finfo(torch.float32).tiny)
                codes[row : row + len(block)] = torch.round(block / s[:, None]).clamp_(-127, 127).to(torch.int8)
                scale[row : row + len(block)] = s
                row += len(block)
        with warnings.catch_warnings():
            # fbgemm's prepack takes a quantized tensor, whose creation functions warn of deprecation
            warnings.simplefilter("ignore", UserWarning)
            quantized = torch._make_per_channel_quantized_tensor(
                codes, scale.double(), torch.zeros_like(scale, dtype=torch.long), 0)
            self._packed = torch.ops.quantized.linear_prepack(quantized, None)
        del quantized, codes
        self.register_buffer("bias", bias)
        # codes round(x/s) in [-q_max, q_max] become u8 codes + zero_point inside fbgemm (exactly)
        self.q_max = 127.0 if activation_bits == 8 else 63.0
        self.zero_point = 128 if activation_bits == 8 else 64
        # fbgemm's packed weight is opaque to torch: its int8 codes and float32 channel scales
        self.packed_bytes = self.out_features * (self.in_features + 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        rows = x.reshape(-1, self.in_features).float()
        scale = rows.abs().amax(dim=1, keepdim=True).clamp_min(1e-30) / self.q_max
        codes = torch.round(rows / scale)
        out = torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(
            codes, 1.0, self.zero_point, self._packed)
        out = out * scale
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, activations={'8' if self.q_max == 127 else '7'}-bit"


class Int4Linear(nn.Module):
    """A linear layer with 4-bit weights (asymmetric, one scale and offset per group of `group`
    inputs) and float activations: torch's weight-only CPU kernel. One row costs half an int8
    product, but the cost grows linearly with the rows: for the draft, whose proposals are one
    token per forward, not for verification."""

    def __init__(self, linear: nn.Linear, group: int, source: "SourcePages | None" = None):
        super().__init__()
        n, k = linear.weight.shape
        assert k % group == 0 and n % 16 == 0, (n, k, group)
        self.in_features, self.out_features, self.group = k, n, group
        packed, scales = [], []
        for rows in _row_blocks(linear.weight.detach(), source):   # a block at a time (rows pack alone)
            grouped = rows.float().reshape(len(rows), k // group, group)
            low, high = grouped.amin(-1), grouped.amax(-1)
            scale = ((high - low) / 15).clamp_min(1e-12)
            codes = torch.clamp(torch.round((grouped - low[..., None]) / scale[..., None]), 0, 15)
            packed.append(torch._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32).reshape(len(rows), k), 1))
            # the kernel computes (code − 8)·scale + zero: zero = low + 8·scale
            scales.append(torch.stack([scale, low + 8 * scale], -1))
        self._packed = torch.cat(packed) if len(packed) > 1 else packed[0]
        # (the kernel's fast path takes bfloat16 activations and scales; float32 is a slow reference)
        self._scales = torch.cat(scales).transpose(0, 1).contiguous().to(torch.bfloat16)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float().clone())
        self.packed_bytes = self._packed.untyped_storage().nbytes() + self._scales.untyped_storage().nbytes()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        rows = x.reshape(-1, self.in_features).to(torch.bfloat16)
        out = torch._weight_int4pack_mm_for_cpu(rows, self._packed, self.group, self._scales).float()
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*shape[:-1], self.out_features)

    @staticmethod
    def group_for(linear: nn.Linear) -> int | None:
        """The largest supported group that divides the input size, None if the layer cannot be packed."""
        if linear.out_features % 16:
            return None
        return next((g for g in (128, 64, 32) if linear.in_features % g == 0), None)


ROW_BLOCK = 4096      # rows of a weight quantized at once (a multiple of int4's 16)


def _row_blocks(weight: torch.Tensor, source: "SourcePages | None" = None):
    # blocks of rows; with `source`, each block's checkpoint pages are dropped once it is consumed
    for start in range(0, weight.shape[0], ROW_BLOCK):
        block = weight[start : start + ROW_BLOCK]
        yield block
        if source is not None:
            source.drop(block)


class Int8Part(nn.Module):
    """One of the linears fused into an `Int8Linear` (q, k, v; gate, up): the first part called
    with an input runs the fused product and keeps the other parts' slices for the same input
    object, so one activation quantization and one weight pass serve all of them."""

    def __init__(self, fused: Int8Linear, index: int, shared: dict):
        super().__init__()
        self.index, self.out_features, self.in_features = index, fused.splits[index], fused.in_features
        self._shared = shared            # {"fused", "input", "outputs", "pending"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self._shared
        # the same object (held here, so its id is not reused); these model families never write
        # into the input between the sibling calls (inference tensors keep no version counter)
        if s["input"] is not x or self.index not in s["pending"]:
            fused = s["fused"]
            s["outputs"] = fused(x).split(fused.splits, dim=-1)
            s["input"], s["pending"] = x, set(range(len(fused.splits)))
        s["pending"].discard(self.index)
        out = s["outputs"][self.index]
        if not s["pending"]:
            s["input"] = s["outputs"] = None
        return out


#: Linear siblings that read the same input in the Llama/Qwen families: fused when all present.
FUSED = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


def _fuse(parent: nn.Module, bits: int, source: "SourcePages | None" = None) -> None:
    for names in FUSED:
        parts = [getattr(parent, n, None) for n in names]
        if not all(isinstance(p, nn.Linear) for p in parts):
            continue
        if len({p.in_features for p in parts}) != 1 or len({p.bias is None for p in parts}) != 1:
            continue
        shared = {"fused": Int8Linear(parts, bits, source), "input": None, "outputs": None, "pending": set()}
        parent.add_module("_".join(names) + "_fused", shared["fused"])   # counted, moved, saved with it
        for i, n in enumerate(names):
            setattr(parent, n, Int8Part(shared["fused"], i, shared))


class Bf16Embedding(nn.Module):
    """An embedding table stored in bfloat16, looked up into float32 (exact for bf16 checkpoints)."""

    def __init__(self, embedding: nn.Embedding):
        super().__init__()
        self.num_embeddings, self.embedding_dim = embedding.num_embeddings, embedding.embedding_dim
        self.padding_idx = embedding.padding_idx
        self.register_buffer("weight", embedding.weight.detach().to(torch.bfloat16).clone())

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return nn.functional.embedding(ids, self.weight).float()


# applying a precision


@dataclass
class Choice:
    """The precision a model runs in, why, and what its weights cost."""

    precision: str
    requested: str
    weight_bytes: int
    cpu: dict
    probe_ms: dict[str, dict[str, float]] = field(default_factory=dict)

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
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                for t in list(model.parameters()) + list(model.buffers())}
    packed = sum(m.packed_bytes for m in model.modules() if isinstance(m, (Int8Linear, Int4Linear)))
    return sum(storages.values()) + packed


def apply_precision(model, precision: str, activation_bits: int | None = None, role: str = "target",
                    **probe_options):
    """Convert `model` (in place) to `precision` ("auto" probes first, see `choose`); answers it.

    The chosen `Choice` is kept on the model (`precision_of`). Raises ValueError for an unknown
    precision, or int8 on a torch build without fbgemm.
    """
    if precision not in CHOICES:
        raise ValueError(f"precision {precision!r} is not one of {', '.join(CHOICES)}")
    requested, probe = precision, {}
    on_cpu = all(p.device.type == "cpu" for p in model.parameters())
    if precision == "auto":
        # the probe and the int8 kernels are the CPU's; an accelerator takes bfloat16
        precision, probe = choose(model, role=role, **probe_options) if on_cpu else ("bfloat16", {})
    if precision in ("int8", "int4") and not on_cpu:
        raise ValueError(f"precision {precision} runs on the CPU only; use bfloat16 on an accelerator")
    _convert(model, precision, activation_bits)
    release_freed_memory()
    model._specmemo_precision = Choice(precision, requested, weight_bytes(model), cpu_features().as_dict(), probe)
    return model


def _convert(model, precision: str, activation_bits: int | None = None) -> None:
    if precision == "float32":
        model.float()
    elif precision == "bfloat16":
        model.to(torch.bfloat16)
    elif precision in ("int8", "int4"):
        if not int8_supported():
            raise ValueError(f"precision {precision} needs torch's fbgemm quantized engine, absent from this build")
        if precision == "int4" and not int4_supported():
            raise ValueError("precision int4 needs torch's CPU int4 weight-only kernel, absent from this build")
        _quantize_linears(model, activation_bits or (8 if cpu_features().vnni else 7), four_bit=precision == "int4")
        if precision == "int8":
            use_rowwise_attention(model)     # with exact rows, exact attention: see attention.py
    else:
        raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    model.eval()


def _quantize_linears(model, bits: int, four_bit: bool = False) -> None:
    # every nn.Linear -> Int8Linear (the tied LM head too: it gets its own int8 copy), or with
    # `four_bit` Int4Linear where its shape packs (Int8Linear elsewhere); every nn.Embedding ->
    # Bf16Embedding; what remains (norms, rotary buffers) -> float32. The source weights' pages
    # are dropped as each module is converted (`SourcePages`).
    source = SourcePages()
    for parent in list(model.modules()):
        if not four_bit:
            _fuse(parent, bits, source)
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                group = Int4Linear.group_for(child) if four_bit else None
                setattr(parent, name, Int4Linear(child, group, source) if group else Int8Linear(child, bits, source))
            elif isinstance(child, nn.Embedding):
                setattr(parent, name, Bf16Embedding(child))
                source.drop(child.weight)
    for module in model.modules():
        if not isinstance(module, (Int8Linear, Int4Linear, Int8Part, Bf16Embedding)):
            for name, param in list(module.named_parameters(recurse=False)):
                if param.dtype != torch.float32:
                    module._parameters[name] = nn.Parameter(param.detach().float(), requires_grad=False)
            for name, buf in list(module.named_buffers(recurse=False)):
                if buf is not None and buf.is_floating_point() and buf.dtype != torch.float32:
                    module._buffers[name] = buf.float()


class SourcePages:
    """Drops the resident pages of weights a conversion has consumed, when they lie in a read-only
    file mapping of a safetensors checkpoint (transformers maps the file and reads it lazily).

    Without this a conversion would end holding every page of the float checkpoint it read beside
    the quantized model: ~3 GB of file pages for a 1.5B bf16 target on top of its 2 GB int8 copy.
    `madvise(MADV_DONTNEED)` on a private file mapping only forgets pages: a later read faults
    them in again from the file (a tied LM head read after its embedding, say). Only weights the
    conversion has just replaced are dropped, and the loader never writes into weights, so what
    comes back is what was there. Anything outside such a mapping (heap, anonymous memory) is
    left alone. Linux only; elsewhere a no-op."""

    MADV_DONTNEED = 4

    def __init__(self) -> None:
        self.maps: list[tuple[int, int]] = []
        self.dropped = 0
        try:
            with open("/proc/self/maps") as f:
                for line in f:
                    fields = line.split()
                    if len(fields) >= 6 and fields[-1].endswith(".safetensors") and fields[1].endswith("p"):
                        start, end = (int(x, 16) for x in fields[0].split("-"))
                        self.maps.append((start, end))
            self.madvise = ctypes.CDLL(None, use_errno=True).madvise if self.maps else None
        except (OSError, AttributeError):
            self.maps, self.madvise = [], None
        self.page = os.sysconf("SC_PAGE_SIZE") if self.maps else 4096

    def drop(self, *tensors: torch.Tensor) -> None:
        for t in tensors:
            if self.madvise is None or t.device.type != "cpu" or t.numel() == 0:
                continue
            start = t.data_ptr()
            end = start + t.numel() * t.element_size()
            if not any(lo <= start and end <= hi for lo, hi in self.maps):
                continue
            first = -(-start // self.page) * self.page          # whole pages inside the tensor only
            last = end // self.page * self.page
            if last > first and self.madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first),
                                             self.MADV_DONTNEED) == 0:
                self.dropped += last - first


def release_freed_memory() -> bool:
    """Hand the heap memory freed by a conversion back to the OS (glibc keeps it otherwise, and a
    zygote's forks would share the garbage); answers whether it could (glibc only)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.malloc_trim(0))
    except (OSError, AttributeError):
        return False


# the probe


def _layers_and_head(model) -> tuple[nn.Module, int, nn.Module]:
    base = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    return base.layers[0], len(base.layers), model.get_output_embeddings()


def _supported(role: str) -> list[str]:
    # int4 only for a draft: its cost grows with M, and its rows are not promised independent
    candidates = ["float32", "bfloat16"]
    if int8_supported():
        candidates.append("int8")
    if role == "draft" and int4_supported():
        candidates.append("int4")
    return candidates


def choose(
    model,
    gamma_max: int = 8,
    candidates: list[str] | None = None,
    repeats: int = 3,
    clock: Callable[[], float] = time.perf_counter,
    role: str = "target",
) -> tuple[str, dict[str, dict[str, float]]]:
    """The fastest precision for `model` here, and the probe's estimates in ms per forward.

    For each candidate a copy of the first decoder layer and of a slice of the LM head (its time
    scaled to the whole head) is converted and timed (median of `repeats`) on M = 1 and M = γ_max + 1 new tokens after a 64-token context;
    a forward costs n_layers · t_layer + t_head. A target's score is t(1) + t(γ_max + 1) (plain
    steps and verifications); a draft's is t(1), its proposals being one token per forward.
    `role` ("target" or "draft") also decides the candidates (int4 drafts only). `clock` is the
    timing source (tests replace it).
    """
    layer, n_layers, head = _layers_and_head(model)
    config = model.config.get_text_config(decoder=True)
    hidden = config.hidden_size
    candidates = candidates or _supported(role)
    probe: dict[str, dict[str, float]] = {}
    for precision in candidates:
        sample, scale = _head_sample(head)
        part = nn.ModuleDict({"layer": copy.deepcopy(layer), "head": sample})
        _convert(part, precision)
        dtype = torch.bfloat16 if precision == "bfloat16" else torch.float32
        times = {}
        for m in (1, gamma_max + 1):
            times[f"M={m}"] = _time_part(part, config, hidden, m, dtype, repeats, clock) * n_layers
            times[f"M={m}"] += _time_head(part["head"], hidden, m, dtype, repeats, clock) * scale
        probe[precision] = {k: round(v * 1e3, 3) for k, v in times.items()}
        del part
    def score(p: str) -> float:
        return probe[p]["M=1"] if role == "draft" else sum(probe[p].values())

    return min(probe, key=score), probe


HEAD_SAMPLE = 8      # the probe times 1/8 of the LM head's rows and scales (a GEMV/GEMM is linear in rows)


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


def _median(samples: list[float]) -> float:
    return sorted(samples)[len(samples) // 2]


def _time_head(head, hidden: int, m: int, dtype, repeats: int, clock) -> float:
    x = torch.randn(1, m, hidden).to(dtype)
    samples = []
    with torch.inference_mode():
        head(x)
        for _ in range(repeats):
            start = clock()
            head(x)
            samples.append(clock() - start)
    return _median(samples)


def _time_part(part, config, hidden: int, m: int, dtype, repeats: int, clock) -> float:
    # one decoder layer over m new tokens after a 64-token context (a DynamicCache prefilled once)
    from transformers import DynamicCache

    layer = part["layer"]
    head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    context = 64
    samples = []
    with torch.inference_mode():
        for i in range(repeats + 1):
            cache = DynamicCache(config=config)
            kv_heads = config.num_key_value_heads
            cache.update(torch.zeros(1, kv_heads, context, head_dim, dtype=dtype),
                         torch.zeros(1, kv_heads, context, head_dim, dtype=dtype), 0)
            x = torch.randn(1, m, hidden).to(dtype)
            positions = torch.arange(context, context + m).view(1, m)
            cos_sin = _rotary(config, positions, dtype, head_dim)
            start = clock()
            layer(x, attention_mask=None, position_ids=positions, use_cache=True,
                  position_embeddings=cos_sin, **{_cache_name(layer): cache})
            samples.append(clock() - start)
    return _median(samples[1:])


def _cache_name(layer) -> str:
    return "cache" if "cache" in inspect.signature(layer.forward).parameters else "past_key_values"


def _rotary(config, positions, dtype, head_dim: int):
    # cos and sin of the rotary angles (their values matter little: this only times the layer)
    base = float(getattr(config, "rope_theta", None) or 10000.0)
    angles = positions.float()[..., None] / (base ** (torch.arange(0, head_dim, 2).float() / head_dim))
    emb = torch.cat([angles, angles], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)
