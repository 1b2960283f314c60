"""The training loop beyond tensors on the CPU: DataLoader data, schedules, mixed precision, clipping,
devices (the accelerator tests skip where none is present)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pytest
import torch

from helpers import small_mlp, small_split_mnist
from memaware.data.datasets import Batches, LoaderOptions, Selection, TensorData, batches
from memaware.data.images import ImageDataset
from memaware.data.scenarios import Scenario, Task
from memaware.errors import ConfigError
from memaware.methods import MAS, Finetune
from memaware.methods.base import Batch
from memaware.models import build_model
from memaware.training import TrainConfig, run_method, training_step
from memaware.training.config import resolve_device
from memaware.training.precision import MixedPrecision

ACCELERATORS = [
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here"),
    ),
    pytest.param(
        "mps",
        marks=pytest.mark.skipif(
            not torch.backends.mps.is_available(), reason="no MPS device here"
        ),
    ),
]


def _on_disk(scenario: Scenario) -> Scenario:
    """The same stream with every split behind a Dataset that is not in memory as tensors."""

    def wrap(data: TensorData) -> Selection:
        return Selection(data, torch.arange(len(data)))

    tasks = tuple(
        dataclasses.replace(t, train=wrap(t.train), test=wrap(t.test))  # type: ignore[arg-type]
        for t in scenario.tasks
    )
    return dataclasses.replace(scenario, tasks=tasks)


def test_cosine_schedule() -> None:
    config = TrainConfig(epochs=4, lr=0.1, lr_schedule="cosine", first_task_lr=1.0)
    expected = [0.1 * 0.5 * (1 + math.cos(math.pi * e / 4)) for e in range(4)]
    assert [config.learning_rate(1, e) for e in range(4)] == pytest.approx(expected)
    assert config.learning_rate(0, 0) == 1.0  # the first task's own base rate


def test_loader_batches_repeat_and_cover_the_data(mnist: ImageDataset) -> None:
    data = TensorData(mnist.train_x[:100].float(), mnist.train_y[:100])
    wrapped = Selection(data, torch.arange(100))
    for workers in (0, 2):
        options = LoaderOptions(workers=workers)
        runs = [
            list(
                batches(
                    wrapped,
                    32,
                    shuffle=True,
                    generator=torch.Generator().manual_seed(3),
                    loader=options,
                )
            )
            for _ in range(2)
        ]
        for (x1, y1), (x2, y2) in zip(*runs, strict=True):
            assert torch.equal(x1, x2) and torch.equal(y1, y2)
        seen = torch.cat([y for _, y in runs[0]])
        assert sorted(seen.tolist()) == sorted(data.y.tolist())
    # one Batches object is one DataLoader: each pass is a new epoch of a new permutation
    passes = Batches(wrapped, 100, shuffle=True, generator=torch.Generator().manual_seed(0))
    first, second = (next(iter(passes))[1] for _ in range(2))
    assert not torch.equal(first, second)


def test_a_stream_read_through_a_dataloader_trains_and_repeats(mnist: ImageDataset) -> None:
    scenario = _on_disk(small_split_mnist(mnist, n_train=300, n_tasks=2, n_test=100))
    config = TrainConfig(epochs=1, batch_size=64)
    results = [
        run_method(MAS(strength=1.0), scenario, lambda: small_mlp(scenario), config)
        for _ in range(2)
    ]
    np.testing.assert_array_equal(results[0].accuracy.values, results[1].accuracy.values)
    assert results[0].accuracy.values[1, 0] > 0.8
    two_workers = run_method(
        MAS(strength=1.0),
        scenario,
        lambda: small_mlp(scenario),
        dataclasses.replace(config, workers=2),
    )
    np.testing.assert_array_equal(two_workers.accuracy.values, results[0].accuracy.values)


def test_importance_is_the_same_from_a_dataloader(mnist: ImageDataset) -> None:
    scenario = small_split_mnist(mnist, n_train=200, n_tasks=1)
    task = scenario.tasks[0]
    model = small_mlp(scenario)
    model.add_head(task.head, task.n_classes)
    wrapped = _on_disk(scenario).tasks[0]
    in_memory = MAS().importance(model, task, [task])
    through_loader = MAS().importance(model, wrapped, [wrapped])
    for name, value in in_memory.items():
        torch.testing.assert_close(through_loader[name], value)


def _step_grads(
    precision: MixedPrecision | None, grad_clip: float | None = None
) -> dict[str, torch.Tensor]:
    """The gradients a MAS training step leaves in .grad (task loss + penalty), for one batch."""
    torch.manual_seed(0)
    model = build_model("mlp", (20,), (16,))
    model.add_head(0, 3)
    x = torch.randn(32, 20)
    method = MAS(strength=10.0)
    method.after_task(model, _task(x), [_task(x)])
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)  # away from the anchor, so that the penalty has a gradient
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    batch = Batch(x, torch.randint(0, 3, (32,), generator=torch.Generator().manual_seed(1)), 0)
    training_step(model, method, optimizer, batch, precision=precision, grad_clip=grad_clip)
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _task(x: torch.Tensor) -> Task:
    y = torch.zeros(len(x), dtype=torch.int64)
    return Task.from_tensors(0, "t", 0, 3, x, y, x, y)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_gradients_are_unscaled_with_the_penalty(amp: str) -> None:
    reference = _step_grads(None)
    mixed = _step_grads(MixedPrecision(amp, torch.device("cpu")))  # type: ignore[arg-type]
    assert mixed.keys() == reference.keys()
    for name, grad in reference.items():
        # half-precision forward: close to the float32 gradient, not 2^16 times it
        relative = (mixed[name] - grad).norm() / grad.norm()
        assert relative < 5e-2, (name, float(relative))


def test_gradient_clipping_bounds_the_whole_gradient() -> None:
    clipped = _step_grads(None, grad_clip=1e-3)
    norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in clipped.values()]))
    assert float(norm) == pytest.approx(1e-3, rel=1e-4)


def test_mixed_precision_run_keeps_past_heads_bit_identical(mnist: ImageDataset) -> None:
    scenario = small_split_mnist(mnist, n_train=1000, n_tasks=2, n_test=100)
    # fp16's loss scale starts at 2^16 and the first steps overflow and are skipped
    config = TrainConfig(epochs=2, amp="fp16")
    heads: list[torch.Tensor] = []
    real_after_task = Finetune.after_task

    def record(self: Finetune, model: Any, task: Task, seen: Any) -> None:
        heads.append(model.heads["0"].weight.detach().clone())
        real_after_task(self, model, task, seen)

    method = Finetune()
    method.after_task = record.__get__(method)  # type: ignore[method-assign]
    result = run_method(method, scenario, lambda: small_mlp(scenario), config)
    assert torch.equal(heads[0], heads[1])
    assert result.accuracy.values[0, 0] > 0.8


def test_device_names() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(ConfigError, match="unknown device 'gpu'"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            TrainConfig(device="cuda")


@pytest.mark.parametrize("device", ACCELERATORS)
@pytest.mark.parametrize("amp", ["none", "bf16", "fp16"])
def test_a_run_on_an_accelerator(mnist: ImageDataset, device: str, amp: str) -> None:
    scenario = small_split_mnist(mnist, n_train=300, n_tasks=2, n_test=100)
    config = TrainConfig(epochs=1, device=device, amp=amp)  # type: ignore[arg-type]
    result = run_method(MAS(strength=1.0), scenario, lambda: small_mlp(scenario), config)
    assert result.accuracy.values[1, 0] > 0.8
    on_disk = run_method(
        MAS(strength=1.0),
        _on_disk(scenario),
        lambda: small_mlp(scenario),
        dataclasses.replace(config, workers=2),
    )
    assert on_disk.accuracy.values[1, 0] > 0.8


@pytest.mark.parametrize("device", ACCELERATORS)
def test_importance_on_an_accelerator_matches_the_cpu(mnist: ImageDataset, device: str) -> None:
    scenario = small_split_mnist(mnist, n_train=200, n_tasks=1)
    task = scenario.tasks[0]
    model = small_mlp(scenario)
    model.add_head(task.head, task.n_classes)
    on_cpu = MAS().importance(model, task, [task])
    moved = model.to(device)
    on_device = MAS().importance(moved, task.to(device), [task.to(device)])
    for name, value in on_cpu.items():
        assert on_device[name].device.type == device
        torch.testing.assert_close(on_device[name].cpu(), value, rtol=1e-4, atol=1e-6)
