"""llama.cpp as the peer engine of the speculative-decoding benchmark, measured through llama-cpp-python.

    /root/.cache/specmemo/llama-venv/bin/python bench/llamacpp_peer.py REQUEST.json

Runs under the interpreter that has `llama-cpp-python` (0.3.x) installed and imports only the
standard library and `llama_cpp` (no specmemo, no torch). REQUEST.json:

    {"target": "/path/target.gguf", "draft": "/path/draft.gguf", "threads": 2, "n_ctx": 4096,
     "max_new_tokens": 64, "prompts": [[token ids...], ...], "repeats": 1}

Optional keys: "warmup_tokens" (default 4: one untimed generation of that many tokens on the
first prompt after each load, 0 to skip), "use_mmap" (default true, llama.cpp's default) and
"prompt_lookup" ({"max_ngram_size": 2, "num_pred_tokens": 10}, the binding's defaults).

Prompts come as token ids, already chat-templated by the caller with the GGUF's own tokenizer;
they are fed as they are (no BOS added). Three rows, each in its own load → run → free cycle:

* "target": the target GGUF alone;
* "draft": the draft GGUF alone;
* "target+prompt-lookup": the target with the binding's only speculative mode,
  `LlamaPromptLookupDecoding` passed as `draft_model=` (drafts are n-grams copied from the
  context, no draft model; verification by `Llama.generate` over all drafted positions, which
  forces `logits_all`).

Every generation goes through `Llama.generate` with greedy sampling (temp 0, top_k 1, no
penalties) and yields exactly `max_new_tokens` new tokens: the generator never stops at EOS by
itself, the loop simply stops pulling after that many. The model state is reset before each
generation so no KV prefix is reused between prompts or repeats. Per prompt: prefill seconds
(prompt evaluation plus the first sampled token), decode seconds (the remaining tokens),
total seconds, the new token ids and tokens/s = new tokens / total seconds (prefill included);
with several repeats, times are medians. Per row: load seconds and memory from
/proc/self/status: RSS before load, after load and after the runs (anon / file split), and the
peak VmHWM, reset through /proc/self/clear_refs just before the load so it is this model's peak.
With mmap (the default) the weights are file-backed pages and count in RSS once touched.

One JSON object goes to stdout:

    {"system_info": str, "llama_cpp_version": str, "config": {...},
     "rows": {"target": ROW, "draft": ROW, "target+prompt-lookup": ROW},
     "draft_model_classes": [str], "speculative_with_draft_model": bool, "note": str}

Everything else (llama.cpp's own logs included) goes to stderr: file descriptor 1 is pointed at
stderr for the whole run and the JSON is written to a saved copy of the original stdout.
"""

from __future__ import annotations

import gc
import inspect
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import llama_cpp
from llama_cpp import llama_speculative
from llama_cpp.llama_speculative import LlamaDraftModel, LlamaPromptLookupDecoding

PROMPT_LOOKUP_DEFAULTS = {"max_ngram_size": 2, "num_pred_tokens": 10}


# memory from /proc/self/status (Linux)


