"""The zygote: a child of the kernel that imports the torch actors once and forks them ready to run.

A fresh Python pays seconds before a draft or verifier actor can register: importing torch
and transformers, then transformers importing its model modules lazily at the first model
built. The zygote pays that once, at deployment start, and each (re)start of such an actor
is then a fork (tens of milliseconds) plus building the model from already imported code.

    python -m specmemo.actors.zygote --fd 3 --preload '["mod:Cls"]' --models '[["verifier", {...}]]'

It imports :mod:`specmemo.actors.run` and each actor class, calls the class's ``preload()``
(once per distinct hook)
(imports only: a model built on the meta device computes nothing), loads the weights of each
model actor in ``--models`` (kind and config) on one torch thread, stops the OpenBLAS thread pools
that numpy and scipy start at load, then serves the kernel on the inherited ``SOCK_SEQPACKET``
socket. A forked draft or verifier finds its model already loaded (and converted to its
precision): the weights exist once, shared copy-on-write by the zygote and every fork, and a
restart is a fork plus registration, with no load at all.

- it sends ``{"ready": true, "threads": n, "seconds": s}`` once;
- each request is JSON ``{"name", "argv", "env", "kernel_pid"}`` carrying, as ``SCM_RIGHTS``,
  the write end of the pipe that becomes the actor's stdout and stderr; the reply is
  ``{"pid": n}`` or ``{"error": "why"}``;
- an empty read (the kernel closed its end) ends it.

It never runs a compute op and checks before each fork that it has exactly one thread: a
fork copies only the calling thread, so a lock held by another thread (a BLAS or OpenMP
pool, a ZeroMQ I/O thread) would stay locked forever in the child. When the check fails it
refuses, and the kernel starts the actor with a plain exec.

Process tree: the zygote forks an intermediate child that forks the actor and exits at
once; the zygote reaps the intermediate and only then replies. The orphaned actor is
adopted by the kernel (a child subreaper), which waits on it like on any child of its own.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import socket
import sys
import time
import traceback
from typing import Any

from . import prctl

MAX_REQUEST_BYTES = 1 << 20
_THREADS = 0  # torch's thread count before the zygote went to one; forks get it back
PARENT_WAIT_S = 5.0  # the actor waits this long to be adopted by the kernel


class Refused(Exception):
    """This request gets no actor; the kernel starts it with exec instead."""


def thread_count() -> int:
    return len(os.listdir("/proc/self/task"))


def stop_blas_pools() -> int:
    """Stop the thread pools OpenBLAS starts when it is loaded; returns how many were stopped.

    OpenBLAS does the same itself before every fork (its ``pthread_atfork`` handler) and starts
    the pool again at the first BLAS call that wants threads, so a forked actor still has a
    full pool; stopping it now only makes the single-thread check hold from the first fork.
    """
    with open("/proc/self/maps") as maps:
        libs = {line.split()[-1] for line in maps if "openblas" in line.rsplit("/", 1)[-1]}
    stopped = 0
    for path in sorted(libs):
        shutdown = getattr(ctypes.CDLL(path), "blas_thread_shutdown_", None)
        if shutdown is not None:
            shutdown()
            stopped += 1
    return stopped


def preload(targets: list[str]) -> None:
    """Import the runner and each actor class, and let the class import what it will need
    (classes that share a hook, like draft and verifier, run it once)."""
    from specmemo.actors.run import load_actor_class

    done: set[Any] = set()
    for target in targets:
        hook = getattr(load_actor_class("", target), "preload", None)
        if hook is None or hook in done:
            continue
        done.add(hook)
        try:
            hook()
        except Exception as exc:  # the actor will meet the same error itself, and say so
            print(f"preload of {target} failed: {type(exc).__name__}: {exc}", file=sys.stderr)


def load_models(models: list[list[Any]]) -> int:
    """Load each ``[kind, config]``'s model into the resident table the forks inherit, on one torch
    thread (a thread pool would make forking unsafe); answers how many are resident."""
    import torch
    from tqdm import tqdm
    from transformers.utils import logging as hf_logging

    from specmemo.actors.modelconfig import ROLE_OF_KIND, load_resident

    resident = 0
    torch.set_num_threads(1)
    tqdm.monitor_interval = 0  # tqdm's monitor is a thread that would outlive the load
    hf_logging.disable_progress_bar()
    for kind, config in models:
        started = time.monotonic()
        try:
            if kind in ROLE_OF_KIND and load_resident(config, ROLE_OF_KIND[kind], _THREADS or None):
                resident += 1
                print(f"{kind} model resident in {time.monotonic() - started:.1f} s", file=sys.stderr)
        except Exception as exc:  # the actor will load it itself, and meet the error there
            print(f"loading the {kind} model failed: {type(exc).__name__}: {exc}", file=sys.stderr)
    return resident


def serve(sock: socket.socket) -> int:
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(sock, MAX_REQUEST_BYTES, 1)
        except ConnectionError:
            return 0
        if not data:
            for fd in fds:
                os.close(fd)
            return 0
        try:
            if len(fds) != 1:
                raise Refused(f"a request carries one file descriptor, got {len(fds)}")
            reply: dict[str, Any] = {"pid": fork_actor(sock, json.loads(data), fds[0])}
        except Refused as exc:
            reply = {"error": str(exc)}
        except Exception as exc:
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            for fd in fds:
                os.close(fd)
        sock.send(json.dumps(reply).encode())


def fork_actor(sock: socket.socket, request: dict[str, Any], out_fd: int) -> int:
    """Double-fork an actor for ``request``; returns its pid once its parent has exited."""
    threads = thread_count()
    if threads != 1:
        raise Refused(f"the zygote runs {threads} threads; a fork would not be safe")
    r, w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    middle = os.fork()
    if middle == 0:
        try:
            os.close(r)
            pid = os.fork()
            if pid == 0:
                os.close(w)
                become_actor(sock, request, out_fd)
            os.write(w, str(pid).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as pipe:
        answer = pipe.read()
    os.waitpid(middle, 0)
    if not answer:
        raise Refused("the intermediate process could not fork")
    return int(answer)


def become_actor(sock: socket.socket, request: dict[str, Any], out_fd: int) -> None:
    """In the forked actor: detach, adopt the request's stdio and environment, run; never returns."""
    code = 1
    try:
        sock.close()
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        os.dup2(out_fd, 1)
        os.dup2(out_fd, 2)
        os.close(out_fd)
        os.environ.clear()
        os.environ.update(request["env"])
        _wait_for_adoption(int(request["kernel_pid"]))
        prctl.set_name(str(request.get("name", "actor")))
        _reseed()
        if "torch" in sys.modules and _THREADS:
            sys.modules["torch"].set_num_threads(_THREADS)  # the zygote ran on one
        argv = [str(a) for a in request["argv"]]
        sys.argv = ["specmemo.actors.run", *argv]
        from specmemo.actors import run

        code = run.main(argv)
    except SystemExit as exc:
        code = _exit_code(exc)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)


