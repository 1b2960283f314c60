"""Benchmark of a whole MAS run against a bare PyTorch script doing the same training.

Both sides learn Split-MNIST (task-incremental, Hsu et al.'s protocol: MLP 784-400-400, one
2-way head per task, Adam 1e-3 kept across tasks, batch 128) from the same tensors, the same
initial weights and the same batch order, and evaluate every task seen after each task:

* **memaware**: :func:`~memaware.training.run_method` with :class:`~memaware.methods.MAS`
  (exact per-sample importance, the default);
* **bare script**: :func:`bare_mas_run`, the loop a user would write by hand, with the authors'
  batched importance Ω = Σ_batches |∂ Σ_k ‖F(x_k)‖²/∂θ| / N and the penalty as a plain loss term.

The standing goal is ``memaware_over_bare`` <= 1.2. Runs alternate between the two sides and the
ratio is the median of the per-pair ratios (see :func:`~memaware.bench.timing.paired`). With
``--device`` both sides train and evaluate there, the data moved there once before the timing;
each run ends by reading its accuracies to the host, which waits for the device's queued work.
Run: ``memaware bench training [--json] [--device D] [--epochs E] [--repeats R]``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from memaware.bench.timing import paired, print_figures
from memaware.data.mnist import load_mnist
from memaware.data.scenarios import Scenario, split_scenario
from memaware.methods.mas import MAS, MASOptions
from memaware.models import build_model
from memaware.training import TrainConfig, run_method
from memaware.training.config import resolve_device

IMPORTANCE_BATCH = MASOptions.importance_batch_size  # the authors' batch size for Ω


def bare_mas_run(
    scenario: Scenario,
    epochs: int,
    strength: float,
    seed: int = 0,
    lr: float = 1e-3,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """MAS written as a plain PyTorch script; returns the accuracy matrix R[i, j] (NaN for j > i).

    Same model construction order, batch order and evaluation as :func:`run_method`, so that
    the two sides do the same work; only the importance differs (batched here, exact there).
    The model is built on the CPU and moved to ``device``, where the scenario's data should be.
    """
    torch.manual_seed(seed)
    sizes = (scenario.tasks[0].train_x[0].numel(), 400, 400)
    backbone = nn.Sequential(
        nn.Flatten(),
        nn.Linear(sizes[0], sizes[1]),
        nn.ReLU(),
        nn.Linear(sizes[1], sizes[2]),
        nn.ReLU(),
    ).to(device)
    heads = nn.ModuleList()
    generator = torch.Generator().manual_seed(seed)
    optimizer: torch.optim.Optimizer | None = None
    omega: dict[int, torch.Tensor] = {}  # keyed by id(parameter)
    anchor: dict[int, torch.Tensor] = {}
    n = len(scenario.tasks)
    accuracy = np.full((n, n), np.nan)
    for i, task in enumerate(scenario.tasks):
        head = nn.Linear(sizes[-1], task.n_classes).to(device)
        heads.append(head)
        if optimizer is None:
            optimizer = torch.optim.Adam([*backbone.parameters(), *head.parameters()], lr=lr)
        else:
            optimizer.add_param_group({"params": list(head.parameters())})
        params = [*backbone.parameters(), *heads.parameters()]
        backbone.train()
        for _ in range(epochs):
            order = torch.randperm(len(task.train_y), generator=generator).to(device)
            for index in torch.split(order, 128):
                loss = F.cross_entropy(head(backbone(task.train_x[index])), task.train_y[index])
                if omega:
                    # Past heads get no gradient (so Adam leaves them as they are), as in
                    # memaware's loop: only the backbone is anchored while a new head trains.
                    loss = loss + strength * sum(
                        (omega[id(p)] * (p - anchor[id(p)]).square()).sum()
                        for p in backbone.parameters()
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]
                optimizer.step()
        # Batched importance on the task's training inputs, F = the logits of every head so far.
        backbone.eval()
        total = [torch.zeros_like(p) for p in params]
        for x in torch.split(task.train_x, IMPORTANCE_BATCH):
            features = backbone(x)
            output = torch.cat([h(features) for h in heads], dim=-1)
            grads = torch.autograd.grad(output.square().sum(), params)
            for t, g in zip(total, grads, strict=True):
                t.add_(g.abs())
        for p, t in zip(params, total, strict=True):
            omega[id(p)] = omega.get(id(p), 0) + t / len(task.train_y)
            anchor[id(p)] = p.detach().clone()
        with torch.no_grad():
            for j, old in enumerate(scenario.tasks[: i + 1]):
                correct = 0
                for x, y in zip(
                    torch.split(old.test_x, 2048), torch.split(old.test_y, 2048), strict=True
                ):
                    correct += int((heads[j](backbone(x)).argmax(-1) == y).sum())
                accuracy[i, j] = correct / len(old.test_y)
    return accuracy


def memaware_mas_run(
    scenario: Scenario,
    epochs: int,
    strength: float,
    seed: int = 0,
    granularity: str = "sample",
    device: str = "cpu",
) -> np.ndarray:
    """The same run through :func:`run_method` and :class:`MAS`; returns the accuracy matrix."""
    method = MAS(strength=strength, granularity=granularity)
    result = run_method(
        method,
        scenario,
        lambda: build_model("mlp", scenario.input_shape, (400, 400)),
        TrainConfig(epochs=epochs, seed=seed, device=device),
    )
    return np.asarray(result.accuracy.values)


def run(
    epochs: int = 4, repeats: int = 3, strength: float = 0.1, device: str = "cpu"
) -> dict[str, Any]:
    """Both sides on the full Split-MNIST (5 tasks); seconds, ratio and both average accuracies."""
    where = resolve_device(device)
    scenario = split_scenario(load_mnist(), "task").to(where)
    last: dict[str, np.ndarray] = {}

    def keep(side: str, fn: Callable[[], np.ndarray]) -> Callable[[], None]:
        return lambda: last.__setitem__(side, fn())

    ours_s, bare_s, ratio = paired(
        keep("memaware", partial(memaware_mas_run, scenario, epochs, strength, device=str(where))),
        keep("bare", partial(bare_mas_run, scenario, epochs, strength, device=where)),
        repeats,
    )
    return {
        "device": str(where),
        "epochs": epochs,
        "repeats": repeats,
        "threads": torch.get_num_threads(),
        "memaware_s": ours_s,
        "bare_s": bare_s,
        "memaware_over_bare": ratio,
        "memaware_average_accuracy": float(np.nanmean(last["memaware"][-1])),
        "bare_average_accuracy": float(np.nanmean(last["bare"][-1])),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="memaware bench training", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N, mps or auto")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per task (default 4)")
    parser.add_argument("--repeats", type=int, default=3, help="timed pairs (median)")
    parser.add_argument("--strength", type=float, default=0.1, help="λ (the Split-MNIST preset)")
    args = parser.parse_args(argv)
    result = run(args.epochs, args.repeats, args.strength, args.device)
    print_figures(result, as_json=args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
