"""Precisions: int8 rows are independent and close to float32, `auto` takes what the probe timed
fastest, greedy speculative output equals the same model's own greedy output in each precision,
weights are counted, and each layer's KV sits on that layer's device."""

import time

import numpy as np
import pytest
import torch
from engine_helpers import greedy_reference, one_torch_thread  # noqa: F401
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from specmemo.actors.engine import Engine, quantized
from specmemo.actors.engine.kvcache import CacheHolder, layer_devices
from specmemo.actors.engine.precision import (
    Int4Linear,
    Int8Linear,
    apply_precision,
    choose,
    compute_dtype,
    precision_of,
    weight_bytes,
)
from specmemo.actors.engine.tiny import tiny_pair
from specmemo.native import q4, q8


@settings(max_examples=40, deadline=None)
@given(
    k=st.integers(1, 96),
    n=st.integers(1, 64),
    rows=st.integers(1, 12),
    bias=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
    scale=st.floats(1e-3, 1e3),
)
def test_an_int8_linear_computes_each_row_as_if_it_were_alone(k, n, rows, bias, seed, scale):
    torch.manual_seed(seed)
    linear = nn.Linear(k, n, bias=bias)
    x = torch.randn(rows, k) * scale
    q = Int8Linear(linear)
    with torch.inference_mode():
        together = q(x)
        alone = torch.cat([q(x[i : i + 1]) for i in range(rows)])
        reference = linear(x)
    assert torch.equal(together, alone)
    # per-channel weights and per-token activations: error within a few quantization steps
    step = (x.abs().amax(1, keepdim=True) / 127) * linear.weight.abs().sum(1)
    step = step + (x.abs() @ (linear.weight.abs().amax(1, keepdim=True) / 127).T.expand(k, n))
    assert ((together - reference).abs() <= step + 1e-5).all()


