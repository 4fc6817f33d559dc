"""Converted weights stored on disk (`converted.py`): a second load reads them and computes the
same logits as a conversion; a changed checkpoint, a damaged entry, a full disk or a second
writer never yield a wrong model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from engine_helpers import one_torch_thread  # noqa: F401
from torch import nn

from specmemo.actors.engine import converted
from specmemo.actors.engine.converted import ConvertedCache
from specmemo.actors.engine.models import ModelSpec, _load_weights
from specmemo.actors.engine.precision import Int4Linear, Int8Linear, precision_of
from specmemo.actors.engine.tiny import tiny_pair, tiny_tokenizer

IDS = torch.tensor([[1, 5, 9, 200, 3, 77, 14]])


def save_checkpoint(directory, seed: int = 3) -> None:
    """A tiny target saved as a checkpoint converted from a 4-bit file: 16 levels per group of
    32 everywhere but one v projection (stored finer, as Q4_K_M stores v)."""
    _, model = tiny_pair(seed=seed, hidden=256, layers=2)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear) and m.in_features % 32 == 0:
                w = m.weight.reshape(m.out_features, -1, 32)
                low, step = w.amin(-1, keepdim=True), (w.amax(-1, keepdim=True) - w.amin(-1, keepdim=True)) / 15
                m.weight.copy_((low + torch.round((w - low) / step) * step).reshape(m.weight.shape))
        fine = model.model.layers[0].self_attn.v_proj
        fine.weight.copy_(torch.randn_like(fine.weight) * 0.05)
    model.save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)


def load(directory, precision: str, **options):
    model = _load_weights(ModelSpec(directory, precision=precision, **options))
    with torch.no_grad():
        return model, model(IDS).logits


def entries(root):
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.exists() else []


@pytest.fixture
def store(tmp_path, monkeypatch):
    root = tmp_path / "converted"
    monkeypatch.setenv("SPECMEMO_CONVERTED", str(root))
    return root


@pytest.mark.parametrize("precision", ["int4", "int8"])
def test_a_stored_conversion_is_read_back_and_computes_the_same_logits(tmp_path, store, monkeypatch, precision):
    save_checkpoint(tmp_path / "model")
    monkeypatch.setenv("SPECMEMO_CONVERTED", "off")
    _, reference = load(tmp_path / "model", precision)
    monkeypatch.setenv("SPECMEMO_CONVERTED", str(store))
    first, first_logits = load(tmp_path / "model", precision)
    assert precision_of(first).stored.startswith("stored at ") and len(entries(store)) == 1
    second, second_logits = load(tmp_path / "model", precision)
    assert precision_of(second).stored == f"read from {store / entries(store)[0]}"
    assert torch.equal(first_logits, reference) and torch.equal(second_logits, reference)
    kinds = [type(m) for m in second.modules() if isinstance(m, (Int4Linear, Int8Linear))]
    assert kinds == [type(m) for m in first.modules() if isinstance(m, (Int4Linear, Int8Linear))]
    if precision == "int4":  # the finer v projection stays at 8 bits, fused with q and k, as converted
        assert Int8Linear in kinds and Int4Linear in kinds
        assert isinstance(second.model.layers[0].self_attn.q_proj_k_proj_v_proj_fused, Int8Linear)
        codes = second.model.layers[1].mlp.down_proj.weights.codes
        assert isinstance(codes, np.memmap) and str(codes.filename).endswith("specmemo-converted.bin")  # mapped
    assert precision_of(second).weight_bytes == precision_of(first).weight_bytes


def test_a_changed_checkpoint_is_converted_again_and_replaces_its_old_entry(tmp_path, store):
    save_checkpoint(tmp_path / "model", seed=3)
    load(tmp_path / "model", "int4")
    old = entries(store)
    time.sleep(0.01)
    save_checkpoint(tmp_path / "model", seed=4)  # new weights, sizes equal, mtimes new
    model, logits = load(tmp_path / "model", "int4")
    assert precision_of(model).stored.startswith("stored at ")
    assert len(entries(store)) == 1 and entries(store) != old
    _, again = load(tmp_path / "model", "int4", converted_cache=False)
    assert torch.equal(logits, again)
    load(tmp_path / "model", "int8")  # another precision: an entry of its own beside it
    assert len(entries(store)) == 2


@pytest.mark.parametrize("damage", ["truncated", "index"])
def test_a_damaged_entry_is_converted_again(tmp_path, store, damage):
    save_checkpoint(tmp_path / "model")
    _, reference = load(tmp_path / "model", "int4")
    (entry,) = store.iterdir()
    if damage == "truncated":
        with open(entry / "specmemo-converted.bin", "r+b") as f:
            f.truncate(4096)
    else:
        index = json.loads((entry / "index.json").read_text())
        name = next(iter(index["modules"]))
        index["modules"][name]["codes"][0] = index["bytes"] + 64  # points past the end
        (entry / "index.json").write_text(json.dumps(index))
    model, logits = load(tmp_path / "model", "int4")
    assert precision_of(model).stored.startswith("stored at ")
    assert torch.equal(logits, reference)
    assert precision_of(load(tmp_path / "model", "int4")[0]).stored.startswith("read from ")


def test_no_room_or_no_directory_stores_nothing_and_still_loads(tmp_path, store, monkeypatch):
    save_checkpoint(tmp_path / "model")
    _, reference = load(tmp_path / "model", "int4", converted_cache=False)
    monkeypatch.setattr(converted, "_SPARE_BYTES", 1 << 62)  # more than any disk keeps free
    model, logits = load(tmp_path / "model", "int4")
    assert precision_of(model).stored.startswith("not stored: ") and "GiB free" in precision_of(model).stored
    assert torch.equal(logits, reference) and entries(store) == []
    monkeypatch.undo()
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    monkeypatch.setenv("SPECMEMO_CONVERTED", str(blocked / "converted"))
    model, logits = load(tmp_path / "model", "int4")
    assert precision_of(model).stored.startswith("not stored: ") and torch.equal(logits, reference)


def test_off_stores_nothing(tmp_path, store, monkeypatch):
    save_checkpoint(tmp_path / "model")
    model, _ = load(tmp_path / "model", "int4", converted_cache=False)
    assert precision_of(model).stored == "" and not store.exists()
    monkeypatch.setenv("SPECMEMO_CONVERTED", "off")
    model, _ = load(tmp_path / "model", "int4")
    assert precision_of(model).stored == "" and not store.exists()


def test_two_writers_of_one_entry_leave_one_whole_entry(tmp_path, store):
    save_checkpoint(tmp_path / "model")
    cache = ConvertedCache(store, tmp_path / "model")
    first, second = cache.entry("int4"), cache.entry("int4")
    assert not first.hit and not second.hit
    a, b = np.arange(1000, dtype=np.float32), np.arange(999, -1, -1, dtype=np.float32)
    first.put("layer", x=a)
    second.put("layer", x=b)  # both write at once, each in its own temporary directory
    first.commit()
    second.commit()  # the entry is in place: this one gives up, and takes nothing away
    assert second.failed == f"{first.path} was stored by another process first" and not first.failed
    stored = cache.entry("int4")
    assert stored.hit and np.array_equal(stored.get("layer")["x"], a)
    assert [p.name for p in store.iterdir()] == [first.path.name]  # no temporary left


def test_a_dead_writers_temporary_entry_is_swept(tmp_path, store):
    save_checkpoint(tmp_path / "model")
    store.mkdir()
    dead = converted.temporary(store / "old-entry", 4194999)  # above any pid this kernel hands out by default
    young = converted.temporary(store / "young-entry", 4194999)  # a writer may yet be running somewhere
    for tmp in (dead, young):
        tmp.mkdir()
        (tmp / "specmemo-converted.bin").write_bytes(b"\0" * 100)
    os.utime(dead, (time.time() - 7200, time.time() - 7200))
    assert not os.path.exists("/proc/4194999")
    entry = ConvertedCache(store, tmp_path / "model").entry("int8")
    entry.put("layer", x=np.zeros(8, np.int8))
    entry.commit()
    assert not dead.exists() and young.exists() and entry.path.is_dir()


def test_the_command_lists_and_clears_the_stored_entries(tmp_path, store):
    save_checkpoint(tmp_path / "model")
    load(tmp_path / "model", "int4")
    (name,) = entries(store)
    size = sum(f.stat().st_size for f in (store / name).iterdir())

    def models_converted(*extra: str) -> str:
        command = [sys.executable, "-m", "specmemo.deploy.cli", "models", "converted", *extra]
        env = {**os.environ, "SPECMEMO_CONVERTED": str(store)}
        return subprocess.run(command, env=env, check=True, capture_output=True, text=True, timeout=120).stdout

    listed = models_converted()
    assert name in listed and f"1 entries, {size / 2**20:.0f} MiB in {store}" in listed
    assert "1 entries" in models_converted("--clear") and entries(store) == []
    assert f"no entries in {store}" in models_converted()


def test_an_actor_config_turns_the_store_off_for_its_model(tmp_path, store):
    from specmemo.actors.modelconfig import load_actor_model

    save_checkpoint(tmp_path / "model")
    config = {"model": str(tmp_path / "model"), "precision": "int8", "converted_cache": False}
    model, _ = load_actor_model(config, "target")
    assert precision_of(model).stored == "" and entries(store) == []
    model, _ = load_actor_model({**config, "converted_cache": True}, "target")
    assert precision_of(model).stored.startswith("stored at ") and len(entries(store)) == 1


def test_a_checkpoint_loaded_in_another_dtype_has_an_entry_of_its_own(tmp_path, store):
    save_checkpoint(tmp_path / "model")
    load(tmp_path / "model", "int8", dtype="float16")
    model, logits = load(tmp_path / "model", "int8", dtype="float32")
    assert precision_of(model).stored.startswith("stored at ") and len(entries(store)) == 2
    assert torch.equal(logits, load(tmp_path / "model", "int8", dtype="float32", converted_cache=False)[1])
    # the key is the dtype the weights were loaded in: "auto" of this float32 checkpoint is float32
    model, again = load(tmp_path / "model", "int8", dtype="auto")
    assert precision_of(model).stored.startswith("read from ") and torch.equal(again, logits)


def test_an_entry_of_other_linears_is_replaced_not_trusted(tmp_path, store):
    # as if the model's modules were named otherwise than when it was stored (another library
    # version): nothing of the entry, not even which linears stay at 8 bits, may be used
    save_checkpoint(tmp_path / "model")
    _, reference = load(tmp_path / "model", "int4")
    (entry,) = store.iterdir()
    index = json.loads((entry / "index.json").read_text())
    index["modules"] = {"x." + name: fields for name, fields in index["modules"].items()}
    index["notes"] = {"eight": [], "linears": [["x." + n, shape] for n, shape in index["notes"]["linears"]]}
    (entry / "index.json").write_text(json.dumps(index))
    model, logits = load(tmp_path / "model", "int4")
    assert precision_of(model).stored.startswith("stored at ") and torch.equal(logits, reference)
    assert isinstance(model.model.layers[0].self_attn.q_proj_k_proj_v_proj_fused, Int8Linear)


def test_a_write_that_fails_midway_loses_nothing_and_leaves_nothing(tmp_path, store):
    # a real write error: the process may write no file past 64 KiB (RLIMIT_FSIZE), as a disk
    # that fills during the store; the load goes on without storing
    save_checkpoint(tmp_path / "model")
    _, reference = load(tmp_path / "model", "int4", converted_cache=False)
    child = f"""
