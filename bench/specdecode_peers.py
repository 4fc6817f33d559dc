"""Decoding speed on this CPU, by precision, against the peers, in one run.

    python bench/specdecode.py peers --code 4 --prose 4 --max-new-tokens 64

Same MT-Bench first turns (coding questions, and writing/roleplay/humanities questions as prose),
same thread count, greedy, exactly N new tokens (no stop token), prefill included:

- per precision (auto: what the default deployment picks on this machine, then bfloat16 and
  float32): the target alone (transformers `generate`), transformers assisted generation
  (`assistant_model=`, the first precision only unless --assisted-all), and the
  specmemo Engine as the default deployment runs it (adaptive γ from the cost curve, memory
  manager at the default budget, the draft's vocabulary subset, a prefix store of 128 tokens a
  model); with assisted generation also the Engine without the vocabulary subset and the Engine
  without the prefix store (the first prompt of a run finds the store empty; the others share
  the system prompt's tokens with it);
  float32 and bfloat16 run fewer new tokens (--slow-tokens): they are the reference points
  "today's default" and "bf16", not the product; each prompt goes through these methods in turn,
  so a busy spell of the shared machine falls on all of them alike;
- llama.cpp (`llama-cpp-python`, built from source by pip into its own venv, run by
  `bench/llamacpp_peer.py`) on the same Q4_K_M GGUF files and the same prompt token ids: the
  target alone, the draft alone, and the target with its prompt-lookup drafter (the binding has
  no draft-model speculative mode);
- per precision, one forward of M new tokens after a 64-token context, M = 1, 5, 9, target and
  draft (median of 5; the draft on its own path and head, and with a vocabulary subset also
  through every row of its head).

Reports tok/s, ratios, α, mean γ, tokens per step, weights + KV bytes, and how many outputs equal
the same-precision target's own greedy output. A row whose γ stayed 0 is labelled "no
speculation". Writes bench/results/specdecode-peers.json and the "Decoding speed on the CPU"
section of docs/benchmarks.md (other sections are kept).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from specmemo.actors.engine import Engine
from specmemo.actors.engine.draft import DraftCore
from specmemo.actors.engine.kvcache import CacheHolder
from specmemo.actors.engine.models import load_pair
from specmemo.actors.engine.precision import cpu_features, precision_of
from specmemo.actors.engine.prefix import DEFAULT_TOKENS as DEFAULT_PREFIX_TOKENS
from specmemo.actors.engine.pull import DRAFT, TARGET, default_cache_dir, default_pair_specs

sys.path.insert(0, str(Path(__file__).resolve().parent))
from specdecode import first_turn_ids, generate_greedy, mtbench_questions, replace_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Decoding speed on the CPU (precision and peers)"
PROSE = ("writing", "roleplay", "humanities")
LLAMA_VERSION = "0.3.36"


def pick_prompts(tokenizer, code: int, prose: int) -> list[dict]:
    questions = mtbench_questions()
    coding = [q for q in questions if q["category"] == "coding"][:code]
    by_kind: dict[str, list[dict]] = {c: [q for q in questions if q["category"] == c] for c in PROSE}
    writing = []
    depth = 0
    while len(writing) < prose:
        for c in PROSE:
            if depth < len(by_kind[c]) and len(writing) < prose:
                writing.append(by_kind[c][depth])
        depth += 1
    return [
        {"kind": "code" if q in coding else "prose", "id": q["question_id"], "ids": first_turn_ids(tokenizer, q)}
        for q in coding + writing
    ]


def forward_costs(holder: CacheHolder, ms=(1, 5, 9), repeats: int = 5) -> dict[str, float]:
    """Milliseconds of one forward of m new tokens after 64 tokens on a block cache (median of
    `repeats`), as the engine's own cost curve times it (a `DraftCore`: the draft's path and head)."""
    holder.time_forwards(ms[:1], repeats=1)  # warm-up
    return {f"M={m}": round(s * 1e3, 1) for m, s in holder.time_forwards(ms, repeats=repeats).items()}


def run_target(target, prompts, n: int, assistant=None) -> dict:
    runs = [generate_greedy(target, p["ids"], n, assistant) for p in prompts]
    return {"outputs": [out for out, _ in runs], "seconds": [s for _, s in runs]}


WHOLE_HEAD = "specmemo Engine (whole draft head)"
NO_PREFIXES = "specmemo Engine (no prefix store)"


def run_interleaved(
    draft, target, tokenizer, prompts, n: int, gamma_max: int, assisted: bool, variants: bool = False
) -> dict[str, dict]:
    """Each prompt through every method in turn (the target alone, assisted generation when asked,
    the Engine as the default deployment runs it, and with `variants` the Engine without each of
    its draft's vocabulary subset and its prefix store), so that a busy or a quiet spell of this
    shared machine falls on all of them alike: run one after the other, minutes apart, their
    ratios moved by up to ±30%."""
    common = {"gamma_max": gamma_max}
    engines = {"specmemo Engine": Engine(draft, target, tokenizer, **common, prefix_tokens=DEFAULT_PREFIX_TOKENS)}
    if variants and engines["specmemo Engine"].draft.vocab_rows:
        engines[WHOLE_HEAD] = Engine(
            draft, target, tokenizer, **common, vocab_rows=0, prefix_tokens=DEFAULT_PREFIX_TOKENS
        )
    if variants:
        engines[NO_PREFIXES] = Engine(draft, target, tokenizer, **common)
    names = ["target alone (transformers)"] + (["transformers assisted"] if assisted else []) + list(engines)
    runs: dict[str, dict] = {name: {"outputs": [], "seconds": []} for name in names}
    for name in engines:
        runs[name]["stats"] = []
    for p in prompts:
        for name in names:
            if name in engines:
                start = time.perf_counter()
                ids, stats = engines[name].generate_ids(np.asarray(p["ids"]), n)
                runs[name]["seconds"].append(time.perf_counter() - start)
                runs[name]["outputs"].append(ids.tolist())
                runs[name]["stats"].append(stats)
            else:
                one = run_target(target, [p], n, assistant=draft if name == "transformers assisted" else None)
                runs[name]["outputs"] += one["outputs"]
                runs[name]["seconds"] += one["seconds"]
    for name, engine in engines.items():
        usage = engine.usage()
        runs[name].update(kv_peak=usage["peak"], weights=sum(usage["weights"].values()), costs=usage["costs"])
    runs["specmemo Engine"]["vocab_rows"] = engines["specmemo Engine"].draft.vocab_rows
    return runs


def summarize(name: str, kind: str, run: dict, prompts, n: int, reference: list | None) -> dict:
    rows = [i for i, p in enumerate(prompts) if kind == "all" or p["kind"] == kind]
    tokens = n * len(rows)
    seconds = sum(run["seconds"][i] for i in rows)
    row = {"method": name, "prompts": kind, "tokens_per_s": tokens / seconds, "seconds": seconds}
    if reference is not None:
        row["equal"] = f"{sum(run['outputs'][i] == reference[i] for i in rows)}/{len(rows)}"
    if "stats" in run:
        st = [run["stats"][i] for i in rows]
        steps = sum(s["steps"] for s in st)
        row.update(
            alpha=float(np.mean([s["alpha"] for s in st])),
            gamma=sum(s["drafted"] for s in st) / max(1, steps),
            tokens_per_step=sum(s["tokens"] for s in st) / max(1, steps),
            kv_peak=run["kv_peak"],
            weights=run["weights"],
        )
        row["speculating"] = row["gamma"] > 0
    return row


def llama_rows(prompts, n: int, threads: int, python: str) -> dict:
    paths = {"target": default_cache_dir() / TARGET.gguf_name, "draft": default_cache_dir() / DRAFT.gguf_name}
    request = {
        "target": str(paths["target"]),
        "draft": str(paths["draft"]),
        "threads": threads,
        "n_ctx": 4096,
        "max_new_tokens": n,
        "prompts": [p["ids"] for p in prompts],
        "repeats": 1,
    }
    path = ROOT / "bench" / "results" / "llamacpp-request.json"
    path.write_text(json.dumps(request))
    try:
        out = subprocess.run(
            [python, str(ROOT / "bench" / "llamacpp_peer.py"), str(path)],
            capture_output=True,
            text=True,
            check=True,
            timeout=3600,
        )
    finally:
        path.unlink(missing_ok=True)
    return json.loads(out.stdout)


def ensure_llama_python(python: str | None) -> str:
    """The interpreter that runs llama.cpp: --llama-python, or a venv made once beside the models."""
    if python:
        return python
    venv = default_cache_dir().parent / "llama-venv"
    exe = venv / "bin" / "python"
    if not exe.is_file() or subprocess.run([str(exe), "-c", "import llama_cpp"], capture_output=True).returncode:
        print(f"building llama-cpp-python {LLAMA_VERSION} from source into {venv} (several minutes)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(exe), "-m", "pip", "install", "-q", f"llama-cpp-python=={LLAMA_VERSION}"],
            check=True,
            env={**os.environ, "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 2)},
        )
    return str(exe)


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    result = {
        "cpu": cpu_features().as_dict(),
        "torch": torch.__version__,
        "threads": args.threads,
        "python": platform.python_version(),
        "rows": [],
        "forward_ms": {},
        "precision": {},
    }
    precisions = args.precisions
    prompts = None
    for precision in precisions:
        n = args.max_new_tokens if precision == precisions[0] else args.slow_tokens
        dtype = precision if precision in ("float32", "bfloat16") else "bfloat16"  # the checkpoint's
        d_spec, t_spec = default_pair_specs(dtype=dtype)
        d_spec = dataclasses.replace(d_spec, precision=precision, gamma_max=args.gamma_max)
        t_spec = dataclasses.replace(t_spec, precision=precision, gamma_max=args.gamma_max)
        started = time.perf_counter()
        draft, target, tokenizer = load_pair(d_spec, t_spec)
        print(f"[{precision}] loaded and converted in {time.perf_counter() - started:.1f} s", flush=True)
        prompts = prompts or pick_prompts(tokenizer, args.code, args.prose)
        result["precision"][precision] = {
            "target": precision_of(target).as_dict(),
            "draft": precision_of(draft).as_dict(),
        }
        print(
            f"[{precision}] target {precision_of(target).precision}, draft {precision_of(draft).precision}", flush=True
        )
        result["forward_ms"][precision] = {
            "target": forward_costs(CacheHolder(target, block_tokens=16, spare_blocks=1)),
            "draft": forward_costs(draft_core := DraftCore(draft)),
        }
        if draft_core.vocab_rows:  # the same forwards through every row of the head
            result["forward_ms"][precision]["draft_whole_head"] = forward_costs(DraftCore(draft, vocab_rows=0))
        print(f"[{precision}] forward ms {result['forward_ms'][precision]}", flush=True)
        assisted = precision == precisions[0] or args.assisted_all
        runs = run_interleaved(draft, target, tokenizer, prompts, n, args.gamma_max, assisted, assisted)
        result["precision"][precision]["draft_vocab_rows"] = runs["specmemo Engine"]["vocab_rows"]
        result["precision"][precision]["prefix_tokens"] = DEFAULT_PREFIX_TOKENS
        alone = runs["target alone (transformers)"]
        for name, r in runs.items():
            for kind in ("code", "prose", "all"):
                row = summarize(f"{name}, {precision}", kind, r, prompts, n, None if r is alone else alone["outputs"])
                row.update(precision=precision, new_tokens=n)
                result["rows"].append(row)
        print(f"[{precision}] engine done", flush=True)
        del draft, target
        gc.collect()
    if not args.skip_llama:
        llama = llama_rows(prompts, args.max_new_tokens, args.threads, ensure_llama_python(args.llama_python))
        result["llama"] = {k: v for k, v in llama.items() if k != "rows"}
        for name, r in llama["rows"].items():
            run_ = {"outputs": [p["new_tokens"] for p in r["prompts"]], "seconds": [p["total_s"] for p in r["prompts"]]}
            for kind in ("code", "prose", "all"):
                row = summarize(f"llama.cpp {name}, Q4_K_M", kind, run_, prompts, args.max_new_tokens, None)
                row.update(precision="Q4_K_M", new_tokens=args.max_new_tokens, rss=r["memory"]["rss_after_run_bytes"])
                result["rows"].append(row)
    result["prompts"] = [{"kind": p["kind"], "id": p["id"], "tokens": len(p["ids"])} for p in prompts]
    return result


def _find(rows, prefix: str, kind: str):
    return next((r for r in rows if r["method"].startswith(prefix) and r["prompts"] == kind), None)


def probe_text(probe_ms: dict[str, dict[str, float]]) -> str:
    """A load-time probe as "float32 380/920, ..., int4 56/73" (ms at M = 1 / M = γ_max + 1)."""
    return ", ".join(f"{name} {'/'.join(f'{v:.0f}' for v in ms.values())}" for name, ms in probe_ms.items())


def table(result: dict) -> str:
    rows = result["rows"]
    lines = [
        "| method | prompts | new tokens | tok/s | x target alone (same precision) | x assisted | "
        "x llama.cpp target | x float32 Engine | α | mean γ | tokens/step | weights + KV peak | = target output |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        kind, p = r["prompts"], r["precision"]
        alone = _find(rows, f"target alone (transformers), {p}", kind)
        assisted = _find(rows, f"transformers assisted, {p}", kind)
        llama = _find(rows, "llama.cpp target,", kind)
        fp32 = _find(rows, "specmemo Engine, float32", kind)

        def ratio(other):
            return f"{r['tokens_per_s'] / other['tokens_per_s']:.2f}x" if other and other is not r else "-"

        method = r["method"] + ("" if r.get("speculating", True) else " (no speculation: γ* = 0)")
        mem = (
            f"{(r['weights'] + r['kv_peak']) / 2**20:,.0f} MiB"
            if "weights" in r
            else f"{r['rss'] / 2**20:,.0f} MiB RSS"
            if "rss" in r
            else "-"
        )
        lines.append(
            f"| {method} | {kind} | {r['new_tokens']} | {r['tokens_per_s']:.2f} | {ratio(alone)} | {ratio(assisted)} | "
            f"{ratio(llama)} | {ratio(fp32)} | {r.get('alpha', float('nan')):.2f} | "
            f"{r.get('gamma', float('nan')):.2f} | "
            f"{r.get('tokens_per_step', float('nan')):.2f} | {mem} | {r.get('equal', '-')} |".replace("nan", "-")
        )
    lines += [
        "",
        "One forward of M new tokens after a 64-token context (ms, median of 5):",
        "",
        "| precision | target M=1 | M=5 | M=9 | draft M=1 | M=5 | M=9 | draft, whole head M=1 | M=5 | M=9 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p, f in result["forward_ms"].items():
        whole = f.get("draft_whole_head") or {m: "-" for m in f["draft"]}
        lines.append(
            f"| {p} | " + " | ".join(str(v) for part in (f["target"], f["draft"], whole) for v in part.values()) + " |"
        )
    lines += [
        "",
        "What each precision ran as, its weights, and (auto) what the load-time probe measured "
        "(ms per forward estimated from one layer and the head, at M = 1 / M = γ_max + 1):",
        "",
    ]
    for p, c in result["precision"].items():
        probe = "; ".join(
            f"{role} probe " + probe_text(c[role]["probe_ms"]) for role in ("target", "draft") if c[role]["probe_ms"]
        )
        lines.append(
            f"- {p}: target {c['target']['precision']} {c['target']['weight_bytes'] / 2**20:,.0f} MiB, "
            f"draft {c['draft']['precision']} {c['draft']['weight_bytes'] / 2**20:,.0f} MiB"
            + (f", head rows: the first {rows:,} + each session's own" if (rows := c.get("draft_vocab_rows")) else "")
            + (f", prefix store {c['prefix_tokens']} tokens a model" if c.get("prefix_tokens") else "")
            + (f"; {probe}" if probe else "")
        )
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--code", type=int, default=4, help="MT-Bench coding questions")
    parser.add_argument("--prose", type=int, default=4, help="MT-Bench writing/roleplay/humanities questions")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--slow-tokens", type=int, default=24, help="new tokens for the precisions after the first")
    parser.add_argument(
        "--precisions",
        type=lambda s: s.split(","),
        default=["auto", "bfloat16", "float32"],
        help="the first is the product (auto: what the default deployment picks here)",
    )
    parser.add_argument("--gamma-max", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--assisted-all", action="store_true", help="assisted generation in every precision")
    parser.add_argument("--skip-llama", action="store_true")
    parser.add_argument("--llama-python", default=None, help="an interpreter with llama-cpp-python installed")
    parser.add_argument("--no-docs", action="store_true")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    command = "python bench/specdecode.py peers " + " ".join(
        shlex.quote(a) for a in (sys.argv[2:] if argv is None else argv)
    )
    started = time.time()
    result = run(args)
    result["command"], result["seconds"] = command, time.time() - started
    result["finished"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    # a run that leaves the docs alone must not replace the raw data behind their table either
    name = "specdecode-peers-no-docs.json" if args.no_docs else "specdecode-peers.json"
    (ROOT / "bench" / "results" / name).write_text(json.dumps(result, indent=1))
    print(f"raw data: bench/results/{name}")
    markdown = table(result)
    print(markdown)
    if not args.no_docs:
        cpu = result["cpu"]
        body = (
            f"{SECTION}\n\nCommand (from the repository root, after `specmemo models pull`; builds llama-cpp-python "
            f"{LLAMA_VERSION} into a venv beside the models the first time):\n\n    {command}\n\n"
            f"Run {result['finished']}, {result['seconds'] / 60:.0f} min, CPU `{cpu['model']}` "
            f"(flags {', '.join(cpu['flags'])}; torch capability {cpu['capability']}), {result['threads']} threads, "
            f"torch {result['torch']}. Prompts: MT-Bench first turns "
            f"{[p['id'] for p in result['prompts']]} ({', '.join(p['kind'] for p in result['prompts'])}), "
            f"greedy, no stop token, prefill included; each prompt runs through a precision's methods in turn "
            f'(llama.cpp after every precision). "= target output": outputs equal to the same-precision '
            f"target's own greedy output. Raw data: `bench/results/specdecode-peers.json`.\n\n{markdown}\n"
        )
        replace_section(ROOT / "docs" / "benchmarks.md", SECTION, body)
