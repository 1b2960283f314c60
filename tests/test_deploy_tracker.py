"""ImportanceTracker: the served outputs are the model's own, Ω equals the exact engine's on the
same inputs, trackers merge, saves survive a kill, and serving may run under inference_mode,
no_grad and from several threads."""

from __future__ import annotations

import copy
import math
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from memaware.deploy import ImportanceTracker, TrackerError
from memaware.errors import ConfigError
from memaware.importance import Importance, batches, mas
from memaware.models import MultiHeadClassifier, build_model

SIZES = (1, 7, 64, 33, 128, 2, 200, 77)  # varying batch sizes, 512 samples in all


def mlp(dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Dropout(dropout), nn.Linear(64, 10)
    )


def chunks(x: torch.Tensor, sizes: tuple[int, ...] = SIZES) -> list[torch.Tensor]:
    out, start = [], 0
    for size in sizes:
        out.append(x[start : start + size])
        start += size
    return out


def assert_same_importance(got: Importance, want: Importance, rtol: float = 1e-5) -> None:
    assert set(got) == set(want)
    assert got.n_samples == want.n_samples
    assert got.counts == want.counts
    assert got.meta == want.meta
    for name in want:
        torch.testing.assert_close(got.sums[name], want.sums[name], rtol=rtol, atol=1e-7)


@pytest.fixture
def images(mnist_inputs: torch.Tensor) -> torch.Tensor:
    return mnist_inputs.reshape(-1, 1, 28, 28)


@pytest.mark.parametrize("context", ["inference_mode", "no_grad", "grad"])
def test_served_outputs_are_bit_identical(images: torch.Tensor, context: str) -> None:
    """Train mode with dropout too: the tracker's draws leave torch's global RNG alone."""
    model = mlp(dropout=0.3)
    model.train()
    modes = {
        "inference_mode": torch.inference_mode,
        "no_grad": torch.no_grad,
        "grad": torch.enable_grad,
    }

    def serve() -> list[torch.Tensor]:
        torch.manual_seed(1)
        with modes[context]():
            return [model(x).detach().clone() for x in chunks(images)]

    plain = serve()
    with ImportanceTracker(model, fraction=0.5, seed=3, max_delay=0.01) as tracker:
        tracked = serve()
        tracker.flush()
    assert all(torch.equal(a, b) for a, b in zip(plain, tracked, strict=True))
    assert tracker.served == len(images) and 0 < tracker.counted < len(images)
    assert not model._forward_hooks and not model._forward_pre_hooks  # detached
    assert all(p.grad is None for p in model.parameters())


def test_fraction_one_equals_the_exact_engine(images: torch.Tensor) -> None:
    model = mlp()
    tracker = ImportanceTracker(model, batch_size=100)
    with tracker, torch.inference_mode():
        for x in chunks(images):
            model(x)
    want = mas(model, batches(images, 128))
    assert_same_importance(tracker.importance(), want)
    assert tracker.counted == tracker.drawn == tracker.served == len(images)


def test_two_replicas_merge_to_the_whole(images: torch.Tensor) -> None:
    model = mlp()
    replicas = [copy.deepcopy(model), copy.deepcopy(model)]
    halves = [images[:200], images[200:]]
    parts = []
    for replica, half in zip(replicas, halves, strict=True):
        tracker = ImportanceTracker(replica, batch_size=64)
        with tracker, torch.no_grad():
            for x in half.split(50):
                replica(x)
        parts.append(tracker.importance())
    whole = ImportanceTracker(model, batch_size=64)
    with whole, torch.no_grad():
        for x in images.split(50):
            model(x)
    merged = parts[0].merge(parts[1])
    assert_same_importance(merged, whole.importance())
    assert_same_importance(merged, mas(model, batches(images, 256)))


