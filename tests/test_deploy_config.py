"""Deployment configs: the shipped ones parse, mistakes are named in a ConfigError."""

from __future__ import annotations

from pathlib import Path

import pytest

from specmemo.actors.config import ConfigError, load_config, parse_config

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


@pytest.mark.parametrize("path", sorted(DEPLOY.glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_config_parses(path):
    cfg = load_config(path)
    assert cfg.actors and [a.name for a in cfg.start_order()]
    assert cfg.coalesce_us == 0  # the documented default: off


@pytest.mark.parametrize(
    "data, words",
    [
        ({"deployment": {"nmae": "x"}}, "unknown [deployment] keys ['nmae']"),
        ({"deployment": {"coalesce_us": -1}}, "coalesce_us"),
        ({"deployment": {"coalesce_us": 0.5}}, "coalesce_us"),
        ({"actors": {"a": {"kind": "nope"}}}, "unknown kind 'nope'"),
        ({"actors": {"a": {"kind": "echo", "after": ["b"]}}}, "after unknown actors ['b']"),
        ({"actors": {"a": {"kind": "echo", "restart": "sometimes"}}}, "restart must be"),
        ({"actors": {"kernel": {"kind": "echo"}}}, "not a valid actor name"),
        ({"actors": {"d": {"kind": "draft", "config": {"vocab_rows": 100}}}}, "vocab_rows must be"),
        ({"actors": {"d": {"kind": "draft", "config": {"vocab_rows": "all"}}}}, "vocab_rows must be"),
        ({"actors": {"v": {"kind": "verifier", "config": {"prefix_tokens": -8}}}}, "prefix_tokens must be"),
        ({"actors": {"v": {"kind": "verifier", "config": {"prefix_tokens": 1.5}}}}, "prefix_tokens must be"),
        ({"actors": {"v": {"kind": "verifier", "config": {"converted_cache": "no"}}}}, "converted_cache must be"),
    ],
)
def test_mistakes_are_named(data, words):
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert words in str(info.value)


def test_coalescing_can_be_turned_on():
    assert parse_config({"deployment": {"coalesce_us": 300}}).coalesce_us == 300
