"""MAS added to an unchanged LightningModule: two Split-MNIST tasks, one shared 2-way head.

Task 1 tells 2 from 3, task 2 tells 4 from 5, both with labels 0/1 (domain-incremental): one
``trainer.fit`` per task, the same ``MASCallback`` in both. Trained once without the callback and
once with it, to show what it keeps of task 1.

Run: python examples/lightning_mas.py   (a few seconds on a laptop CPU; needs memaware[lightning])
"""

from __future__ import annotations

import logging

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from memaware.data.mnist import load_mnist
from memaware.data.scenarios import split_scenario
from memaware.integrations.lightning import MASCallback


class Classifier(pl.LightningModule):
    """A plain LightningModule: nothing in it knows about MAS."""

    def __init__(self, lr: float = 0.05) -> None:
        super().__init__()
        self.lr = lr
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # type: ignore[no-any-return]

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], index: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def main(n_train: int = 1000, epochs: int = 2, strength: float = 1.0) -> dict[str, list[float]]:
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    tasks = split_scenario(load_mnist(), "domain").tasks[1:3]  # {2, 3}, then {4, 5}
    results = {}
    for name in ("no callback", "MAS"):
        torch.manual_seed(0)
        model = Classifier()
        # Ω at the end of each fit, on that fit's training inputs (labels ignored); from the
        # second fit on, .grad += 2λΩ(θ − θ*) before every optimizer step
        callbacks = [MASCallback(strength=strength)] if name == "MAS" else []
        for task in tasks:
            data = TensorDataset(task.train_x[:n_train], task.train_y[:n_train])
            trainer = pl.Trainer(
                max_epochs=epochs,
                callbacks=callbacks,
                accelerator="cpu",
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
            )
            trainer.fit(model, DataLoader(data, batch_size=64, shuffle=True))
        with torch.no_grad():
            results[name] = [
                float((model(task.test_x).argmax(1) == task.test_y).float().mean())
                for task in tasks
            ]
    return results


if __name__ == "__main__":
    for name, accuracies in main().items():
        print(f"{name:>11}: test accuracy on task 1, task 2 =", [f"{a:.3f}" for a in accuracies])