@settings(max_examples=30, deadline=None)
@given(
    k=st.sampled_from([32, 64, 96, 256]),
    parts=st.lists(st.sampled_from([16, 32, 48]), min_size=1, max_size=3),
    rows=st.integers(1, 12),
    bias=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_an_int4_linear_computes_each_row_as_if_it_were_alone_and_fuses_exactly(k, parts, rows, bias, seed):
    torch.manual_seed(seed)
    linears = [nn.Linear(k, n, bias=bias) for n in parts]
    x = torch.randn(2, rows, k)
    fused = Int4Linear(linears, 32)
    alone = [Int4Linear(linear, 32) for linear in linears]
    with torch.inference_mode():
        together = fused(x)
        assert together.shape == (2, rows, sum(parts))
        one_by_one = torch.cat([fused(x[:, i : i + 1]) for i in range(rows)], dim=1)
        assert torch.equal(together, one_by_one)
        assert torch.equal(together, torch.cat([q(x) for q in alone], dim=-1))
        reference = torch.cat([linear(x) for linear in linears], dim=-1)
    assert (together - reference).norm() / reference.norm() < 0.15
    # half a byte a weight, and a float16 scale and zero for each group of 32 inputs of each output
    assert fused.packed_bytes == sum(parts) * k // 2 + sum(parts) * (k // 32) * 4


def test_a_bfloat16_linear_packs_from_its_bit_patterns_what_numpy_packs_from_its_values():
    torch.manual_seed(5)
    linear = nn.Linear(96, 48).to(torch.bfloat16)
    packed = Int4Linear(linear, 32).weights
    reference = q4.reference_pack(linear.weight.detach().float().numpy(), 32)
    assert np.array_equal(packed.codes, reference.codes) and np.array_equal(packed.scales, reference.scales)


def test_fused_bfloat16_parts_pack_in_row_blocks_what_numpy_packs_from_the_stacked_values(monkeypatch):
    # parts of uneven sizes across blocks of 16 rows: every part's rows land at their offset
    monkeypatch.setattr(quantized, "ROW_BLOCK", 16)
    torch.manual_seed(6)
    parts = [nn.Linear(64, n).to(torch.bfloat16) for n in (16, 48, 32)]
    stacked = torch.cat([p.weight.detach() for p in parts]).float().numpy()
    four, four_ref = Int4Linear(parts, 32).weights, q4.reference_pack(stacked, 32)
    assert np.array_equal(four.codes, four_ref.codes) and np.array_equal(four.scales, four_ref.scales)
    parts = [nn.Linear(40, n).to(torch.bfloat16) for n in (5, 37, 20)]
    stacked = torch.cat([p.weight.detach() for p in parts]).float().numpy()
    eight, eight_ref = Int8Linear(parts).weights, q8.reference_pack(stacked)
    assert all(np.array_equal(a, eight_ref.arrays()[name]) for name, a in eight.arrays().items())


def test_int4_packs_only_the_shapes_it_can():
    assert Int4Linear.group_for(nn.Linear(256, 259)) is None
    assert Int4Linear.group_for(nn.Linear(100, 64)) is None
    assert Int4Linear.group_for(nn.Linear(96, 64)) == 32 and Int4Linear.group_for(nn.Linear(24, 64)) == 8


def test_an_int8_linear_keeps_the_leading_dimensions():
    q = Int8Linear(nn.Linear(8, 5))
    assert q(torch.randn(2, 3, 8)).shape == (2, 3, 5)
    assert q(torch.randn(0, 8)).shape == (0, 5)  # no rows: nothing to compute, not an error


class ScriptedClock:
    """A clock whose measured intervals last `durations[i]` seconds for the i-th candidate timed:
    the probe reads it in the same order for every candidate, `reads` times each."""

    def __init__(self, durations: list[float], reads: int):
        self.durations, self.reads, self.count, self.now = durations, reads, 0, 0.0

    def __call__(self) -> float:
        candidate = self.count // self.reads
        if self.count % 2:
            self.now += self.durations[candidate]
        self.count += 1
        return self.now


def _reads_per_candidate(model) -> int:
    reads = []
    choose(model, gamma_max=3, candidates=["float32"], repeats=1, clock=lambda: reads.append(1) or time.perf_counter())
    return len(reads)


@pytest.mark.parametrize("fastest", [0, 1, 2])
def test_auto_takes_the_precision_the_probe_timed_fastest(fastest):
    _, target = tiny_pair(seed=3)
    candidates = ["float32", "bfloat16", "int8"]
    durations = [0.010, 0.010, 0.010]
    durations[fastest] = 0.002
    clock = ScriptedClock(durations, _reads_per_candidate(target))
    apply_precision(target, "auto", gamma_max=3, candidates=candidates, repeats=1, clock=clock)
    choice = precision_of(target)
    assert choice.precision == candidates[fastest] and choice.requested == "auto"
    layers = target.config.num_hidden_layers
    # every timed interval lasted the scripted time: (layers + head) at M = 1 and at M = γmax + 1
    for name, duration in zip(candidates, durations):
        assert choice.probe_ms[name] == {
            "M=1": pytest.approx((layers + 1) * duration * 1e3),
            "M=4": pytest.approx((layers + 1) * duration * 1e3),
        }
    assert compute_dtype(target) == (torch.bfloat16 if candidates[fastest] == "bfloat16" else torch.float32)
    if candidates[fastest] == "int8":
        assert any(isinstance(m, Int8Linear) for m in target.modules())


@pytest.mark.parametrize(
    ("durations", "chosen"),
    [
        ([0.0100, 0.0100, 0.0105], "int8"),  # int8 5% slower than the fastest: fewer bits win
        ([0.0100, 0.0100, 0.0120], "bfloat16"),  # int8 20% slower: the fastest wins
        ([0.0095, 0.0100, 0.0200], "bfloat16"),  # float32 fastest, bfloat16 5% behind: fewer bits
        ([0.0080, 0.0100, 0.0200], "float32"),  # the others more than 10% behind
    ],
)
def test_within_ten_percent_of_the_fastest_the_fewest_weight_bits_win(durations, chosen):
    _, target = tiny_pair(seed=3)
    candidates = ["float32", "bfloat16", "int8"]
    clock = ScriptedClock(durations, _reads_per_candidate(target))
    apply_precision(target, "auto", gamma_max=3, candidates=candidates, repeats=1, clock=clock)
    assert precision_of(target).precision == chosen


class ThreadClock:
    """A clock whose every measured interval lasts as many milliseconds as torch has threads."""

    def __init__(self):
        self.now, self.count = 0.0, 0

    def __call__(self) -> float:
        self.count += 1
        if self.count % 2 == 0:
            self.now += torch.get_num_threads() * 1e-3
        return self.now


def test_the_probe_times_on_the_threads_the_model_will_serve_on():
    """A zygote loads on one thread for forks that serve on more: with `threads` the probe runs in a
    forked child on that many, and this process keeps its own count. In a fresh interpreter: a
    child forked from a process whose OpenMP pool has run (an earlier test's) hangs."""
    import subprocess
    import sys
    from pathlib import Path

    here = Path(__file__).parent
    code = "import test_engine_precision as t; t._probe_on_served_threads()"
    subprocess.run([sys.executable, "-c", code], cwd=here, check=True, timeout=300)


def _probe_on_served_threads() -> None:
    _, target = tiny_pair(seed=5)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _, here = choose(target, gamma_max=3, candidates=["float32"], repeats=1, clock=ThreadClock())
        _, served = choose(target, gamma_max=3, candidates=["float32"], repeats=1, clock=ThreadClock(), threads=2)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    layers = target.config.num_hidden_layers
    assert here["float32"]["M=1"] == pytest.approx((layers + 1) * 1.0)  # ms: one thread
    assert served["float32"]["M=1"] == pytest.approx((layers + 1) * 2.0)  # timed on two


def test_a_probe_whose_child_fails_runs_here():
    _, target = tiny_pair(seed=6)
    clock = ThreadClock()

    def failing_on_three() -> float:
        if torch.get_num_threads() == 3:  # only in the child
            raise RuntimeError("no clock there")
        return clock()

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        precision, probe = choose(
            target, gamma_max=3, candidates=["float32"], repeats=1, clock=failing_on_three, threads=3
        )
    finally:
        torch.set_num_threads(before)
    layers = target.config.num_hidden_layers
    assert precision == "float32" and probe["float32"]["M=1"] == pytest.approx((layers + 1) * 1.0)  # timed here


def test_a_forked_child_that_never_answers_is_killed_at_its_deadline(tmp_path):
    import os
    import time

    from specmemo.actors.engine.forked import on_threads

    note = tmp_path / "child.pid"

    def hang() -> int:
        note.write_text(str(os.getpid()))  # the child says who it is, then never answers
        time.sleep(600)
        return 1

    start = time.monotonic()
    assert on_threads(hang, 1, timeout=1.0) is None
    assert time.monotonic() - start < 30
    with pytest.raises(ProcessLookupError):  # killed and reaped, not left sleeping
        os.kill(int(note.read_text()), 0)
    assert on_threads(lambda: [torch.get_num_threads(), "ok"], 2, timeout=60) == [2, "ok"]


def test_a_4_bit_draft_is_probed_through_the_native_step_it_will_run(monkeypatch):
    from specmemo.native.decode_step import DecodeStack

    draft, _ = tiny_pair(seed=4)
    rows = []
    step = DecodeStack.step
    monkeypatch.setattr(DecodeStack, "step", lambda self, h, m, *rest: rows.append(m) or step(self, h, m, *rest))
    _, probe = choose(draft, gamma_max=3, candidates=["int4", "int8"], repeats=1, role="draft")
    assert sorted(set(rows)) == [1, 4]  # M = 1 and γmax + 1, both within the native step's rows
    assert set(probe) == {"int4", "int8"}
    rows.clear()
    choose(draft, gamma_max=3, candidates=["int4"], repeats=1, role="target")
    assert rows == []  # a target's layers run in torch (exact rows): the probe times those


def test_an_unknown_precision_is_refused():
    _, target = tiny_pair(seed=1)
    with pytest.raises(ValueError, match="precision"):
        apply_precision(target, "int3")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    precisions=st.sampled_from(
        [
            ("float32", "float32"),
            ("int8", "int8"),
            ("int4", "int8"),
            ("float32", "int8"),
            ("int4", "int4"),
            ("int8", "int4"),
        ]
    ),
    seed=st.integers(0, 10_000),
    noise=st.sampled_from([0.0, 0.05, 0.5]),
    block=st.integers(1, 8),
    gamma=st.one_of(st.none(), st.integers(0, 5)),
    prompts=st.lists(st.lists(st.integers(0, 258), min_size=1, max_size=20), min_size=1, max_size=3),
    max_new=st.integers(1, 12),
)
def test_greedy_speculative_output_equals_the_same_precision_target_greedy(
    precisions, seed, noise, block, gamma, prompts, max_new
):
    # (draft, target) precisions: the draft's never matters, the target's own greedy is the reference
    draft, target = tiny_pair(seed=seed, noise=noise, draft_layers=1)
    apply_precision(draft, precisions[0], role="draft")
    apply_precision(target, precisions[1])
    engine = Engine(draft, target, block_tokens=block, gamma=gamma)
    batch = engine.generate_batch([np.asarray(p) for p in prompts], max_new_tokens=max_new)
    for prompt, (ids, _) in zip(prompts, batch):
        assert ids.tolist() == greedy_reference(target, prompt, max_new).tolist()


