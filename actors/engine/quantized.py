"""Quantized modules (the math is in `precision`'s doc; `conversion.py` puts them in a model).

`Int8Linear` (per-channel int8 weights, per-token int8 activations, native/q8.c), `Int4Linear`
(int4 weights in groups, per-token int8 activations, native/q4.c), `LinearPart` (one output of
a fused projection), `Bf16Embedding`; `SourcePages` drops the pages of the float weights a
conversion consumed.
"""

from __future__ import annotations

import ctypes
import os

import numpy as np
import torch
from torch import nn

from specmemo.native import q4, q8

# int8 modules


class Int8Linear(nn.Module):
    """A linear layer with per-channel int8 weights and per-token 8-bit activations
    (`specmemo.native.q8`: exact integer dot products, so each row is independent of the others;
    the weights are read once per call, so a forward of a few tokens costs about what one costs).

    Given several linears of one input size it is their fusion: one product of the concatenated
    weights (output channels are independent, so each part is exactly what it would be alone).
    """

    def __init__(self, linear: nn.Linear | list[nn.Linear], arrays: dict[str, np.ndarray] | None = None):
        super().__init__()
        parts, bias = _parts(linear)
        self.splits = [p.out_features for p in parts]
        self.in_features, self.out_features = parts[0].in_features, sum(self.splits)
        arrays = arrays or self.quantize(parts)  # `arrays`: what `quantize` answered before
        self.weights = q8.Q8Weights.from_arrays(self.out_features, self.in_features, arrays)
        self.register_buffer("bias", bias)
        self.packed_bytes = self.weights.nbytes

    @staticmethod
    def quantize(parts: list[nn.Linear], source: SourcePages | None = None) -> dict[str, np.ndarray]:
        """The parts' rows, stacked, quantized into q8's layout in C (`q8.pack_rows`: bit for bit
        `q8.quantize` then `q8.pack`), a block of rows at a time: a float32 copy of a whole LM head
        (152k x 1.5k) would be several times the int8 result."""
        weights = q8.zeros(sum(p.out_features for p in parts), parts[0].in_features)
        for row, rows, bfloat16 in _row_blocks(parts, source):
            q8.pack_rows(weights, row, rows, bfloat16)
        return weights.arrays()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        rows = x.reshape(-1, self.in_features).float().contiguous()
        out = torch.empty(rows.shape[0], self.out_features)
        q8.linear_ptr(rows.shape[0], self.weights, rows.data_ptr(), out.data_ptr(), torch.get_num_threads())
        if self.bias is not None:
            out += self.bias
        return out.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}"


class Int4Linear(nn.Module):
    """A linear layer with 4-bit weights (asymmetric, a float16 scale and zero per output row and
    group of `group` inputs) and per-token 8-bit activations: `specmemo.native.q4` (exact integer
    dot products, so each row is independent of the others, as with `Int8Linear`; the weights are
    read once per call, so a forward of a few tokens costs about what one costs).

    Given several linears of one input size (each with a multiple of 16 outputs) it is their
    fusion, as `Int8Linear` is.
    """

    def __init__(
        self, linear: nn.Linear | list[nn.Linear], group: int = 32, arrays: dict[str, np.ndarray] | None = None
    ):
        super().__init__()
        parts, bias = _parts(linear)
        self.splits = [p.out_features for p in parts]
        self.in_features, self.out_features, self.group = parts[0].in_features, sum(self.splits), group
        arrays = arrays or self.pack(parts, group)  # `arrays`: what `pack` answered before
        self.weights = q4.Q4Weights.from_arrays(self.out_features, self.in_features, group, arrays)
        # torch views of the arrays: their data_ptr() is what each call passes (and forks share them)
        self._codes, self._scales = torch.from_numpy(self.weights.codes), torch.from_numpy(self.weights.scales)
        self.register_buffer("bias", bias)
        self.packed_bytes = self.weights.nbytes

    def forward(self, x: torch.Tensor, blocks: np.ndarray | None = None) -> torch.Tensor:
        """With `blocks` (int64, 16-row output blocks, each once) only their outputs, bit for bit
        what the whole product gives there; −inf in every other output (a vocabulary subset's head)."""
        shape = x.shape
        rows = x.reshape(-1, self.in_features).float().contiguous()
        if blocks is None:
            out = torch.empty(rows.shape[0], self.out_features)
        else:
            out = torch.full((rows.shape[0], self.out_features), float("-inf"))
        q4.linear_ptr(
            rows.shape[0],
            self.weights,
            self._codes.data_ptr(),
            self._scales.data_ptr(),
            rows.data_ptr(),
            out.data_ptr(),
            torch.get_num_threads(),
            blocks=blocks,
        )
        if self.bias is not None:
            out += self.bias
        return out.reshape(*shape[:-1], self.out_features)

    @staticmethod
    def pack(parts: list[nn.Linear], group: int, source: SourcePages | None = None) -> dict[str, np.ndarray]:
        """The q4 codes and scales of the parts' rows, stacked (`specmemo.native.q4.pack`), each
        block of rows packed in place into the whole weight's arrays."""
        weights = q4.empty(sum(p.out_features for p in parts), parts[0].in_features, group)
        for row, rows, bfloat16 in _row_blocks(parts, source):  # rows pack alone
            q4.pack(rows, group, bfloat16, out=weights.rows(row, row + len(rows)))
        return {"codes": weights.codes, "scales": weights.scales}

    @staticmethod
    def group_for(linear: nn.Linear, preferred: int = 32) -> int | None:
        """The largest group up to `preferred` that divides the input size (32 keeps a Q4_K file's
        sub-blocks: their 16 levels per 32 inputs are what a group of 32 represents), None if the
        layer cannot be packed (outputs not a multiple of 16)."""
        if linear.out_features % q4.BLOCK_ROWS:
            return None
        return next((g for g in (128, 64, 32, 16, 8) if g <= preferred and linear.in_features % g == 0), None)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, group={self.group}"


