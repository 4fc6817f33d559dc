"""Chains and trees priced on another machine's forward costs: the default pair's architectures,
timed there with random weights, and the acceptance rates a trees run measured here.

    python bench/device_costs.py time --device cuda --out costs.json     # on the machine to price
    python bench/device_costs.py report costs.json [--rates bench/results/specdecode-trees.json]

`time` builds the draft's and the target's architectures (Qwen2.5-Coder 0.5B and 1.5B, the
default pair's; `--arch tiny` for a quick check) with random weights in `--dtype` on `--device`,
prefills a 64-token context, and times one forward of M new tokens after it (the target for each M
in `--ms`, the draft for M = 1 and 2; median of `--repeats`, synchronized), through transformers'
own forward with sdpa attention: what a forward on that machine costs, whatever the weights hold.
It needs torch and transformers only, so it runs where this repository is not installed: an
accelerator lent for a few minutes, whose machine the pulled weights (1.6 GB) cannot reach.

`report` prices, under the rank model (`memory_model.tree_speedup`), the fastest chain and the
fastest tree on those costs with the rates of a trees run (the widest tree rows', by prompt kind)
and writes the section "Token trees priced on another machine's costs" of docs/benchmarks.md
(`--no-docs`: print only). Measured tok/s needs the pair's weights on that machine; this is the
model's answer to "would trees pay there", on that machine's own t_t(M) and t_d.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Token trees priced on another machine's costs"

# the default pair's architectures (the pulled checkpoints' config.json), and a tiny one for checks
ARCHS = {
    "draft": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14),
    "target": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12),
}
COMMON = dict(
    num_key_value_heads=2,
    vocab_size=151936,
    max_position_embeddings=32768,
    rope_theta=1000000.0,
    rms_norm_eps=1e-06,
    tie_word_embeddings=False,
)
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=512)
CONTEXT = 64


def build(role: str, arch: str, device: str, dtype):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    fields = {**COMMON, **ARCHS[role], **(TINY if arch == "tiny" else {})}
    config = Qwen2Config(**fields)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0 if role == "draft" else 1)
    with torch.device(device):  # initialized where it runs (a 1.5B model's random init is slow on a CPU)
        return Qwen2ForCausalLM(config).to(dtype=dtype).eval()


def forward_seconds(model, ms: list[int], repeats: int, device: str) -> dict[int, float]:
    """Median seconds of one forward of m new tokens (all m rows' logits) after CONTEXT tokens."""
    import torch
    from transformers import DynamicCache

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    vocab = model.config.vocab_size
    out = {}
    # `past_key_values`, not the newer `cache`: the accelerator's transformers may predate it
    warnings.filterwarnings("ignore", message=".*past_key_values.*deprecated", category=FutureWarning)
    with torch.inference_mode():
        cache = DynamicCache(config=model.config)
        model(input_ids=torch.arange(CONTEXT, device=device).view(1, -1) % vocab, past_key_values=cache)
        for m in ms:
            ids = (torch.arange(m, device=device).view(1, -1) + CONTEXT) % vocab
            samples = []
            for i in range(repeats + 2):  # two warm-ups
                sync()
                start = time.perf_counter()
                model(input_ids=ids, past_key_values=cache, logits_to_keep=m)
                sync()
                if i >= 2:
                    samples.append(time.perf_counter() - start)
                cache.crop(-m)  # drop the m new tokens (a negative count: every transformers 5.x)
            out[m] = statistics.median(samples)
    return out


def time_costs(args) -> dict:
    import torch

    dtype = getattr(torch, args.dtype)
    device = args.device
    cuda = device.startswith("cuda")
    name = torch.cuda.get_device_name(device) if cuda else f"CPU, {torch.get_num_threads()} threads"
    result = {"device": name, "torch": torch.__version__, "dtype": args.dtype, "arch": args.arch, "context": CONTEXT}
    for role, ms in (("target", args.ms), ("draft", [1, 2])):
        model = build(role, args.arch, device, dtype)
        result[f"{role}_s"] = {str(m): s for m, s in forward_seconds(model, ms, args.repeats, device).items()}
        del model
        print(f"{role}: " + ", ".join(f"M={m} {1e3 * s:.2f} ms" for m, s in result[f"{role}_s"].items()), flush=True)
    result["finished"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return result


def priced(costs: dict, rates_run: dict) -> tuple[str, int]:
    """The trees benchmark's speed table (`specdecode_trees.speed_table`) on `costs`: the measured
    target curve (level 1) and the draft's one-token forward as t_d, nodes up to the largest M
    timed less one."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from specdecode_trees import speed_table

    from specmemo.actors.engine.memory_model import CostCurve

    shape = {int(m): s for m, s in costs["target_s"].items()}
    nodes_max = max(shape) - 1
    curve = CostCurve.from_anchors(shape, draft_s=costs["draft_s"]["1"])
    return speed_table(rates_run["rows"], curve, nodes_max), nodes_max


def report(args) -> str:
    costs = json.loads(Path(args.costs).read_text())
    rates_run = json.loads(Path(args.rates).read_text())
    table, nodes_max = priced(costs, rates_run)
    if not table:
        raise SystemExit(f"{args.rates}: no chain and tree rows with rates to price")
    forwards = ", ".join(f"M = {m}: {1e3 * s:.2f}" for m, s in costs["target_s"].items())
    body = (
        f"{SECTION}\n\nCommands (the first on the machine priced, the second here):\n\n"
        f"    python bench/device_costs.py time --device {args.device_label} --out costs.json\n"
        f"    python bench/device_costs.py report costs.json --rates {args.rates}\n\n"
        f"Timed {costs.get('finished', '?')} on {costs['device']}, torch {costs['torch']}, {costs['dtype']}, "
        f"transformers' forward with sdpa attention, random weights of {_arch_text(costs)}, after "
        f"{costs['context']} tokens of context (median of each M's repeats). Target forward, ms: {forwards}; draft "
        f"forward, M = 1: {1e3 * costs['draft_s']['1']:.2f} ms. Rates: the widest tree rows of `{args.rates}` "
        f"(measured on this repository's CPU run with the real pair). N up to {nodes_max}.\n\n{table}\n"
    )
    if not args.no_docs:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from specdecode import replace_section

        replace_section(ROOT / "docs" / "benchmarks.md", SECTION, body)
    return body


def _arch_text(costs: dict) -> str:
    return "a tiny check architecture" if costs.get("arch") == "tiny" else "the default pair's architectures"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("time", help="time the pair's architectures here")
    t.add_argument("--device", default="cuda")
    t.add_argument("--dtype", default="bfloat16")
    t.add_argument("--arch", choices=("pair", "tiny"), default="pair")
    t.add_argument("--ms", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 3, 5, 9, 17, 33, 49])
    t.add_argument("--repeats", type=int, default=10)
    t.add_argument("--out", required=True)
    r = sub.add_parser("report", help="price chains and trees on timed costs")
    r.add_argument("costs")
    r.add_argument("--rates", default="bench/results/specdecode-trees.json")
    r.add_argument("--device-label", default="cuda", help="the --device the costs were timed with (for the docs)")
    r.add_argument("--no-docs", action="store_true")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.command == "time":
        result = time_costs(args)
        Path(args.out).write_text(json.dumps(result, indent=1))
    else:
        print(report(args))


if __name__ == "__main__":
    main()
