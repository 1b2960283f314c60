"""Tests for the IDX reader and writer (memaware.data.idx)."""

from __future__ import annotations

import gzip
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from memaware.data.idx import read_idx, write_idx
from memaware.errors import DataError

IDX_DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]


def _assert_identical(actual: np.ndarray, expected: np.ndarray) -> None:
    # Compare bytes so that NaN payloads and -0.0 must survive too.
    assert actual.dtype == expected.dtype
    assert actual.shape == expected.shape
    assert actual.tobytes() == expected.tobytes()


@settings(max_examples=60, deadline=None)
@given(
    array=st.sampled_from(IDX_DTYPES).flatmap(
        lambda dtype: hnp.arrays(
            dtype, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)
        )
    ),
    suffix=st.sampled_from(["", ".gz"]),
)
def test_round_trip(
    tmp_path_factory: pytest.TempPathFactory, array: np.ndarray, suffix: str
) -> None:
    folder = tmp_path_factory.mktemp("idx")
    path = folder / f"data{suffix}"
    write_idx(path, array)
    result = read_idx(path)
    _assert_identical(result, array)
    assert result.dtype.isnative
    assert result.flags.writeable
    assert [p.name for p in folder.iterdir()] == [path.name]  # no temporary file left


@pytest.mark.parametrize("dtype", IDX_DTYPES)
def test_header_matches_the_format(tmp_path: Path, dtype: type[np.generic]) -> None:
    array = np.arange(6, dtype=dtype).reshape(2, 3)
    write_idx(tmp_path / "a", array)
    raw = (tmp_path / "a").read_bytes()
    codes = {np.uint8: 8, np.int8: 9, np.int16: 11, np.int32: 12, np.float32: 13, np.float64: 14}
    assert raw[:4] == bytes([0, 0, codes[dtype], 2])
    assert struct.unpack(">2I", raw[4:12]) == (2, 3)
    assert raw[12:] == array.astype(np.dtype(dtype).newbyteorder(">")).tobytes()


def test_reads_a_hand_written_mnist_label_file(tmp_path: Path) -> None:
    path = tmp_path / "labels"
    path.write_bytes(b"\x00\x00\x08\x01" + struct.pack(">I", 3) + bytes([5, 0, 4]))
    np.testing.assert_array_equal(read_idx(path), np.array([5, 0, 4], dtype=np.uint8))


def test_compression_is_detected_from_content_not_name(tmp_path: Path) -> None:
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "packed.gz", array)
    write_idx(tmp_path / "plain", array)
    shutil.move(tmp_path / "packed.gz", tmp_path / "packed-without-suffix")
    shutil.move(tmp_path / "plain", tmp_path / "plain-named.gz")
    _assert_identical(read_idx(tmp_path / "packed-without-suffix"), array)
    _assert_identical(read_idx(tmp_path / "plain-named.gz"), array)


def test_gz_output_is_gzip(tmp_path: Path) -> None:
    array = np.zeros((4, 4), dtype=np.uint8)
    write_idx(tmp_path / "a.gz", array)
    assert gzip.decompress((tmp_path / "a.gz").read_bytes())[:4] == b"\x00\x00\x08\x02"


def test_overwrites_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "a"
    write_idx(path, np.zeros(10, dtype=np.uint8))
    write_idx(path, np.ones(3, dtype=np.int32))
    _assert_identical(read_idx(path), np.ones(3, dtype=np.int32))


def _idx_bytes(array: np.ndarray, tmp_path: Path) -> bytes:
    write_idx(tmp_path / "source", array)
    return (tmp_path / "source").read_bytes()


@pytest.mark.parametrize("cut", [1, 100, 399])
def test_truncated_payload(tmp_path: Path, cut: int) -> None:
    raw = _idx_bytes(np.zeros((10, 40), dtype=np.uint8), tmp_path)
    path = tmp_path / "cut"
    path.write_bytes(raw[:-cut])
    with pytest.raises(DataError, match=r"truncated.*needs 400 payload bytes") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_payload_longer_than_header(tmp_path: Path) -> None:
    path = tmp_path / "long"
    path.write_bytes(_idx_bytes(np.zeros(5, dtype=np.uint8), tmp_path) + b"\x00")
    with pytest.raises(DataError, match="longer than its header"):
        read_idx(path)


@pytest.mark.parametrize(
    "raw",
    [b"", b"\x00\x00", b"\x00\x00\x08\x03\x00\x00\x00\x02"],
    ids=["empty", "short-magic", "short-dims"],
)
def test_truncated_header(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "short"
    path.write_bytes(raw)
    with pytest.raises(DataError, match=r"too short|truncated"):
        read_idx(path)


@pytest.mark.parametrize(
    "magic",
    [
        b"\x01\x00\x08\x01",
        b"\x00\x07\x08\x01",
        b"\x00\x00\x0a\x01",
        b"\x00\x00\x0f\x01",
        b"PK\x03\x04",
    ],
    ids=["first-byte", "second-byte", "unassigned-type", "type-too-big", "zip-file"],
)
def test_bad_magic(tmp_path: Path, magic: bytes) -> None:
    path = tmp_path / "bad"
    path.write_bytes(magic + struct.pack(">I", 1) + b"\x00" * 8)
    with pytest.raises(DataError, match="bad magic number") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_bad_gzip_stream(tmp_path: Path) -> None:
    path = tmp_path / "bad.gz"
    path.write_bytes(b"\x1f\x8b" + b"this is not deflate data" * 4)
    with pytest.raises(DataError, match="gzip stream is corrupt"):
        read_idx(path)


def test_truncated_gzip_stream(tmp_path: Path) -> None:
    write_idx(tmp_path / "full.gz", np.random.default_rng(0).integers(0, 255, (50, 50), np.uint8))
    raw = (tmp_path / "full.gz").read_bytes()
    path = tmp_path / "half.gz"
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="gzip stream is corrupt or truncated"):
        read_idx(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot read IDX file"):
        read_idx(tmp_path / "nope")


@pytest.mark.parametrize("dtype", [np.int64, np.uint16, np.bool_, np.complex64])
def test_write_rejects_types_idx_lacks(tmp_path: Path, dtype: type[np.generic]) -> None:
    with pytest.raises(DataError, match="IDX has no type"):
        write_idx(tmp_path / "a", np.zeros(3, dtype=dtype))
    assert list(tmp_path.iterdir()) == []


def test_write_into_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot write"):
        write_idx(tmp_path / "missing" / "a", np.zeros(3, dtype=np.uint8))


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_written_file_is_readable_by_others_under_umask_022(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    try:
        write_idx(tmp_path / "a.gz", np.zeros(3, dtype=np.uint8))
    finally:
        os.umask(umask)
    assert (tmp_path / "a.gz").stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["a.gz"]  # no temporary file left


def test_failed_rename_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "a"
    write_idx(path, np.zeros(3, dtype=np.uint8))

    def failing_replace(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(DataError, match=r"cannot write .*disk full"):
        write_idx(path, np.ones(5, dtype=np.uint8))
    _assert_identical(read_idx(path), np.zeros(3, dtype=np.uint8))
    assert [p.name for p in tmp_path.iterdir()] == ["a"]