def _parts(linear: nn.Linear | list[nn.Linear]) -> tuple[list[nn.Linear], torch.Tensor | None]:
    # the linears a quantized module stands for (several of one input size: their fusion), and
    # their biases end to end in float32
    parts = linear if isinstance(linear, list) else [linear]
    assert len({p.in_features for p in parts}) == 1 and len({p.bias is None for p in parts}) == 1
    bias = None if parts[0].bias is None else torch.cat([p.bias.detach().float() for p in parts])
    return parts, bias


ROW_BLOCK = 4096  # rows of a weight quantized at once (a multiple of int4's 16)


def _row_blocks(parts: list[nn.Linear], source: SourcePages | None = None):
    """(first row, rows, bfloat16) for each block of ROW_BLOCK rows of the parts' weights, stacked, as
    the C packers read them: a bfloat16 block as its bit patterns (uint16, no float32 copy), any
    other as float32. With `source`, each block's checkpoint pages are dropped once it is packed."""
    row = 0
    for part in parts:
        weight = part.weight.detach()
        for start in range(0, weight.shape[0], ROW_BLOCK):
            block = weight[start : start + ROW_BLOCK]
            if block.dtype == torch.bfloat16:
                yield row, block.contiguous().view(torch.int16).numpy().view(np.uint16), True
            else:
                yield row, block.float().numpy(), False
            row += len(block)
            if source is not None:
                source.drop(block)


class LinearPart(nn.Module):
    """One of the linears fused into an `Int8Linear` or `Int4Linear` (q, k, v; gate, up): the first part called
    with an input runs the fused product and keeps the other parts' slices for the same input
    object, so one activation quantization and one weight pass serve all of them."""

    def __init__(self, fused: Int8Linear | Int4Linear, index: int, shared: dict):
        super().__init__()
        self.index, self.out_features, self.in_features = index, fused.splits[index], fused.in_features
        self._shared = shared  # {"fused", "input", "outputs", "pending"}

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


class Bf16Embedding(nn.Module):
    """An embedding table stored in bfloat16, looked up into float32 (exact for bf16 checkpoints)."""

    def __init__(self, embedding: nn.Embedding):
        super().__init__()
        self.num_embeddings, self.embedding_dim = embedding.num_embeddings, embedding.embedding_dim
        self.padding_idx = embedding.padding_idx
        self.register_buffer("weight", embedding.weight.detach().to(torch.bfloat16).clone())

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return nn.functional.embedding(ids, self.weight).float()


#: Files whose private mappings `SourcePages` may drop pages of: checkpoints, and stored
#: conversions (`converted.py`).
MAPPED = (".safetensors", "specmemo-converted.bin")


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
                    if len(fields) >= 6 and fields[-1].endswith(MAPPED) and fields[1].endswith("p"):
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
            first = -(-start // self.page) * self.page  # whole pages inside the tensor only
            last = end // self.page * self.page
            if (
                last > first
                and self.madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), self.MADV_DONTNEED) == 0
            ):
                self.dropped += last - first


def release_freed_memory() -> bool:
    """Hand the heap memory freed by a conversion back to the OS (glibc keeps it otherwise, and a
    zygote's forks would share the garbage); answers whether it could (glibc only)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.malloc_trim(0))
    except (OSError, AttributeError):
        return False
