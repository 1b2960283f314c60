"""MAS as a method: exact importance on a multi-head model, heads, accumulation, anchors."""

from __future__ import annotations

import dataclasses

import torch

from memaware.data.datasets import TensorData
from memaware.data.images import ImageDataset
from memaware.data.scenarios import Task, split_scenario
from memaware.importance import batches, mas
from memaware.methods import MAS, MASOptions
from memaware.models import build_model


def _small_tasks(mnist: ImageDataset, n: int = 300) -> list[Task]:
    scenario = split_scenario(mnist, "task")
    return [
        dataclasses.replace(t, train=TensorData(t.train_x[:n], t.train_y[:n]))
        for t in scenario.tasks[:3]
    ]


def _loop_importance(
    model: torch.nn.Module, x: torch.Tensor, heads: list[int]
) -> dict[str, torch.Tensor]:
    """The paper's definition, one sample at a time."""
    total = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for k in range(len(x)):
        model.zero_grad()
        model.forward_heads(x[k : k + 1], heads).square().sum().backward()  # type: ignore[operator]
        for n, p in model.named_parameters():
            if p.grad is not None:
                total[n] += p.grad.abs()
    return {n: t / len(x) for n, t in total.items()}


def test_exact_importance_matches_loop_on_real_multihead(mnist: ImageDataset) -> None:
    torch.manual_seed(0)
    model = build_model("mlp", (28, 28), hidden=(64, 32))
    for head in range(3):
        model.add_head(head, 2)
    x = mnist.train_x[:96].float() / 255
    omega = mas(model, batches(x, 40), outputs=lambda m, inp: m.forward_heads(inp, [0, 2]))
    reference = _loop_importance(model, x, [0, 2])
    assert set(omega) == {n for n in reference if not n.startswith("heads.1")}
    for name in omega:
        torch.testing.assert_close(omega[name], reference[name], rtol=1e-5, atol=1e-7)
    assert omega.n_samples == 96


def test_new_head_gets_no_importance_and_old_heads_keep_theirs(mnist: ImageDataset) -> None:
    torch.manual_seed(0)
    tasks = _small_tasks(mnist)
    model = build_model("mlp", (28, 28), hidden=(32,))
    method = MAS(MASOptions(strength=1.0))
    model.add_head(0, 2)
    method.after_task(model, tasks[0], tasks[:1])
    assert method.omega is not None
    first = {n: t.clone() for n, t in method.omega.items()}
    assert "heads.0.weight" in first and float(first["heads.0.weight"].sum()) > 0
    model.add_head(1, 2)
    assert "heads.1.weight" not in method.omega  # the new head is free while task 1 is learned
    assert method.penalty is not None and "heads.1.weight" not in method.penalty.names
    method.after_task(model, tasks[1], tasks[:2])
    # sum accumulation: old entries only grow, the old head keeps (at least) its importance
    for name, value in first.items():
        assert torch.all(method.omega[name] >= value - 1e-7)
    assert float(method.omega["heads.1.weight"].sum()) > 0


def test_sum_accumulation_and_anchor_reset(mnist: ImageDataset) -> None:
    torch.manual_seed(0)
    tasks = _small_tasks(mnist)
    model = build_model("mlp", (28, 28), hidden=(32,))
    model.add_head(0, 2)
    model.add_head(1, 2)
    method = MAS(MASOptions(heads="current"))
    method.after_task(model, tasks[0], tasks[:1])
    assert method.omega is not None
    omega0 = {n: t.clone() for n, t in method.omega.items()}
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(0.01)
    method.after_task(model, tasks[1], tasks[:2])
    new = mas(model, batches(tasks[1].train_x, 200), outputs=lambda m, x: m.forward_heads(x, [1]))
    for name in new:
        torch.testing.assert_close(method.omega[name], omega0.get(name, 0) + new[name])
    assert method.penalty is not None
    # θ* is the parameter value when the importance was computed
    for name, anchor in method.penalty.anchors.items():
        torch.testing.assert_close(anchor, dict(model.named_parameters())[name].detach())
    assert float(method.penalty().detach()) == 0.0


def test_batch_granularity_option(mnist: ImageDataset) -> None:
    torch.manual_seed(0)
    tasks = _small_tasks(mnist)
    model = build_model("mlp", (28, 28), hidden=(32,))
    model.add_head(0, 2)
    exact, batched = (
        MAS(MASOptions()),
        MAS(MASOptions(granularity="batch", importance_batch_size=100)),
    )
    exact.after_task(model, tasks[0], tasks[:1])
    batched.after_task(model, tasks[0], tasks[:1])
    assert exact.omega is not None and batched.omega is not None
    for name in exact.omega:  # triangle inequality: |Σ g| <= Σ |g|
        assert torch.all(batched.omega[name] <= exact.omega[name] + 1e-6)
        assert float(batched.omega[name].sum()) < float(exact.omega[name].sum())