def test_several_serving_threads(images: torch.Tensor) -> None:
    model = mlp()
    model.eval()

    def serve_in_threads() -> dict[int, torch.Tensor]:
        results: dict[int, torch.Tensor] = {}
        parts = chunks(images)

        def serve(indices: range) -> None:
            for i in indices:
                with torch.inference_mode() if i % 2 else torch.no_grad():
                    results[i] = model(parts[i]).clone()

        threads = [
            threading.Thread(target=serve, args=(range(k, len(SIZES), 4),)) for k in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return results

    # the reference is served from threads too; even so the intra-op threads a matrix product
    # gets (and so its rounding) depend on what else runs, the tracker's worker included: the
    # answers must be the same up to float32 rounding
    expected = serve_in_threads()
    tracker = ImportanceTracker(model, batch_size=64, max_pending=128)
    with tracker:
        results = serve_in_threads()
        omega = tracker.importance()
    for i in range(len(SIZES)):
        torch.testing.assert_close(results[i], expected[i], rtol=1e-5, atol=1e-6)
    assert_same_importance(omega, mas(model, batches(images, 128)))


def test_sampling_is_seeded_and_about_the_fraction(images: torch.Tensor) -> None:
    model = mlp()
    stream = images.repeat(8, 1, 1, 1)  # 4096 samples
    counted = []
    estimates = []
    for seed in (0, 0, 1):
        tracker = ImportanceTracker(model, fraction=0.1, seed=seed)
        with tracker, torch.inference_mode():
            for x in stream.split(64):
                model(x)
        counted.append(tracker.counted)
        estimates.append(tracker.importance())
    n, p = len(stream), 0.1
    assert abs(counted[0] - n * p) < 5 * math.sqrt(n * p * (1 - p))
    assert counted[0] == counted[1] and counted[0] != counted[2]
    assert_same_importance(estimates[0], estimates[1], rtol=0)


def test_each_input_is_measured_at_the_weights_that_served_it(images: torch.Tensor) -> None:
    model = mlp()
    before = copy.deepcopy(model)
    tracker = ImportanceTracker(model, batch_size=512, max_delay=60)
    with tracker:
        with torch.inference_mode():
            model(images[:300])
        with torch.no_grad():  # an update between served calls (in place: the version moves)
            for p in model.parameters():
                p.mul_(0.5)
        with torch.inference_mode():
            model(images[300:])
        omega = tracker.importance()
    assert tracker.passes == 2  # inputs of different weights are never counted together
    want = mas(before, batches(images[:300], 300)).merge(mas(model, batches(images[300:], 300)))
    assert_same_importance(omega, want)


def test_a_head_added_or_a_tensor_replaced_while_serving_is_seen(images: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = build_model("mlp", (1, 28, 28), (32,))
    model.add_head(0, 2)
    tracker = ImportanceTracker(model, batch_size=256, max_delay=60)
    with tracker, torch.inference_mode():
        model(images[:40], 0)
        with torch.inference_mode(False):
            model.add_head(1, 3)  # a registration: the next served call copies the model again
        model(images[40:100], 1)
        weight = next(model.backbone.parameters())
        with torch.inference_mode(False):
            weight.data = weight.data * 0.5  # a new storage, no version bump
        model(images[100:160], 1)
        omega = tracker.importance()
    assert tracker.passes == 3  # three states of the model, each counted on its own copy
    # a parameter's count is every sample since it exists, reached or not (Ω's 1/N)
    assert omega.counts["heads.0.weight"] == 160
    assert omega.counts["heads.1.weight"] == 120


def test_a_multi_head_model_counts_each_call_with_its_own_head(images: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = build_model("mlp", (1, 28, 28), (32,))
    model.add_head(0, 2)
    model.add_head(1, 3)
    tracker = ImportanceTracker(model, batch_size=32)
    with tracker, torch.inference_mode():
        for i, x in enumerate(images[:96].split(16)):
            model(x, i % 2)
    omega = tracker.importance()
    x0 = torch.cat(images[:96].split(16)[0::2])
    x1 = torch.cat(images[:96].split(16)[1::2])
    parts = [
        mas(model, batches(x, 64), outputs=lambda m, v, h=h: m(v, h)) for h, x in ((0, x0), (1, x1))
    ]
    assert isinstance(model, MultiHeadClassifier)
    assert omega.n_samples == 96 and all(c == 96 for c in omega.counts.values())
    for name in omega:  # each head's Ω is its share of every served sample (zero on the others')
        total = sum(part.sums[name] for part in parts if name in part.sums)
        torch.testing.assert_close(omega.sums[name], total, rtol=1e-5, atol=1e-7)
    assert "heads.0.weight" in omega and "heads.1.weight" in omega


def test_periodic_saves_and_resume(images: torch.Tensor, tmp_path: Path) -> None:
    model = mlp()
    path = tmp_path / "omega.safetensors"
    tracker = ImportanceTracker(model, batch_size=50, path=path, save_every=100)
    with tracker, torch.inference_mode():
        for x in images[:300].split(50):
            model(x)
        tracker.flush()
        saved = Importance.load(path, model)
        assert saved.n_samples >= 100  # written while serving, before the tracker detached
    assert Importance.load(path).n_samples == 300
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary left behind
    again = ImportanceTracker(model, batch_size=50, path=path, resume=True)
    assert again.counted == 300
    with again, torch.inference_mode():
        model(images[300:])
    assert_same_importance(Importance.load(path), mas(model, batches(images, 128)))


def test_save_interval_writes_without_new_traffic(images: torch.Tensor, tmp_path: Path) -> None:
    model = mlp()
    path = tmp_path / "omega.safetensors"
    with ImportanceTracker(model, path=path, save_interval=0.05, max_delay=0.01):
        with torch.inference_mode():
            model(images[:10])
        deadline = time.monotonic() + 10
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert Importance.load(path).n_samples == 10


KILLED_WRITER = """
import os, signal, sys
import torch
from torch import nn
import memaware.importance.state as state
from memaware.deploy import ImportanceTracker

torch.manual_seed(0)
model = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10))
x = torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(0))
tracker = ImportanceTracker(model, path=sys.argv[1])
with torch.inference_mode():
    tracker.attach()
    model(x[:40])
    tracker.flush()
    tracker.save()                        # the previous file: 40 samples
    model(x[40:])
    tracker.flush()
real = state.save_file

def dies_half_way(tensors, filename, metadata=None):
    real(tensors, filename, metadata=metadata)
    with open(filename, "r+b") as handle:
        handle.truncate(os.path.getsize(filename) // 2)
    os.kill(os.getpid(), signal.SIGKILL)  # killed mid-write

state.save_file = dies_half_way
tracker.save()
"""


def test_a_kill_during_a_save_leaves_the_previous_file_readable(tmp_path: Path) -> None:
    path = tmp_path / "omega.safetensors"
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(KILLED_WRITER), str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert Importance.load(path).n_samples == 40
    leftovers = [p for p in tmp_path.iterdir() if p != path]
    assert all(os.path.getsize(p) < os.path.getsize(path) for p in leftovers)  # the half write


def test_a_failure_stops_the_tracker_not_the_server(images: torch.Tensor) -> None:
    class TakesAnything(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(784, 10)

        def forward(self, x: object) -> torch.Tensor:
            data = x["x"] if isinstance(x, dict) else x
            assert isinstance(data, torch.Tensor)
            return self.linear(data.flatten(1))  # type: ignore[no-any-return]

    model = TakesAnything()
    tracker = ImportanceTracker(model)
    tracker.attach()
    with torch.inference_mode():
        out = model({"x": images[:4]})  # not a tensor: the tracker stops, serving goes on
        assert torch.equal(out, model.linear(images[:4].flatten(1)))
        model(images[:4])
    with pytest.raises(TrackerError, match="first positional argument"):
        tracker.importance()
    with pytest.raises(TrackerError):
        tracker.detach()
    assert not tracker.attached


def test_when_full_drop_never_waits(images: torch.Tensor, monkeypatch: pytest.MonkeyPatch) -> None:
    model = mlp()
    tracker = ImportanceTracker(model, batch_size=8, max_pending=16, when_full="drop")
    count = ImportanceTracker._count

    def slow(self: ImportanceTracker, items: list) -> None:  # type: ignore[type-arg]
        time.sleep(0.05)
        count(self, items)

    monkeypatch.setattr(ImportanceTracker, "_count", slow)
    with tracker, torch.inference_mode():
        for x in images[:256].split(8):
            model(x)
    assert tracker.dropped > 0
    assert tracker.counted + tracker.dropped == tracker.drawn == 256


@pytest.mark.parametrize("threads", [1, 2])
def test_the_worker_counts_on_its_own_threads(images: torch.Tensor, threads: int) -> None:
    """The worker's passes run with ``worker_threads`` intra-op threads; the serving thread keeps
    its own count (OpenMP's is per thread)."""
    seen: list[int] = []

    def outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        seen.append(torch.get_num_threads())  # called by the worker, inside its passes
        out: torch.Tensor = model(x)
        return out

    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        model = mlp()
        with ImportanceTracker(model, outputs=outputs, worker_threads=threads) as tracker:
            with torch.no_grad():
                for x in images[:256].split(50):
                    model(x)
                model(images[:0])  # an empty request counts nothing (and breaks nothing)
            tracker.flush()
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
    assert seen and set(seen) == {threads}
    assert tracker.counted == 256


def test_bad_settings_are_refused(tmp_path: Path) -> None:
    model = mlp()
    for kwargs, message in (
        ({"fraction": 0}, "fraction"),
        ({"fraction": 1.5}, "fraction"),
        ({"seed": -1}, "seed"),
        ({"batch_size": 0}, "batch_size"),
        ({"when_full": "block"}, "when_full"),
        ({"save_every": 10}, "need a path"),
        ({"norm": "l3"}, "unknown output norm"),
        ({"path": tmp_path / "o", "save_interval": 0}, "save_interval"),
        ({"worker_threads": 0}, "worker_threads"),
    ):
        with pytest.raises(ConfigError, match=message):
            ImportanceTracker(model, **kwargs)  # type: ignore[arg-type]
    frozen = mlp().requires_grad_(False)
    with pytest.raises(ConfigError, match="requires_grad"):
        ImportanceTracker(frozen).attach()
    tracker = ImportanceTracker(model).attach()
    with pytest.raises(ConfigError, match="already attached"):
        tracker.attach()
    tracker.detach()
    path = tmp_path / "batch.safetensors"
    mas(model, [torch.rand(4, 1, 28, 28)], granularity="batch").save(path)
    with pytest.raises(ConfigError, match="cannot continue"):
        ImportanceTracker(model, path=path, resume=True)
