"""Token trees against chains, in one run, on the default pair in the default precision.

    python bench/specdecode.py trees --code 4 --prose 4 --max-new-tokens 48
    python bench/specdecode.py trees --temperature 1.0
    python bench/specdecode.py trees --chains 2,3,4 --trees 4x2,4x2/2,6x3/2,6x3/3 --adaptive 2,3 --section leaves
    python bench/specdecode.py trees --chains 16,32,48 --trees 16x3,32x3,48x3 --adaptive '' \
        --gamma-max 48 --max-new-tokens 96 --section 'large N'
    python bench/specdecode.py trees --chains 2,3,4 --trees '' --lookup 8 --turn 2 --section 'lookup, second turns'

Same MT-Bench first turns as `peers`, greedy (or sampled at `--temperature`), exactly N new
tokens, prefill included, each prompt through every shape in turn. Rows:
- chains: the adaptive chain (the default: γ from the cost curve) and fixed chains of N nodes;
- trees of N nodes with up to w children a node (grown best-first, one node per draft forward),
  for fixed (N, w), or with at most F draft forwards (`NxW/F`: the nodes past the first F − 1
  taken are leaves, which no draft forward feeds);
- adaptive trees: the memory model picks (N, w, F) each step, with w up to 2 and up to 3;
- with `--lookup L`, the adaptive rows again with lookup tails of up to L tokens (`lookup`: tokens
  copied from the context below the draft's path, priced each step on the cost curve); they are
  not chains, so "x best chain" compares them with the chain rows.
With `--turn 2` each prompt is the question's second turn in the session that ran the first (its
reply, the target's greedy one of 128 tokens, decoded untimed first; the second turn reuses that
KV and prefills only the new message): a chat's later turns repeat what was said, which is what
lookup tails copy.
Each row reports tok/s, its ratio to the best chain of the run (the fastest chain row), tokens
per target forward (= per step), its ratio to the chain with the same node count (the same KV
budget: a tree of N nodes holds the KV slots of a chain of γ = N), draft forwards per step, the
measured rank acceptance rates a_1..a_w, and how many outputs equal the target's own greedy output
(greedy only: a sampled run keeps the target's distribution, which tests/test_engine_sampling.py
checks, not its tokens). Below the rows: the rank model's best tree of each fixed N against the
chain of N (tokens per forward), and its fastest chain and fastest tree in tok/s priced on the
run's own costs, then on a target whose forward costs the same for any M (where trees pay).
Sampled, a chain draws each token from the draft's q and a tree draws each node's children from q
without replacement (the multi-draft rule of `tree.verify_tree`), grown by each session's rank
rates (the rank model's best tree), so wider trees can catch target samples a chain misses.
Writes bench/results/specdecode-trees[-t<T>].json and the "Token trees on the CPU" section of
docs/benchmarks.md (its sampled twin for `--temperature`); with `--section TEXT`, a run of its own
beside those: the section "Token trees on the CPU, TEXT" and a results file named after TEXT.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from specmemo.actors.engine import Engine
from specmemo.actors.engine.memory_model import (
    CostCurve,
    expected_tokens,
    tree_expected_tokens,
    tree_shape,
    tree_speedup,
)
from specmemo.actors.engine.models import load_pair
from specmemo.actors.engine.precision import cpu_features, precision_of
from specmemo.actors.engine.pull import default_pair_specs

sys.path.insert(0, str(Path(__file__).resolve().parent))
from specdecode import mtbench_questions, replace_section  # noqa: E402
from specdecode_peers import pick_prompts, probe_text, run_target  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Token trees on the CPU"


def shapes(args) -> list[tuple[str, int | None, int, int | None, int]]:
    """(label, N or None for adaptive, width cap, draft forwards or None for one a node / adaptive,
    lookup tail cap)."""
    rows = [("chain, adaptive", None, 1, None, 0)]
    rows += [(f"chain N={n}", n, 1, None, 0) for n in args.chains]
    rows += [(f"tree N={n} w={w}" + (f" F={f}" if f else ""), n, w, f, 0) for n, w, f in args.trees]
    rows += [(f"tree, adaptive w<={w}", None, w, None, 0) for w in args.adaptive]
    if args.lookup:
        adaptive = [row for row in rows if row[1] is None]
        rows += [(f"{label} + lookup {args.lookup}", n, w, f, args.lookup) for label, n, w, f, _ in adaptive]
    return rows


def run_shapes(
    draft, target, tokenizer, prompts, n: int, rows: list, gamma_max: int, temperature: float = 0.0
) -> dict[str, dict]:
    """Every shape of `rows` on every prompt, each prompt through the shapes in turn (an Engine a
    shape, built and calibrated first), so that a busy or a quiet spell of this shared machine
    falls on all of them alike: a chain and a tree run minutes apart moved by ±10-20%."""
    engines = {
        label: Engine(
            draft, target, tokenizer, gamma_max=gamma_max, gamma=gamma, tree=width, forwards=forwards, lookup=lookup
        )
        for label, gamma, width, forwards, lookup in rows
    }
    runs = {label: {"outputs": [], "seconds": [], "stats": [], "rates": []} for label in engines}
    for i, p in enumerate(prompts):
        for label, engine in engines.items():
            session = f"bench{i}"
            if "first" in p:  # the first turn, untimed: the second reuses its KV as a chat would
                engine.generate_ids(np.asarray(p["first"]), p["reply_tokens"], temperature=temperature, session=session)
            start = time.perf_counter()
            ids, s = engine.generate_ids(np.asarray(p["ids"]), n, temperature=temperature, seed=i, session=session)
            runs[label]["seconds"].append(time.perf_counter() - start)
            runs[label]["rates"].append(engine.memory.rates(session))
            engine.close(session)
            runs[label]["outputs"].append(ids.tolist())
            runs[label]["stats"].append(s)
        print(f"prompt {i + 1}/{len(prompts)} done", flush=True)
    for label, engine in engines.items():
        usage = engine.memory.usage()
        runs[label].update(kv_peak=usage["peak"], costs=usage["costs"])
    return runs


def summarize(label: str, kind: str, run: dict, prompts, reference: list | None) -> dict:
    rows = [i for i, p in enumerate(prompts) if kind == "all" or p["kind"] == kind]
    st = [run["stats"][i] for i in rows]
    steps = sum(s["steps"] for s in st)
    tokens = sum(s["tokens"] for s in st)
    return {
        "shape": label,
        "prompts": kind,
        "tokens_per_s": tokens / sum(run["seconds"][i] for i in rows),
        "tokens_per_step": tokens / max(1, steps),
        "nodes_per_step": sum(s["drafted"] for s in st) / max(1, steps),
        "looked_up": sum(s["looked_up"] for s in st) / max(1, tokens),
        "forwards_per_step": sum(s["forwards"] for s in st) / max(1, steps),
        "rates": np.mean([run["rates"][i] for i in rows], axis=0).round(3).tolist(),
        "equal": "-" if reference is None else f"{sum(run['outputs'][i] == reference[i] for i in rows)}/{len(rows)}",
        "kv_peak": run["kv_peak"],
    }


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    # the precision the default deployment picks: its load-time probe prices M = 1 and its own
    # γ_max + 1, whatever γ_max the shapes below run with (at M = 17 or 49 the probe can prefer int8)
    d_spec, t_spec = default_pair_specs(dtype="bfloat16")
    d_spec = dataclasses.replace(d_spec, precision=args.precision)
    t_spec = dataclasses.replace(t_spec, precision=args.precision)
    draft, target, tokenizer = load_pair(d_spec, t_spec)
    prompts = pick_prompts(tokenizer, args.code, args.prose)
    if args.turn == 2:
        prompts = second_turns(tokenizer, target, prompts)
    reference = run_target(target, prompts, args.max_new_tokens)["outputs"] if args.temperature <= 0 else None
    result = {
        "cpu": cpu_features().as_dict(),
        "torch": torch.__version__,
        "threads": args.threads,
        "temperature": args.temperature,
        "precision": {"target": precision_of(target).precision, "draft": precision_of(draft).precision},
        "probe": {"target": precision_of(target).as_dict(), "draft": precision_of(draft).as_dict()},
        "rows": [],
        "costs": {},
    }
    runs = run_shapes(
        draft, target, tokenizer, prompts, args.max_new_tokens, shapes(args), args.gamma_max, args.temperature
    )
    for label, r in runs.items():
        result["costs"][label] = r["costs"]
        for kind in ("code", "prose", "all"):
            result["rows"].append(summarize(label, kind, r, prompts, reference))
        print(
            f"{label}: "
            + ", ".join(f"{row['prompts']} {row['tokens_per_s']:.2f} tok/s" for row in result["rows"][-3:]),
            flush=True,
        )
    result["prompts"] = [{"kind": p["kind"], "id": p["id"], "tokens": len(p["ids"])} for p in prompts]
    result["turn"] = args.turn
    return result


def table(result: dict) -> str:
    rows = result["rows"]
    lines = [
        "| shape | prompts | tok/s | x best chain | tokens / target forward | x chain of the same N | "
        "nodes / step | draft forwards / step | looked up | a_1..a_w | KV peak | = target output |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in rows:
        chains = [c for c in rows if _is_chain(c["shape"]) and c["prompts"] == r["prompts"]]
        best = max(chains, key=lambda c: c["tokens_per_s"])
        same = None
        if " N=" in r["shape"]:
            n = r["shape"].split(" N=")[1].split()[0]
            same = next((c for c in chains if c["shape"] == f"chain N={n}"), None)
        ratio = f"{r['tokens_per_step'] / same['tokens_per_step']:.2f}x" if same and same is not r else "-"
        lines.append(
            f"| {r['shape']} | {r['prompts']} | {r['tokens_per_s']:.2f} | "
            f"{r['tokens_per_s'] / best['tokens_per_s']:.2f}x | "
            f"{r['tokens_per_step']:.2f} | {ratio} | {r['nodes_per_step']:.2f} | "
            f"{r['forwards_per_step']:.2f} | {r.get('looked_up', 0.0):.0%} | "
            f"{', '.join(f'{a:.2f}' for a in r['rates'])} | {r['kv_peak'] / 2**20:.1f} MiB | {r['equal']} |"
        )
    return "\n".join(lines)


def ceiling(result: dict) -> str:
    """What the best tree of N nodes gets over the chain of N under the rank model, at the run's fixed
    N, with the rates measured by its widest tree rows (`memory_model.tree_expected_tokens`:
    Sequoia's optimum)."""
    sizes = sorted({int(m[1]) for r in result["rows"] if (m := re.search(r"N=(\d+)", r["shape"]))})
    lines = [
        "| prompts | a_1..a_w measured | " + " | ".join(f"best tree / chain, N={n}" for n in sizes) + " |",
        "|---|---|" + "---:|" * len(sizes),
    ]
    for kind in ("code", "prose", "all"):
        if not any(r["prompts"] == kind and r["shape"].startswith("tree") for r in result["rows"]):
            continue
        rates = _widest_rates(result["rows"], kind)
        ratios = [tree_expected_tokens(rates, n) / expected_tokens(rates[0], n) for n in sizes]
        lines.append(
            f"| {kind} | {', '.join(f'{a:.2f}' for a in rates)} | " + " | ".join(f"{x:.3f}x" for x in ratios) + " |"
        )
    return "\n".join(lines)


def speed_ceiling(result: dict, nodes_max: int) -> str:
    """`speed_table` on the costs of the run's best chain row's Engine (its calibrated target curve
    at its in-situ level, its measured seconds per draft forward); "" without a calibration."""
    chains = [r for r in result["rows"] if _is_chain(r["shape"]) and r["prompts"] == "all"]
    if not chains:
        return ""
    costs = result["costs"][max(chains, key=lambda r: r["tokens_per_s"])["shape"]]
    if not costs.get("shape"):  # a fixed cost ratio: no seconds to price with
        return ""
    shape = {int(m): s for m, s in costs["shape"].items()}
    return speed_table(result["rows"], CostCurve.from_anchors(shape, costs["scale"], costs["draft_s"]), nodes_max)


def speed_table(rows: list[dict], curve: CostCurve, nodes_max: int) -> str:
    """The fastest chain and the fastest tree of at most `nodes_max` nodes under the rank model
    (`memory_model.tree_shape`, as the memory side picks a step's shape), in tok/s, at the rates of
    the widest tree rows of each prompt kind, on `curve`, and again on a target whose forward costs
    for any M <= nodes_max + 1 what it costs for one (a machine where rows are free: a GPU's regime)."""
    if not any(r["shape"].startswith("tree") for r in rows):
        return ""
    one = curve.target(1) / curve.scale  # the anchors' M = 1
    flat = CostCurve.from_anchors({1: one, nodes_max + 1: one}, curve.scale, curve.draft_s)
    lines = [
        "| prompts | a_1..a_w measured | target curve | t_d / t_t(1) | best chain | best tree | tree / chain |",
        "|---|---|---|---:|---|---|---:|",
    ]
    for kind in ("code", "prose", "all"):
        rates = _widest_rates(rows, kind)
        for label, costs in (("this run's", curve), ("flat (rows free)", flat)):
            speeds = []
            for shape_rates in (rates[:1], rates):  # the chain, then the tree
                n, width, f = tree_shape(shape_rates, costs, 1.0, nodes_max, len(shape_rates))
                # a speedup is over the target alone's one-token forward: in tok/s, over t_t(1)
                speeds.append((tree_speedup(shape_rates, n, width, costs, f) / costs.target(1), n, f))
            (chain, n, _), (tree, nt, ft) = speeds
            lines.append(
                f"| {kind} | {', '.join(f'{a:.2f}' for a in rates)} | {label} | {costs.ratio:.2f} | "
                f"N={n}: {chain:.1f} tok/s | N={nt} F={ft}: {tree:.1f} tok/s | {tree / chain:.3f}x |"
            )
    return "\n".join(lines)


def _widest_rates(rows: list[dict], kind: str) -> list[float]:
    # the rates of the tree row of `kind` with the most ranks (then the most nodes a step); rows'
    # rates are means of per-session rates, each already a sub-distribution (RankAcceptance)
    trees = [r for r in rows if r["prompts"] == kind and r["shape"].startswith("tree")]
    return max(trees, key=lambda r: (len(r["rates"]), r["nodes_per_step"]))["rates"]


def _is_chain(label: str) -> bool:
    return label.startswith("chain") and "lookup" not in label


def second_turns(tokenizer, target, prompts: list[dict], reply_tokens: int = 128) -> list[dict]:
    """Each question's second turn after its first and the target's greedy reply (the reply any
    greedy row of the run gives: they are lossless), as whole-conversation prompt ids; "first": the
    first turn's ids, which a row runs (untimed) in the same session before the second."""
    questions = {q["question_id"]: q for q in mtbench_questions()}
    replies = run_target(target, prompts, reply_tokens)["outputs"]
    out = []
    for p, reply in zip(prompts, replies):
        turns = questions[p["id"]]["turns"]
        messages = [
            {"role": "user", "content": turns[0]},
            {"role": "assistant", "content": tokenizer.decode(reply, skip_special_tokens=True)},
            {"role": "user", "content": turns[1]},
        ]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
        out.append({**p, "ids": list(ids), "first": p["ids"], "reply_tokens": reply_tokens})
    return out


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def _trees(text: str) -> list[tuple[int, int, int | None]]:
    # "8x3" -> (8, 3, None); "8x3/2" -> (8, 3, 2)
    out = []
    for item in filter(None, text.split(",")):
        shape, _, forwards = item.partition("/")
        n, w = (int(x) for x in shape.split("x"))
        if forwards and int(forwards) < 1:
            raise argparse.ArgumentTypeError(f"{item}: a tree takes at least one draft forward")
        out.append((n, w, int(forwards) if forwards else None))
    return out


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--code", type=int, default=4)
    parser.add_argument("--prose", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--gamma-max", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--chains", type=_ints, default=[4, 8, 12, 16], help="fixed chains' N, comma separated")
    parser.add_argument(
        "--trees",
        type=_trees,
        default=_trees("4x2,8x2,8x3,12x2,16x2"),
        help="N x w, or N x w / F (at most F draft forwards, the other nodes leaves), comma separated: 6x2,8x3/2",
    )
    parser.add_argument(
        "--adaptive",
        type=_ints,
        default=[2, 3],
        help="width caps of the adaptive trees ('' for none)",
    )
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy; above: sampled")
    parser.add_argument("--lookup", type=int, default=0, help="adaptive rows again with lookup tails of up to this")
    parser.add_argument("--turn", type=int, choices=(1, 2), default=1, help="MT-Bench's first or second turns")
    parser.add_argument(
        "--section",
        default="",
        help="a run of its own beside the default one: its docs section is the trees heading plus this text, its "
        "raw data a file named after it",
    )
    parser.add_argument("--no-docs", action="store_true")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    command = "python bench/specdecode.py trees " + " ".join(
        shlex.quote(a) for a in (sys.argv[2:] if argv is None else argv)
    )
    started = time.time()
    result = run(args)
    result["command"], result["seconds"] = command, time.time() - started
    result["max_new_tokens"], result["gamma_max"] = args.max_new_tokens, args.gamma_max
    result["finished"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    result["section"] = args.section
    sampled = args.temperature > 0
    name = f"specdecode-trees-t{args.temperature:g}.json" if sampled else "specdecode-trees.json"
    if args.section:
        name = name.replace(".json", "-" + re.sub(r"[^a-z0-9]+", "-", args.section.lower()).strip("-") + ".json")
    if args.no_docs:  # leave the raw data behind the docs' table alone
        name = name.replace(".json", "-no-docs.json")
    (ROOT / "bench" / "results" / name).write_text(json.dumps(result, indent=1))
    print(table(result))
    if not args.no_docs:
        write_docs(result, name)


def write_docs(result: dict, name: str) -> None:
    """The run's section of docs/benchmarks.md ("Token trees on the CPU", or its sampled twin)."""
    bound = ceiling(result)
    markdown = table(result) + (
        "\n\nWhat the best tree of N nodes would get under the rank model (the r-th choice of any node accepted "
        "with probability a_r wherever it is, the rates the widest tree rows above measured), in expected tokens per "
        "target forward against the chain of the same N nodes (the same KV), the chain priced with the same a_1. "
        + (
            "A sampled tree grows by these rates (each session's own, as the grant answers them), so this is what "
            "it aims at"
            if result["temperature"] > 0
            else "The draft grows its trees by its own path probabilities, which know where it is unsure, so a "
            "measured tree can beat this"
        )
        + ":\n\n"
        + bound
        if bound.count("\n") > 1
        else ""
    )
    speeds = speed_ceiling(result, result.get("gamma_max", 16))
    if speeds:
        markdown += (
            "\n\nThe fastest chain and the fastest tree (any N <= γ_max and F <= N, width up to the widest row's) "
            "under the same rank model, in tokens per second of decoding steps (prefill and each step's own overheads "
            "left out, so above the rows' tok/s), both priced with the same a_1 on this run's costs: the best chain "
            "row's Engine's calibrated target curve at its "
            "in-situ level and its measured seconds per draft forward t_d; then the same with a target forward "
            'that costs for any M <= γ_max + 1 what it costs for one ("flat": where a row is free, a GPU\'s '
            "regime):\n\n" + speeds
        )
    cpu, temperature = result["cpu"], result["temperature"]
    section = f"{SECTION}, sampled at temperature {temperature:g}" if temperature > 0 else SECTION
    if result.get("section"):
        section += f", {result['section']}"
    decoding = f"sampled at temperature {temperature:g}" if temperature > 0 else "greedy"
    body = (
        f"{section}\n\nCommand (from the repository root, after `specmemo models pull`):\n\n    {result['command']}\n\n"
        f"Run {result['finished']}, {result['seconds'] / 60:.0f} min, CPU `{cpu['model']}` "
        f"(flags {', '.join(cpu['flags'])}), {result['threads']} threads, torch {result['torch']}; target "
        f"{result['precision']['target']}, draft {result['precision']['draft']} (the default deployment's "
        f"choice here; the target's load-time probe, ms at {_probe_ms(result)}: {_probe_text(result)}). "
        f"Prompts: MT-Bench {_turn_text(result)} {[p['id'] for p in result['prompts']]}, {decoding}, "
        f"{result.get('max_new_tokens', 48)} new tokens, prefill included, each prompt through every shape in turn "
        f"(an Engine a shape, built and calibrated before the first prompt), KV budget: the engine default (one "
        f"whole context, far above the peak). A tree of N nodes holds the KV slots of a chain of γ = N, so "
        f'"x chain of the same N" compares at the same KV. Raw data: '
        f"`bench/results/{name}`.\n\n{markdown}\n"
    )
    replace_section(ROOT / "docs" / "benchmarks.md", section, body)


def _turn_text(result: dict) -> str:
    if result.get("turn", 1) == 2:
        return (
            "second turns (each after the first turn in the same session, untimed, whose reply is the target's "
            "greedy 128 tokens; the second prefills only what its KV lacks)"
        )
    return "first turns"


def _probe_ms(result: dict) -> str:
    # the Ms the probe timed ("M = 1 / M = 9"), from its keys
    probe = ((result.get("probe") or {}).get("target") or {}).get("probe_ms") or {}
    keys = next(iter(probe.values()), {"M=1": 0, "M=γ_max+1": 0})
    return " / ".join(k.replace("=", " = ") for k in keys)


def _probe_text(result: dict) -> str:
    return probe_text(((result.get("probe") or {}).get("target") or {}).get("probe_ms") or {}) or "-"


if __name__ == "__main__":
    main()
