"""The OpenAI-compatible gateway: prefix reuse, and load against llama.cpp's own server, in one run.

    python bench/http_gateway.py --clients 16 --seconds 120

1. Prefix reuse (the default deployment, deploy/local.toml, on the default pair): turn 1 of a
   conversation of about 1k prompt tokens (a document and a question), then turn 2 sent the way
   the API is used, statelessly with the whole history. Time to first token of each (streamed),
   and the prompt tokens the gateway reports as reused from the cache. Median of --conversations.
2. Load: --clients concurrent streaming clients for --seconds against the gateway, then against
   llama-cpp-python's server (`python -m llama_cpp.server`, same Q4_K_M target GGUF, same thread
   count, in the venv `bench/specdecode.py peers` builds) with the same MT-Bench prompts and
   max_tokens. Requests, errors, p50/p99 time to first token, and aggregate completion tok/s
   (replies re-tokenized with the target's tokenizer, so both servers are counted alike).
Writes bench/results/http-gateway.json and the "HTTP gateway" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from specdecode import mtbench_questions, replace_section  # noqa: E402
from specdecode_peers import LLAMA_VERSION, ensure_llama_python  # noqa: E402

from specmemo.deploy.local import DEFAULT_CONFIG, LocalDeployment  # noqa: E402
from specmemo.deploy.toml_writer import to_toml  # noqa: E402

SECTION = "## HTTP gateway (OpenAI API) under load"
DOCUMENTS = ["docs/memory-model.md", "docs/decisions.md", "docs/spmv.md", "docs/security.md"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, proc: subprocess.Popen, timeout: float) -> None:
    """Until GET url answers 200 (a server that exits first raises)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer in {timeout:.0f} s")


