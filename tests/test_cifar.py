"""CIFAR-10/100 (memaware.data.cifar) on tiny archives written in the official format, offline.

The generated batches are what the originals are: protocol-2 pickles of dicts with bytes keys,
``data`` a uint8 N×3072 array (channel-major rows) and the labels a list of ints.
"""

from __future__ import annotations

import codecs
import dataclasses
import hashlib
import io
import json
import pickle
import tarfile
from pathlib import Path
from typing import IO, Any

import numpy as np
import pytest
import torch

from memaware.cli.main import build_parser, main
from memaware.data import cifar, download
from memaware.data.benchmarks import make_scenario
from memaware.data.cifar import (
    CIFAR10,
    CIFAR100,
    CIFAR_URL,
    CifarLayout,
    download_cifar,
    load_cifar10,
    load_cifar100,
)
from memaware.data.registry import load_dataset
from memaware.data.scenarios import Task
from memaware.errors import ConfigError, DataError
from memaware.training.experiment import ExperimentSpec

CIFAR10_NAMES = [
    b"airplane",
    b"automobile",
    b"bird",
    b"cat",
    b"deer",
    b"dog",
    b"frog",
    b"horse",
    b"ship",
    b"truck",
]
# Per batch file: how many images of each class (CIFAR-10 has five training batches).
TRAIN_PER_CLASS = {CIFAR10.name: 1, CIFAR100.name: 2}
TEST_PER_CLASS = 2


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(url: str) -> IO[bytes]:
        raise AssertionError(f"a test tried to open {url}")

    monkeypatch.setattr(download, "_urlopen", refuse)


def _pickle(path: Path, obj: Any) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=2))


def _batch(layout: CifarLayout, per_class: int, seed: int) -> dict[bytes, Any]:
    labels = [c for c in range(layout.n_classes) for _ in range(per_class)]
    data = np.random.default_rng(seed).integers(0, 256, (len(labels), 3072), dtype=np.uint8)
    return {
        b"batch_label": f"batch {seed}".encode(),
        layout.labels_key.encode(): labels,
        b"data": data,
        b"filenames": [f"img_{seed}_{i}.png".encode() for i in range(len(labels))],
    }


def _class_names(layout: CifarLayout) -> list[bytes]:
    if layout is CIFAR10:
        return CIFAR10_NAMES
    return [f"class_{c:02d}".encode() for c in range(layout.n_classes)]


def _write_folder(folder: Path, layout: CifarLayout) -> dict[str, dict[bytes, Any]]:
    """Write ``layout``'s files into ``folder``; return the dict written to each file."""
    folder.mkdir(parents=True, exist_ok=True)
    written = {
        name: _batch(layout, TRAIN_PER_CLASS[layout.name], seed)
        for seed, name in enumerate(layout.train_files)
    }
    written[layout.test_file] = _batch(layout, TEST_PER_CLASS, 99)
    for name, batch in written.items():
        _pickle(folder / name, batch)
    meta = {layout.names_key.encode(): _class_names(layout), b"num_vis": 3072}
    if layout is CIFAR100:
        meta[b"coarse_label_names"] = [f"super_{c}".encode() for c in range(20)]
    _pickle(folder / layout.meta_file, meta)
    return written


