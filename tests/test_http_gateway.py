"""The OpenAI-compatible HTTP gateway, through the official `openai` client against a real
deployment (tiny models): replies equal the in-process engine's, streaming, prefix reuse,
errors with their HTTP statuses, disconnects, slow clients, limits and the API-key rule."""

from __future__ import annotations

import json
import socket
import time

import httpx
import openai
import pytest
from engine_helpers import tiny_engine

from specmemo.actors.config import ConfigError, parse_config
from specmemo.actors.openai_api import HttpError, parse_completion
from specmemo.actors.session_pool import SessionPool
from specmemo.deploy.load import beyond_prefix_stores
from specmemo.deploy.tiny import PAIR, tiny_config

#: The gateway's config in these tests: short timeouts and a small body limit.
HTTP_CONFIG = {"read_timeout_s": 1, "keep_alive_s": 1, "max_body_bytes": 20000}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(name: str, config: dict | None = None, env: dict | None = None):
    """The tiny pair and the gateway; ``config`` and ``env`` go into the gateway's tables."""
    from conftest import Deployment

    port = free_port()
    http = {"config": {**HTTP_CONFIG, "port": port, **(config or {})}, "env": env or {}}
    d = Deployment(tiny_config(name, [*PAIR, "http"], {"heartbeat_s": 0.5, "heartbeat_misses": 20}, http=http))
    d.wait_ready(["memory", "draft", "verifier", "http"], timeout=180)
    d.base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the actor is ready before hypercorn listens
        try:
            if httpx.get(d.base + "/health", timeout=2).status_code == 200:
                return d
        except httpx.HTTPError:
            time.sleep(0.1)
    raise TimeoutError(d.log.read_text())


@pytest.fixture(scope="module")
def gateway():
    d = start("gw")
    try:
        yield d
    finally:
        d.cleanup()


@pytest.fixture(scope="module")
def engine():
    return tiny_engine(64 << 20)


def client(d, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=d.base + "/v1", api_key=kw.pop("api_key", "unused"), max_retries=0, **kw)


# ------------------------------------------------------------------ the pure parts


def test_requests_are_validated_field_by_field():
    ok = parse_completion(
        {
            "model": "m",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
            "max_completion_tokens": 5,
            "stop": "x",
            "stream": True,
            "stream_options": {"include_usage": True},
        },
        "m",
        100,
        10,
    )
    assert (ok.messages, ok.max_tokens, ok.stop, ok.stream, ok.include_usage) == (
        [{"role": "user", "content": "hi"}],
        5,
        ["x"],
        True,
        True,
    )
    bad = [
        ({"model": "other"}, 404),
        ({"messages": []}, 400),
        ({"top_p": 0.9}, 400),
        ({"n": 2}, 400),
        ({"max_tokens": 0}, 400),
        ({"max_tokens": 101}, 400),
        ({"temperature": -1}, 400),
        ({"tools": [{"type": "function"}]}, 400),
        ({"stop": ["a"] * 5}, 400),
        ({"messages": [{"role": "assistant", "content": "x"}]}, 400),
        ({"presence_penalty": 0.5}, 400),
    ]
    for patch, status in bad:
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **patch}
        with pytest.raises(HttpError) as info:
            parse_completion(body, "m", 100, 10)
        assert info.value.status == status, patch


def test_wire_errors_map_to_the_statuses_clients_expect():
    from specmemo.actors.openai_api import from_wire_error
    from specmemo.protocol import errors

    cases = [
        (errors.OverBudget("x"), 503),
        (errors.ActorDied("x"), 503),
        (errors.DeadlineExceeded("x"), 504),
        (errors.Overloaded("x"), 429),
        (errors.InvalidInput("x"), 400),
        (errors.InvalidInput("x", detail={"reason": "ContextTooLong"}), 413),
        (errors.Internal("x"), 500),
    ]
    for exc, status in cases:
        mapped = from_wire_error(exc)
        assert mapped.status == status and mapped.body()["error"]["message"] == "x"


