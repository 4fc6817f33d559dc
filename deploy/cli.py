"""The ``specmemo`` command line.

specmemo demo                                the main job: deployment, chat and solve, stop
specmemo up [--config deploy/local.toml]     start a local deployment (Ctrl-C stops it)
specmemo chat [--stats]                      chat with a running deployment
specmemo models pull                         fetch and convert the default model pair
specmemo status [--endpoint E]               the actor table of a running deployment
specmemo call ACTOR METHOD [key=value ...]   call any method (values parsed as JSON)
specmemo soak [--minutes N]                  load, faults and fuzz together, then a summary
specmemo solve FILE.mtx [--alpha A]          solve (alpha I + S) x = b on the solver actor
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from specmemo.actors.kinds import MODEL_KINDS

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    COMMANDS[fn.__name__.removeprefix("cmd_").replace("_", "-")] = fn
    return fn


@command
def cmd_up(args: argparse.Namespace) -> int:
    from specmemo.actors.config import ConfigError, check_endpoint, load_config
    from specmemo.actors.kernel import Kernel

    from .local import DEFAULT_CONFIG

    try:
        config = load_config(args.config or DEFAULT_CONFIG)
        if args.endpoint:
            config.endpoint = args.endpoint
            check_endpoint(config)
    except ConfigError as exc:
        print(f"specmemo up: {exc}", file=sys.stderr)
        return 2
    if args.precision:
        set_precision(config, args.precision)
    try:
        kernel = Kernel(config)
    except (RuntimeError, PermissionError) as exc:
        print(f"specmemo up: {exc}", file=sys.stderr)
        return 1
    code = kernel.run()
    if kernel.exit_message and code:
        print(f"specmemo up: {kernel.exit_message}", file=sys.stderr)
    return code


def set_precision(config, precision: str) -> None:
    """Every model actor (draft, verifier) of the deployment runs in `precision`."""
    for actor in config.actors:
        if actor.kind in MODEL_KINDS:
            actor.config.pop("dtype", None)
            actor.config["precision"] = precision


def _client(args: argparse.Namespace):
    from specmemo.protocol import Client

    curve = None
    if args.curve_key:
        from specmemo.protocol.curve import client_keys

        if not args.server_key:
            raise SystemExit("--curve-key needs --server-key (the kernel's public .key file)")
        curve = client_keys(args.curve_key, args.server_key)
    return Client(args.endpoint, timeout=args.timeout, curve=curve)


@command
def cmd_keys(args: argparse.Namespace) -> int:
    """Generate a CURVE key pair (NAME.key public, NAME.key_secret secret)."""
    from specmemo.protocol.curve import generate

    public, secret = generate(args.dir, args.name)
    print(
        f"public key: {public}\nsecret key: {secret} (keep it private; copy only the public key "
        f"into the kernel's curve_allowed folder)"
    )
    return 0


def print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) if rows else len(c) for c in columns}
    print("  ".join(c.upper().ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns))


@command
def cmd_status(args: argparse.Namespace) -> int:
    from specmemo.protocol import Unauthorized
    from specmemo.protocol.actor_state import ROUTABLE
    from specmemo.protocol.kernel_messages import ActorCounts
    from specmemo.protocol.schema import to_wire

    with _client(args) as c:
        reply = c.call("kernel", "actors")
        kinds = {a.name: a.kind for a in reply.actors}  # actors named other than their kind decode too
        c.kinds.update(kinds)
        try:
            counted = c.call("kernel", "metrics").actors
        except Unauthorized:
            if args.metrics:
                raise
            counted = None  # a client key under CURVE: the registry only, no counters
        rows = [to_wire(row) for row in reply.actors]  # table rows, annotated below
        for row in rows:
            if counted is not None:
                m = counted.get(row["name"]) or ActorCounts()
                row["calls"] = m.requests
                row["errors"] = sum(m.errors.values())
                row["p50_ms"] = f"{m.p50_ms:.2f}" if m.p50_ms is not None else "-"
                row["p99_ms"] = f"{m.p99_ms:.2f}" if m.p99_ms is not None else "-"
            if isinstance(row.get("uptime_s"), (int, float)):
                row["uptime_s"] = f"{row['uptime_s']:.1f}"
            if args.metrics and row["state"] in ROUTABLE:
                values = c.call(row["name"], "metrics").values
                row["gauges"] = " ".join(f"{k}={v:.4g}" for k, v in sorted(values.items())) or "-"
        models = [row["name"] for row in rows if row["kind"] in MODEL_KINDS and row["state"] == "ready"]
        infos = [(name, to_wire(c.call(name, "info"))) for name in models]
    print(f"deployment {reply.deployment} at {reply.endpoint}")
    columns = ["name", "kind", "pid", "state", "restarts", "uptime_s", "inflight"]
    if counted is not None:
        columns += ["calls", "errors", "p50_ms", "p99_ms"]
    print_table(rows, columns + (["gauges"] if args.metrics else []))
    if infos:
        print()
        print_table(
            [_model_row(name, info) for name, info in infos],
            ["name", "precision", "asked", "weights_mib", "kv_held_mib", "rss_mib", "probe_ms"],
        )
    return 0


def _model_row(name: str, info: dict) -> dict:
    choice = info.get("precision") or {}
    probe = " ".join(
        f"{p}:{'/'.join(f'{v:.0f}' for v in ms.values())}" for p, ms in (choice.get("probe_ms") or {}).items()
    )
    return {
        "name": name,
        "precision": choice.get("precision", "-"),
        "asked": choice.get("requested", "-"),
        "weights_mib": f"{info.get('weight_bytes', 0) / 2**20:.0f}",
        "kv_held_mib": f"{info.get('held', 0) / 2**20:.1f}",
        "rss_mib": f"{info.get('rss_bytes', 0) / 2**20:.0f}",
        "probe_ms": probe or "-",
    }


@command
def cmd_call(args: argparse.Namespace) -> int:
    from specmemo.protocol.schema import to_wire

    params = {}
    for kv in args.params:
        key, _, value = kv.partition("=")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    with _client(args) as c:
        reply = c.call(args.actor, args.method, **params)
    print(json.dumps(to_wire(reply) if dataclasses.is_dataclass(reply) else reply, default=repr, indent=2))
    return 0


@command
def cmd_solve(args: argparse.Namespace) -> int:
    """Solve (alpha I + S) x = b on the solver actor, b = (alpha I + S) 1 (so x should be 1)."""
    import time

    import numpy as np

    from specmemo.native.matrices import read_mtx

    if args.ranks:
        return _solve_on_ranks(args)
    try:
        matrix = read_mtx(args.file)
    except (OSError, ValueError) as exc:
        print(f"specmemo solve: cannot read {args.file}: {exc}", file=sys.stderr)
        return 2
    ones = np.ones(matrix.shape[0])
    b = args.alpha * ones + matrix @ ones
    with _client(args) as c:
        t0 = time.perf_counter()
        report = c.register_matrix(matrix)
        t1 = time.perf_counter()
        try:
            out = c.solve(report.id, b, alpha=args.alpha, tol=args.tol, maxiter=args.maxiter)
        finally:
            c.drop_matrix(report.id)
        t2 = time.perf_counter()
    err = float(np.max(np.abs(out.x - 1.0))) if len(b) else 0.0
    print(
        f"matrix      n={report.n} nnz={report.nnz} bandwidth {report.bandwidth_before} -> "
        f"{report.bandwidth_after} after RCM; parts inner/middle/outer "
        f"{report.share_inner:.3f}/{report.share_middle:.3f}/{report.share_outer:.3f}"
    )
    print(
        f"solve       alpha={args.alpha} tol={args.tol:g}: "
        f"{'converged' if out.converged else 'NOT converged'} in {out.iterations} iterations"
    )
    print(f"residual    {out.residual:.3e} (relative); max |x - 1| = {err:.3e}")
    print(
        f"time        register+plan {t1 - t0:.3f} s, solve {out.seconds:.3f} s on the actor, {t2 - t1:.3f} s round trip"
    )
    return 0 if out.converged else 3


def _solve_on_ranks(args: argparse.Namespace) -> int:
    """The same solve as an MPI job of `--ranks` processes on this machine (no deployment)."""
    import subprocess

    from specmemo.native.mpi_solve import command

    threads = args.threads or max(1, (os.cpu_count() or 1) // args.ranks)
    argv, env = command(
        args.ranks,
        threads,
        str(args.file),
        "--alpha",
        str(args.alpha),
        "--tol",
        str(args.tol),
        "--maxiter",
        str(args.maxiter),
    )
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        print(f"specmemo solve: the MPI job failed ({proc.returncode}):\n{proc.stderr[-2000:]}", file=sys.stderr)
        return 2
    out = json.loads(lines[-1])
    if "error" in out:
        print(f"specmemo solve: {out['error']}", file=sys.stderr)
        return 2
    print(
        f"matrix      n={out['n']} on {out['ranks']} ranks x {out['threads']} threads; halo bytes "
        f"per product {out['halo_bytes']}"
    )
    print(
        f"solve       alpha={args.alpha} tol={args.tol:g}: "
        f"{'converged' if out['converged'] else 'NOT converged'} in {out['iterations']} iterations"
    )
    print(f"residual    {out['residual']:.3e} (relative); max |x - 1| = {out['max_err']:.3e}")
    print(f"time        solve {out['seconds']:.3f} s (slowest rank)")
    return 0 if out["converged"] else 3


@command
def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args.config, args.max_new_tokens, args.quiet, args.precision)


@command
def cmd_chat(args: argparse.Namespace) -> int:
    """Interactive chat against a running deployment."""
    from specmemo.protocol import Unauthorized

    show = args.stats
    with _client(args) as c:
        session = c.open_session()
        print(f"session {session}; /stats toggles statistics, /usage shows memory, /quit leaves")
        try:
            while True:
                try:
                    line = input("you> ").strip()
                except EOFError:
                    break
                if not line:
                    continue
                if line in ("/quit", "/exit"):
                    break
                if line == "/stats":
                    show = not show
                    print(f"statistics {'on' if show else 'off'}")
                    continue
                if line == "/usage":
                    try:
                        u = c.usage()
                    except Unauthorized as exc:
                        print(f"/usage: {exc}")
                        continue
                    print(f"budget {u.budget} B, live {u.live} B, peak {u.peak} B, sessions {u.sessions}")
                    continue
                print("assistant> ", end="", flush=True)
                last = None
                for chunk in c.chat(session, line, max_new_tokens=args.max_new_tokens, temperature=args.temperature):
                    print(chunk.text, end="", flush=True)
                    last = chunk
                print()
                if show and last is not None:
                    s = last.stats
                    print(
                        f"  [{s['tokens']} tokens, {s['tokens_per_s']:.2f} tokens/s, "
                        f"{s['tokens_per_step']:.2f} tokens/step, alpha {s['alpha']:.2f}]"
                    )
        finally:
            c.close_session(session)
    return 0


@command
def cmd_models(args: argparse.Namespace) -> int:
    from specmemo.actors.engine.pull import default_pair_paths, is_cached, pull_default_pair

    if args.action == "converted":
        return _converted_entries(args.clear)
    if args.action == "pull":
        paths = pull_default_pair(progress=lambda msg: print(msg, flush=True))
    else:
        paths = default_pair_paths()
        print("cached" if is_cached() else "not cached (run `specmemo models pull`)")
    for role, path in paths.items():
        print(f"{role}: {path}")
    return 0


def _converted_entries(clear: bool) -> int:
    # the store of converted weights (actors/engine/converted.py): list it, or empty it
    import shutil

    from specmemo.actors.engine.converted import default_root, stored_entries

    root = default_root()
    if root is None:
        print("the store of converted weights is off (SPECMEMO_CONVERTED=off)")
        return 0
    entries = stored_entries(root)
    for path, size in entries:
        print(f"{size / 2**20:9.0f} MiB  {path.name}")
        if clear:
            shutil.rmtree(path, ignore_errors=True)
    total = sum(size for _, size in entries) / 2**20
    verb = "deleted" if clear else "in"
    print(f"{len(entries)} entries, {total:.0f} MiB {verb} {root}" if entries else f"no entries in {root}")
    return 0


@command
def cmd_soak(args: argparse.Namespace) -> int:
    """Load, SIGKILLs and hostile frames together on a fresh tiny deployment; prints a summary."""
    from .soak import run_soak

    return run_soak(args.minutes, clients=args.clients, kill_pause=args.kill_pause, seed=args.seed)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="specmemo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)

    def client_cmd(name: str, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help)
        sp.add_argument("--endpoint", help="kernel endpoint (default: the local deployment)")
        sp.add_argument("--timeout", type=float, default=30.0, help="seconds per call")
        sp.add_argument(
            "--curve-key",
            default=os.environ.get("SPECMEMO_CLIENT_KEY"),
            help="this client's .key_secret (tcp deployments with CURVE)",
        )
        sp.add_argument(
            "--server-key", default=os.environ.get("SPECMEMO_SERVER_PUBLIC"), help="the kernel's public .key"
        )
        return sp

    up = sub.add_parser("up", help="start a local deployment (kernel + actors)")
    up.add_argument("--config", help="deployment TOML (default: deploy/local.toml)")
    up.add_argument("--endpoint", help="override the endpoint, e.g. tcp://127.0.0.1:5555")
    up.add_argument(
        "--precision",
        choices=["auto", "float32", "bfloat16", "int8", "int4"],
        help="override every model's precision (default: the config's, auto in local.toml)",
    )
    status = client_cmd("status", "show the actors of a running deployment")
    status.add_argument("--metrics", action="store_true", help="also each actor's own gauges")
    call = client_cmd("call", "call one method: specmemo call echo echo data='\"hi\"'")
    call.add_argument("actor")
    call.add_argument("method")
    call.add_argument("params", nargs="*", help="key=value, value parsed as JSON when it parses")
    demo = sub.add_parser("demo", help="the main job: a deployment on the default pair, a chat and a solve")
    demo.add_argument("--config", help="deployment TOML (default: deploy/local.toml)")
    demo.add_argument("--max-new-tokens", type=int, default=48)
    demo.add_argument("--quiet", action="store_true", help="hide the actors' log lines")
    demo.add_argument(
        "--precision",
        choices=["auto", "float32", "bfloat16", "int8", "int4"],
        help="override every model's precision (default: the config's, auto in local.toml)",
    )
    chat = client_cmd("chat", "interactive chat with a running deployment")
    chat.add_argument("--max-new-tokens", type=int, default=256)
    chat.add_argument("--temperature", type=float, default=0.0)
    chat.add_argument("--stats", action="store_true", help="print statistics after each reply")
    keys = sub.add_parser("keys", help="generate a CURVE key pair for a tcp deployment")
    keys.add_argument("name", help="file stem: NAME.key and NAME.key_secret")
    keys.add_argument("--dir", default=".", help="where to write them")
    soak = sub.add_parser("soak", help="load + SIGKILLs + hostile frames on a fresh tiny deployment")
    soak.add_argument("--minutes", type=float, default=5.0)
    soak.add_argument("--clients", type=int, default=4, help="client threads of mixed calls")
    soak.add_argument("--kill-pause", type=float, default=2.0, help="seconds between two SIGKILLs")
    soak.add_argument("--seed", type=int, default=0)
    models = sub.add_parser("models", help="the embedded default model pair, and the store of converted weights")
    models.add_argument("action", choices=["pull", "path", "converted"])
    models.add_argument("--clear", action="store_true", help="with `converted`: delete every stored entry")
    solve = client_cmd("solve", "solve (alpha I + S) x = b for a skew-symmetric Matrix Market file")
    solve.add_argument("file", help="a .mtx file (make one: python -m specmemo.native.matrices convection2d 10000)")
    solve.add_argument("--alpha", type=float, default=1.0)
    solve.add_argument("--tol", type=float, default=1e-10)
    solve.add_argument("--maxiter", type=int, default=0, help="0 = 10 n")
    solve.add_argument(
        "--ranks",
        type=int,
        default=0,
        help="solve as an MPI job of this many processes here (0: on the deployment's solver)",
    )
    solve.add_argument("--threads", type=int, default=0, help="OpenMP threads per rank (0: cores / ranks)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from specmemo.protocol.errors import SpecmemoError

    try:
        return COMMANDS[args.command](args)
    except SpecmemoError as exc:
        print(f"specmemo {args.command}: {exc}", file=sys.stderr)
        return 1
    except ConnectionError as exc:
        print(f"specmemo {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
