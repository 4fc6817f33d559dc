"""bf16 against fp32 on this CPU: a decode step, a 6-token verify step and a 64-token prefill.

    python bench/dtype.py [--model DIR] [--threads 2]

Backs the choice of fp32 for the default deployment on CPUs without bf16 matrix units
(docs/decisions.md). Prints, for each dtype, seconds per 1-token decode step and per 6-token
verify step (γ = 5; means of 5, each after a 64-token prefill) and for one 64-token prefill.
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import AutoModelForCausalLM

from specmemo.actors.engine.batch import cache_kwarg
from specmemo.actors.engine.pull import default_pair_paths


def measure(path: str, dtype: torch.dtype, steps: int = 5) -> tuple[float, float, float]:
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, 1000, (1, 64), generator=gen)
    per_step = []
    with torch.inference_mode():
        for width in (1, 6):
            cache = model(prompt, use_cache=True).past_key_values
            start = time.perf_counter()
            for _ in range(steps):
                tokens = torch.randint(0, 1000, (1, width), generator=gen)
                cache = model(tokens, **{cache_kwarg(model): cache}, use_cache=True).past_key_values
            per_step.append((time.perf_counter() - start) / steps)
        start = time.perf_counter()
        model(prompt)
        prefill = time.perf_counter() - start
    return per_step[0], per_step[1], prefill


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(default_pair_paths()["draft"]))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for dtype in (torch.bfloat16, torch.float32):
        step, verify, prefill = measure(args.model, dtype)
        print(
            f"{str(dtype):16s} decode step {step:.3f} s   6-token verify {verify:.3f} s   "
            f"64-token prefill {prefill:.3f} s"
        )


if __name__ == "__main__":
    main()