import resource, signal, sys, torch
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_engine_converted import load
from specmemo.actors.engine.precision import precision_of
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
model, logits = load({str(tmp_path / "model")!r}, "int4")
torch.save(logits, {str(tmp_path / "logits.pt")!r})
print(precision_of(model).stored)
"""
    env = {**os.environ, "SPECMEMO_CONVERTED": str(store)}
    out = subprocess.run([sys.executable, "-c", child], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("not stored: ") and "File too large" in out.stdout
    assert torch.equal(torch.load(tmp_path / "logits.pt"), reference)
    assert list(store.iterdir()) == []  # no entry, no temporary


def test_a_conversion_that_fails_leaves_no_temporary_entry(tmp_path, store, monkeypatch):
    from specmemo.actors.engine.quantized import Int4Linear as Packer

    save_checkpoint(tmp_path / "model")
    calls, pack = [], Packer.pack

    def pack_then_fail(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise MemoryError("out of memory while packing")
        return pack(*args, **kwargs)

    monkeypatch.setattr(Packer, "pack", staticmethod(pack_then_fail))
    with pytest.raises(MemoryError):
        load(tmp_path / "model", "int4")
    assert list(store.iterdir()) == []
    monkeypatch.undo()
    model, _ = load(tmp_path / "model", "int4")
    assert precision_of(model).stored.startswith("stored at ")
