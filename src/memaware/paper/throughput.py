"""How fast the backbone trains and measures importance, on a run's own data, network and device.

Before a paper command trains, :func:`measure_throughput` times the two passes that dominate
its cost, with the code the runs use:

* **training**: :func:`~memaware.training.training_step` of MAS with its penalty active
  (forward, cross-entropy, backward, 2λΩ(θ − θ*) added to the gradients, the SGD step), on
  batches of the run's batch size from the first task's training data, under the run's mixed
  precision; one step to warm up, then ``steps`` timed;
* **importance**: MAS's exact per-sample Ω (:meth:`~memaware.methods.MAS.after_task`, the
  pass the paper's MAS runs after every task) over ``images`` of the first task's inputs, in
  the run's importance batches, after an untimed pass over one batch.

Nothing waits for the device inside either pass; the clock is read after one synchronisation
at the end of each (on an accelerator the queued work is what is timed). Images per second =
images processed ÷ seconds.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from itertools import islice
from typing import Any

import torch

from memaware.data.benchmarks import make_scenario
from memaware.data.datasets import Batches
from memaware.methods import MAS
from memaware.methods.base import Batch
from memaware.models import build_model
from memaware.training import training_step
from memaware.training.config import resolve_device
from memaware.training.experiment import ExperimentSpec, method_settings
from memaware.training.precision import MixedPrecision

__all__ = ["Throughput", "measure_throughput"]


@dataclass(frozen=True)
class Throughput:
    """Images per second of training steps and of the importance pass, and what was timed."""

    train_images_per_s: float
    importance_images_per_s: float
    train_images: int
    importance_images: int
    batch_size: int
    input_shape: tuple[int, ...]
    model: str
    device: str
    amp: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"input_shape": list(self.input_shape)}

    def summary(self) -> str:
        """One line: both rates and what they were measured on."""
        shape = "×".join(map(str, self.input_shape))
        amp = "" if self.amp == "none" else f", {self.amp}"
        return (
            f"throughput ({self.model}, {shape} inputs, {self.device}{amp}): training "
            f"{self.train_images_per_s:.1f} images/s (MAS steps, batches of {self.batch_size}), "
            f"importance {self.importance_images_per_s:.1f} images/s (exact per-sample Ω over "
            f"{self.importance_images} images)"
        )


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def measure_throughput(spec: ExperimentSpec, steps: int = 4, images: int = 256) -> Throughput:
    """Time ``steps`` MAS training steps and the exact Ω over ``images`` inputs (see the module doc).

    Only the first task of ``spec`` is read. MAS runs with the options ``spec`` gives it (its
    protocol's λ and F when ``spec`` trains it, else MAS's defaults).
    """
    request = replace(spec.data_request(), tasks=tuple(spec.tasks[:1]))
    scenario = make_scenario(spec.benchmark, **vars(request))
    device = resolve_device(spec.train.device)
    task = scenario.tasks[0].to(device)
    torch.manual_seed(spec.seeds[0])
    model = build_model(spec.model, scenario.input_shape, spec.hidden, spec.weights).to(device)
    model.add_head(task.head, task.n_classes)
    options = method_settings(spec, "mas")[0] if "mas" in spec.method_names() else None
    opts = (MAS(options) if options is not None else MAS()).opts
    # A first, untimed pass over one batch: the process's one-time costs (allocations, kernel
    # choices) are not the pass's own.
    MAS(replace(opts, max_samples=min(opts.importance_batch_size, len(task.train)))).after_task(
        model, task, [task]
    )
    method = MAS(replace(opts, max_samples=min(images, len(task.train))))
    _synchronise(device)
    start = time.perf_counter()
    method.after_task(model, task, [task])  # Ω, θ*: the penalty is active from here on
    _synchronise(device)
    importance_s = time.perf_counter() - start
    assert method.opts.max_samples is not None

    optimizer = spec.train.make_optimizer(model.parameters())
    precision = MixedPrecision(spec.train.amp, device) if spec.train.amp != "none" else None
    passes = Batches(
        task.train,
        spec.train.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(spec.seeds[0]),
        device=device,
    )
    model.train()
    timed, seen = 0, 0
    while seen < steps + 1:  # a task smaller than steps + 1 batches is passed over again
        for x, y in islice(passes, steps + 1 - seen):
            if seen == 1:
                _synchronise(device)
                start = time.perf_counter()
            training_step(model, method, optimizer, Batch(x, y, task.head), precision=precision)
            seen += 1
            timed += len(y) if seen > 1 else 0
    _synchronise(device)
    train_s = time.perf_counter() - start
    return Throughput(
        train_images_per_s=timed / train_s,
        importance_images_per_s=method.opts.max_samples / importance_s,
        train_images=timed,
        importance_images=method.opts.max_samples,
        batch_size=spec.train.batch_size,
        input_shape=tuple(scenario.input_shape),
        model=spec.model,
        device=str(device),
        amp=spec.train.amp,
    )