def _status_bytes(key: str) -> int | None:
    """One `kB` field of /proc/self/status in bytes, None where the kernel has no such field."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return None


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (writing 5 to clear_refs); False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


# speculative mode of the binding


class CountingPromptLookup(LlamaPromptLookupDecoding):
    """The binding's prompt-lookup drafter, counting its calls and the tokens it proposes.

    `Llama.generate` calls the drafter once before every decode-phase evaluation of the target,
    so `calls` is the number of target forward passes after the prefill.
    """

    def __init__(self, max_ngram_size: int, num_pred_tokens: int) -> None:
        super().__init__(max_ngram_size=max_ngram_size, num_pred_tokens=num_pred_tokens)
        self.clear()

    def clear(self) -> None:
        self.calls = 0
        self.drafted = 0

    def __call__(self, input_ids, /, **kwargs):
        draft = super().__call__(input_ids, **kwargs)
        self.calls += 1
        self.drafted += len(draft)
        return draft


def _draft_model_classes() -> list[str]:
    """Names of the concrete `LlamaDraftModel` implementations the binding ships."""
    return sorted(
        name
        for name, obj in vars(llama_speculative).items()
        if inspect.isclass(obj) and issubclass(obj, LlamaDraftModel) and not inspect.isabstract(obj)
    )


# generation


def generate_exact(llm: llama_cpp.Llama, prompt: list[int], n_new: int) -> dict[str, Any]:
    """Greedy generation of exactly `n_new` tokens after `prompt`, timed.

    `reset()` first sets the evaluated length to 0, so `generate` finds no cached prefix and
    re-evaluates (and overwrites the KV cache for) the whole prompt.
    """
    drafter = llm.draft_model if isinstance(llm.draft_model, CountingPromptLookup) else None
    if drafter is not None:
        drafter.clear()
    llm.reset()
    tokens: list[int] = []
    t_start = time.perf_counter()
    t_first = t_start
    gen = llm.generate(prompt, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, typical_p=1.0, repeat_penalty=1.0, reset=True)
    try:
        for token in gen:
            if not tokens:
                t_first = time.perf_counter()
            tokens.append(int(token))
            if len(tokens) == n_new:
                break
    finally:
        gen.close()
    t_end = time.perf_counter()
    if len(tokens) != n_new:
        raise RuntimeError(f"generate stopped after {len(tokens)} of {n_new} tokens")
    run = {"prefill_s": t_first - t_start, "decode_s": t_end - t_first, "total_s": t_end - t_start, "tokens": tokens}
    if drafter is not None:
        run["decode_forward_passes"] = drafter.calls
        run["drafted_tokens"] = drafter.drafted
    return run


def measure_row(
    model_path: str, req: dict[str, Any], prompts: list[list[int]], drafter: CountingPromptLookup | None = None
) -> dict[str, Any]:
    """Load one GGUF, run every prompt `repeats` times, free it; timings and memory of the row."""
    n_new = int(req["max_new_tokens"])
    repeats = int(req.get("repeats", 1))
    warmup_tokens = int(req.get("warmup_tokens", 4))

    gc.collect()
    hwm_reset = _reset_peak_rss()
    rss_before = _status_bytes("VmRSS")
    t0 = time.perf_counter()
    llm = llama_cpp.Llama(
        model_path,
        n_ctx=int(req["n_ctx"]),
        n_threads=int(req["threads"]),
        n_threads_batch=int(req["threads"]),
        use_mmap=bool(req.get("use_mmap", True)),
        draft_model=drafter,
        verbose=False,
    )
    load_s = time.perf_counter() - t0
    rss_after_load = _status_bytes("VmRSS")

    try:
        if warmup_tokens > 0:
            generate_exact(llm, prompts[0], warmup_tokens)

        per_prompt = []
        for prompt in prompts:
            runs = [generate_exact(llm, prompt, n_new) for _ in range(repeats)]
            tokens = runs[0]["tokens"]
            entry: dict[str, Any] = {
                "prompt_tokens": len(prompt),
                "new_tokens": tokens,
                "prefill_s": statistics.median(r["prefill_s"] for r in runs),
                "decode_s": statistics.median(r["decode_s"] for r in runs),
                "total_s": statistics.median(r["total_s"] for r in runs),
                "repeats_identical": all(r["tokens"] == tokens for r in runs),
            }
            entry["tokens_per_s"] = n_new / entry["total_s"]
            if drafter is not None:
                entry["decode_forward_passes"] = runs[0]["decode_forward_passes"]
                entry["drafted_tokens"] = runs[0]["drafted_tokens"]
            entry["runs"] = [{k: r[k] for k in ("prefill_s", "decode_s", "total_s")} for r in runs]
            per_prompt.append(entry)

        memory = {
            "model_file_bytes": os.path.getsize(model_path),
            "rss_before_load_bytes": rss_before,
            "rss_after_load_bytes": rss_after_load,
            "rss_after_run_bytes": _status_bytes("VmRSS"),
            "rss_anon_after_run_bytes": _status_bytes("RssAnon"),
            "rss_file_after_run_bytes": _status_bytes("RssFile"),
            "vm_hwm_bytes": _status_bytes("VmHWM"),
            "vm_hwm_reset_before_load": hwm_reset,
        }
    finally:
        llm.close()
        del llm
        gc.collect()

    total_s = sum(p["total_s"] for p in per_prompt)
    decode_s = sum(p["decode_s"] for p in per_prompt)
    row: dict[str, Any] = {
        "model": model_path,
        "load_s": load_s,
        "tokens_per_s": n_new * len(per_prompt) / total_s,
        "decode_tokens_per_s": (n_new - 1) * len(per_prompt) / decode_s if decode_s > 0 else None,
        "memory": memory,
        "prompts": per_prompt,
    }
    if drafter is not None:
        row["prompt_lookup"] = {"max_ngram_size": drafter.max_ngram_size, "num_pred_tokens": drafter.num_pred_tokens}
    return row


def run(req: dict[str, Any]) -> dict[str, Any]:
    """All three rows for one request, as the JSON-ready result object."""
    prompts = [[int(t) for t in p] for p in req["prompts"]]
    if not prompts:
        raise ValueError("request has no prompts")
    longest = max(len(p) for p in prompts) + int(req["max_new_tokens"])
    if longest > int(req["n_ctx"]):
        raise ValueError(f"n_ctx {req['n_ctx']} < longest prompt + max_new_tokens = {longest}")
    lookup = {**PROMPT_LOOKUP_DEFAULTS, **req.get("prompt_lookup", {})}

    rows: dict[str, Any] = {}
    for label, path, drafter in (
        ("target", req["target"], None),
        ("draft", req["draft"], None),
        ("target+prompt-lookup", req["target"], CountingPromptLookup(**lookup)),
    ):
        print(f"llamacpp_peer: {label} ({path})", file=sys.stderr, flush=True)
        rows[label] = measure_row(path, req, prompts, drafter)

    plain = rows["target"]["prompts"]
    for spec_entry, plain_entry in zip(rows["target+prompt-lookup"]["prompts"], plain):
        spec_entry["same_tokens_as_target"] = spec_entry["new_tokens"] == plain_entry["new_tokens"]

    classes = _draft_model_classes()
    with_draft_model = bool(set(classes) - {LlamaPromptLookupDecoding.__name__})
    note = (
        "Greedy, exactly max_new_tokens new tokens via Llama.generate (no stop on EOS), state reset "
        "before every generation; prefill_s = prompt eval + first token; tokens_per_s includes prefill; "
        "times are medians over repeats after an untimed warm-up. "
        f"The binding's speculative hook is llama_speculative.LlamaDraftModel (__call__(input_ids) -> "
        f"draft ids); it ships {', '.join(classes) or 'no implementation'}. "
        + (
            "A draft-model drafter exists in the binding but is not measured here."
            if with_draft_model
            else "No drafter that runs a draft model is shipped (llama.cpp's common/speculative is not "
            "exported by the bundled libllama), so 'draft' is the draft model alone and the only "
            "speculative row is prompt-lookup (no draft model; logits_all forced on)."
        )
    )
    return {
        "system_info": llama_cpp.llama_print_system_info().decode("utf-8", "replace").strip(),
        "llama_cpp_version": llama_cpp.__version__,
        "config": {
            "threads": int(req["threads"]),
            "n_ctx": int(req["n_ctx"]),
            "max_new_tokens": int(req["max_new_tokens"]),
            "repeats": int(req.get("repeats", 1)),
            "warmup_tokens": int(req.get("warmup_tokens", 4)),
            "use_mmap": bool(req.get("use_mmap", True)),
            "n_prompts": len(prompts),
        },
        "rows": rows,
        "draft_model_classes": classes,
        "speculative_with_draft_model": with_draft_model,
        "note": note,
    }


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    req = json.loads(Path(argv[1]).read_text())

    # Keep stdout for the JSON alone: whatever writes to fd 1 from here on (C code included) lands on stderr.
    sys.stdout.flush()
    json_out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)

    result = run(req)
    json.dump(result, json_out)
    json_out.write("\n")
    json_out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