def test_bfloat16_speculation_runs_and_mostly_agrees_with_its_target():
    # bf16 rounds a forward of M tokens differently from M one-token forwards, so exact equality is
    # not promised (the benchmark reports the agreement); the engine must still run and agree often
    draft, target = tiny_pair(seed=4, noise=0.02, draft_layers=2)
    apply_precision(draft, "bfloat16")
    apply_precision(target, "bfloat16")
    engine = Engine(draft, target, block_tokens=4, gamma=3)
    prompt = np.arange(5, 25)
    ids, stats = engine.generate_ids(prompt, 16)
    reference = greedy_reference(target, prompt, 16)
    assert len(ids) == 16 and stats["steps"] >= 4
    assert ids[0] == reference[0]
    assert engine.verifier.dtype == torch.bfloat16


def _int8_reference_bytes(model) -> int:
    # from the float model's own modules: 1 byte a linear weight + a float32 scale and an int32
    # code sum an output channel, in q8's layout (outputs padded to 16, inputs to 8; the tiny
    # model's fused parts are multiples of 16), + its float32 bias; 2 bytes an embedding entry,
    # 4 bytes anything else
    total = 0
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if isinstance(module, nn.Linear) and name == "weight":
                n, k = -(-param.shape[0] // 16) * 16, -(-param.shape[1] // 8) * 8
                total += n * k + 8 * n
            elif isinstance(module, nn.Embedding):
                total += 2 * param.numel()
            else:
                total += 4 * param.numel()
        total += sum(4 * b.numel() for b in module.buffers(recurse=False) if b.is_floating_point())
    return total


def test_int8_weights_are_counted_once_each_fused_or_not():
    _, target = tiny_pair(seed=6, hidden=64, layers=2)
    target.config.tie_word_embeddings = False
    target.lm_head.weight = nn.Parameter(target.lm_head.weight.detach().clone())  # untied: counted apart
    reference = _int8_reference_bytes(target)
    apply_precision(target, "int8")
    assert precision_of(target).weight_bytes == weight_bytes(target) == reference


def test_usage_counts_the_weights_of_both_models():
    draft, target = tiny_pair(seed=7)
    apply_precision(target, "int8")
    engine = Engine(draft, target, block_tokens=4)
    weights = engine.usage()["weights"]
    assert weights == {"draft": weight_bytes(draft), "target": weight_bytes(target)}


def test_a_memory_budget_leaves_the_kv_what_the_weights_do_not_take():
    from specmemo.actors.engine import MemoryManager
    from specmemo.actors.engine.errors import OverBudget

    m = MemoryManager(0, block_tokens=4, memory_budget=10_000)
    m.add_holder("target", 100, weight_bytes=6_000)
    assert m.budget == 4_000 and m.usage()["weights"] == {"target": 6_000}
    with pytest.raises(OverBudget):
        m.add_holder("draft", 50, weight_bytes=3_700)  # 300 B left: below one 200 B + 400 B block pair
    assert m.budget == 4_000 and "draft" not in m.usage()["weights"]


def test_each_layer_keeps_its_kv_on_the_device_of_its_attention_weights():
    # a fake layer-to-device map: layer 1's attention on the meta device stands for a second GPU
    _, target = tiny_pair(seed=2, layers=3)
    target.model.layers[1].self_attn.to("meta")
    assert [d.type for d in layer_devices(target)] == ["cpu", "meta", "cpu"]
    cache = CacheHolder(target, block_tokens=4, spare_blocks=1).new_cache()
    cache.resize(2)
    assert [layer.keys.device.type for layer in cache.layers] == ["cpu", "meta", "cpu"]
    assert [layer.values.device.type for layer in cache.layers] == ["cpu", "meta", "cpu"]
    key = torch.ones(1, cache.layers[0].keys.shape[1], 3, cache.layers[0].keys.shape[-1])
    for layer in cache.layers:
        layer.update(key, key)
    assert cache.layers[0].keys[0, 0, :3].eq(1).all() and cache.length == 3


def test_fused_parts_compute_exactly_what_separate_int8_linears_compute():
    _, target = tiny_pair(seed=11, layers=1)
    attention = target.model.layers[0].self_attn
    separate = {n: Int8Linear(getattr(attention, n)) for n in ("q_proj", "k_proj", "v_proj")}
    apply_precision(target, "int8")
    assert not isinstance(target.model.layers[0].self_attn.q_proj, nn.Linear)
    x = torch.randn(2, 5, attention.q_proj.in_features)
    with torch.inference_mode():
        for order in (("q_proj", "k_proj", "v_proj"), ("v_proj", "q_proj", "k_proj")):
            for n in order:
                assert torch.equal(getattr(attention, n)(x), separate[n](x))
        assert torch.equal(attention.k_proj(x[:1]), separate["k_proj"](x[:1]))  # a new input alone


def test_a_conversion_drops_the_checkpoint_pages_it_consumed_and_loses_nothing(tmp_path):
    # transformers maps a safetensors checkpoint and reads it lazily; the conversion drops the
    # pages of each weight it has consumed (a later read faults them in from the file again)
    import copy

    from transformers import AutoModelForCausalLM

    from specmemo.actors.engine.precision import SourcePages

    draft, _ = tiny_pair(seed=1, hidden=256)
    draft.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    in_memory = copy.deepcopy(loaded)  # the same weights on the heap, never dropped
    source = SourcePages()
    assert source.maps, "the checkpoint should be mapped from its file"
    weight = loaded.model.layers[0].mlp.up_proj.weight
    before = weight.clone()
    source.drop(weight)
    assert source.dropped > 0 and torch.equal(weight, before)  # dropped, and read back from the file
    heap = torch.arange(1 << 16, dtype=torch.float32)
    SourcePages().drop(heap)  # not a file mapping: left alone
    assert torch.equal(heap, torch.arange(1 << 16, dtype=torch.float32))
    for model in (loaded, in_memory):
        apply_precision(model, "int8")
    ids = torch.tensor([[1, 5, 9, 200, 3]])
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, in_memory(ids).logits)


