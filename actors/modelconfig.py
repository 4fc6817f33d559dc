"""The model part of an actor's config, mapped onto a :class:`ModelSpec`.

    [actors.draft.config]
    model = "default"        # the pulled embedded pair (`specmemo models pull`), or a
                             # local directory, a .gguf file, or a hub id (allow_network = true)
    dtype = "bfloat16"
    device = "cpu"
    device_map = "auto"      # optional: spread a big model over devices (transformers/accelerate)
"""
from __future__ import annotations

from typing import Any

from specmemo.actors.engine.models import ModelSpec
from specmemo.actors.engine.pull import default_pair_specs


def model_spec(config: dict[str, Any], role: str) -> ModelSpec:
    """``role`` is "draft" or "target": which half of the default pair ``model = "default"`` means."""
    source = config.get("model", "default")
    dtype = config.get("dtype", "bfloat16" if source == "default" else "float32")
    device = config.get("device", "cpu")
    if source == "default":
        draft, target = default_pair_specs(dtype=dtype, device=device, cache_dir=config.get("cache_dir"))
        spec = draft if role == "draft" else target
        source = spec.source
    return ModelSpec(source, gguf_file=config.get("gguf_file"), dtype=dtype, device=device,
                     device_map=config.get("device_map"),
                     allow_network=bool(config.get("allow_network", False)))
