"""How long the default pair takes to load and convert, each model in a fresh process.

    python bench/model_load.py                 # int4, 3 rounds
    python bench/model_load.py --precision int8 --rounds 2

A model's start is dominated by reading its checkpoint and converting its weights (a 1.5B target
to 4 bits packs ~1.3B weights). Rows, each the fastest of `--rounds` fresh processes (the rows of
a round run one after another, so a busy spell of this shared machine falls on all of them):
- transformers `from_pretrained` in the checkpoint's bfloat16, nothing converted: the floor;
- specmemo `load_model` at `--precision`, weights packed by the C packers (`q4.pack`, `q8.pack_rows`);
- the same with the packers' numpy references (`q4.reference_pack` and `q8.reference_pack`, what
  the engine ran before the C packers), so the ratio is the packers' share of a start;
- the C packers again, storing their result in an empty store of converted weights (a first start,
  `actors/engine/converted.py`), then a load that reads that entry (every later start).
The first three run with the store off (`SPECMEMO_CONVERTED=off`). Each row times the call
alone (imports done first) with `--threads` torch threads. Writes
bench/results/model-load.json and the "Model load" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from specmemo.actors.engine.precision import cpu_features
from specmemo.actors.engine.pull import default_pair_specs

sys.path.insert(0, str(Path(__file__).resolve().parent))
from specdecode import replace_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Model load"
#: Each row: the child's variant, and whether it runs with the round's store of converted weights.
ROWS = {
    "transformers bfloat16 (no conversion)": ("transformers", False),
    "specmemo, C packers": ("c", False),
    "specmemo, numpy packers": ("numpy", False),
    "specmemo, C packers, storing the converted weights": ("c", True),
    "specmemo, converted weights read from the store": ("c", True),
}
TRANSFORMERS, OURS = list(ROWS)[:2]

CHILD = r"""
import dataclasses, json, sys, time
import numpy as np, torch
from specmemo.actors.engine.models import load_model
from specmemo.actors.engine.pull import default_pair_specs
from specmemo.native import q4, q8
from transformers import AutoModelForCausalLM

role, variant, precision, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
torch.set_num_threads(threads)
spec = default_pair_specs()[0 if role == "draft" else 1]
def as_float(weight, bfloat16):
    weight = np.asarray(weight)
    return (weight.astype(np.uint32) << 16).view(np.float32) if bfloat16 else weight
if variant == "numpy":
    def numpy_pack(weight, group=64, bfloat16=False, isa=None, out=None):
        packed = q4.reference_pack(as_float(weight, bfloat16), group)
        if out is None:
            return packed
        out.codes[...], out.scales[...] = packed.codes, packed.scales
        return out
    def numpy_pack_rows(w, first, rows, bfloat16=False, isa=None):
        assert first % 16 == 0, "the numpy swap packs whole blocks of 16 rows only"
        packed = q8.reference_pack(as_float(rows, bfloat16))
        blocks = slice(first // 16, first // 16 + packed.codes.shape[0])
        w.codes[blocks] = packed.codes
        w.scales[first : first + packed.n] = packed.scales[: packed.n]
        w.sums[first : first + packed.n] = packed.sums[: packed.n]
    q4.pack, q8.pack_rows = numpy_pack, numpy_pack_rows
start = time.perf_counter()
if variant == "transformers":
    AutoModelForCausalLM.from_pretrained(spec.source, dtype=torch.bfloat16)
else:
    load_model(dataclasses.replace(spec, precision=precision))
print(json.dumps({"seconds": time.perf_counter() - start}))
"""


def time_one(role: str, variant: str, precision: str, threads: int, store: str = "off") -> float:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, role, variant, precision, str(threads)],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "SPECMEMO_CONVERTED": store},
    ).stdout
    return json.loads(out.strip().splitlines()[-1])["seconds"]


def run(args) -> dict:
    default_pair_specs()  # ModelNotFound now, not in a child
    seconds: dict[str, dict[str, list[float]]] = {role: {row: [] for row in ROWS} for role in ("draft", "target")}
    for r in range(args.rounds):
        for role in ("draft", "target"):
            with tempfile.TemporaryDirectory(prefix="specmemo-converted-") as store:
                for row, (variant, stored) in ROWS.items():
                    where = store if stored else "off"
                    seconds[role][row].append(time_one(role, variant, args.precision, args.threads, where))
                    print(f"round {r + 1}/{args.rounds} {role} {row}: {seconds[role][row][-1]:.1f} s", flush=True)
    return {
        "cpu": cpu_features().as_dict(),
        "torch": torch.__version__,
        "threads": args.threads,
        "precision": args.precision,
        "rounds": args.rounds,
        "seconds": seconds,
    }


def table(result: dict) -> str:
    lines = ["| model | load | fastest of rounds | x C packers |", "|---|---|---:|---:|"]
    for role, rows in result["seconds"].items():
        ours = min(rows[OURS])
        for row, values in rows.items():
            label = row if row == TRANSFORMERS else row.replace("specmemo", f"specmemo {result['precision']}")
            lines.append(f"| {role} | {label} | {min(values):.1f} s | {min(values) / ours:.2f}x |")
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--precision", default="int4")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-docs", action="store_true")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    command = "python bench/model_load.py " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    started = time.time()
    result = run(args)
    result["command"], result["minutes"] = command.strip(), (time.time() - started) / 60
    result["finished"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    name = "model-load.json" if not args.no_docs else "model-load-no-docs.json"
    (ROOT / "bench" / "results" / name).write_text(json.dumps(result, indent=1))
    print(table(result))
    if not args.no_docs:
        write_docs(result)


def write_docs(result: dict) -> None:
    """The "Model load" section of docs/benchmarks.md from a run's result."""
    cpu = result["cpu"]
    body = (
        f"{SECTION}\n\nCommand (from the repository root, after `specmemo models pull`):\n\n    {result['command']}\n\n"
        f"Run {result['finished']}, {result['minutes']:.0f} min, CPU `{cpu['model']}` "
        f"(flags {', '.join(cpu['flags'])}), {result['threads']} threads, torch {result['torch']}. "
        "Each model loaded in a fresh process, the fastest of "
        f"{result['rounds']} rounds (the rows of a round one after another; the checkpoint in the page cache after "
        'the first). "numpy packers" are the C packers\' numpy references, `q4.reference_pack` and '
        "`q8.reference_pack`, swapped in: the difference is what packing the 4-bit and 8-bit weights costs a start. "
        "transformers' row maps the checkpoint and reads "
        "a weight's pages only when it is used: the floor of imports and construction, not of reading the weights. "
        "The first three rows run with the store of converted weights off; the last two start from an empty store "
        "(a first start converts and stores) and read the entry it left (every later start: the arrays are "
        "mapped from the file: the 4-bit and 8-bit arrays alike). "
        "Raw data: `bench/results/model-load.json`.\n\n" + table(result) + "\n"
    )
    replace_section(ROOT / "docs" / "benchmarks.md", SECTION, body)


if __name__ == "__main__":
    main()
