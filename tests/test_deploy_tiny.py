"""Tiny-pair configs derived from deploy/tiny.toml, and TOML written back from a config table."""

from __future__ import annotations

import tomllib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from specmemo.actors.config import load_config, parse_config
from specmemo.deploy.soak import SOAK_ACTORS, SOAK_DEPLOYMENT, soak_config
from specmemo.deploy.tiny import PAIR, TINY_CONFIG, tiny_config
from specmemo.deploy.toml_writer import to_toml

keys = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=8)
scalars = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
values = st.one_of(scalars, st.lists(st.integers(), max_size=4), st.lists(st.text(max_size=5), max_size=4))
tables = st.recursive(
    st.dictionaries(keys, values, max_size=4),
    lambda inner: st.dictionaries(keys, st.one_of(values, inner), max_size=4),
    max_leaves=12,
)


@given(tables)
def test_a_table_written_as_toml_reads_back_the_same(table):
    assert tomllib.loads(to_toml(table)) == table


def test_the_whole_tiny_config_is_the_shipped_file_renamed():
    shipped = tomllib.loads(TINY_CONFIG.read_text())
    derived = tomllib.loads(tiny_config("other"))
    assert derived["deployment"] == {**shipped["deployment"], "name": "other"}
    assert derived["actors"] == shipped["actors"]
    assert [a.name for a in parse_config(derived).actors] == [a.name for a in load_config(TINY_CONFIG).actors]


def test_overrides_change_only_the_keys_they_name():
    shipped = tomllib.loads(TINY_CONFIG.read_text())["actors"]
    derived = tomllib.loads(
        tiny_config(
            "t",
            PAIR,
            {"heartbeat_s": 0.3},
            memory={"config": {"budget_mb": 16}},
            draft={"env": {"OMP_NUM_THREADS": "1"}},
        )
    )
    assert list(derived["actors"]) == list(PAIR)
    assert derived["deployment"]["heartbeat_s"] == 0.3
    assert derived["actors"]["memory"]["config"] == {**shipped["memory"]["config"], "budget_mb": 16}
    assert derived["actors"]["draft"] == {**shipped["draft"], "env": {"OMP_NUM_THREADS": "1"}}
    assert derived["actors"]["verifier"] == shipped["verifier"]


def test_a_table_for_an_actor_left_out_is_refused():
    with pytest.raises(ValueError, match="http"):
        tiny_config("t", PAIR, http={"config": {"port": 1}})


def test_the_soak_config_is_the_tiny_pair_with_echo_a_one_thread_solver_and_fast_restarts():
    derived = tomllib.loads(soak_config("s"))
    assert list(derived["actors"]) == list(SOAK_ACTORS)
    assert derived["actors"]["solver"]["config"]["threads"] == 1
    assert derived["deployment"].items() >= SOAK_DEPLOYMENT.items()
    assert parse_config(derived).actor("draft").config["model"] == "tiny"
