"""The ``specmemo`` command line.

    specmemo up [--config deploy/local.toml]     start a local deployment (Ctrl-C stops it)
    specmemo status [--endpoint E]               the actor table of a running deployment
    specmemo call ACTOR METHOD [key=value ...]   call any method (values parsed as JSON)
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    COMMANDS[fn.__name__.removeprefix("cmd_").replace("_", "-")] = fn
    return fn


@command
def cmd_up(args: argparse.Namespace) -> int:
    from specmemo.actors.kernel import Kernel

    from .config import ConfigError, load_config
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"specmemo up: {exc}", file=sys.stderr)
        return 2
    if args.endpoint:
        config.endpoint = args.endpoint
    try:
        kernel = Kernel(config)
    except (RuntimeError, PermissionError) as exc:
        print(f"specmemo up: {exc}", file=sys.stderr)
        return 1
    code = kernel.run()
    if kernel.exit_message and code:
        print(f"specmemo up: {kernel.exit_message}", file=sys.stderr)
    return code


def print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) if rows else len(c)
              for c in columns}
    print("  ".join(c.upper().ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns))


@command
def cmd_status(args: argparse.Namespace) -> int:
    from specmemo.protocol import Client
    with Client(args.endpoint, timeout=args.timeout) as c:
        reply = c.call("kernel", "actors")
    print(f"deployment {reply['deployment']} at {reply['endpoint']}")
    print_table(reply["actors"], ["name", "kind", "pid", "state", "restarts", "uptime_s", "inflight"])
    return 0


@command
def cmd_call(args: argparse.Namespace) -> int:
    from specmemo.protocol import Client
    params = {}
    for kv in args.params:
        key, _, value = kv.partition("=")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    with Client(args.endpoint, timeout=args.timeout) as c:
        print(json.dumps(c.call(args.actor, args.method, **params), default=repr, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="specmemo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    def client_cmd(name: str, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help)
        sp.add_argument("--endpoint", help="kernel endpoint (default: the local deployment)")
        sp.add_argument("--timeout", type=float, default=30.0, help="seconds per call")
        return sp

    up = sub.add_parser("up", help="start a local deployment (kernel + actors)")
    up.add_argument("--config", help="deployment TOML (default: deploy/local.toml)")
    up.add_argument("--endpoint", help="override the endpoint, e.g. tcp://127.0.0.1:5555")
    client_cmd("status", "show the actors of a running deployment")
    call = client_cmd("call", "call one method: specmemo call echo echo data='\"hi\"'")
    call.add_argument("actor")
    call.add_argument("method")
    call.add_argument("params", nargs="*", help="key=value, value parsed as JSON when it parses")
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