def test_the_pool_picks_the_idle_session_sharing_the_longest_history():
    pool = SessionPool(2)
    a = [{"role": "system", "content": "s"}, {"role": "user", "content": "1"}, {"role": "assistant", "content": "r"}]
    pool.take("x")
    pool.finish("x", a)
    pool.take("y")
    pool.finish("y", a[:1])
    assert pool.pick(a + [{"role": "user", "content": "2"}]) == "x"
    assert pool.pick([{"role": "user", "content": "other"}]) is None
    pool.take("x")
    assert pool.pick(a + [{"role": "user", "content": "2"}]) == "y"  # x is busy
    assert pool.surplus() == ["y"]  # full: the idle one goes


def test_a_public_address_without_an_api_key_is_refused_at_load():
    table = {"actors": {"http": {"kind": "http", "config": {"host": "0.0.0.0"}}}}
    with pytest.raises(ConfigError, match="API key"):
        parse_config(table)
    table["actors"]["http"]["config"]["api_key_env"] = "SPECMEMO_KEY"
    assert parse_config(table).actors[0].kind == "http"


# ------------------------------------------------------------------ through a deployment


def test_a_completion_equals_the_in_process_chat_and_reports_usage(gateway, engine):
    _, ids, _ = engine.chat("ref-1", "hello gateway", max_new_tokens=12)
    expected = engine.tokenizer.decode(ids.tolist(), skip_special_tokens=True)
    engine.close("ref-1")
    resp = client(gateway).chat.completions.create(
        model="specmemo", messages=[{"role": "user", "content": "hello gateway"}], max_tokens=12, temperature=0
    )
    assert resp.choices[0].message.content == expected
    assert resp.usage.completion_tokens == len(ids) and resp.usage.prompt_tokens > 0
    assert resp.choices[0].finish_reason == ("length" if len(ids) == 12 else "stop")
    extension = resp.model_extra["specmemo"]
    assert extension["prefilled_tokens"] == resp.usage.prompt_tokens and extension["reused_tokens"] == 0