def test_the_probe_times_a_slice_of_a_large_head_and_scales_it():
    from specmemo.actors.engine.precision import HEAD_SAMPLE, _head_sample

    head = torch.nn.Linear(64, 8192, bias=False)
    sample, scale = _head_sample(head)
    assert sample.out_features == 8192 // HEAD_SAMPLE and scale == HEAD_SAMPLE
    assert torch.equal(sample.weight, head.weight[: sample.out_features])
    small = torch.nn.Linear(64, 300)
    assert _head_sample(small)[1] == 1.0


def test_int4_keeps_at_8_bits_what_a_4_bit_file_stored_finer():
    from specmemo.actors.engine.conversion import finer_than_four_bits, levels_per_group

    _, target = tiny_pair(seed=12, layers=2)
    assert finer_than_four_bits(target) == frozenset()  # float weights: everything goes to 4 bits
    linears = [m for m in target.modules() if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for m in linears:  # a converted Q4_K-like checkpoint: 16 levels per group of 32
            w = m.weight.reshape(m.out_features, -1, 32)
            low, step = w.amin(-1, keepdim=True), (w.amax(-1, keepdim=True) - w.amin(-1, keepdim=True)) / 15
            m.weight.copy_((low + torch.round((w - low) / step) * step).reshape(m.weight.shape))
        fine = target.model.layers[0].self_attn.v_proj  # stored finer, as Q4_K_M stores v
        fine.weight.copy_(torch.randn_like(fine.weight))
    assert levels_per_group(fine.weight) > 16 and all(
        levels_per_group(m.weight) <= 16 for m in linears if m is not fine
    )
    assert finer_than_four_bits(target) == {id(fine)}
    apply_precision(target, "int4")
    attention = target.model.layers[0].self_attn
    assert isinstance(attention.q_proj_k_proj_v_proj_fused, Int8Linear)  # fused with v, at 8 bits
    assert isinstance(target.model.layers[1].self_attn.q_proj_k_proj_v_proj_fused, Int4Linear)
    assert isinstance(target.model.layers[0].mlp.down_proj, Int4Linear)
