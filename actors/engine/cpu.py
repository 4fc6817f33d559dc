"""The CPU this process runs on: its model, the SIMD flags that decide which kernels are fast,
and whether the int8 and int4 kernels (native/q8.c, native/q4.c) have a fast path here."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch


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
        return {
            "model": self.model,
            "flags": list(self.flags),
            "capability": self.capability,
            "vnni": self.vnni,
            "bf16": self.bf16,
        }


_FLAGS_OF_NOTE = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_bf16",
    "amx_int8",
    "amx_tile",
    "asimd",
    "sve",
    "bf16",
    "i8mm",
)


@functools.cache
def cpu_features() -> CpuFeatures:
    """The CPU model name, its SIMD flags of note, and torch's dispatch capability."""
    model, flags = "unknown", set[str]()
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
    return CpuFeatures(model, tuple(f for f in _FLAGS_OF_NOTE if f in flags), torch.backends.cpu.get_cpu_capability())


def fast_integer_kernels() -> bool:
    """Whether `specmemo.native.q8` and `q4` have a SIMD path here (their portable C path is a
    slow reference)."""
    from specmemo.native import q4

    return q4.best_isa() != "scalar"
