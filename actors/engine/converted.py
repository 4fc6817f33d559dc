"""Converted weights kept on disk: a checkpoint is quantized to int8/int4 once, not at every start.

Converting the default 1.5B target to int4 takes ~20 s on the zygote's one thread (packing, the
int8 rows of the layers a Q4_K_M file stored finer, and reading 3 GB of bfloat16 checkpoint); with
an entry here a load maps the packed arrays (int4 and int8 alike: both kernels read plain arrays)
and reads nothing of the checkpoint's weights.

An entry holds the arrays of every quantized module of one checkpoint loaded in one dtype and
converted to one precision:

    <root>/<checkpoint>-<dtype>-<precision>-<key>/index.json   key, size, per module {field: [offset, dtype, shape]}
                                                 /specmemo-converted.bin  the arrays, 64-byte aligned

The key hashes what the arrays follow from: the checkpoint's path and each of its files' name,
size, mtime, ctime and inode, the dtype it is loaded in, the precision, the versions of torch and
transformers (and gguf for a GGUF file), and the conversion's own code and built kernels
(`CODE_FILES`), so a changed checkpoint, library or conversion rule makes a new entry rather than
a wrong load; an entry whose linears are not the model's is replaced too. An entry is written in
a temporary directory and renamed into place whole, so a reader never sees half of one; a store
that fails (no space, read-only root, a failed conversion) only logs, leaves no temporary behind,
and the model loads as converted. An entry that does not match its index (truncated, edited) is
removed and converted again; the bytes themselves carry no checksum (a partial write never
becomes an entry, and media errors are the file system's to catch). Committing an entry removes
the older entries of the same checkpoint, dtype and precision.

The root is ``$SPECMEMO_CONVERTED`` or ``~/.cache/specmemo/converted``; ``SPECMEMO_CONVERTED=off``
(or a model config's ``converted_cache = false``) turns the store off. Deleting the directory is
always safe: the next load converts again (`specmemo models converted` lists the entries and
their sizes, `--clear` deletes them), even under a running deployment, whose mappings keep the
deleted file's pages; truncating an entry's file in place would not be (a mapped page past the
new end faults).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import socket
import time
from pathlib import Path
from typing import BinaryIO

import numpy as np

log = logging.getLogger(__name__)

FORMAT = 1
ALIGN = 64
_NATIVE = Path(__file__).parents[2] / "native"
#: The conversion's code: a change to any of them (or to the built kernels, `_built_kernels`)
#: changes every key.
CODE_FILES = (
    Path(__file__).with_name("conversion.py"),
    Path(__file__).with_name("quantized.py"),
    _NATIVE / "q4.py",
    _NATIVE / "q4_pack.c",
    _NATIVE / "q4.h",
    _NATIVE / "half.h",
    _NATIVE / "q8.py",
    _NATIVE / "q8_pack.c",
    _NATIVE / "q8.h",
    _NATIVE / "row_blocks.h",
)
_SWEEP_AGE_S = 3600  # a temporary entry this old, of a writer on this host no longer running, is swept
_DTYPES = {"int8", "uint8", "uint16", "int32", "float32"}
_CHECKPOINT_FILES = (".safetensors", ".json", ".gguf", ".bin", ".pt")
_SPARE_BYTES = 1 << 30  # left free on the disk after a store


def default_root() -> Path | None:
    """Where entries live, None when the store is off."""
    setting = os.environ.get("SPECMEMO_CONVERTED", "")
    if setting.lower() in ("off", "0", "false", "no"):
        return None
    return Path(setting).expanduser() if setting else Path.home() / ".cache" / "specmemo" / "converted"


def stored_entries(root: Path | None = None) -> list[tuple[Path, int]]:
    """Each complete entry under `root` (default: `default_root()`) and its bytes on disk."""
    root = root if root is not None else default_root()
    if root is None or not root.is_dir():
        return []
    return [
        (entry, sum(f.stat().st_size for f in entry.iterdir() if f.is_file()))
        for entry in sorted(root.iterdir())
        if entry.is_dir() and not entry.name.startswith(".")
    ]


def _built_kernels() -> Path | None:
    # the compiled packer: sources changed without a rebuild would otherwise key old results anew
    from specmemo.native import _decode

    return Path(_decode.__file__) if getattr(_decode, "__file__", None) else None


def _code_digest() -> str:
    digest = hashlib.sha256()
    for path in (*CODE_FILES, _built_kernels()):
        if path is not None:
            digest.update(path.read_bytes() if path.is_file() else path.name.encode())
    return digest.hexdigest()


def _versions(gguf: bool) -> dict[str, str]:
    # what turns the checkpoint into the weights converted: module names, dtypes, GGUF dequantizing
    import torch
    import transformers

    versions = {"torch": torch.__version__, "transformers": transformers.__version__}
    if gguf:
        try:
            from importlib.metadata import version

            versions["gguf"] = version("gguf")
        except Exception:  # not installed: transformers refuses the load itself
            versions["gguf"] = ""
    return versions


class ConvertedCache:
    """The converted forms of one local checkpoint (a directory, or a GGUF file in one)."""

    def __init__(self, root: Path, location: str | Path, gguf_file: str | None = None, dtype: str = "auto"):
        self.root = Path(root)
        self.location = Path(location).resolve()
        files = [self.location / gguf_file] if gguf_file else sorted(self.location.iterdir())
        stats = [(f.name, f.stat()) for f in files if f.is_file() and f.name.endswith(_CHECKPOINT_FILES)]
        self.identity = {
            "format": FORMAT,
            "checkpoint": str(self.location),
            "gguf_file": gguf_file,
            "dtype": dtype,  # what the checkpoint was loaded as, before the conversion
            "files": [[name, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino] for name, st in stats],
            "code": _code_digest(),
            **_versions(gguf_file is not None),
        }
        slug = _slug(Path(gguf_file).stem if gguf_file else self.location.name)
        place = hashlib.sha256(str(self.location).encode()).hexdigest()[:8]
        self.prefix = f"{slug}-{place}-{dtype}"  # an entry replaces older ones of its prefix and precision

    def entry(self, precision: str) -> Entry:
        """The entry of `precision`: one to read from if a complete one is stored, else one to
        write as the conversion goes (`put`, then `commit`)."""
        key = hashlib.sha256(json.dumps({**self.identity, "precision": precision}).encode()).hexdigest()[:16]
        path = self.root / f"{self.prefix}-{precision}-{key}"
        if path.is_dir():
            try:
                return Entry(path, key, _read(path, key))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("converted weights at %s are unreadable (%s); converting again", path, exc)
                shutil.rmtree(path, ignore_errors=True)
        return Entry(path, key, None)


def _read(path: Path, key: str) -> dict[str, dict[str, np.ndarray]]:
    index = json.loads((path / "index.json").read_text())
    if index.get("key") != key:
        raise ValueError(f"index key {index.get('key')!r} is not {key!r}")
    size = (path / "specmemo-converted.bin").stat().st_size
    if size != index["bytes"]:
        raise ValueError(f"specmemo-converted.bin holds {size} bytes, the index says {index['bytes']}")
    # copy-on-write: writable numpy arrays for torch, pages shared with the page cache and forks
    data = np.memmap(path / "specmemo-converted.bin", dtype=np.uint8, mode="c") if size else np.empty(0, np.uint8)
    modules = {}
    for name, fields in index["modules"].items():
        arrays = {}
        for field, (offset, dtype, shape) in fields.items():
            if dtype not in _DTYPES:
                raise ValueError(f"{name}.{field}: dtype {dtype!r}")
            nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
            if offset % ALIGN or offset + nbytes > size:
                raise ValueError(f"{name}.{field}: bytes {offset}..{offset + nbytes} outside the file")
            arrays[field] = data[offset : offset + nbytes].view(dtype).reshape(shape)
        modules[name] = arrays
    return {"modules": modules, "notes": index.get("notes", {})}


class Entry:
    """Stored arrays by module name (`get`), or, for an entry not stored yet, the writer of one."""

    def __init__(self, path: Path, key: str, stored: dict | None):
        self.path, self.key = path, key
        self.hit = stored is not None
        self.modules: dict[str, dict[str, np.ndarray]] = stored["modules"] if stored else {}
        self.notes: dict = stored["notes"] if stored else {}
        self._index: dict[str, dict[str, list]] = {}
        self._tmp: Path | None = None
        self._file: BinaryIO | None = None
        self._bytes = 0
        self.failed: str | None = None

    def describe(self) -> str:
        """Where the weights came from or went, for the load's log line."""
        if self.hit:
            return f"read from {self.path}"
        if self.failed:
            return f"not stored: {self.failed}"
        return f"stored at {self.path}" if self._index else ""

    def get(self, name: str) -> dict[str, np.ndarray] | None:
        return self.modules.get(name)

    def forget(self, why: str) -> None:
        """A stored entry that does not fit the model being converted: delete it and become the
        writer of a new one."""
        if self.hit:
            log.warning("converted weights at %s do not fit (%s); converting again", self.path, why)
            shutil.rmtree(self.path, ignore_errors=True)
            self.hit, self.modules, self.notes = False, {}, {}

    def abort(self) -> None:
        """Give up an entry being written (the conversion failed): nothing of it stays."""
        if not self.hit and not self.failed and self._tmp is not None:
            self._fail("the conversion failed", logging.INFO)

    def reserve(self, estimate: int) -> None:
        """Give up storing (before any write) unless the disk keeps a spare GiB after `estimate`
        bytes."""
        if self.hit or self.failed:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            free = shutil.disk_usage(self.path.parent).free
        except OSError as exc:
            self._fail(f"cannot use {self.path.parent}: {exc}")
            return
        if free < estimate + _SPARE_BYTES:
            self._fail(f"{free / 2**30:.1f} GiB free at {self.path.parent}, the entry needs ~{estimate / 2**30:.1f}")

    def put(self, name: str, **arrays: np.ndarray) -> None:
        """Append a module's arrays to the entry being written (nothing for a stored entry)."""
        if self.hit or self.failed:
            return
        try:
            if self._file is None:
                _sweep(self.path.parent)
                self._tmp = temporary(self.path, os.getpid())
                self._tmp.mkdir(parents=True)
                self._file = open(self._tmp / "specmemo-converted.bin", "wb")
            fields = {}
            for field, array in arrays.items():
                array = np.ascontiguousarray(array)
                if array.dtype.name not in _DTYPES:
                    raise ValueError(f"{name}.{field}: cannot store dtype {array.dtype}")
                pad = -self._bytes % ALIGN
                self._file.write(b"\0" * pad)
                self._file.write(array.data if array.size else b"")
                fields[field] = [self._bytes + pad, array.dtype.name, list(array.shape)]
                self._bytes += pad + array.nbytes
            self._index[name] = fields
        except OSError as exc:
            self._fail(f"writing {self._tmp}: {exc}")

    def commit(self, notes: dict | None = None) -> None:
        """Put the written entry in place (whole, by a rename) and drop the checkpoint's older
        entries of this precision. Nothing for a stored entry or a failed write."""
        tmp = self._tmp
        if self.hit or self.failed or self._file is None or tmp is None:
            return
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            index = {"key": self.key, "bytes": self._bytes, "modules": self._index, "notes": notes or {}}
            (tmp / "index.json").write_text(json.dumps(index))
            stem = self.path.name.rsplit("-", 1)[0] + "-"
            for old in self.path.parent.iterdir():
                if old.is_dir() and old.name.startswith(stem) and old.name != self.path.name:
                    shutil.rmtree(old, ignore_errors=True)
            os.rename(tmp, self.path)
        except OSError as exc:
            if self.path.is_dir():  # another process put the same entry in place first: it serves
                self._fail(f"{self.path} was stored by another process first", logging.INFO)
            else:
                self._fail(f"placing {self.path}: {exc}")
            return
        log.info("stored converted weights at %s (%.0f MiB)", self.path, self._bytes / 2**20)

    def _fail(self, why: str, level: int = logging.WARNING) -> None:
        self.failed = why
        if self._file is not None:
            try:
                self._file.close()  # flushes what is buffered: may fail as the write did
            except OSError:
                pass
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
        log.log(level, "not storing converted weights: %s", why)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:48]


def temporary(path: Path, pid: int) -> Path:
    """Where process `pid` of this host writes the entry `path` before renaming it into place:
    ``.<entry>.tmp-<host>-<pid>-<random>`` beside it."""
    return path.parent / f".{path.name}.tmp-{_slug(socket.gethostname())}-{pid}-{secrets.token_hex(4)}"


def _sweep(root: Path) -> None:
    # temporary entries of writers on this host that died (their pid gone) an hour ago or more;
    # without /proc no writer is known dead
    if not Path("/proc/self").exists():
        return
    for tmp in root.glob(f".*.tmp-{_slug(socket.gethostname())}-*"):
        pid = tmp.name.rsplit("-", 2)[-2]
        try:
            old = time.time() - tmp.stat().st_mtime > _SWEEP_AGE_S
        except OSError:
            continue
        if old and pid.isdigit() and int(pid) != os.getpid() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(tmp, ignore_errors=True)
