"""Least privilege: every method declares who may call it and the kernel enforces it before
routing; a tcp endpoint beyond loopback without CURVE is refused unless the config says so."""

from __future__ import annotations

import numpy as np
import pytest

from specmemo.actors.config import ConfigError, parse_config
from specmemo.deploy.tiny import PAIR, tiny_config
from specmemo.protocol import Unauthorized
from specmemo.protocol.methods import METHODS, ROLES

#: What one actor asks of another: never a client's business.
ACTOR_ONLY = {
    "memory.add_holder",
    "memory.open",
    "memory.has",
    "memory.prefill",
    "memory.grant_batch",
    "memory.commit_batch",
    "memory.finish",
    "memory.release",
    "memory.release_holder",
    "memory.observe_costs",
    "memory.reserve",
    "memory.unreserve",
    "draft.has",
    "draft.open",
    "draft.extend",
    "draft.propose",
    "draft.accept_batch",
    "draft.close",
}

#: Views across every client: an operator's business (with CURVE, keys in curve_operators).
OPERATOR = {"actor.metrics", "kernel.metrics", "memory.usage", "verifier.sessions", "http.sessions"}

#: A valid body for each actor-only method (the refusal must not depend on the body being bad).
BODIES = {
    "memory.add_holder": {"holder": "evil", "bytes_per_token": 1, "actor": "me"},
    "memory.open": {"session": "stolen", "owner": "me"},
    "memory.has": {"session": "x"},
    "memory.prefill": {"session": "x", "keep": 0, "add": 1},
    "memory.grant_batch": {"requests": [{"session": "x"}]},
    "memory.commit_batch": {"requests": [{"session": "x", "accepted": 0, "emitted": 1}]},
    "memory.finish": {"session": "x"},
    "memory.release": {"session": "x"},
    "memory.release_holder": {"session": "target"},
    "memory.observe_costs": {"draft_s": 1e-9, "m": 1, "target_s": 1e-9},
    "memory.reserve": {"owner": "me", "key": "k", "nbytes": 1},
    "memory.unreserve": {"owner": "me", "key": "k"},
    "draft.has": {"session": "x"},
    "draft.open": {"session": "x", "token_ids": np.arange(3), "blocks": 1},
    "draft.extend": {"session": "x", "token_ids": np.arange(3), "blocks": 1},
    "draft.propose": {"sessions": ["x"], "gammas": [1], "blocks": [1]},
    "draft.accept_batch": {"requests": [{"session": "x", "accepted": 0, "tokens": np.arange(1), "blocks": 1}]},
    "draft.close": {"session": "x"},
}


def test_every_method_declares_a_role_and_the_privileged_ones_are_the_engine_internals_and_views():
    assert all(spec.role in ROLES for spec in METHODS.values())
    assert {name for name, spec in METHODS.items() if spec.role == "actor"} == ACTOR_ONLY
    assert {name for name, spec in METHODS.items() if spec.role == "operator"} == OPERATOR
    assert set(BODIES) == ACTOR_ONLY


@pytest.fixture(scope="module")
def spec():
    from conftest import Deployment

    d = Deployment(tiny_config("roles", PAIR, {"heartbeat_s": 0.5, "heartbeat_misses": 20}))
    try:
        yield d.wait_ready(["memory", "draft", "verifier"], timeout=180)
    finally:
        d.cleanup()


def test_a_client_calling_an_actor_only_method_is_refused_and_nothing_runs(spec):
    with spec.client(timeout=30) as c:
        before = c.usage()
        requests_before = c.call("kernel", "metrics").actors
        for name in sorted(ACTOR_ONLY):
            kind, method = name.split(".")
            with pytest.raises(Unauthorized, match="actors only"):
                c.call(kind, method, **BODIES[name])
        after = c.usage()
        # no handler ran: no session, no holder, no cost observed; the actors counted no request
        assert after.sessions == before.sessions and after.leases == before.leases
        assert after.costs == before.costs and after.budget == before.budget
        requests_after = c.call("kernel", "metrics").actors
        for kind in ("memory", "draft"):
            assert requests_after[kind].requests == requests_before[kind].requests + (kind == "memory")
        # the engine still serves its clients (and its actors still reach each other)
        session = c.open_session()
        reply = c.ask(session, "still working?", max_new_tokens=6)
        assert len(reply.token_ids) >= 1
        c.close_session(session)


@pytest.mark.parametrize(
    "endpoint,extra,ok",
    [
        ("tcp://0.0.0.0:5555", "", False),
        ("tcp://10.1.2.3:5555", "", False),
        ("tcp://0.0.0.0:5555", "insecure = true", True),
        ("tcp://127.0.0.1:5555", "", True),
        ("tcp://[::1]:5555", "", True),
        ("", "", True),
    ],
)
def test_tcp_beyond_loopback_without_curve_needs_an_explicit_insecure(endpoint, extra, ok):
    import tomllib

    data = tomllib.loads(f'[deployment]\nname = "x"\nendpoint = "{endpoint}"\n{extra}\n[actors.echo]\nkind = "echo"\n')
    if ok:
        assert parse_config(data).endpoint == endpoint
    else:
        with pytest.raises(ConfigError, match="insecure = true"):
            parse_config(data)


def test_one_client_cannot_hold_more_than_its_share_of_calls_in_flight(start_deployment):
    import trio

    from specmemo.protocol import Client, Overloaded
    from specmemo.protocol.client import AsyncClient

    d = start_deployment(
        '[deployment]\nname = "share"\nmax_inflight_per_client = 4\n[actors.echo]\nkind = "echo"\n', "share", ["echo"]
    )
    outcomes: list[str] = []

    async def greedy() -> None:
        async with AsyncClient(d.endpoint, timeout=30) as c:

            async def one() -> None:
                try:
                    await c.call("echo", "sleep", seconds=1.0)
                    outcomes.append("ok")
                except Overloaded as exc:
                    assert "max_inflight_per_client = 4" in str(exc)
                    outcomes.append("refused")

            async with trio.open_nursery() as nursery:
                for _ in range(10):
                    nursery.start_soon(one)
                await trio.sleep(0.3)
                with Client(d.endpoint, timeout=10) as other:  # another client is served
                    assert other.call("echo", "echo", data=7).data == 7

    trio.run(greedy)
    assert sorted(outcomes) == ["ok"] * 4 + ["refused"] * 6
    with Client(d.endpoint, timeout=10) as c:  # the slots came back
        assert c.call("echo", "sleep", seconds=0.01).slept >= 0.01
