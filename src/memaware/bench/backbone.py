"""Benchmark of two image backbones through memaware and through bare PyTorch, side by side.

For ``efficientnet-lite0`` (its ImageNet weights) and ``resnet18`` (the reduced ResNet-18), each a
:class:`~memaware.models.MultiHeadClassifier` with one task head, in one process:

* **training**, ``memaware_over_bare_train_<model>``: seconds per training step of MAS with the
  penalty of a previous task active (Ω and θ* from :meth:`MAS.after_task` on the same images):
  forward, cross-entropy, backward, the penalty's gradient 2λΩ(θ − θ*), an SGD step (momentum
  0.9, the paper's protocol). memaware's side is :func:`~memaware.training.training_step` with
  :class:`~memaware.methods.MAS`; the bare side is the loop a user writes over a copy of the same
  model, with its own SGD, the same batches and the same Ω and θ*, adding 2λΩ(θ − θ*) to each
  ``.grad`` after ``backward()``. Both copies start equal and take the same steps with the same
  dropout masks, so their parameters must stay equal: ``params_max_abs_diff_<model>`` says how
  far apart they ended. ``memaware_over_bare_train`` is the worse of the two models (goal
  <= 1.10), and ``memaware_over_bare_train_worst`` names it;
* **importance**, ``exact_over_batch_<model>``: exact per-sample MAS importance
  (``granularity="sample"``) ÷ the batched estimator (``granularity="batch"``), both over the same
  images in the same batches, F = the head's logits (goal <= 1.3);
* throughputs of memaware's side: ``train_images_per_s_<model>`` (training steps) and
  ``importance_images_per_s_<model>`` (exact importance).

Inputs are real photographs where scikit-learn's wheel is installed (its ``china.jpg`` and
``flower.jpg``, read as files; each input a seeded random resized crop of one of them, flipped or
not, at the model's resolution and normalised as the model expects), else seeded random tensors;
``inputs`` says which. Labels are seeded random classes. Every tensor is made on ``--device``, and
each timed run waits for the device's queued work before the clock is read. Runs alternate
between the two sides (:func:`~memaware.bench.timing.paired`): times are medians, ratios the
median of per-pair ratios.

Sizes: resnet18 takes 32×32 images (the CIFAR network), efficientnet-lite0 ``--image-size``
(default 224, its native size). On the CPU the defaults (efficientnet-lite0: batches of 4, 2 steps
per run; resnet18: batches of 32, 4 steps) keep a run to a few minutes on 2 cores; on an
accelerator they are batches of 32 and 128, 10 steps. ``--batch-size`` and ``--steps`` set both models'. The
importance runs over the images of one training run (steps × batch size), in batches of the
training batch size. Run: ``memaware bench backbone [--json] [--device D] [--steps S]
[--batch-size B] [--image-size P] [--repeats R]``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib.metadata
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from memaware.bench.timing import paired, print_figures
from memaware.data.scenarios import Task
from memaware.data.transforms import read_rgb, training_transform
from memaware.importance import Importance, batches, mas
from memaware.importance.mas import Granularity
from memaware.methods.base import Batch
from memaware.methods.mas import MAS
from memaware.models import build_model
from memaware.models.multihead import MultiHeadClassifier, heads_output
from memaware.models.registry import preprocessing
from memaware.training import training_step
from memaware.training.config import resolve_device

#: the registry's name of each benchmarked model -> the label of its figures
MODELS = {"efficientnet-lite0": "efficientnet", "resnet18": "resnet18"}
CLASSES = 10  # the task head's classes
STRENGTH = 1.0  # λ of the penalty
LR, MOMENTUM = 1e-3, 0.9  # SGD, as the MAS authors' protocol
SEED = 0


@dataclass(frozen=True)
class Size:
    """One model's inputs: ``image_size``² RGB images, ``steps`` batches of ``batch_size`` per run."""

    image_size: int
    batch_size: int
    steps: int


#: default sizes on the CPU and on an accelerator
CPU_SIZES = {"efficientnet-lite0": Size(224, 4, 2), "resnet18": Size(32, 32, 4)}
ACCELERATOR_SIZES = {"efficientnet-lite0": Size(224, 32, 10), "resnet18": Size(32, 128, 10)}


