"""Tests for memaware.files: atomic writes leave the old file or the whole new one, never a half."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from memaware.files import atomic_path, atomic_write_bytes, atomic_write_json, atomic_write_text


def test_atomic_write_replaces_content_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["out.bin"]


def test_atomic_path_exception_keeps_old_file_and_removes_temp(tmp_path: Path) -> None:
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"), atomic_path(target) as tmp:
        assert tmp.parent == tmp_path
        assert tmp.suffix == ".safetensors"
        tmp.write_bytes(b"half")
        raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["model.safetensors"]


def test_atomic_path_failed_rename_keeps_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")

    def failing_replace(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_atomic_path_creates_file_when_absent(tmp_path: Path) -> None:
    target = tmp_path / "fresh.txt"
    with atomic_path(target) as tmp:
        assert tmp.exists() and not target.exists()
        tmp.write_text("hello")
    assert target.read_text() == "hello"
    assert os.listdir(tmp_path) == ["fresh.txt"]


def test_atomic_path_missing_folder_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        atomic_write_bytes(tmp_path / "absent" / "x.bin", b"x")
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_atomic_write_respects_umask(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    try:
        target = tmp_path / "perm.txt"
        atomic_write_text(target, "x")
        assert target.stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(umask)


def test_atomic_write_text_is_utf8_and_keeps_newlines(tmp_path: Path) -> None:
    target = tmp_path / "t.md"
    atomic_write_text(target, "a\r\nb\n→")
    assert target.read_bytes() == "a\r\nb\n→".encode()


def test_atomic_write_json_round_trip(tmp_path: Path) -> None:
    target = tmp_path / "r.json"
    results = {"memaware_version": "0.1.0", "methods": {"mas": {"average_accuracy": 0.98}}}
    atomic_write_json(target, results)
    text = target.read_text(encoding="utf-8")
    assert json.loads(text) == results
    assert text.startswith('{\n  "memaware_version"')  # indent 2, key order kept
    assert text.endswith("}\n")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_atomic_write_json_nan_keeps_old_file(tmp_path: Path, bad: float) -> None:
    target = tmp_path / "r.json"
    target.write_text('{"ok": true}')
    with pytest.raises(ValueError):
        atomic_write_json(target, {"average_accuracy": bad})
    assert target.read_text() == '{"ok": true}'
    assert os.listdir(tmp_path) == ["r.json"]
