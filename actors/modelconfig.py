"""The model part of an actor's config, mapped onto a :class:`ModelSpec`.

[actors.draft.config]
model = "default"        # the pulled embedded pair (`specmemo models pull`), "tiny" (a
                         # random-weight test pair built from a config, `seed`), or a
                         # local directory, a .gguf file, or a hub id (allow_network = true)
precision = "auto"       # "float32", "bfloat16", "int8", "int4", or "auto": probe this machine at
                         # load and take the fastest (engine/precision.py); "dtype" is
                         # the older name of the same setting
device = "cpu"
device_map = "auto"      # optional: spread a big model over devices (transformers/accelerate)
converted_cache = true   # keep an int8/int4 conversion on disk for the next start (engine/converted.py)
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from specmemo.actors.engine.models import ModelSpec, load_model
from specmemo.actors.engine.precision import WEIGHT_BITS, apply_precision, precision_of
from specmemo.actors.engine.pull import default_pair_specs

#: (model, tokenizer) loaded by the zygote before it forks, by `resident_key`: a forked actor finds
#: its model here, its weights shared copy-on-write with the zygote and every other fork of it.
_RESIDENT: dict[str, tuple[Any, Any]] = {}
_MODEL_KEYS = (
    "model",
    "precision",
    "dtype",
    "device",
    "device_map",
    "gguf_file",
    "cache_dir",
    "allow_network",
    "seed",
    "gamma_max",
)
ROLE_OF_KIND = {"draft": "draft", "verifier": "target"}


def resident_key(config: dict[str, Any], role: str) -> str | None:
    """The key of a model the zygote may hold for this config, None if it may not: only CPU
    models (a CUDA context does not survive a fork)."""
    if str(config.get("device", "cpu")) != "cpu" or config.get("device_map"):
        return None
    return json.dumps([role, {k: config.get(k) for k in _MODEL_KEYS}], sort_keys=True, default=str)


def load_resident(config: dict[str, Any], role: str, threads: int | None = None) -> bool:
    """In the zygote: load the model for ``role`` once, so every fork shares its weights. Answers
    whether it is resident now. `threads`: what the forks will run on (the config's "threads"
    wins), so that an "auto" precision is probed as it will serve."""
    key = resident_key(config, role)
    if key is None:
        return False
    if key not in _RESIDENT:
        serving = config.get("threads", threads)  # what the actor will set (actors/draft.py, verifier.py)
        _RESIDENT[key] = load_actor_model(config, role, int(serving) if serving else None)
    return True


def is_resident(model) -> bool:
    return any(model is resident for resident, _ in _RESIDENT.values())


def load_actor_model(config: dict[str, Any], role: str, threads: int | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) for ``role`` ("draft" or "target") as the config asks; the zygote's
    resident copy when it holds one. `threads`: the torch threads it will serve on, when not
    this process's (see `ModelSpec.threads`)."""
    key = resident_key(config, role)
    if key in _RESIDENT:
        return _RESIDENT[key]
    if config.get("model") == "tiny":
        from specmemo.actors.engine.tiny import tiny_pair, tiny_tokenizer

        draft, target = tiny_pair(seed=int(config.get("seed", 0)))
        model = draft if role == "draft" else target
        gamma_max = int(config.get("gamma_max", 8))
        apply_precision(model, precision_setting(config), gamma_max=gamma_max, role=role, threads=threads)
        return model, tiny_tokenizer()
    return load_model(dataclasses.replace(model_spec(config, role), threads=threads))


def precision_setting(config: dict[str, Any]) -> str:
    """The `precision` of a model's config ("dtype" is its older name); "auto" for the default
    pair, "float32" for any other model."""
    default = "auto" if config.get("model", "default") == "default" else "float32"
    return str(config.get("precision", config.get("dtype", default)))


def preload_actor_model() -> None:
    """Import what :func:`load_actor_model` will import, computing nothing (the zygote runs it).

    transformers imports most of its modules lazily, when the first model is built: about as
    long as importing torch. Building the tiny architecture (Qwen2, as the default pair) on the
    meta device triggers those imports while allocating and computing nothing, so no thread
    pool starts. No config is needed: every model source shares this machinery.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401

    from specmemo.actors.engine.tiny import tiny_config

    with torch.device("meta"):
        AutoModelForCausalLM.from_config(tiny_config())


def model_spec(config: dict[str, Any], role: str) -> ModelSpec:
    """``role`` is "draft" or "target": which half of the default pair ``model = "default"`` means."""
    source = config.get("model", "default")
    precision = precision_setting(config)
    # float32 and bfloat16 load as such; int8 and auto load the checkpoint's dtype and convert
    dtype = precision if precision in ("float32", "bfloat16", "float16") else "auto"
    device = config.get("device", "cpu")
    if source == "default":
        draft, target = default_pair_specs(dtype=dtype, device=device, cache_dir=config.get("cache_dir"))
        spec = draft if role == "draft" else target
        source = spec.source
    return ModelSpec(
        source,
        gguf_file=config.get("gguf_file"),
        dtype=dtype,
        device=device,
        device_map=config.get("device_map"),
        allow_network=bool(config.get("allow_network", False)),
        precision=None if precision == "float16" else precision,
        gamma_max=int(config.get("gamma_max", 8)),
        role=role,
        converted_cache=bool(config.get("converted_cache", True)),
    )


def model_info(core) -> dict[str, Any]:
    """The `ModelInfo` reply of a draft or target core: its KV facts, weights, precision, RSS."""
    choice = precision_of(core.model)
    return {
        "bytes_per_token": core.bytes_per_token,
        "vocab_size": core.vocab_size,
        "max_context": core.max_context,
        "sessions": len(core.sessions()),
        "held": core.held_bytes(),
        "weight_bytes": core.weight_bytes,
        "rss_bytes": rss_bytes(),
        "shared_weights": is_resident(core.model),
        "precision": choice.as_dict() if choice is not None else None,
    }


def rss_bytes() -> int:
    """Resident memory of this process (VmRSS), 0 where /proc is absent."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def describe_precision(core) -> str:
    """One log line: the precision chosen, why, and the probe's numbers."""
    choice = precision_of(core.model)
    if choice is None:
        return f"dtype {core.dtype}"
    probe = "; ".join(f"{p} {' '.join(f'{k} {v:.1f} ms' for k, v in ms.items())}" for p, ms in choice.probe_ms.items())
    shared = ", shared with the zygote" if is_resident(core.model) else ""
    stored = f", converted weights {choice.stored}" if choice.stored else ""
    return (
        f"precision {choice.precision} (asked {choice.requested}{', probe: ' + probe if probe else ''}),"
        f" weights {choice.weight_bytes / 2**20:.0f} MiB{shared}{stored}"
    )


def set_model_gauges(metrics, core) -> None:
    """The model's facts as gauges (`<actor>.metrics`, Prometheus): weight bytes, bits per weight
    of its precision, and each probe estimate as ``probe_ms{precision}_m{M}``."""
    metrics.set("weight_bytes", core.weight_bytes, "Bytes of the model's weights in its precision")
    metrics.set("rss_bytes", rss_bytes(), "Resident memory of the actor process when its model was ready")
    choice = precision_of(core.model)
    if choice is None:
        return
    bits = WEIGHT_BITS.get(choice.precision, 0)
    metrics.set("weight_bits", bits, "Bits per weight of the precision the model runs in")
    for precision, ms in choice.probe_ms.items():
        for m, value in ms.items():
            metrics.set(
                f"probe_ms_{precision}_{m.replace('=', '').lower()}",
                value,
                f"Load-time probe: ms per forward in {precision} at {m}",
            )