def test_streaming_gives_the_same_text_and_a_final_usage_chunk(gateway):
    messages = [{"role": "user", "content": "stream this"}]
    whole = client(gateway).chat.completions.create(model="specmemo", messages=messages, max_tokens=16, temperature=0)
    chunks = list(
        client(gateway).chat.completions.create(
            model="specmemo",
            messages=messages,
            max_tokens=16,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_a_second_turn_sent_with_its_whole_history_prefills_only_the_new_tokens(gateway, engine):
    first, second = "tell me a story", "and another one"
    _, ids1, _ = engine.chat("ref-2", first, max_new_tokens=10)
    _, ids2, _ = engine.chat("ref-2", second, max_new_tokens=10)
    expected = engine.tokenizer.decode(ids2.tolist(), skip_special_tokens=True)
    engine.close("ref-2")
    c = client(gateway)
    history = [{"role": "user", "content": first}]
    one = c.chat.completions.create(model="specmemo", messages=history, max_tokens=10, temperature=0)
    history += [{"role": "assistant", "content": one.choices[0].message.content}, {"role": "user", "content": second}]
    two = c.chat.completions.create(model="specmemo", messages=history, max_tokens=10, temperature=0)
    assert two.choices[0].message.content == expected
    ext1, ext2 = one.model_extra["specmemo"], two.model_extra["specmemo"]
    assert ext2["session"] == ext1["session"]
    assert ext2["reused_tokens"] >= one.usage.prompt_tokens + one.usage.completion_tokens - 1
    assert ext2["prefilled_tokens"] == two.usage.prompt_tokens - ext2["reused_tokens"]
    # the new message and the template's markers around it (byte-level tokenizer: one token a byte)
    assert ext2["prefilled_tokens"] <= len(second) + len("\n<|im_start|>user\n<|im_start|>assistant\n")


def test_errors_have_openai_bodies_and_statuses(gateway):
    c = client(gateway)
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError, match="top_p"):
        c.chat.completions.create(model="specmemo", messages=[{"role": "user", "content": "x"}], top_p=0.5)
    r = httpx.post(gateway.base + "/v1/chat/completions", content=b"{not json", timeout=10)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(gateway.base + "/v1/chat/completions", content=b"x" * 30000, timeout=10)
    assert r.status_code == 413
    long = "y" * 600  # the tiny model's context is 512 tokens
    r = httpx.post(
        gateway.base + "/v1/chat/completions",
        timeout=30,
        json={"model": "specmemo", "messages": [{"role": "user", "content": long}]},
    )
    assert r.status_code == 413 and r.json()["error"]["code"] == "context_length_exceeded"
    assert httpx.get(gateway.base + "/nowhere", timeout=10).status_code == 404
    # the gateway keeps serving
    ok = c.chat.completions.create(model="specmemo", messages=[{"role": "user", "content": "x"}], max_tokens=3)
    assert ok.usage.completion_tokens >= 1


def test_a_client_that_disconnects_mid_stream_frees_its_session(gateway):
    body = {
        "model": "specmemo",
        "messages": [{"role": "user", "content": "a long reply please"}],
        "max_tokens": 400,
        "stream": True,
    }
    with httpx.stream("POST", gateway.base + "/v1/chat/completions", json=body, timeout=30) as r:
        lines = r.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        assert json.loads(first[6:])["object"] == "chat.completion.chunk"
        with gateway.client(timeout=10) as sdk:
            assert sdk.call("http", "sessions").active
    with gateway.client(timeout=10) as sdk:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            held = sdk.call("verifier", "sessions")
            if not held.active and not sdk.call("http", "sessions").active:
                break
            time.sleep(0.1)
        assert not held.active
        pooled = set(sdk.call("http", "sessions").sessions)
        assert set(held.sessions) <= pooled  # the cut-short session was closed
        usage = sdk.usage()
        assert beyond_prefix_stores(usage) == sum(usage.sessions.get(s, 0) for s in pooled)


def test_a_slow_client_is_cut_off_and_others_are_served(gateway):
    with socket.create_connection(("127.0.0.1", int(gateway.base.rsplit(":", 1)[1]))) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")  # and nothing more
        s.settimeout(10)
        started = time.monotonic()
        ok = client(gateway).models.list()
        assert [m.id for m in ok.data] == ["specmemo"]
        rest = s.recv(4096)
        while rest and b"\r\n\r\n" not in rest:
            rest += s.recv(4096)
        assert time.monotonic() - started < 8  # keep_alive_s = 1
    with socket.create_connection(("127.0.0.1", int(gateway.base.rsplit(":", 1)[1]))) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        s.settimeout(10)
        answer = s.recv(4096)
        assert answer.startswith(b"HTTP/1.1 408")  # read_timeout_s = 1


def test_health_models_and_metrics(gateway):
    assert httpx.get(gateway.base + "/health", timeout=10).json()["status"] == "ok"
    metrics = httpx.get(gateway.base + "/metrics", timeout=10).text
    assert 'specmemo_requests_total{actor="verifier"}' in metrics
    assert 'specmemo_kv_budget_bytes{actor="memory"}' in metrics


def test_an_api_key_is_required_when_set_and_the_in_flight_limit_answers_429():
    d = start("gwkey", {"api_key_env": "SPECMEMO_TEST_KEY", "max_inflight": 1}, {"SPECMEMO_TEST_KEY": "s3cret"})
    try:
        messages = [{"role": "user", "content": "k"}]
        with pytest.raises(openai.AuthenticationError):
            client(d, api_key="wrong").chat.completions.create(model="specmemo", messages=messages, max_tokens=2)
        assert httpx.get(d.base + "/health", timeout=10).status_code == 200
        assert httpx.get(d.base + "/v1/models", timeout=10).status_code == 401
        good = client(d, api_key="s3cret")
        assert good.chat.completions.create(model="specmemo", messages=messages, max_tokens=2).choices
        # a request whose body is still arriving holds the one slot (for up to read_timeout_s)
        with socket.create_connection(("127.0.0.1", int(d.base.rsplit(":", 1)[1]))) as s:
            s.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\n"
                b"Content-Length: 100\r\n\r\n{"
            )
            time.sleep(0.2)
            with pytest.raises(openai.RateLimitError, match="max_inflight"):
                good.chat.completions.create(model="specmemo", messages=messages, max_tokens=2)
        time.sleep(1.5)
        assert good.chat.completions.create(model="specmemo", messages=messages, max_tokens=2).choices
    finally:
        d.cleanup()
