"""Converting a model's linears to `Int8Linear`/`Int4Linear` (`quantize_linears`), and which of
a checkpoint's linears a 4-bit conversion keeps at 8 bits (`finer_than_four_bits`).

Each converted linear's arrays may come from, or go to, a stored entry (`converted.py`), under
the module's qualified name (a fused projection under its `FUSED` name).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from .converted import Entry
from .quantized import Bf16Embedding, Int4Linear, Int8Linear, LinearPart, SourcePages, release_freed_memory

#: Linear siblings that read the same input in the Llama/Qwen families: fused when all present.
FUSED = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


class _Conversion:
    """One model's conversion: how each linear is quantized, and the stored entry it reads from or
    writes to (`converted.Entry`, None: no store)."""

    def __init__(self, four_bit: bool, eight: frozenset, entry: Entry | None):
        self.four_bit, self.eight, self.entry = four_bit, eight, entry
        self.source = SourcePages()

    def group(self, parts: list[nn.Linear]) -> int | None:
        """The q4 group the parts pack in together; 0 for int8; None for 4-bit parts that cannot
        pack together (a single linear that cannot pack goes to int8)."""
        if not self.four_bit or any(id(p) in self.eight for p in parts):
            return 0
        groups = {Int4Linear.group_for(p) for p in parts}
        return groups.pop() if len(groups) == 1 else None

    def linear(self, name: str, parts: list[nn.Linear], group: int | None) -> Int8Linear | Int4Linear:
        def module(arrays):
            return Int4Linear(parts, group, arrays=arrays) if group else Int8Linear(parts, arrays=arrays)

        stored = self.entry.get(name) if self.entry is not None else None
        if stored is not None:
            try:
                made = module(stored)
            except (ValueError, KeyError, TypeError) as exc:  # stored arrays that do not fit this model: convert
                warnings.warn(f"converted weights of {name} do not fit ({exc}); converting again", stacklevel=2)
            else:
                return made
        arrays = Int4Linear.pack(parts, group, self.source) if group else Int8Linear.quantize(parts, self.source)
        if self.entry is not None:
            self.entry.put(name, **arrays)
        return module(arrays)

    def fuse(self, prefix: str, parent: nn.Module) -> None:
        for names in FUSED:
            found = [getattr(parent, n, None) for n in names]
            parts = [p for p in found if isinstance(p, nn.Linear)]
            if len(parts) != len(found):
                continue
            if len({p.in_features for p in parts}) != 1 or len({p.bias is None for p in parts}) != 1:
                continue
            group = self.group(parts)
            if group is None:
                continue  # each part alone: Int4Linear where it packs, Int8Linear elsewhere
            name = "_".join(names) + "_fused"
            fused = self.linear(prefix + name, parts, group)
            shared: dict[str, Any] = {"fused": fused, "input": None, "outputs": None, "pending": set()}
            parent.add_module(name, fused)  # counted, moved, saved with it
            for i, n in enumerate(names):
                setattr(parent, n, LinearPart(fused, i, shared))


def _convert_modules(named: list[tuple[str, nn.Module]], conversion: _Conversion) -> None:
    for prefix, parent in named:
        prefix = prefix + "." if prefix else ""
        conversion.fuse(prefix, parent)
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, conversion.linear(prefix + name, [child], conversion.group([child]) or 0))
            elif isinstance(child, nn.Embedding):
                setattr(parent, name, Bf16Embedding(child))
                conversion.source.drop(child.weight)
        if any(isinstance(c, (Int8Linear, Int4Linear)) for c in parent.children()):
            # the conversion's temporaries (tens of MB each) land in glibc's heap, which keeps
            # them after they are freed: give them back now, or the load peaks at 1.4x the end
            release_freed_memory()


def quantize_linears(model, four_bit: bool = False, entry: Entry | None = None) -> None:
    # every nn.Linear -> Int8Linear (the tied LM head too: it gets its own int8 copy), or with
    # `four_bit` Int4Linear where its shape packs and `finer_than_four_bits` does not name it
    # (Int8Linear elsewhere); every nn.Embedding -> Bf16Embedding; what remains (norms, rotary
    # buffers) -> float32. The source weights' pages are dropped as each module is converted
    # (`SourcePages`). With `entry` the quantized arrays come from it, or go into it.
    named = list(model.named_modules())
    linears = [[n, list(m.weight.shape)] for n, m in named if isinstance(m, nn.Linear)]
    if entry is not None and entry.hit and (entry.notes.get("linears") != linears or "eight" not in entry.notes):
        entry.forget("its linears are not this model's")
    eight: frozenset[int] = frozenset()
    if four_bit and entry is not None and entry.hit:
        stored_eight = set(entry.notes["eight"])
        eight = frozenset(id(m) for n, m in named if n in stored_eight)
    elif four_bit:
        eight = finer_than_four_bits(model)
    if entry is not None:  # int4: 5 bits a weight (codes, scale and zero); int8: a byte
        weights = sum(rows * columns for _, (rows, columns) in linears)
        entry.reserve(weights * 5 // 8 if four_bit else weights)
    try:
        _convert_modules(named, _Conversion(four_bit, eight, entry))
    except BaseException:
        if entry is not None:
            entry.abort()
        raise
    if entry is not None:
        entry.commit({"eight": [n for n, m in named if id(m) in eight], "linears": linears})
    for module in model.modules():
        if not isinstance(module, (Int8Linear, Int4Linear, LinearPart, Bf16Embedding)):
            for name, param in list(module.named_parameters(recurse=False)):
                if param.dtype != torch.float32:
                    module._parameters[name] = nn.Parameter(param.detach().float(), requires_grad=False)
            for name, buf in list(module.named_buffers(recurse=False)):
                if buf is not None and buf.is_floating_point() and buf.dtype != torch.float32:
                    module._buffers[name] = buf.float()


def levels_per_group(weight: torch.Tensor, group: int = 32, rows: int = 64) -> int:
    """The most distinct values in a group of `group` consecutive inputs of a row, over a sample
    of `rows` rows spread over the weight (16 for a 4-bit GGUF tensor such as Q4_K, up to 32 for
    a 6-bit one, `group` for float weights)."""
    n, k = weight.shape
    if k % group:
        return group
    sample = weight.detach()[:: max(1, n // rows)][:rows].float().reshape(-1, group)
    ordered = sample.sort(dim=-1).values
    return int((1 + (ordered[:, 1:] != ordered[:, :-1]).sum(-1)).max())


def finer_than_four_bits(model) -> frozenset[int]:
    """The ids of the linears to keep at 8 bits in an int4 conversion: in a checkpoint converted
    from a 4-bit file (most linears hold at most 16 values per group of 32: Q4_K's grid), the
    ones the file stored finer (Q4_K_M keeps v and half the down projections, and often the
    embedding/head, in 6 bits). Empty for float checkpoints: everything then goes to 4 bits."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    levels = {id(m): levels_per_group(m.weight) for m in linears}
    if sum(v <= 16 for v in levels.values()) * 2 < len(levels):
        return frozenset()
    return frozenset(i for i, v in levels.items() if v > 16)
