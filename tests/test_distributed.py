"""torch.distributed: importance on 2 gloo processes equals one process; torchrun runs of the CLI.

The importance checks run in two processes started by ``torch.multiprocessing.spawn`` over real
MNIST inputs; the command-line checks start ``torchrun --nproc_per_node=2 -m memaware`` on a
small IDX copy of MNIST. The relative error of an estimate is max |Ω_2 − Ω_1| / max |Ω_1| over
each tensor, the largest over the tensors.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from helpers import ROOT, free_port, kill_after_first_checkpoint, torchrun, torchrun_launch
from memaware.cli.main import main
from memaware.data.idx import write_idx
from memaware.data.images import ImageDataset
from memaware.data.scenarios import Task
from memaware.distributed import all_reduce_importance, shard_indices
from memaware.distributed.ddp import distributed_step_loss
from memaware.errors import ConfigError
from memaware.importance import Importance, fisher, local_mas, mas
from memaware.importance.mas import batches
from memaware.methods import EBLL, Finetune, LwF
from memaware.methods.base import Batch, Method
from memaware.methods.lwf import freeze
from memaware.models import build_model
from memaware.models.multihead import MultiHeadClassifier
from memaware.training.loop import step_loss

BATCH = 64


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))


def _estimates(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, Importance]:
    """Every estimate the check compares, computed the same way on one process and on two.

    300 inputs in batches of 64 are 5 batches, 4 full and one of 44 (rank 0 measures 3, rank 1
    2); 40 inputs are one batch (rank 1 measures none).
    """
    rows = shard_indices(len(x), BATCH)
    return {
        "mas-sample": mas(model, batches(x, BATCH)),
        "mas-batch": mas(model, batches(x, BATCH), granularity="batch"),
        "mas-max-samples": mas(model, batches(x, BATCH), max_samples=150),
        "mas-one-batch": mas(model, batches(x[:40], BATCH)),
        "mas-reduce": mas(model, batches(x[rows], BATCH), distributed="reduce"),
        "fisher-empirical": fisher(model, zip(batches(x, BATCH), batches(y, BATCH), strict=True)),
        "l-mas": local_mas(model, batches(x, BATCH)),
    }


#: (rows of the batch, the heads answering them, the heads trained, the method): one head on an
#: odd batch (ranks get 23 and 22 rows), joint training over two heads, a batch of one row (rank
#: 0 none), LwF distilling head 0 while head 1 trains, EBLL's code loss on top of it
GRADIENT_CASES: dict[str, tuple[int, str, tuple[int, ...], str]] = {
    "one-head": (45, "1", (1,), "finetune"),
    "two-heads": (45, "mixed", (0, 1), "finetune"),
    "one-row": (1, "1", (1,), "finetune"),
    "lwf": (45, "1", (1,), "lwf"),
    "ebll": (45, "1", (1,), "ebll"),
}


def _classifier() -> MultiHeadClassifier:
    torch.manual_seed(0)
    model = build_model("mlp", (1, 28, 28), hidden=(16,))
    model.add_head(0, 10)
    model.add_head(1, 10)
    return model


def _method(name: str, model: MultiHeadClassifier, x: torch.Tensor, y: torch.Tensor) -> Method:
    """``name`` as it is while learning head 1 after head 0: LwF's (and EBLL's) teacher is the
    model before a seeded nudge of every weight (a student equal to its teacher has a zero
    distillation gradient); EBLL has head 0's autoencoder."""
    method: Method = {"finetune": Finetune, "lwf": LwF, "ebll": EBLL}[name]()
    if isinstance(method, EBLL):  # head 0's autoencoder (broadcast from rank 0 under torchrun)
        method.after_task(model, Task.from_tensors(0, "t0", 0, 10, x, y, x, y), [])
    if isinstance(method, LwF):
        method.teacher, method.old_heads = freeze(model), [0]
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=generator) * 0.1)
    return method


def _gradients(x: torch.Tensor, y: torch.Tensor, case: str) -> dict[str, torch.Tensor | None]:
    """The training loop's step-loss gradient of a batch (under DDP on several processes)."""
    rows, heads_of, trained, name = GRADIENT_CASES[case]
    model = _classifier()
    method = _method(name, model, x, y)
    heads: torch.Tensor | int = int(heads_of) if heads_of.isdigit() else torch.arange(rows) % 2
    loss_fn = distributed_step_loss(model, set(trained), step_loss(method), method.loss_heads())
    loss_fn(model, Batch(x[:rows], y[:rows], heads)).backward()  # type: ignore[no-untyped-call]
    return {name: p.grad for name, p in model.named_parameters()}


