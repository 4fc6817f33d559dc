"""The decoding engine's native kernels on the 1.5B target's shapes (docs/decoding-kernels.md).

    python bench/decoding_kernels.py [--threads 2]

- q4 (native/q4.c): the linears of 28 decoder layers and the LM head of Qwen2.5-1.5B's shapes
  (fused q/k/v, o, fused gate/up, down, head; random weights in groups of 32: ~960 MB, far beyond
  any cache), one pass with M rows for M = 1..9, 13 and 17, best of 5; reports ms, GB/s of
  codes+scales and the multiply-adds per second (weights x M / s): where that stops growing with
  M, the kernel runs at the CPU's integer dot-product rate, not at its memory's.
- row-wise attention: one forward's attention (28 layers, 12 query heads over 2 KV heads of 128,
  a 64-token context plus M new rows, and 200- and 1,262-row prefills) through
  native/rows_attention.c, through its portable loop (`rows_attention.simd(False)`: the same
  bits without the AVX2 path), and through the per-row torch loop it replaced
  (`attention.rowwise_attention` with the native path off; not at 1,262 rows), best of 5 (2 at
  1,262 rows).
- the draft's decoder step (native/decode_step.c): one forward of the pulled 0.5B draft in int4
  (the default pair's, from the models cache; skipped when it was not pulled) after 200 tokens,
  1 and 2 new tokens, through the native step and through the torch draft path, alternating,
  best of 5; its LM head alone; and the share of this repository's tokens a head cut to the
  lowest token ids would still propose (what a vocabulary-subset head, FR-Spec, would keep).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from specmemo.actors.engine import attention
from specmemo.actors.engine.precision import cpu_features
from specmemo.native import q4, rows_attention

LINEARS = [(2048, 1536), (1536, 1536), (17920, 1536), (1536, 8960)] * 28 + [(151936, 1536)]


def best(fn, repeats: int = 5) -> float:
    fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return min(samples)


def q4_rows(threads: int) -> list[str]:
    rng = np.random.default_rng(0)
    weights = [q4.pack((rng.standard_normal((n, k), dtype=np.float32) * 0.02), 32) for n, k in LINEARS]
    nbytes = sum(w.nbytes for w in weights)
    macs = sum(n * k for n, k in LINEARS)
    lines = [
        f"q4: {len(LINEARS)} linears, {nbytes / 1e6:.0f} MB of codes and scales, {macs / 1e9:.2f}G weights",
        "| M | ms | GB/s | G multiply-adds/s |",
        "|---:|---:|---:|---:|",
    ]
    for m in (*range(1, 10), 13, 17):
        xs = {k: np.ascontiguousarray(rng.standard_normal((m, k), dtype=np.float32)) for k in (1536, 8960)}
        outs = [np.empty((m, n), np.float32) for n, _ in LINEARS]
        seconds = best(lambda: [q4.linear(xs[w.k], w, threads, out=o) for w, o in zip(weights, outs)])
        lines.append(f"| {m} | {seconds * 1e3:.1f} | {nbytes / seconds / 1e9:.1f} | {macs * m / seconds / 1e9:.0f} |")
    return lines


def attention_rows() -> list[str]:
    layers, heads, kv_heads, dim, context = 28, 12, 2, 128, 64
    lines = [
        "row-wise attention, one forward (28 layers)",
        "| rows | native ms | native, portable loop ms | torch loop ms |",
        "|---|---:|---:|---:|",
    ]
    native = attention._native
    for rows, past in ((1, context), (5, context), (200, 0), (1262, 0)):
        keys = past + rows
        # views of cache layers with spare capacity, as a block cache hands them over
        key = torch.randn(1, kv_heads, keys + 16, dim)[:, :, :keys]
        value = torch.randn(1, kv_heads, keys + 16, dim)[:, :, :keys]
        query = torch.randn(1, heads, rows, dim)

        def forward():
            for _ in range(layers):
                attention.rowwise_attention(None, query, key, value, None)

        times = {}
        repeats = 5 if rows < 1000 else 2
        times["native"] = best(forward, repeats)
        simd = rows_attention.simd(False)  # the same bits without the CPU's SIMD path
        times["portable"] = best(forward, repeats)
        rows_attention.simd(simd)
        if rows < 1000:  # the per-row torch loop at 1,262 rows: minutes
            attention._native = lambda *a: False
            times["loop"] = best(forward)
            attention._native = native
        label = f"{rows} after {past}" if past else f"{rows} (prefill)"
        loop = f"{times['loop'] * 1e3:.1f}" if "loop" in times else "-"
        lines.append(f"| {label} | {times['native'] * 1e3:.1f} | {times['portable'] * 1e3:.1f} | {loop} |")
    return lines


def draft_rows() -> list[str]:
    import dataclasses

    from specmemo.actors.engine import lean
    from specmemo.actors.engine.kvcache import BlockKVCache
    from specmemo.actors.engine.models import ModelNotFound, load_model
    from specmemo.actors.engine.pull import default_pair_specs

    try:
        spec, _ = default_pair_specs(dtype="float32")
    except ModelNotFound as exc:
        return [f"draft decoder step: skipped ({exc})"]
    model, _ = load_model(dataclasses.replace(spec, precision="int4"))
    stack = lean._native_stack(model)
    if stack is None:
        return ["draft decoder step: skipped (this draft's layers do not qualify)"]
    lines = [
        "draft forward, 0.5B int4, after 200 tokens",
        "| new tokens | native step ms | torch path ms |",
        "|---:|---:|---:|",
    ]
    ids = torch.randint(0, 30000, (1, 200), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        cache = BlockKVCache(model.config)
        lean.forward(model, ids, cache, 1, exact=False)
        for rows in (1, 2):
            new = ids[:, :rows]

            def forward():
                lean.forward(model, new, cache, 1, exact=False)
                cache.rollback(rows)

            times = {}
            for name, value in (("native", stack), ("torch", None)):
                model.__dict__["_specmemo_native_stack"] = value
                times[name] = best(forward)
            model.__dict__["_specmemo_native_stack"] = stack
            lines.append(f"| {rows} | {times['native'] * 1e3:.1f} | {times['torch'] * 1e3:.1f} |")
        h = torch.zeros(1, 1, model.config.hidden_size)
        head = best(lambda: model.lm_head(h))
    lines += ["", f"of which the LM head ({model.lm_head.out_features} rows), one token: {head * 1e3:.1f} ms"]
    return lines + vocabulary_rows(spec)


def vocabulary_rows(spec) -> list[str]:
    """What a frequency-ranked subset of the draft's head (FR-Spec) would keep, ranked by token id
    (merge order in byte-level BPE; no corpus is fetched): the share of this repository's Python
    and Markdown tokens whose id is below K."""
    from pathlib import Path

    from specmemo.actors.engine.models import load_tokenizer

    tokenizer = load_tokenizer(spec)
    root = Path(__file__).resolve().parent.parent
    kinds = {"Python": sorted(root.glob("actors/**/*.py")), "Markdown": sorted(root.glob("docs/*.md"))}
    sizes = (16384, 32768, 65536)
    lines = [
        "",
        "draft vocabulary subsets by token id: tokens of this repository covered",
        "| text | tokens | " + " | ".join(f"id < {k}" for k in sizes) + " |",
        "|---|---:|" + "---:|" * len(sizes),
    ]
    for kind, files in kinds.items():
        ids = np.concatenate([np.asarray(tokenizer(f.read_text())["input_ids"]) for f in files])
        lines.append(f"| {kind} | {len(ids)} | " + " | ".join(f"{(ids < k).mean():.3f}" for k in sizes) + " |")
    return lines


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cpu = cpu_features()
    print(f"CPU {cpu.model}, flags {', '.join(cpu.flags)}, q4 path {q4.best_isa()}, {args.threads} threads")
    for line in q4_rows(args.threads) + [""] + attention_rows() + [""] + draft_rows():
        print(line, flush=True)


if __name__ == "__main__":
    main()
