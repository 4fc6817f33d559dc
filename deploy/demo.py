"""``specmemo demo``: the main job on the embedded default.

Pulls the default pair on first use, starts a local deployment (kernel, memory, draft,
verifier, solver) as processes, runs a short multi-turn chat and a skew-symmetric solve
through the SDK, prints what happened, and stops everything.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import numpy as np

DEMO_TURNS = [
    "Write a Python function that checks whether a string is a palindrome.",
    "Now make it ignore spaces and letter case.",
]


def run_demo(config: str | None, max_new_tokens: int, quiet_actors: bool, precision: str | None = None) -> int:
    from specmemo.actors.config import load_config
    from specmemo.actors.engine.pull import is_cached, pull_default_pair
    from specmemo.actors.kinds import MODEL_KINDS

    from .local import DEFAULT_CONFIG, LocalDeployment

    config_path = Path(config) if config else DEFAULT_CONFIG
    cfg = load_config(config_path)
    if (
        any(a.config.get("model", "default") == "default" for a in cfg.actors if a.kind in MODEL_KINDS)
        and not is_cached()
    ):
        print("[demo] the default model pair is not cached yet: pulling it (about 1.6 GB, once)")
        pull_default_pair(progress=lambda msg: print(f"[pull] {msg}", flush=True))

    print(f"[demo] starting the deployment from {config_path}", flush=True)
    precision_args = ("--precision", precision) if precision else ()
    dep = LocalDeployment(
        config_path, cfg.name, args=precision_args, prefix="smdemo", output="discard" if quiet_actors else "inherit"
    )
    code = 0
    try:
        actors = [a.name for a in cfg.actors]
        dep.wait_ready(
            actors,
            timeout=900,
            progress=lambda states: print(
                "[demo] actors: " + ", ".join(f"{n} {states.get(n, '...')}" for n in actors), flush=True
            ),
        )
        with dep.client(timeout=900, kinds={a.name: a.kind for a in cfg.actors}) as c:
            if "verifier" in actors:
                _models(c, [a.name for a in cfg.actors if a.kind in MODEL_KINDS])
                _chat(c, max_new_tokens)
            for a in cfg.actors:
                if a.kind == "http":
                    _http(a.config, max_new_tokens)
            if "solver" in actors:
                _solve(c)
    except KeyboardInterrupt:
        code = 130
    finally:
        print("[demo] stopping the deployment", flush=True)
        try:
            dep.stop(timeout=120)
        except subprocess.TimeoutExpired:
            pass
        print(f"[demo] stopped (exit {dep.proc.returncode}); leftover run files: {len(dep.leftovers())}")
        dep.cleanup()
    return code or (0 if dep.proc.returncode == 0 else 1)


def _models(c, names: list[str]) -> None:
    print("\n=== Models ===")
    for name in names:
        info = c.call(name, "info")
        choice = info.precision or {}
        probe = ", ".join(
            f"{p} {'/'.join(f'{v:.0f}' for v in ms.values())} ms" for p, ms in (choice.get("probe_ms") or {}).items()
        )
        print(
            f"{name}: precision {choice.get('precision', '?')} (asked {choice.get('requested', '?')}"
            f"{'; probe M=1/M=γmax+1: ' + probe if probe else ''}), weights {info.weight_bytes / 2**20:.0f} MiB, "
            f"process RSS {info.rss_bytes / 2**20:.0f} MiB"
        )
        if choice.get("stored"):  # the store of converted weights (actors/engine/converted.py)
            print(f"  converted weights {choice['stored']}")
    cpu = (c.call(names[0], "info").precision or {}).get("cpu") or {}
    if cpu:
        print(f"CPU: {cpu.get('model')} ({', '.join(cpu.get('flags', []))})")


def _chat(c, max_new_tokens: int) -> None:
    session = c.open_session()
    print(f"\n=== SpecMemo chat (session {session}) ===")
    for message in DEMO_TURNS:
        print(f"\nuser> {message}\nassistant> ", end="", flush=True)
        gammas: list[int] = []
        last = None
        first_at, t0 = None, time.perf_counter()
        for chunk in c.chat(session, message, max_new_tokens=max_new_tokens):
            if first_at is None:
                first_at = time.perf_counter() - t0
            print(chunk.text, end="", flush=True)
            if chunk.step:
                gammas.append(chunk.step.gamma)
            last = chunk
        assert last is not None, "a turn ends with its final chunk"
        s = last.stats
        print(
            f"\n--- {s['tokens']} tokens in {s['seconds']:.1f} s = {s['tokens_per_s']:.2f} tokens/s; "
            f"{s['steps']} steps, {s['tokens_per_step']:.2f} tokens and {s['mean_accepted']:.2f} "
            f"accepted drafts per step (alpha {s['alpha']:.2f}), {s.get('looked_up', 0)} tokens copied from the "
            f"context (lookup tails); mean gamma "
            f"{np.mean(gammas) if gammas else 0:.2f}; first token after {first_at:.2f} s"
        )
    u = c.usage()
    print(
        f"\nmemory: budget {u.budget / 2**20:.0f} MiB, live {u.live / 2**20:.2f} MiB, "
        f"peak {u.peak / 2**20:.2f} MiB (KV of draft + target, block {u.block_tokens} tokens), "
        f"evictions {u.evictions}"
    )
    c.close_session(session)


def _http(config: dict, max_new_tokens: int) -> None:
    """Two turns through the OpenAI-compatible API, the second sent with its whole history."""
    import json
    import urllib.error
    import urllib.request

    base = f"http://{config.get('host', '127.0.0.1')}:{config.get('port', 8000)}/v1"
    print(f"\n=== OpenAI-compatible API ({base}) ===")
    headers = {"content-type": "application/json"}
    key_env = config.get("api_key_env")
    if key_env:
        headers["authorization"] = f"Bearer {os.environ.get(key_env, '')}"
    messages = [{"role": "user", "content": "Name one sorting algorithm."}]
    for turn in (1, 2):
        body = json.dumps(
            {
                "model": config.get("model_id", "specmemo"),
                "messages": messages,
                "max_tokens": max_new_tokens // 2,
                "temperature": 0,
            }
        ).encode()
        deadline = time.monotonic() + 30
        while True:  # the gateway registers before its server listens
            try:
                request = urllib.request.Request(base + "/chat/completions", body, headers)
                with urllib.request.urlopen(request, timeout=600) as r:
                    out = json.loads(r.read())
                break
            except urllib.error.URLError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        reply, ext = out["choices"][0]["message"]["content"], out["specmemo"]
        print(
            f"turn {turn}: {reply.strip()!r}\n--- {out['usage']['completion_tokens']} tokens, prompt "
            f"{out['usage']['prompt_tokens']} tokens of which {ext['reused_tokens']} reused from the cache, "
            f"first token after {ext['time_to_first_token_s']:.2f} s"
        )
        messages += [{"role": "assistant", "content": reply}, {"role": "user", "content": "And another?"}]


def _solve(c) -> None:
    from specmemo.native.matrices import generate

    print("\n=== PARS3 skew-symmetric solve ===")
    s = generate("convection2d", 250_000, seed=0)
    t0 = time.perf_counter()
    rep = c.register_matrix(s, id="demo")
    b = 0.5 * np.ones(s.shape[0]) + s @ np.ones(s.shape[0])
    out = c.solve("demo", b, alpha=0.5, tol=1e-10)
    c.drop_matrix("demo")
    print(
        f"matrix: 2-D convection, n={rep.n}, nnz={rep.nnz}, bandwidth {rep.bandwidth_before} "
        f"-> {rep.bandwidth_after} after RCM, {rep.threads} threads; parts inner/middle/outer "
        f"{rep.share_inner:.3f}/{rep.share_middle:.3f}/{rep.share_outer:.3f}"
    )
    print(
        f"(0.5 I + S) x = b by MRS: {'converged' if out.converged else 'NOT converged'} in "
        f"{out.iterations} iterations, relative residual {out.residual:.2e}, "
        f"max |x - 1| = {np.abs(out.x - 1).max():.2e}, {out.seconds:.2f} s on the actor "
        f"({time.perf_counter() - t0:.2f} s with registration and transfer)"
    )
