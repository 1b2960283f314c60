"""MAS inside a plain PyTorch training loop: two Split-MNIST tasks, one shared MLP, one head each.

Run: python examples/own_training_loop.py   (about ten seconds on a laptop CPU)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from memaware.data.mnist import load_mnist
from memaware.data.scenarios import split_scenario
from memaware.importance import accumulate, batches, mas
from memaware.penalties import QuadraticPenalty


def main(n_train: int = 4000, epochs: int = 2, strength: float = 1.0) -> list[float]:
    torch.manual_seed(0)
    tasks = split_scenario(load_mnist(), "task").tasks[:2]
    body = nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU())
    heads = nn.ModuleList([nn.Linear(256, 2) for _ in tasks])
    model = nn.ModuleDict({"body": body, "heads": heads})
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    omega, penalty = None, None
    for t, task in enumerate(tasks):
        x, y = task.train_x[:n_train], task.train_y[:n_train]
        for _ in range(epochs):
            for index in torch.randperm(len(y)).split(128):
                loss = F.cross_entropy(heads[t](body(x[index])), y[index])
                optimizer.zero_grad()
                loss.backward()
                if penalty is not None:
                    penalty.add_to_grad()  # .grad += 2λΩ(θ − θ*), the gradient of λ Σ Ω (θ − θ*)²
                optimizer.step()
        # Ω from unlabelled inputs of the task just learned, F = the logits of this task's head
        new = mas(model, batches(x, 256), outputs=lambda m, inputs, t=t: heads[t](body(inputs)))
        omega = accumulate(omega, new, rule="sum")  # the authors' Ω ← Ω + Ω_new
        penalty = QuadraticPenalty(model, omega, strength=strength)  # θ* = the parameters now

    with torch.no_grad():
        return [
            float((heads[t](body(task.test_x)).argmax(1) == task.test_y).float().mean())
            for t, task in enumerate(tasks)
        ]


if __name__ == "__main__":
    print("test accuracy per task after both tasks:", main())
