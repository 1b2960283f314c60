"""Tests for download_files (memaware.data.download): mirrors in turn, MD5 checked, atomic writes.

No network: URLs are file:// URLs or served by a fake opener.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import IO

import pytest

from memaware.data.download import download_files
from memaware.errors import DataError


@pytest.fixture
def mirror(tmp_path: Path) -> Path:
    """A folder of small files that file:// URLs can serve."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    for i, name in enumerate(["t10k-labels-idx1-ubyte.gz", "train-images-idx3-ubyte.gz"]):
        (folder / name).write_bytes(bytes(range(i, 200)))
    return folder


def _md5s(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def test_download_files_from_file_urls(tmp_path: Path, mirror: Path) -> None:
    names = sorted(p.name for p in mirror.iterdir())
    cache = tmp_path / "cache" / "deep"
    missing_mirror = (tmp_path / "no-such-mirror").as_uri() + "/"
    paths = download_files(names, [missing_mirror, mirror.as_uri()], cache, checksums=_md5s(mirror))
    assert sorted(paths) == names
    for name in names:
        assert paths[name] == cache / name
        assert paths[name].read_bytes() == (mirror / name).read_bytes()
    assert sorted(p.name for p in cache.iterdir()) == names  # no temporary files left


def test_download_keeps_files_already_there(tmp_path: Path) -> None:
    (tmp_path / "a.gz").write_bytes(b"cached")

    def refuse(url: str) -> IO[bytes]:
        raise AssertionError(f"should not open {url}")

    paths = download_files(["a.gz"], ["https://example.invalid/"], tmp_path, opener=refuse)
    assert paths["a.gz"].read_bytes() == b"cached"


def test_download_uses_the_given_opener(tmp_path: Path) -> None:
    opened: list[str] = []

    def fake(url: str) -> IO[bytes]:
        opened.append(url)
        return io.BytesIO(b"payload")

    download_files(["f.gz"], ["https://mirror.example/base"], tmp_path, opener=fake)
    assert opened == ["https://mirror.example/base/f.gz"]
    assert (tmp_path / "f.gz").read_bytes() == b"payload"


def test_download_checksum_mismatch_fails_and_leaves_nothing(tmp_path: Path, mirror: Path) -> None:
    cache = tmp_path / "cache"
    name = "t10k-labels-idx1-ubyte.gz"
    with pytest.raises(DataError, match=r"MD5 .*expected 0{32}.*--data-dir") as info:
        download_files([name], [mirror.as_uri()], cache, checksums={name: "0" * 32})
    assert name in str(info.value)
    assert list(cache.iterdir()) == []


def test_download_with_no_working_mirror(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"could not download x\.gz"):
        download_files(["x.gz"], [(tmp_path / "empty").as_uri()], tmp_path / "cache")


class _Broken(io.BytesIO):
    """A response that delivers some bytes, then fails like a dropped connection."""

    def read(self, size: int | None = -1) -> bytes:
        if self.tell():
            raise ConnectionResetError("connection reset by peer")
        return super().read(3)


def test_interrupted_download_leaves_nothing_and_tries_the_next_mirror(tmp_path: Path) -> None:
    served = {"https://a.example/f.gz": _Broken(b"partial data"), "https://b.example/f.gz": None}

    def opener(url: str) -> IO[bytes]:
        response = served[url]
        return response if response is not None else io.BytesIO(b"whole file")

    cache = tmp_path / "cache"
    download_files(["f.gz"], ["https://a.example/", "https://b.example/"], cache, opener=opener)
    assert (cache / "f.gz").read_bytes() == b"whole file"
    assert [p.name for p in cache.iterdir()] == ["f.gz"]


def test_interrupted_download_everywhere_names_each_failure(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"https://a\.example/f\.gz: connection reset") as info:
        download_files(
            ["f.gz"], ["https://a.example/"], tmp_path, opener=lambda url: _Broken(b"abcdef")
        )
    assert "put the file there by hand" in str(info.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_downloaded_file_is_readable_by_others_under_umask_022(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    try:
        download_files(
            ["f.gz"], ["https://x.example/"], tmp_path, opener=lambda url: io.BytesIO(b"x")
        )
    finally:
        os.umask(umask)
    assert (tmp_path / "f.gz").stat().st_mode & 0o777 == 0o644


def test_download_into_a_folder_that_cannot_be_made(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(DataError, match="cannot create the download folder"):
        download_files(["f.gz"], ["https://x.example/"], tmp_path / "file" / "sub")