def _worker(
    rank: int, port: int, x: torch.Tensor, y: torch.Tensor, out: str
) -> None:  # pragma: no cover - runs in the spawned processes
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        found: dict[str, Any] = {
            name: (dict(e.sums), e.counts, e.n_samples)
            for name, e in _estimates(_model(), x, y).items()
        }
        found["rows"] = shard_indices(len(x), BATCH)
        found["gradients"] = {case: _gradients(x, y, case) for case in GRADIENT_CASES}
        kind = {"method": "mas"} if rank == 0 else {"method": "fisher"}
        try:
            all_reduce_importance(Importance({"w": torch.ones(2)}, {"w": 1}, 1, kind))
        except ConfigError as exc:
            found["kind-error"] = str(exc)
        torch.save(found, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _relative_error(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    assert set(a) == set(b)
    return max(float((a[k] - b[k]).abs().max() / b[k].abs().max()) for k in a)


@pytest.fixture(scope="module")
def two_ranks(mnist: ImageDataset, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """What each of two gloo processes computed, and the one-process reference."""
    x = mnist.train_x[:300].reshape(300, -1).float() / 255.0
    y = mnist.train_y[:300]
    out = tmp_path_factory.mktemp("ranks")
    mp.spawn(_worker, args=(free_port(), x, y, str(out)), nprocs=2, join=True)
    ranks = [torch.load(out / f"rank{r}.pt") for r in range(2)]
    return {"ranks": ranks, "one": _estimates(_model(), x, y)}


@pytest.mark.parametrize(
    "name",
    [
        "mas-sample",
        "mas-batch",
        "mas-max-samples",
        "mas-one-batch",
        "mas-reduce",
        "fisher-empirical",
        "l-mas",
    ],
)
def test_importance_on_two_processes_is_the_one_process_importance(
    two_ranks: dict[str, Any], name: str
) -> None:
    one = two_ranks["one"][name]
    for sums, counts, n_samples in (r[name] for r in two_ranks["ranks"]):
        assert counts == one.counts and n_samples == one.n_samples
        assert _relative_error(sums, one.sums) <= 1e-6
        assert all(sums[k].dtype == one.sums[k].dtype for k in sums)


@pytest.mark.parametrize("case", list(GRADIENT_CASES))
def test_ddp_task_loss_gradient_is_the_one_process_gradient(
    two_ranks: dict[str, Any], mnist: ImageDataset, case: str
) -> None:
    x = mnist.train_x[:300].reshape(300, -1).float() / 255.0
    one = _gradients(x, mnist.train_y[:300], case)
    for r in two_ranks["ranks"]:
        two = r["gradients"][case]
        assert {k for k, g in two.items() if g is None} == {k for k, g in one.items() if g is None}
        present = {k: g for k, g in one.items() if g is not None}
        assert _relative_error({k: two[k] for k in present}, present) <= 1e-6


def test_shards_are_disjoint_and_cover_every_row_once(two_ranks: dict[str, Any]) -> None:
    rows = [r["rows"] for r in two_ranks["ranks"]]
    assert [len(r) for r in rows] == [2 * BATCH + 44, 2 * BATCH]  # batches 0, 2, 4 | 1, 3
    assert torch.equal(torch.sort(torch.cat(rows)).values, torch.arange(300))


def test_estimates_of_different_kinds_are_not_reduced(two_ranks: dict[str, Any]) -> None:
    for r in two_ranks["ranks"]:
        assert "cannot all-reduce importance: rank 1 computed kind" in r["kind-error"]


def test_without_a_process_group_nothing_is_reduced() -> None:
    estimate = Importance({"w": torch.ones(2)}, {"w": 3}, 3, {"method": "mas"})
    assert all_reduce_importance(estimate) is estimate
    assert torch.equal(shard_indices(5, 2), torch.arange(5))


# --- the command line under torchrun ----------------------------------------------------------


@pytest.fixture(scope="module")
def small_mnist(mnist: ImageDataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 1500 training and 3000 test images of MNIST as the four IDX files."""
    folder = tmp_path_factory.mktemp("mnist")
    arrays = {
        "train-images-idx3-ubyte": mnist.train_x[:1500].numpy(),
        "train-labels-idx1-ubyte": mnist.train_y[:1500].numpy().astype(np.uint8),
        "t10k-images-idx3-ubyte": mnist.test_x[:3000].numpy(),
        "t10k-labels-idx1-ubyte": mnist.test_y[:3000].numpy().astype(np.uint8),
    }
    for name, array in arrays.items():
        write_idx(folder / name, array)
    return folder


def _checkpoint(folder: Path, data_dir: Path) -> Path:
    """The checkpoints of a short MAS run (``memaware run``): its folder of them."""
    args = ["run", "--methods", "mas", "--epochs", "1", "--hidden", "32", "--data-dir"]
    assert main([*args, str(data_dir), "--no-progress", "--out", str(folder)]) == 0
    return folder / "checkpoints" / "mas-seed0"


def test_importance_command_under_torchrun_writes_the_one_process_omega(
    small_mnist: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    saved = _checkpoint(tmp_path / "run", small_mnist)
    args = ["importance", "--checkpoint", str(saved), "--task", "2", "--data", "both"]
    args += ["--batch-size", "100"]  # 300 + 600 inputs: 9 batches, 5 on rank 0 and 4 on rank 1
    assert main([*args, "--out", str(tmp_path / "one.safetensors")]) == 0
    done = torchrun([*args, "--out", str(tmp_path / "two.safetensors")], tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("written to") == 1  # rank 0 alone reports (and writes)
    one, two = (Importance.load(tmp_path / f"{n}.safetensors") for n in ("one", "two"))
    assert one.counts == two.counts and one.n_samples == two.n_samples > 0
    assert one.meta == two.meta
    assert _relative_error(two.sums, one.sums) <= 1e-6
    assert "heads.2.weight" in one and "heads.0.weight" in one


def test_importance_command_refuses_what_is_not_a_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "something-else"}))
    out = str(tmp_path / "o.safetensors")
    assert main(["importance", "--checkpoint", str(tmp_path), "--task", "0", "--out", out]) == 2
    assert "is not a memaware checkpoint" in capsys.readouterr().err


def test_run_under_torchrun_gives_the_one_process_accuracy(
    small_mnist: Path, tmp_path: Path
) -> None:
    args = ["run", "--methods", "finetune,mas,si,lwf,ebll", "--epochs", "1", "--hidden", "32"]
    args += ["--batch-size", "50", "--data-dir", str(small_mnist), "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    done = torchrun([*args, "--out", str(tmp_path / "two")], tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("report written to") == 1
    assert not (tmp_path / "runs").exists()
    one, two = (json.loads((tmp_path / n / "results.json").read_text()) for n in ("one", "two"))
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(
        p.name for p in (tmp_path / "one").iterdir()
    )
    for method in ("finetune", "mas", "si", "lwf", "ebll"):
        a, b = (np.array(r["methods"][method]["accuracy_matrix"], float) for r in (one, two))
        assert np.nanmax(np.abs(a - b)) <= 0.005, (method, a, b)


def test_only_rank_0_writes(
    small_mnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import memaware.checkpoint.run as checkpoint_run
    import memaware.cli.main as cli

    monkeypatch.setattr(cli, "is_main_process", lambda: False)
    monkeypatch.setattr(checkpoint_run, "is_main_process", lambda: False)  # nor checkpoints
    out = tmp_path / "out"
    args = ["run", "--methods", "finetune", "--epochs", "1", "--hidden", "8"]
    assert main([*args, "--data-dir", str(small_mnist), "--no-progress", "--out", str(out)]) == 0
    assert not out.exists()


def test_the_ddp_own_loop_example_on_two_processes_is_the_one_process_run(tmp_path: Path) -> None:
    path = ROOT / "examples" / "ddp_own_loop.py"
    spec = importlib.util.spec_from_file_location("ddp_own_loop", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    one = module.main(n_train=1000, out=tmp_path / "one.safetensors")
    command, env = torchrun_launch()
    done = subprocess.run(
        [*command, str(path), "--n-train", "1000", "--out", str(tmp_path / "two.safetensors")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1  # rank 0 alone prints
    two = json.loads(lines[0])["test_accuracy"]
    assert np.allclose(one, two, atol=0.005) and min(one) > 0.9
    a, b = (Importance.load(tmp_path / f"{n}.safetensors") for n in ("one", "two"))
    assert a.counts == b.counts and _relative_error(b.sums, a.sums) <= 1e-6


def test_the_device_of_a_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    from memaware.distributed.process_group import launched_by_torchrun, rank_device

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not launched_by_torchrun()
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert rank_device("cuda") == "cuda:1" and rank_device("cpu") == "cpu"
    with pytest.raises(ConfigError, match="every process on one GPU"):
        rank_device("cuda:0")


def test_a_run_killed_under_torchrun_resumes_undertorchrun(
    small_mnist: Path, tmp_path: Path
) -> None:
    """SIGKILL to every rank after the first checkpoint, ``--resume`` on two processes again:
    the accuracy matrix of an uninterrupted one-process run (rank 0 alone wrote checkpoints)."""
    args = ["run", "--methods", "mas", "--epochs", "20", "--hidden", "16", "--batch-size", "50"]
    args += ["--data-dir", str(small_mnist), "--no-progress"]
    one, killed = tmp_path / "one", tmp_path / "killed"
    assert main([*args, "--out", str(one)]) == 0
    command, env = torchrun_launch()
    command += ["-m", "memaware", *args, "--checkpoint-every", "25", "--out", str(killed)]
    proc = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    alive = kill_after_first_checkpoint(
        proc, killed / "checkpoints" / "mas-seed0", 0.2, group=True
    )  # torchrun and both ranks
    assert alive, "the run ended before it could be killed: give it more work"
    assert not (killed / "results.json").exists()
    done = torchrun(["run", "--resume", str(killed), "--no-progress"], tmp_path)
    assert done.returncode == 0, done.stderr
    a, b = (
        np.array(json.loads((d / "results.json").read_text())["methods"]["mas"]["accuracy_matrix"])
        for d in (one, killed)
    )
    assert np.nanmax(np.abs(a.astype(float) - b.astype(float))) <= 0.005
