"""Benchmark of the importance engine: exact per-sample MAS against the batched estimate and references.

Every ratio is measured side by side in one process (medians of repeats); ``--json`` prints one
object with both sides of each ratio. Run: ``memaware bench importance [--json]``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from memaware.bench.timing import (
    current_rss_bytes,
    paired,
    peak_memory_bytes,
    peak_rss_bytes,
    print_figures,
    reset_peak_rss,
)
from memaware.data.scenarios import Task
from memaware.importance import batches, mas
from memaware.methods.base import Batch, Method
from memaware.methods.finetune import Finetune
from memaware.methods.mas import MAS
from memaware.models import MLP, MultiHeadClassifier, SmallCNN, build_model
from memaware.penalties import QuadraticPenalty
from memaware.training import training_step

MLP_SAMPLES, CNN_SAMPLES, TRANSFORMER_SAMPLES, BATCH = 2048, 1024, 512, 256
SEQUENCE, FEATURES = 32, 16  # the transformer's inputs: sequences of 32 vectors of 16
STEPS = 20  # training steps per timed run of the penalty benchmark


def mlp_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(MLP(784, (400, 400)), nn.Linear(400, 10))


def cnn_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(SmallCNN(3, 32, width=32, features=256), nn.Linear(256, 10))


class TransformerClassifier(nn.Module):
    """A projection to d = 128, 2 encoder layers (4 heads, feed-forward 512), mean pooling, a head."""

    memaware_own_parameters_only = True  # it applies parameters only through its layers

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(FEATURES, 128)
        layer = nn.TransformerEncoderLayer(128, 4, 512, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(x)).mean(1))  # type: ignore[no-any-return]


def transformer_model() -> nn.Module:
    torch.manual_seed(0)
    return TransformerClassifier()


def transformer_inputs() -> torch.Tensor:
    """Seeded sequences (timing does not depend on content)."""
    generator = torch.Generator().manual_seed(0)
    return torch.randn(TRANSFORMER_SAMPLES, SEQUENCE, FEATURES, generator=generator)


def mlp_inputs() -> torch.Tensor:
    """2048 real MNIST training images, flattened to [0, 1] rows."""
    from memaware.data.mnist import load_mnist

    return load_mnist().train_x[:MLP_SAMPLES].reshape(MLP_SAMPLES, -1).float() / 255.0


def cnn_inputs() -> torch.Tensor:
    """Seeded 3×32×32 inputs (no colour-image set ships offline; timing does not depend on content)."""
    return torch.rand(CNN_SAMPLES, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def loop_importance(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Reference: one backward per sample, Σ_k |∂‖F(x_k)‖²/∂θ|, averaged."""
    model.eval()
    params = dict(model.named_parameters())
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    for k in range(len(x)):
        grads = torch.autograd.grad(model(x[k : k + 1]).square().sum(), list(params.values()))
        for n, g in zip(params, grads, strict=True):
            total[n] += g.abs()
    return {n: t / len(x) for n, t in total.items()}