@pytest.fixture(scope="module")
def cifar10_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding ``cifar-10-batches-py/``, as the archive unpacks."""
    root = tmp_path_factory.mktemp("cifar10")
    _write_folder(root / CIFAR10.folder, CIFAR10)
    return root


@pytest.fixture(scope="module")
def cifar100_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cifar100")
    _write_folder(root / CIFAR100.folder, CIFAR100)
    return root


def _labels(task: Task, split: str) -> torch.Tensor:
    return getattr(task, split).labels


# --------------------------------------------------------------------------- loading


def test_cifar10_loads_from_the_folder_holding_the_batches(tmp_path: Path) -> None:
    written = _write_folder(tmp_path / CIFAR10.folder, CIFAR10)
    ds = load_cifar10(tmp_path)
    assert ds.name == "cifar10" and ds.source == str(tmp_path / CIFAR10.folder)
    assert ds.classes == tuple(n.decode() for n in CIFAR10_NAMES)
    assert ds.train_x.shape == (50, 3, 32, 32) and ds.test_x.shape == (20, 3, 32, 32)
    assert ds.train_x.dtype == torch.uint8 and ds.train_y.dtype == torch.int64
    # The five training batches in order, then the test batch.
    expected = [label for name in CIFAR10.train_files for label in written[name][b"labels"]]
    assert ds.train_y.tolist() == expected
    assert ds.test_y.tolist() == written["test_batch"][b"labels"]
    # A row is 1024 red, then 1024 green, then 1024 blue pixels, each plane row-major.
    row = written["data_batch_2"][b"data"][3]
    image = ds.train_x[10 + 3]
    for channel, y, x in [(0, 0, 0), (1, 5, 7), (2, 31, 30), (0, 31, 0)]:
        assert int(image[channel, y, x]) == int(row[channel * 1024 + y * 32 + x])
    assert torch.equal(ds.test_x[0].flatten(), torch.from_numpy(written["test_batch"][b"data"][0]))


def test_cifar10_loads_from_the_batches_folder_itself(cifar10_root: Path) -> None:
    inside = load_cifar10(cifar10_root / CIFAR10.folder)
    outside = load_cifar10(str(cifar10_root))
    assert torch.equal(inside.train_x, outside.train_x) and torch.equal(
        inside.test_y, outside.test_y
    )


def test_cifar100_fine_labels_and_names(cifar100_root: Path) -> None:
    ds = load_cifar100(cifar100_root)
    assert ds.name == "cifar100" and ds.n_classes == 100
    assert ds.classes[:2] == ("class_00", "class_01") and ds.classes[-1] == "class_99"
    assert ds.train_x.shape == (200, 3, 32, 32) and ds.test_x.shape == (200, 3, 32, 32)
    assert torch.bincount(ds.train_y).tolist() == [2] * 100
    assert load_cifar100(cifar100_root / CIFAR100.folder).test_y.tolist() == ds.test_y.tolist()


def test_the_registry_names_both(cifar10_root: Path, cifar100_root: Path) -> None:
    assert load_dataset("cifar10", cifar10_root).n_classes == 10
    assert load_dataset("CIFAR100", cifar100_root).n_classes == 100


def test_keys_may_be_str(tmp_path: Path) -> None:
    # A batch re-saved from Python 3 with encoding="latin1" has str keys: read it the same.
    written = _write_folder(tmp_path, CIFAR10)
    batch = {key.decode(): value for key, value in written["test_batch"].items()}
    _pickle(tmp_path / "test_batch", batch)
    assert load_cifar10(tmp_path).test_y.tolist() == batch["labels"]


# --------------------------------------------------------------------------- errors


def test_missing_folder_says_where_to_put_the_archive(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"CIFAR-10 not found in .*cifar-10-batches-py/") as info:
        load_cifar10(tmp_path)
    message = str(info.value)
    assert "cifar-10-python.tar.gz" in message and "--download" in message


def test_missing_file_is_named(tmp_path: Path) -> None:
    _write_folder(tmp_path / CIFAR10.folder, CIFAR10)
    (tmp_path / CIFAR10.folder / "data_batch_4").unlink()
    with pytest.raises(DataError, match=r"cifar-10-batches-py lacks data_batch_4 for CIFAR-10"):
        load_cifar10(tmp_path)


def _rewrite(folder: Path, layout: CifarLayout, name: str, **changes: Any) -> Path:
    written = _write_folder(folder, layout)
    batch = {**written[name], **{key.encode(): value for key, value in changes.items()}}
    _pickle(folder / name, batch)
    return folder / name


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"data": np.zeros((20, 1024), dtype=np.uint8)}, r"shape \(20, 1024\); expected uint8"),
        ({"data": np.zeros((20, 3072), dtype=np.float32)}, "images are float32"),
        ({"data": [[0] * 3072] * 20}, "images are list"),
        ({"labels": list(range(10)) * 2 + [3]}, "expected 20 integer labels"),
        ({"labels": ["cat"] * 20}, "expected 20 integer labels"),
        ({"labels": [10] + [0] * 19}, r"labels range over \[0, 10\] but CIFAR-10 labels lie"),
        ({"labels": [-1] + [0] * 19}, r"labels range over \[-1, 0\]"),
    ],
)
def test_bad_batch_names_the_file(tmp_path: Path, changes: dict[str, Any], message: str) -> None:
    path = _rewrite(tmp_path, CIFAR10, "test_batch", **changes)
    with pytest.raises(DataError, match=message) as info:
        load_cifar10(tmp_path)
    assert str(info.value).startswith(f"{path}: ")


def test_batch_without_its_labels_lists_its_keys(tmp_path: Path) -> None:
    written = _write_folder(tmp_path, CIFAR100)
    batch = dict(written["train"])
    del batch[b"fine_labels"]
    _pickle(tmp_path / "train", batch)
    with pytest.raises(DataError, match=r"train has no 'fine_labels' entry \(its keys: .*data"):
        load_cifar100(tmp_path)


def test_class_missing_from_the_test_split(tmp_path: Path) -> None:
    labels = [c % 9 for c in range(20)]  # no class 9
    _rewrite(tmp_path, CIFAR10, "test_batch", labels=labels)
    with pytest.raises(
        DataError, match=r"test split has fewer than 1 examples of classes \{'truck'"
    ):
        load_cifar10(tmp_path)


def test_wrong_number_of_class_names(tmp_path: Path) -> None:
    _write_folder(tmp_path, CIFAR10)
    _pickle(tmp_path / "batches.meta", {b"label_names": CIFAR10_NAMES[:9]})
    with pytest.raises(DataError, match=r"batches\.meta: 'label_names' should list 10 class names"):
        load_cifar10(tmp_path)


@pytest.mark.parametrize(
    "raw",
    [b"", b"not a pickle at all", pickle.dumps({b"data": b"x" * 100}, protocol=2)[:-10]],
)
def test_corrupt_pickle(tmp_path: Path, raw: bytes) -> None:
    _write_folder(tmp_path, CIFAR10)
    (tmp_path / "data_batch_1").write_bytes(raw)
    with pytest.raises(DataError, match=r"data_batch_1 is not a CIFAR-10 batch: it is corrupt"):
        load_cifar10(tmp_path)


class _RunsCode:
    def __reduce__(self) -> tuple[Any, ...]:
        return (print, ("this must never run",))


@pytest.mark.parametrize(
    "payload",
    [_RunsCode(), {b"data": np.zeros((1, 3072), dtype=np.uint8), b"labels": [dataclasses.field]}],
)
def test_pickle_naming_a_forbidden_global_is_refused(
    tmp_path: Path, payload: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_folder(tmp_path, CIFAR10)
    _pickle(tmp_path / "test_batch", payload)
    with pytest.raises(
        DataError, match=r"test_batch is not a CIFAR-10 batch: it refers to"
    ) as info:
        load_cifar10(tmp_path)
    assert "could run code" in str(info.value)
    assert "must never run" not in capsys.readouterr().out


class _OtherCodec:
    def __reduce__(self) -> tuple[Any, ...]:
        return (codecs.encode, (b"abc", "zlib_codec"))


def test_codecs_encode_is_allowed_only_for_latin1_bytes(tmp_path: Path) -> None:
    # Protocol 2 writes bytes as _codecs.encode(text, "latin1"); any other use is refused.
    _write_folder(tmp_path, CIFAR10)
    raw = pickle.dumps({b"label_names": _OtherCodec()}, protocol=2)
    assert b"_codecs" in raw
    (tmp_path / "batches.meta").write_bytes(raw)
    with pytest.raises(DataError, match=r"batches\.meta is not the CIFAR-10 metadata: .*latin1"):
        load_cifar10(tmp_path)


# --------------------------------------------------------------------------- download


def _archive(layout: CifarLayout, tmp_path: Path) -> bytes:
    """A .tar.gz laid out as the official one: ``<folder>/`` and its files."""
    staging = tmp_path / "staging"
    _write_folder(staging / layout.folder, layout)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(staging / layout.folder, arcname=layout.folder)
    return buffer.getvalue()


def _serving(payload: bytes, opened: list[str]) -> download.UrlOpener:
    def opener(url: str) -> IO[bytes]:
        opened.append(url)
        return io.BytesIO(payload)

    return opener


def test_download_checks_the_md5_and_unpacks(tmp_path: Path) -> None:
    payload = _archive(CIFAR10, tmp_path)
    layout = dataclasses.replace(CIFAR10, md5=hashlib.md5(payload).hexdigest())
    opened: list[str] = []
    root = tmp_path / "data"
    folder = download_cifar(layout, root, opener=_serving(payload, opened))
    assert opened == [f"{CIFAR_URL}cifar-10-python.tar.gz"]
    assert opened[0] == "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    assert folder == root / "cifar-10-batches-py"
    assert sorted(p.name for p in root.iterdir()) == [
        "cifar-10-batches-py",
        "cifar-10-python.tar.gz",
    ]
    assert load_cifar10(root).train_x.shape == (50, 3, 32, 32)


def test_download_with_a_wrong_md5_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    payload = _archive(CIFAR100, tmp_path)  # not the official archive: its MD5 differs
    root = tmp_path / "data"
    with pytest.raises(DataError, match=rf"MD5 .*expected {CIFAR100.md5}") as info:
        download_cifar(CIFAR100, root, opener=_serving(payload, []))
    assert "could not download cifar-100-python.tar.gz" in str(info.value)
    assert list(root.iterdir()) == []


def test_load_with_download_fetches_into_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    payload = _archive(CIFAR100, tmp_path)
    opened: list[str] = []
    monkeypatch.setattr(download, "_urlopen", _serving(payload, opened))
    served = dataclasses.replace(CIFAR100, md5=hashlib.md5(payload).hexdigest())
    monkeypatch.setattr(cifar, "CIFAR100", served)
    root = tmp_path / "data"
    ds = load_cifar100(root, download=True)
    assert opened == ["https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"]
    assert ds.source == str(root / "cifar-100-python") and ds.n_classes == 100
    load_cifar100(root, download=True)  # already there: no second download
    assert len(opened) == 1


def test_an_archive_put_there_by_hand_is_unpacked_offline(tmp_path: Path) -> None:
    (tmp_path / CIFAR10.archive).write_bytes(_archive(CIFAR10, tmp_path / "build"))
    assert load_cifar10(tmp_path).test_x.shape == (20, 3, 32, 32)
    assert (tmp_path / CIFAR10.folder / "batches.meta").is_file()


def _tar_with(tmp_path: Path, member: tarfile.TarInfo, data: bytes = b"") -> Path:
    path = tmp_path / CIFAR10.archive
    with tarfile.open(path, "w:gz") as tar:
        member.size = len(data) if member.isfile() else 0
        tar.addfile(member, io.BytesIO(data) if member.isfile() else None)
    return path


@pytest.mark.parametrize(
    ("name", "kind", "message"),
    [
        ("../escaped", tarfile.REGTYPE, "a name outside the folder"),
        ("/etc/evil", tarfile.REGTYPE, "a name outside the folder"),
        ("cifar-10-batches-py/../../escaped", tarfile.REGTYPE, "a name outside the folder"),
        ("cifar-10-batches-py/link", tarfile.SYMTYPE, "a link or a special file"),
        ("cifar-10-batches-py/hard", tarfile.LNKTYPE, "a link or a special file"),
        ("cifar-10-batches-py/fifo", tarfile.FIFOTYPE, "a link or a special file"),
    ],
)
def test_unsafe_archive_members_are_refused(
    tmp_path: Path, name: str, kind: bytes, message: str
) -> None:
    member = tarfile.TarInfo(name)
    member.type = kind
    member.linkname = "/etc/passwd" if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
    root = tmp_path / "data"
    root.mkdir()
    _tar_with(root, member, b"x")
    with pytest.raises(DataError, match=message):
        load_cifar10(root)
    assert sorted(p.name for p in root.iterdir()) == [CIFAR10.archive]
    assert not (tmp_path / "escaped").exists()


def test_truncated_archive(tmp_path: Path) -> None:
    payload = _archive(CIFAR10, tmp_path / "build")
    (tmp_path / CIFAR10.archive).write_bytes(payload[: len(payload) // 2])
    with pytest.raises(DataError, match="not a complete tar archive"):
        load_cifar10(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["build", CIFAR10.archive]


# --------------------------------------------------------------------------- benchmarks


@pytest.mark.parametrize("setting", ["task", "domain", "class"])
def test_split_cifar10(cifar10_root: Path, setting: str) -> None:
    scenario = make_scenario("split-cifar10", setting, data_dir=cifar10_root)
    assert scenario.name == "split-cifar10" and len(scenario.tasks) == 5
    assert scenario.input_shape == (3, 32, 32)
    for t, task in enumerate(scenario.tasks):
        assert task.name == f"{2 * t}/{2 * t + 1}"
        expected = {0, 1} if setting != "class" else {2 * t, 2 * t + 1}
        assert set(_labels(task, "train").tolist()) == expected
        assert set(_labels(task, "test").tolist()) == expected
        assert task.n_classes == (10 if setting == "class" else 2)
        assert task.head == (t if setting == "task" else 0)


def test_split_cifar100_default_and_twenty_tasks(cifar100_root: Path) -> None:
    ten = make_scenario("split-cifar100", "task", data_dir=cifar100_root)
    assert [task.n_classes for task in ten.tasks] == [10] * 10
    assert ten.tasks[3].name == "/".join(str(c) for c in range(30, 40))
    twenty = make_scenario("split-cifar100", "class", data_dir=cifar100_root, n_tasks=20)
    assert len(twenty.tasks) == 20 and twenty.tasks[0].n_classes == 100
    assert set(_labels(twenty.tasks[19], "test").tolist()) == set(range(95, 100))
    local = make_scenario("split-cifar100", "task", data_dir=cifar100_root, n_tasks=20)
    assert set(_labels(local.tasks[19], "train").tolist()) == set(range(5))
    assert len(_labels(local.tasks[19], "train")) == 5 * TRAIN_PER_CLASS["cifar100"]


@pytest.mark.parametrize(
    ("benchmark", "n_tasks", "allowed"),
    [
        ("split-cifar100", 3, "1, 2, 4, 5, 10, 20, 25, 50"),
        ("split-cifar100", 100, "1, 2, 4, 5, 10, 20, 25, 50"),
        ("split-cifar10", 10, "1, 2, 5"),
        ("split-cifar10", 0, "1, 2, 5"),
    ],
)
def test_n_tasks_must_cut_the_classes_equally(benchmark: str, n_tasks: int, allowed: str) -> None:
    # Refused before any data is looked for: there is no data here at all.
    with pytest.raises(ConfigError, match=rf"{benchmark} cannot cut .* among {allowed}$"):
        make_scenario(benchmark, "task", n_tasks=n_tasks)
    with pytest.raises(ConfigError, match="cannot cut"):
        ExperimentSpec(benchmark=benchmark, n_tasks=n_tasks).check()


def test_cli_runs_split_cifar10_with_n_tasks(cifar10_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["--benchmark", "split-cifar10", "--n-tasks", "2", "--data-dir", str(cifar10_root)]
    tiny = ["--methods", "finetune", "--epochs", "1", "--hidden", "8", "--no-progress"]
    assert main(["run", *args, *tiny, "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["task_names"] == ["0/1/2/3/4", "5/6/7/8/9"]
    assert results["config"]["n_tasks"] == 2
    assert build_parser().parse_args(["run"]).n_tasks is None  # each benchmark's own default
    assert build_parser().parse_args(["run", "--n-tasks", "20"]).n_tasks == 20


def test_cli_rejects_a_non_dividing_n_tasks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["run", "--benchmark", "split-cifar10", "--n-tasks", "3", "--out", str(tmp_path / "o")]
    assert main(args) == 2
    assert "among 1, 2, 5" in capsys.readouterr().err
