"""A deployed model's traffic as MAS's importance: serve, track, save, train the next task with it.

1. learn Split-MNIST's first task (digits 0/1) with memaware's training step;
2. deploy the model: serve unlabelled test images in requests of varying size under
   ``torch.inference_mode``, with an ImportanceTracker counting a tenth of them and saving its
   importance to a file (atomically, every 200 counted samples and when it detaches);
3. learn the second task (digits 2/3) with MAS anchored by that file's Ω:
   ``MAS(importance_source="file", importance_file=path)``; the CLI's equivalent is
   ``--option mas.importance_source=file --option mas.importance_file=PATH``.

Run: python examples/deploy_tracker.py   (about ten seconds on a laptop CPU)
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from memaware.data.mnist import load_mnist
from memaware.data.scenarios import split_scenario
from memaware.deploy import ImportanceTracker
from memaware.importance import Importance
from memaware.methods import MAS, Finetune, Method
from memaware.methods.base import Batch
from memaware.models import MultiHeadClassifier, build_model
from memaware.training import evaluate, training_step


def learn(
    model: MultiHeadClassifier, method: Method, x: torch.Tensor, y: torch.Tensor, head: int
) -> None:
    """A few epochs of Adam on one task, through the method's hooks (its penalty)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(2):
        for index in torch.randperm(len(y)).split(128):
            training_step(model, method, optimizer, Batch(x[index], y[index], head))


def main(n_train: int = 4000, fraction: float = 0.1, folder: Path | None = None) -> list[float]:
    torch.manual_seed(0)
    tasks = split_scenario(load_mnist(), "task").tasks[:2]
    model = build_model("mlp", (28, 28), (256,))
    model.add_head(0, 2)
    first = tasks[0]
    learn(model, Finetune(), first.train_x[:n_train], first.train_y[:n_train], first.head)

    # Deployment: the model answers requests; the tracker never changes what it returns.
    path = Path(folder or tempfile.mkdtemp()) / "deployed-omega.safetensors"
    tracker = ImportanceTracker(model, fraction=fraction, seed=0, path=path, save_every=200)
    model.eval()
    requests = torch.randint(1, 65, (200,), generator=torch.Generator().manual_seed(0))
    with tracker, torch.inference_mode():
        start = 0
        for size in requests.tolist():
            model(first.test_x[start : start + size], first.head)  # the served answer
            start = (start + size) % (len(first.test_y) - 64)
    print(f"served {tracker.served} images, Ω counted on {tracker.counted}, saved to {path}")

    # The next task's training is anchored by the traffic's Ω, read from the file.
    method = MAS(strength=1.0, importance_source="file", importance_file=str(path))
    method.after_task(model, first, [first])  # Ω from the file, θ* = the deployed weights
    second = tasks[1]
    model.add_head(second.head, 2)
    learn(model, method, second.train_x[:n_train], second.train_y[:n_train], second.head)
    assert Importance.load(path, model).n_samples == tracker.counted
    return [evaluate(model, task) for task in (first, second)]


if __name__ == "__main__":
    print("test accuracy per task after both tasks:", main())
