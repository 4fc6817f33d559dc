"""The speculative-decoding benchmark's harness: question subsets, the docs section it owns, the
RSS meter, and its runners on tiny models (outputs equal to plain greedy decoding)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import load_bench
from transformers import Qwen2Config, Qwen2ForCausalLM

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    return load_bench("specdecode")


CATEGORIES = ["writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities"]


def fake_questions():
    return [{"question_id": 81 + i, "category": CATEGORIES[i // 10], "turns": [f"q{i}", "again"]} for i in range(80)]


def test_a_subset_takes_categories_in_turn(bench):
    picked = bench.spread(fake_questions(), 10)
    assert [q["category"] for q in picked[:8]] == CATEGORIES
    assert [q["question_id"] for q in picked[8:]] == [82, 92]
    assert len(bench.spread(fake_questions(), 80)) == 80


def test_docs_section_is_created_then_replaced_leaving_other_sections(bench, tmp_path):
    path = tmp_path / "benchmarks.md"
    path.write_text("# Benchmarks\n\n## SpMV\n\nspmv table\n")
    info = {
        "threads": 2,
        "question_ids": [81, 91],
        "prompt_tokens": [40, 50],
        "max_new_tokens": 8,
        "cost_ratio": 0.4,
        "alpha": 0.7,
        "alpha_pilot": 0.6,
        "pilot_tokens": 16,
        "pilot_gamma": 4,
        "lower_bound": 2**20,
        "gamma_star": 2,
        "block_tokens": 16,
        "dtype": "bfloat16",
    }
    bench.write_docs_section("| first |", "python bench/specdecode.py", info, path)
    path.write_text(path.read_text() + "\n## Later section\n\nkept\n")
    bench.write_docs_section("| second |", "python bench/specdecode.py", info, path)
    text = path.read_text()
    assert text.count(bench.SECTION) == 1
    assert "| second |" in text and "| first |" not in text
    assert "spmv table" in text and "## Later section\n\nkept" in text


RSS_PROBE = """
import sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from specdecode import RssMeter
meter = RssMeter()
meter.start()
block = np.ones(64 << 20, dtype=np.uint8)
print(*meter.stop())
"""


def test_rss_meter_sees_a_touched_allocation():
    # In a fresh process: the meter measures the whole process, and inside pytest another
    # test's leftover thread freeing memory at the same moment once hid the 64 MiB (CI).
    import subprocess

    out = subprocess.run(
        [sys.executable, "-c", RSS_PROBE, str(ROOT / "bench")], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    peak, live = map(int, out.stdout.split()[-2:])
    assert peak >= 60 << 20 and live >= 60 << 20, (peak, live)


def tiny_pair():
    def make(layers, seed):
        torch.manual_seed(seed)
        config = Qwen2Config(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
        )
        return Qwen2ForCausalLM(config).eval()

    return make(1, 1), make(2, 2)


def test_runners_count_tokens_and_match_plain_greedy(bench):
    from specmemo.actors.engine import Engine

    draft, target = tiny_pair()
    prompts = [[1, 5, 9, 3], [2, 7, 7, 7, 4, 11]]
    plain = bench.run_generate("target alone", target, prompts, 12)
    assisted = bench.run_generate("assisted", target, prompts, 12, assistant=draft)
    ours = bench.run_engine("ours", Engine(draft, target, block_tokens=4, gamma=3), prompts, 12)
    batched = bench.run_engine("ours batched", Engine(draft, target, block_tokens=4, gamma=3), prompts, 12, batch=2)
    for row in (plain, assisted, ours, batched):
        assert row.tokens == 24 and [len(o) for o in row.outputs] == [12, 12]
    bench.same_fraction([plain, assisted, ours, batched], plain)
    assert ours.same_as_target == batched.same_as_target == assisted.same_as_target == 1.0
    assert plain.steps == 24
    assert 0 < ours.held_peak <= ours.accounted_peak <= ours.budget
    assert ours.steps < 24 and ours.accepted >= ours.tokens - ours.steps


def test_a_budget_too_small_for_the_whole_generation_is_recorded_as_refused(bench):
    from specmemo.actors.engine import Engine

    draft, target = tiny_pair()
    probe = Engine(draft, target, block_tokens=4)
    per_token = probe.draft.bytes_per_token + probe.verifier.bytes_per_token
    engine = Engine(draft, target, block_tokens=4, gamma=2, budget_bytes=3 * 4 * per_token)
    row = bench.run_engine("ours", engine, [[1, 5, 9, 3]], 12)
    assert row.refused and "OverBudget" in row.note
    assert 0 < row.tokens < 12
    assert row.accounted_peak <= 3 * 4 * per_token


def test_whole_run_on_a_tiny_pair_writes_table_plot_and_json(bench, tmp_path, monkeypatch):
    import json

    from specmemo.actors.engine.models import ModelSpec
    from specmemo.actors.engine.tiny import save_tiny_pair

    paths = save_tiny_pair(str(tmp_path / "pair"))
    monkeypatch.setattr(
        bench,
        "default_pair_specs",
        lambda dtype, cache_dir: (
            ModelSpec(paths["draft"], dtype="float32"),
            ModelSpec(paths["target"], dtype="float32"),
        ),
    )
    monkeypatch.setattr(bench, "mtbench_questions", fake_questions)
    out = tmp_path / "results"
    bench.main(
        [
            "--questions",
            "2",
            "--max-new-tokens",
            "6",
            "--pilot-tokens",
            "4",
            "--budgets",
            "0.5,1,2",
            "--batch-sizes",
            "1,2",
            "--skip-actors",
            "--no-docs",
            "--out-dir",
            str(out),
        ]
    )
    result = json.loads((out / "specdecode.json").read_text())
    rows = {row["method"]: row for row in result["rows"]}
    assert (out / "specdecode.png").stat().st_size > 0
    assert "| target alone (generate) |" in (out / "specdecode.md").read_text()
    for method, row in rows.items():
        if not row["refused"]:
            assert row["tokens"] == 6 * max(2, row["batch"]), method
            assert row["same_as_target"] == 1.0, method
    bound = rows["ours, memory manager, 1 x lower bound"]
    assert not bound["refused"] and bound["accounted_peak"] <= bound["budget"]
    assert rows["ours, memory manager, 0.5 x lower bound"]["refused"]


def test_a_replaced_section_keeps_a_blank_line_before_the_next_heading(bench, tmp_path):
    path = tmp_path / "benchmarks.md"
    path.write_text("# Benchmarks\n\n## Mine\n\nold\n\n## Next\n\nkept\n")
    bench.replace_section(path, "## Mine", "## Mine\n\n| new |\n")  # a body ending right after its table
    assert path.read_text() == "# Benchmarks\n\n## Mine\n\n| new |\n\n## Next\n\nkept\n"
    bench.replace_section(path, "## Next", "## Next\n\nnewer\n")  # the last section: the body as given
    assert path.read_text().endswith("| new |\n\n## Next\n\nnewer\n")


def _trees_result(costs: dict, rates: dict[str, list[float]]) -> dict:
    # two chain rows (the faster one's Engine prices the table) and one tree row a kind
    rows = []
    for k, r in rates.items():
        rows.append({"shape": "chain N=3", "prompts": k, "tokens_per_s": 2.0, "rates": r[:1]})
        rows.append({"shape": "chain N=4", "prompts": k, "tokens_per_s": 1.0, "rates": r[:1]})
        rows.append({"shape": "tree N=4 w=2", "prompts": k, "tokens_per_s": 1.0, "rates": r, "nodes_per_step": 3.0})
    slow = {**costs, "draft_s": 3 * costs["draft_s"], "scale": 2.0}
    return {"rows": rows, "costs": {"chain N=3": costs, "chain N=4": slow}}


def _best_by_enumeration(rates: list[float], t, t_d: float, nodes_max: int) -> tuple[float, float]:
    """(fastest chain, fastest tree) in tokens/s, over every tree of at most nodes_max nodes (none too) whose
    nodes have children of ranks 1..len(rates): a node is worth the product of the rates on its
    path, a step costs one draft forward for the root and each node with children, then t(N + 1)."""
    trees, frontier = set(), {frozenset()}
    while frontier:
        trees |= frontier
        frontier = {
            tree | {node + (r,)}
            for tree in frontier
            if len(tree) < nodes_max
            for node in [()] + list(tree)
            for r in range(len(rates))
            if node + (r,) not in tree
        }

    def speed(tree) -> float:
        value = 1.0 + sum(np.prod([rates[r] for r in node]) for node in tree)
        fed = 1 + sum(1 for node in tree if any(other[:-1] == node for other in tree))
        return value / (fed * t_d + t(len(tree) + 1))

    chains = [frozenset(tuple([0] * d) for d in range(1, n + 1)) for n in range(nodes_max + 1)]
    return max(map(speed, chains)), max(map(speed, trees))  # N = 0: no speculation


def test_speed_ceiling_prices_chains_and_trees_on_the_runs_costs():
    trees = load_bench("specdecode_trees")
    shape = {1: 0.040, 2: 0.041, 3: 0.043, 5: 0.050, 7: 0.062}
    scale, t_d, nodes_max = 1.3, 0.009, 6
    costs = {"draft_s": t_d, "shape": {str(m): s for m, s in shape.items()}, "scale": scale}
    rates = {"code": [0.8, 0.15], "prose": [0.6, 0.3], "all": [0.7, 0.2]}
    text = trees.speed_ceiling(_trees_result(costs, rates), nodes_max)
    rows = [line.strip("| ").split(" | ") for line in text.splitlines()[2:]]
    assert [(r[0], r[2]) for r in rows[:2]] == [("code", "this run's"), ("code", "flat (rows free)")] and len(rows) == 6

    def measured(m):  # the anchors at the run's level, linear between them
        lo, hi = max(k for k in shape if k <= m), min(k for k in shape if k >= m)
        return scale * (shape[lo] if hi == lo else shape[lo] + (shape[hi] - shape[lo]) * (m - lo) / (hi - lo))

    def flat(m):
        return measured(1)

    def tok_s(cell: str) -> float:  # "N=4 F=2: 39.8 tok/s" -> 39.8
        return float(cell.split(": ")[1].split()[0])

    for row, (kind, t) in zip(rows, [(k, t) for k in rates for t in (measured, flat)]):
        chain, tree = _best_by_enumeration(rates[kind], t, t_d, nodes_max)
        assert row[0] == kind
        assert tok_s(row[4]) == pytest.approx(chain, abs=0.051) and tok_s(row[5]) == pytest.approx(tree, abs=0.051)
        assert float(row[6].rstrip("x")) == pytest.approx(tree / chain, abs=0.0006)
    # where rows are free, trees pay more than on this curve
    ratio = [float(r[6].rstrip("x")) for r in rows]
    assert all(x >= 1.0 for x in ratio) and all(ratio[i + 1] > ratio[i] for i in (0, 2, 4))


def test_device_costs_times_an_architecture_and_prices_it(tmp_path):
    costs = load_bench("device_costs")
    out = tmp_path / "costs.json"
    costs.main(["time", "--device", "cpu", "--arch", "tiny", "--ms", "1,2,3", "--repeats", "2", "--out", str(out)])
    timed = json.loads(out.read_text())
    assert set(timed["target_s"]) == {"1", "2", "3"} and set(timed["draft_s"]) == {"1", "2"}
    assert all(s > 0 for s in [*timed["target_s"].values(), *timed["draft_s"].values()])
    rates = tmp_path / "rates.json"
    rows = [
        {"shape": "chain N=2", "prompts": k, "tokens_per_s": 1.0, "rates": [0.7]} for k in ("code", "prose", "all")
    ] + [
        {"shape": "tree N=2 w=2", "prompts": k, "tokens_per_s": 1.0, "rates": [0.7, 0.2], "nodes_per_step": 2.0}
        for k in ("code", "prose", "all")
    ]
    rates.write_text(json.dumps({"rows": rows}))
    text = costs.report(costs.parse_args(["report", str(out), "--rates", str(rates), "--no-docs"]))
    priced = [line for line in text.splitlines() if line.startswith("| all |")]
    assert len(priced) == 2 and "a tiny check architecture" in text
    # on the curve it timed (never falling with M), the model's chain: E(N) / (N t_d + t(N + 1)), N <= 2
    # (N = 0: no speculation, one token a forward)
    t = {m: max(s for k, s in timed["target_s"].items() if int(k) <= m) for m in (1, 2, 3)}
    t_d = timed["draft_s"]["1"]
    chain = max((1 + sum(0.7**k for k in range(1, n + 1))) / (n * t_d + t[n + 1]) for n in (0, 1, 2))
    assert f"{chain:.1f} tok/s" in priced[0]
