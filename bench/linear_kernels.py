"""Which linear-layer kernels serve M = 1..9 new tokens near the memory bound on this CPU (and a 64-row prefill).

    python bench/linear_kernels.py [--layers 8] [--threads 2]

Times the linear layers of `--layers` decoder layers of the 1.5B target's shapes (q, k, v, o,
gate, up, down: 46M parameters a layer; 8 layers are far larger than any cache, as in a real
forward) for M = 1, 5, 9 and 64 rows, in each candidate:

- float32 and bfloat16 `F.linear` (oneDNN / MKL);
- int8 dynamic, per-tensor activation scale: torch's `quantize_dynamic` on fbgemm (rows coupled);
- int8 dynamic, per-token activation scale, on fbgemm (`quantized::linear_with_input_q_dq_qweight_dq_output_fp32`,
  rows independent: what specmemo's `Int8Linear` ran on before native/q8.c);
- int8 dynamic, per-token activation scale: specmemo's `Int8Linear` (native/q8.c, rows independent);
- int8 dynamic, per-token, torchao's `Int8DynamicActivationInt8WeightConfig` (if torchao is
  installed: it is not a dependency);
- int8 and int4 weight-only: `torch._weight_int8pack_mm`, `torch._weight_int4pack_mm_for_cpu`;
- int4 weights, per-token int8 activations: specmemo's `Int4Linear` (native/q4.c, groups of 32,
  rows independent).

Reports ms per pass over all the layers' linears and the effective weight bandwidth (GB/s).
Prints a markdown table; the numbers go into docs/benchmarks.md by hand (they pick the kernels).
"""

from __future__ import annotations

import argparse
import copy
import time
import warnings

import torch
from torch import nn

from specmemo.actors.engine.precision import Int4Linear, Int8Linear, cpu_features
from specmemo.native import q8

SHAPES = [(1536, 1536), (1536, 256), (1536, 256), (1536, 1536), (1536, 8960), (1536, 8960), (8960, 1536)]


def layers(n: int) -> list[nn.Linear]:
    torch.manual_seed(0)
    out = []
    for _ in range(n):
        for k, m in SHAPES:
            linear = nn.Linear(k, m, bias=False)
            nn.init.normal_(linear.weight, std=0.02)
            out.append(linear)
    return out


def time_pass(modules, rows: int, dtype, repeats: int = 5) -> float:
    xs = {k: torch.randn(rows, k).to(dtype) for k, _ in SHAPES}
    samples = []
    with torch.inference_mode():
        for _ in range(repeats + 1):
            start = time.perf_counter()
            for mod in modules:
                mod(xs[mod.in_features if hasattr(mod, "in_features") else mod.k])
            samples.append(time.perf_counter() - start)
    return sorted(samples[1:])[repeats // 2]


class _Packed(nn.Module):
    def __init__(self, linear: nn.Linear, bits: int):
        super().__init__()
        self.k = linear.in_features
        w = linear.weight.detach()
        if bits == 8:
            scale = w.abs().amax(1) / 127
            self.w = torch.round(w / scale[:, None]).to(torch.int8)
            self.scale = scale
            self.fn = lambda x: torch._weight_int8pack_mm(x, self.w, self.scale)
        else:
            group = 128
            n, k = w.shape
            g = w.reshape(n, k // group, group)
            lo, hi = g.amin(-1), g.amax(-1)
            scale = ((hi - lo) / 15).clamp_min(1e-8)
            q = torch.clamp(torch.round((g - lo[..., None]) / scale[..., None]), 0, 15).to(torch.int32).reshape(n, k)
            packed = torch._convert_weight_to_int4pack_for_cpu(q, 1)
            zeros = lo + 8 * scale
            sz = torch.stack([scale, zeros], -1).transpose(0, 1).contiguous().to(torch.bfloat16)
            self.fn = lambda x: torch._weight_int4pack_mm_for_cpu(x, packed, group, sz)

    def forward(self, x):
        return self.fn(x)


class _FbgemmPerToken(nn.Module):
    """int8 weights (per channel, q8's codes) x per-token 8-bit activations on fbgemm: codes
    round(x / s) pass exactly as u8 codes with zero point 128 (64 and 7 bits without VNNI, where
    fbgemm's AVX2 path saturates int16 pair sums)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features = linear.in_features
        codes, scale = q8.quantize(linear.weight.detach().float().numpy())
        with warnings.catch_warnings():  # quantized tensors' creation functions warn of deprecation
            warnings.simplefilter("ignore", UserWarning)
            quantized = torch._make_per_channel_quantized_tensor(
                torch.from_numpy(codes), torch.from_numpy(scale).double(), torch.zeros(len(scale), dtype=torch.long), 0
            )
            self.packed = torch.ops.quantized.linear_prepack(quantized, None)
        self.q_max, self.zero = (127.0, 128) if cpu_features().vnni else (63.0, 64)

    def forward(self, x):
        scale = x.abs().amax(dim=1, keepdim=True).clamp_min(1e-30) / self.q_max
        out = torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(
            torch.round(x / scale), 1.0, self.zero, self.packed
        )
        return out * scale


def candidates(base: list[nn.Linear], torchao: bool):
    yield "float32 F.linear", base, torch.float32
    yield "bfloat16 F.linear", [copy.deepcopy(m).to(torch.bfloat16) for m in base], torch.bfloat16
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        per_tensor = [
            torch.ao.quantization.quantize_dynamic(nn.Sequential(m), {nn.Linear}, dtype=torch.qint8)[0] for m in base
        ]
    yield "int8 per-tensor (quantize_dynamic, fbgemm)", per_tensor, torch.float32
    del per_tensor
    yield "int8 per-token (fbgemm)", [_FbgemmPerToken(m) for m in base], torch.float32
    yield "int8 per-token (specmemo Int8Linear, native q8)", [Int8Linear(m) for m in base], torch.float32
    if torchao:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

        mods = [copy.deepcopy(m) for m in base]
        for m in mods:
            quantize_(nn.Sequential(m), Int8DynamicActivationInt8WeightConfig())
        yield "int8 per-token (torchao)", mods, torch.float32
    yield "int8 weight-only (_weight_int8pack_mm)", [_Packed(m, 8) for m in base], torch.float32
    yield "int4 weight-only (_weight_int4pack_mm_for_cpu, group 128)", [_Packed(m, 4) for m in base], torch.bfloat16
    yield "int4 per-token (specmemo Int4Linear, native q4, group 32)", [Int4Linear(m, 32) for m in base], torch.float32


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--torchao", action="store_true", help="also torchao (must be installed)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    base = layers(args.layers)
    params = sum(m.weight.numel() for m in base)
    cpu = cpu_features()
    print(
        f"CPU {cpu.model}, flags {', '.join(cpu.flags)}, torch {torch.__version__} ({cpu.capability}), "
        f"{args.threads} threads, {args.layers} layers = {params / 1e6:.0f}M weights"
    )
    print("| kernel | M=1 ms | M=5 ms | M=9 ms | M=64 ms | M=1 weight GB/s |")
    print("|---|---:|---:|---:|---:|---:|")
    bytes_per = {"float32": 4, "bfloat16": 2, "int8": 1, "int4": 0.5}
    for name, mods, dtype in candidates(base, args.torchao):
        times = [time_pass(mods, m, dtype) for m in (1, 5, 9, 64)]
        width = next(v for k, v in bytes_per.items() if name.startswith(k))
        print(
            f"| {name} | " + " | ".join(f"{t * 1e3:.1f}" for t in times) + " | "
            f"{params * width / times[0] / 1e9:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