def vmap_importance(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Reference: whole-model per-sample gradients with torch.func (vmap of grad), in batches."""
    model.eval()
    params = {n: p.detach() for n, p in model.named_parameters()}

    def sample_objective(p: dict[str, torch.Tensor], xk: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = functional_call(model, p, (xk.unsqueeze(0),))
        return out.square().sum()

    per_sample = vmap(grad(sample_objective), in_dims=(None, 0))
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    for chunk in batches(x, BATCH):
        for n, g in per_sample(params, chunk).items():
            total[n] += g.abs().sum(0)
    return {n: t / len(x) for n, t in total.items()}


def max_relative_error(exact: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> float:
    """max over parameters of max|exact − reference| / max|reference|."""
    return max(
        float((exact[n] - ref).abs().max() / ref.abs().max().clamp_min(1e-30))
        for n, ref in reference.items()
    )


def penalty_overhead(x: torch.Tensor, repeats: int) -> dict[str, float]:
    """Seconds per training step (Adam, batch 128) with and without the MAS penalty, and ratios.

    Both sides run the training loop's own :func:`~memaware.training.training_step` on the same
    multi-head MLP 784-400-400-10: MAS with its penalty anchored after a first task (so its
    gradient is added in ``after_backward``) against finetuning (no term). The penalty as an
    autograd loss term (``loss + penalty()``) is timed too, for comparison. Runs of 20 steps
    alternate between the sides (see :func:`paired`).
    """
    torch.manual_seed(0)
    model = build_model("mlp", (784,), (400, 400))
    model.add_head(0, 10)
    y = torch.randint(0, 10, (len(x),), generator=torch.Generator().manual_seed(0))
    task = Task.from_tensors(0, "bench", 0, 10, x, y, x, y)
    mas_method, finetune = MAS(strength=1.0), Finetune()
    mas_method.after_task(model, task, [task])
    assert mas_method.penalty is not None
    as_loss_term = _PenaltyAsLossTerm(mas_method.penalty)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()

    def steps(method: Method) -> Callable[[], None]:
        def run() -> None:
            for i in range(STEPS):
                start = (i * 128) % len(x)
                batch = Batch(x[start : start + 128], y[start : start + 128], 0)
                training_step(model, method, optimizer, batch)

        return run

    penalised, plain, ratio = paired(steps(mas_method), steps(finetune), 4 * repeats)
    _, _, loss_term_ratio = paired(steps(as_loss_term), steps(finetune), 4 * repeats)
    return {
        "step_s_plain": plain / STEPS,
        "step_s_penalty": penalised / STEPS,
        "penalty_step_overhead": ratio,
        "penalty_step_overhead_loss_term": loss_term_ratio,
    }


class _PenaltyAsLossTerm(Method):
    """The same penalty through autograd: ``loss + penalty()`` (the slower route, for comparison)."""

    def __init__(self, penalty: QuadraticPenalty) -> None:
        super().__init__()
        self.penalty = penalty

    def loss_term(self, model: MultiHeadClassifier, batch: Batch) -> torch.Tensor | None:
        value: torch.Tensor = self.penalty()
        return value


def run(repeats: int = 5, memory: bool = True) -> dict[str, Any]:
    """All figures of the benchmark as one dict (seconds, bytes and ratios)."""
    out: dict[str, Any] = {"repeats": repeats, "threads": torch.get_num_threads()}
    mlp, x_mlp = mlp_model(), mlp_inputs()
    cnn, x_cnn = cnn_model(), cnn_inputs()
    transformer, x_transformer = transformer_model(), transformer_inputs()
    for label, model, x in (
        ("mlp", mlp, x_mlp),
        ("cnn", cnn, x_cnn),
        ("transformer", transformer, x_transformer),
    ):
        exact_t, batch_t, ratio = paired(
            partial(mas, model, batches(x, BATCH)),
            partial(mas, model, batches(x, BATCH), granularity="batch"),
            6 * repeats,
        )
        out[f"exact_s_{label}"], out[f"batch_s_{label}"] = exact_t, batch_t
        out[f"exact_over_batch_{label}"] = ratio
    # The references are slow (seconds per run): a few pairs each, side by side with the engine.
    exact_mlp = partial(mas, mlp, batches(x_mlp, BATCH))
    for label, reference in (("loop", loop_importance), ("vmap", vmap_importance)):
        ref_t, _, ratio = paired(partial(reference, mlp, x_mlp), exact_mlp, 3)
        out[f"{label}_s_mlp"], out[f"{label}_over_exact_mlp"] = ref_t, ratio
    errors = []
    for model, x in ((mlp, x_mlp[:256]), (cnn, x_cnn[:64]), (transformer, x_transformer[:16])):
        exact = mas(model, batches(x, 64))
        errors.append(max_relative_error(dict(exact), loop_importance(model.double(), x.double())))
        model.float()
    out["max_rel_err"] = max(errors)
    out.update(penalty_overhead(x_mlp, repeats))
    if memory:
        exact_mem = peak_memory_bytes("memaware.bench.importance", "exact")
        batch_mem = peak_memory_bytes("memaware.bench.importance", "batch")
        out["peak_mem_exact_cnn"], out["peak_mem_batch_cnn"] = exact_mem, batch_mem
        out["peak_mem_exact_over_batch_cnn"] = exact_mem / batch_mem
    return out


def _peak_memory_child(variant: str) -> None:
    model, x = cnn_model(), cnn_inputs()
    reset_peak_rss()
    before = current_rss_bytes()
    mas(model, batches(x, BATCH), granularity="sample" if variant == "exact" else "batch")
    print(json.dumps({"before": before, "peak": peak_rss_bytes()}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="memaware bench importance", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--repeats", type=int, default=5, help="repeats per timing (median)")
    parser.add_argument(
        "--no-memory", action="store_true", help="skip the peak-memory subprocesses"
    )
    parser.add_argument("--peak-memory", choices=("exact", "batch"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.peak_memory:
        _peak_memory_child(args.peak_memory)
        return 0
    result = run(args.repeats, memory=not args.no_memory)
    print_figures(result, as_json=args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