def stream_turn(base: str, messages: list[dict], max_tokens: int, model: str) -> dict:
    """One streamed completion: the reply text, time to first content, total time, the extension."""
    body = {
        "model": model,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start, first, text, extension, error = time.perf_counter(), None, "", {}, None
    with httpx.stream("POST", base + "/v1/chat/completions", json=body, timeout=900) as r:
        if r.status_code != 200:
            r.read()
            return {"error": f"HTTP {r.status_code}: {r.text[:200]}"}
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if "error" in event:
                error = event["error"]
                break
            extension = event.get("specmemo", extension)
            for choice in event.get("choices") or []:
                delta = (choice.get("delta") or {}).get("content") or ""
                if delta and first is None:
                    first = time.perf_counter() - start
                text += delta
    return {"text": text, "ttft": first, "seconds": time.perf_counter() - start, "specmemo": extension, "error": error}


def prefix_reuse(base: str, args) -> dict:
    rows = []
    for path in DOCUMENTS[: args.conversations]:
        document = (ROOT / path).read_text()[: args.document_chars]
        messages = [{"role": "user", "content": f"Here is a document:\n\n{document}\n\nSummarize it in one sentence."}]
        one = stream_turn(base, messages, args.reuse_tokens, "specmemo")
        messages += [
            {"role": "assistant", "content": one["text"]},
            {"role": "user", "content": "Name one concrete detail it gives."},
        ]
        two = stream_turn(base, messages, args.reuse_tokens, "specmemo")
        rows.append(
            {
                "document": path,
                "ttft_1": one["ttft"],
                "ttft_2": two["ttft"],
                "prompt_1": one["specmemo"].get("prefilled_tokens", 0) + one["specmemo"].get("reused_tokens", 0),
                "prompt_2": two["specmemo"].get("prefilled_tokens", 0) + two["specmemo"].get("reused_tokens", 0),
                "reused_2": two["specmemo"].get("reused_tokens", 0),
                "prefilled_2": two["specmemo"].get("prefilled_tokens", 0),
            }
        )
        print(
            f"[reuse] {path}: TTFT {one['ttft']:.2f} s -> {two['ttft']:.2f} s, turn 2 reused "
            f"{rows[-1]['reused_2']} of {rows[-1]['prompt_2']} prompt tokens",
            flush=True,
        )
    return {"rows": rows, "ratio_median": float(np.median([r["ttft_2"] / r["ttft_1"] for r in rows]))}


def load(base: str, model: str, prompts: list[str], args, tokenizer) -> dict:
    stop_at = time.monotonic() + args.seconds
    results: list[dict] = []
    lock = threading.Lock()

    def client(k: int) -> None:
        i = k
        while time.monotonic() < stop_at:
            try:
                r = stream_turn(base, [{"role": "user", "content": prompts[i % len(prompts)]}], args.max_tokens, model)
            except httpx.HTTPError as exc:
                r = {"error": f"{type(exc).__name__}: {exc}"}
            r["finished_at"] = time.monotonic()
            with lock:
                results.append(r)
            i += args.clients

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - started
    ok = [r for r in results if not r.get("error")]
    tokens = sum(len(tokenizer.encode(r["text"], add_special_tokens=False)) for r in ok)
    ttft = sorted(r["ttft"] for r in ok if r["ttft"] is not None)
    pick = (lambda q: ttft[min(len(ttft) - 1, int(q * len(ttft)))]) if ttft else (lambda q: float("nan"))
    return {
        "requests": len(results),
        "errors": len(results) - len(ok),
        "empty": sum(not r["text"] for r in ok),
        "error_samples": [r["error"] for r in results if r.get("error")][:3],
        "ttft_p50": pick(0.5),
        "ttft_p99": pick(0.99),
        "tokens": tokens,
        "wall_s": wall,
        "tokens_per_s": tokens / wall,
    }


def start_specmemo() -> tuple[LocalDeployment, str]:
    """The default deployment (deploy/local.toml) with its gateway on a free port, ready."""
    port = free_port()
    config = tomllib.loads(DEFAULT_CONFIG.read_text())
    config["actors"]["http"]["config"]["port"] = port
    dep = LocalDeployment(to_toml(config), prefix="smhttp")
    try:
        dep.wait_ready(timeout=900)
    except BaseException:
        dep.cleanup()
        raise
    return dep, f"http://127.0.0.1:{port}"


def start_llama(args) -> tuple[subprocess.Popen, str]:
    from specmemo.actors.engine.pull import TARGET, default_cache_dir

    python = ensure_llama_python(args.llama_python)
    if subprocess.run([python, "-c", "import llama_cpp.server.app"], capture_output=True).returncode:
        subprocess.run([python, "-m", "pip", "install", "-q", f"llama-cpp-python[server]=={LLAMA_VERSION}"], check=True)
    port = free_port()
    proc = subprocess.Popen(
        [
            python,
            "-m",
            "llama_cpp.server",
            "--model",
            str(default_cache_dir() / TARGET.gguf_name),
            "--n_threads",
            str(args.threads),
            "--n_ctx",
            "4096",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--model_alias",
            "target",
            "--interrupt_requests",
            "False",
        ],  # queue concurrent requests, do not cancel them
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return proc, f"http://127.0.0.1:{port}"


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run(args) -> dict:
    from transformers import AutoTokenizer

    from specmemo.actors.engine.precision import cpu_features
    from specmemo.actors.engine.pull import TARGET, default_cache_dir

    tokenizer = AutoTokenizer.from_pretrained(default_cache_dir() / TARGET.name)
    prompts = [q["turns"][0] for q in mtbench_questions()][: args.prompts]
    result = {
        "cpu": cpu_features().as_dict(),
        "clients": args.clients,
        "seconds": args.seconds,
        "max_tokens": args.max_tokens,
        "threads": args.threads,
    }
    dep, base = start_specmemo()
    try:
        wait_until_up(base + "/health", dep.proc, 60)  # the actor is ready before hypercorn listens
        stream_turn(base, [{"role": "user", "content": "warm up"}], 4, "specmemo")
        result["reuse"] = prefix_reuse(base, args)
        result["specmemo"] = load(base, "specmemo", prompts, args, tokenizer)
        print(f"[load] specmemo: {result['specmemo']}", flush=True)
    finally:
        dep.cleanup()
    if not args.skip_llama:
        proc, base = start_llama(args)
        try:
            wait_until_up(base + "/v1/models", proc, 300)
            result["llama"] = load(base, "target", prompts, args, tokenizer)
            print(f"[load] llama.cpp: {result['llama']}", flush=True)
        finally:
            stop(proc)
    return result


def table(result: dict) -> str:
    reuse = result["reuse"]
    lines = [
        "Prefix reuse (turn 2 sent with the whole history):",
        "",
        "| document | prompt tokens turn 1 | TTFT turn 1 s | prompt tokens turn 2 | reused | prefilled | "
        "TTFT turn 2 s | turn 2 / turn 1 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in reuse["rows"]:
        lines.append(
            f"| {r['document']} | {r['prompt_1']} | {r['ttft_1']:.2f} | {r['prompt_2']} | {r['reused_2']} | "
            f"{r['prefilled_2']} | {r['ttft_2']:.2f} | {r['ttft_2'] / r['ttft_1']:.2f} |"
        )
    lines += [
        "",
        f"Median TTFT ratio turn 2 / turn 1: {reuse['ratio_median']:.2f}.",
        "",
        f"Load: {result['clients']} streaming clients for {result['seconds']} s, max_tokens {result['max_tokens']}, "
        "MT-Bench first turns:",
        "",
        "| server | requests | errors | empty replies | TTFT p50 s | TTFT p99 s | completion tokens | "
        "aggregate tok/s | x llama.cpp |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    peer = result.get("llama")
    for name, key in (
        ("specmemo gateway (default deployment)", "specmemo"),
        ("llama.cpp server, Q4_K_M target", "llama"),
    ):
        r = result.get(key)
        if r is None:
            continue
        ratio = f"{r['tokens_per_s'] / peer['tokens_per_s']:.2f}x" if peer and peer["tokens_per_s"] else "-"
        lines.append(
            f"| {name} | {r['requests']} | {r['errors']} | {r['empty']} | {r['ttft_p50']:.2f} | {r['ttft_p99']:.2f} | "
            f"{r['tokens']} | {r['tokens_per_s']:.2f} | {ratio} |"
        )
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=float, default=120)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--prompts", type=int, default=40, help="MT-Bench first turns cycled through by the clients")
    p.add_argument("--conversations", type=int, default=3, help="documents for the prefix-reuse rows")
    p.add_argument("--document-chars", type=int, default=4000, help="about 1k tokens")
    p.add_argument("--reuse-tokens", type=int, default=32, help="max_tokens of each prefix-reuse turn")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip-llama", action="store_true")
    p.add_argument("--llama-python", default=None)
    p.add_argument("--no-docs", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    command = "python bench/http_gateway.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)
    )
    started = time.time()
    result = run(args)
    result["command"], result["finished"] = command, time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    result["wall_s"] = time.time() - started
    (ROOT / "bench" / "results" / "http-gateway.json").write_text(json.dumps(result, indent=1))
    markdown = table(result)
    print(markdown)
    if not args.no_docs:
        cpu = result["cpu"]
        body = (
            f"{SECTION}\n\nCommand (from the repository root, after `specmemo models pull`; installs "
            f"llama-cpp-python[server] {LLAMA_VERSION} into the peers' venv the first time):\n\n    {command}\n\n"
            f"Run {result['finished']}, {result['wall_s'] / 60:.0f} min, CPU `{cpu['model']}` (flags "
            f"{', '.join(cpu['flags'])}), {args.threads} threads for each server. The gateway is the default "
            f"deployment (deploy/local.toml: the probe's precisions, adaptive γ); llama.cpp serves the "
            f"Q4_K_M target alone. Raw data: `bench/results/http-gateway.json`.\n\n{markdown}\n"
        )
        replace_section(ROOT / "docs" / "benchmarks.md", SECTION, body)


if __name__ == "__main__":
    main()