def synchronize(device: torch.device) -> None:
    """Wait until the work queued on ``device`` is done (nothing to wait for on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def photographs() -> list[Path] | None:
    """scikit-learn's two sample photographs, found without importing scikit-learn (it needs
    scipy), or ``None`` where its wheel or the files are missing."""
    try:
        dist = importlib.metadata.distribution("scikit-learn")
    except importlib.metadata.PackageNotFoundError:
        return None
    folder = Path(str(dist.locate_file("sklearn/datasets/images")))
    paths = [folder / "china.jpg", folder / "flower.jpg"]
    return paths if all(p.is_file() for p in paths) else None


def image_inputs(name: str, n: int, image_size: int) -> tuple[torch.Tensor, str]:
    """``n`` inputs (n, 3, image_size, image_size) for model ``name`` on the CPU, and what they are.

    Real photographs where installed: random resized crops (area 8–100 %) and flips drawn from
    a generator seeded with :data:`SEED`, normalised with the model's mean and std; else seeded
    standard normal tensors.
    """
    paths = photographs()
    if paths is None:
        generator = torch.Generator().manual_seed(SEED)
        x = torch.randn(n, 3, image_size, image_size, generator=generator)
        return x, "seeded random tensors (scikit-learn's photographs are not installed)"
    pre = dataclasses.replace(preprocessing(name), resize=image_size, crop=image_size)
    images = [read_rgb(path) for path in paths]
    with torch.random.fork_rng(devices=[]):  # the crops draw from torch's global generator
        torch.manual_seed(SEED)
        x = torch.stack([training_transform(images[k % len(images)], pre) for k in range(n)])
    return x, (
        "real photographs (scikit-learn's china.jpg and flower.jpg: seeded random resized crops "
        "and flips at the model's resolution, the model's normalisation)"
    )


@dataclass
class Prepared:
    """A model with one head and the penalty of a previous task, and its inputs, on one device."""

    name: str
    size: Size
    device: torch.device
    model: MultiHeadClassifier
    method: MAS
    x: torch.Tensor
    y: torch.Tensor
    inputs: str


def prepare(name: str, size: Size, device: torch.device) -> Prepared:
    """Build ``name`` for ``size``'s images (seeded), head 0, and MAS's penalty after a previous task.

    The previous task's Ω is MAS's exact importance on the same ``steps × batch_size`` inputs;
    θ* is the model as built.
    """
    x_cpu, inputs = image_inputs(name, size.steps * size.batch_size, size.image_size)
    generator = torch.Generator().manual_seed(SEED)
    y = torch.randint(0, CLASSES, (len(x_cpu),), generator=generator).to(device)
    x = x_cpu.to(device)
    torch.manual_seed(SEED)
    model = build_model(name, (3, size.image_size, size.image_size))
    model.add_head(0, CLASSES)
    model = model.to(device)
    method = MAS(strength=STRENGTH)
    previous = Task.from_tensors(0, "previous", 0, CLASSES, x, y, x, y)
    method.after_task(model, previous, [previous])
    return Prepared(name, size, device, model, method, x, y, inputs)


class TrainingPair:
    """memaware's MAS training steps and a bare PyTorch loop, each on its own copy of one model.

    Each copy has its own SGD (lr :data:`LR`, momentum :data:`MOMENTUM`); both take the same
    batches in the same order, and every run reseeds torch's generator first, so that dropout
    draws the same masks on both sides. A run is ``steps`` training steps, then a wait for the
    device.
    """

    def __init__(self, prepared: Prepared) -> None:
        self.device = prepared.device
        self.model = prepared.model
        self.method = prepared.method
        penalty = self.method.penalty
        assert penalty is not None
        self.bare_model = copy.deepcopy(prepared.model)
        size = prepared.size
        self.batches = [
            (prepared.x[i : i + size.batch_size], prepared.y[i : i + size.batch_size])
            for i in range(0, size.steps * size.batch_size, size.batch_size)
        ]
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=LR, momentum=MOMENTUM)
        self.bare_optimizer = torch.optim.SGD(
            self.bare_model.parameters(), lr=LR, momentum=MOMENTUM
        )
        # What the bare script keeps: θ* and 2λΩ of every penalised parameter, aligned lists.
        named = dict(self.bare_model.named_parameters())
        self.bare_params = [named[name] for name in penalty.names]
        self.bare_anchors = [penalty.anchors[name].clone() for name in penalty.names]
        self.bare_coefficients = [2 * STRENGTH * penalty.omegas[name] for name in penalty.names]

    def memaware(self) -> None:
        """One run through :func:`~memaware.training.training_step` with the MAS method."""
        torch.manual_seed(SEED)
        for x, y in self.batches:
            training_step(self.model, self.method, self.optimizer, Batch(x, y, 0))
        synchronize(self.device)

    def bare(self) -> None:
        """One run of the loop a user writes: loss, backward, ``grad += 2λΩ(θ − θ*)``, step."""
        torch.manual_seed(SEED)
        model, optimizer = self.bare_model, self.bare_optimizer
        for x, y in self.batches:
            loss = F.cross_entropy(model(x, 0), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            with torch.no_grad():
                for param, anchor, coefficient in zip(
                    self.bare_params, self.bare_anchors, self.bare_coefficients, strict=True
                ):
                    assert param.grad is not None  # one head: the loss reaches every parameter
                    param.grad.addcmul_(param - anchor, coefficient)
            optimizer.step()
        synchronize(self.device)

    @torch.no_grad()
    def max_abs_difference(self) -> float:
        """max |θ_memaware − θ_bare| over every parameter of the two copies."""
        return max(
            float((p - q).abs().max())
            for p, q in zip(self.model.parameters(), self.bare_model.parameters(), strict=True)
        )


def importance_runs(
    model: MultiHeadClassifier, x: torch.Tensor, batch_size: int
) -> tuple[Callable[[], Importance], Callable[[], Importance]]:
    """The exact and the batched MAS importance of head 0 over ``x`` in batches of ``batch_size``,
    each waiting for the device before it returns."""
    device = x.device

    def run(granularity: Granularity) -> Importance:
        result = mas(
            model, batches(x, batch_size), granularity=granularity, outputs=heads_output([0])
        )
        synchronize(device)
        return result

    return partial(run, "sample"), partial(run, "batch")


def measure(prepared: Prepared, repeats: int) -> dict[str, Any]:
    """The figures of one model (keys without its label): sizes, both sides of each ratio, rates."""
    size = prepared.size
    pair = TrainingPair(prepared)
    memaware_s, bare_s, train_ratio = paired(pair.memaware, pair.bare, repeats)
    exact, batched = importance_runs(prepared.model, prepared.x, size.batch_size)
    exact_s, batch_s, importance_ratio = paired(exact, batched, repeats)
    images = size.steps * size.batch_size
    return {
        "image_size": size.image_size,
        "batch_size": size.batch_size,
        "steps": size.steps,
        "train_step_s_memaware": memaware_s / size.steps,
        "train_step_s_bare": bare_s / size.steps,
        "memaware_over_bare_train": train_ratio,
        "params_max_abs_diff": pair.max_abs_difference(),
        "importance_images": images,
        "importance_s_exact": exact_s,
        "importance_s_batch": batch_s,
        "exact_over_batch": importance_ratio,
        "train_images_per_s": images / memaware_s,
        "importance_images_per_s": images / exact_s,
    }


def run(
    device: str = "cpu",
    repeats: int = 7,
    steps: int | None = None,
    batch_size: int | None = None,
    image_size: int | None = None,
) -> dict[str, Any]:
    """Both models' figures as one flat dict (``<figure>_<label>`` per model), headline first.

    ``steps`` and ``batch_size`` replace both models' defaults, ``image_size`` efficientnet-lite0's.
    """
    where = resolve_device(device)
    defaults = CPU_SIZES if where.type == "cpu" else ACCELERATOR_SIZES
    per_model: dict[str, Any] = {}
    ratios: dict[str, float] = {}
    inputs = ""
    for name, label in MODELS.items():
        size = defaults[name]
        size = Size(
            (image_size if name == "efficientnet-lite0" else None) or size.image_size,
            batch_size or size.batch_size,
            steps or size.steps,
        )
        prepared = prepare(name, size, where)
        inputs = prepared.inputs
        figures = measure(prepared, repeats)
        ratios[label] = figures["memaware_over_bare_train"]
        per_model.update({f"{key}_{label}": value for key, value in figures.items()})
        del prepared  # free this model's memory before the next one is built
    worst = max(ratios, key=ratios.__getitem__)
    return {
        "device": str(where),
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "inputs": inputs,
        "optimizer": f"SGD lr {LR:g} momentum {MOMENTUM:g}, MAS penalty λ = {STRENGTH:g}",
        "memaware_over_bare_train": ratios[worst],
        "memaware_over_bare_train_worst": worst,
        **per_model,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="memaware bench backbone", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N, mps or auto")
    parser.add_argument("--repeats", type=int, default=7, help="timed pairs per ratio (median)")
    parser.add_argument("--steps", type=int, help="training steps per timed run (both models)")
    parser.add_argument("--batch-size", type=int, help="images per batch (both models)")
    parser.add_argument(
        "--image-size", type=int, help="efficientnet-lite0's image side (default 224)"
    )
    args = parser.parse_args(argv)
    for option in ("repeats", "steps", "batch_size", "image_size"):
        value = getattr(args, option)
        if value is not None and value < 1:
            parser.error(f"--{option.replace('_', '-')} must be >= 1, got {value}")
    result = run(args.device, args.repeats, args.steps, args.batch_size, args.image_size)
    print_figures(result, as_json=args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