def _wait_for_adoption(kernel_pid: int) -> None:
    """Wait until the kernel is our parent (the intermediate exited), then die with it.

    The parent is checked again after PDEATHSIG is set: a kernel that died in between would
    otherwise never send the signal.
    """
    deadline = time.monotonic() + PARENT_WAIT_S
    while os.getppid() != kernel_pid:
        if time.monotonic() > deadline:
            raise SystemExit(
                f"not adopted by the kernel (pid {kernel_pid}) in {PARENT_WAIT_S:.0f} s; parent is {os.getppid()}"
            )
        time.sleep(0.001)
    prctl.die_with_parent(signal.SIGTERM)
    if os.getppid() != kernel_pid:
        raise SystemExit("the kernel died while this actor was starting")


def _reseed() -> None:
    """A fresh process seeds numpy and torch from the OS; a fork would share the zygote's seeds."""
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()
    if "torch" in sys.modules:
        sys.modules["torch"].seed()


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="specmemo-zygote")
    p.add_argument("--fd", type=int, required=True, help="the SOCK_SEQPACKET socket to the kernel")
    p.add_argument("--preload", default="[]", help='JSON list of "module:Class" to preload')
    p.add_argument("--models", default="[]", help="JSON list of [kind, config] whose models to load")
    args = p.parse_args(argv)
    sock = socket.socket(fileno=args.fd)
    t0 = time.monotonic()
    preload(json.loads(args.preload))
    models = json.loads(args.models)
    if models:
        global _THREADS
        import torch

        _THREADS = torch.get_num_threads()
        load_models(models)
    pools = stop_blas_pools()
    threads = thread_count()
    seconds = time.monotonic() - t0
    print(f"preloaded in {seconds:.1f} s ({pools} BLAS pools stopped, {threads} threads)", file=sys.stderr)
    sock.send(json.dumps({"ready": True, "threads": threads, "seconds": seconds}).encode())
    return serve(sock)


if __name__ == "__main__":
    sys.exit(main())
