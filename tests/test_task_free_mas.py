"""Task-free MAS: the plateau detector, the hard buffer, the accumulation, no boundaries seen,
the stream runner and ``memaware stream`` end to end on a short real stream."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import memaware.training.stream as stream_module
from helpers import small_mlp, small_split_mnist
from memaware.cli.main import main
from memaware.data.images import ImageDataset
from memaware.data.scenarios import Scenario, Task
from memaware.errors import ConfigError
from memaware.importance import Importance, mas
from memaware.methods import (
    MAS,
    METHODS,
    OnlineFinetune,
    TaskFreeMAS,
    make_method,
    methods_for,
    parse_option,
)
from memaware.methods.base import Batch
from memaware.methods.task_free import HardBuffer, LossPlateau
from memaware.models import MultiHeadClassifier, build_model
from memaware.training import TrainConfig, run_method
from memaware.training.experiment import ExperimentSpec
from memaware.training.stream import StreamConfig, StreamSpec, run_stream_method

# --- the plateau detector -------------------------------------------------------------------


def test_plateau_detector_on_a_hand_made_loss_sequence() -> None:
    detector = LossPlateau(3, mean_threshold=0.5, variance_threshold=0.01)
    losses = [2.0, 1.0, 0.45, 0.42, 0.41, 0.40, 0.40, 0.39, 1.5, 1.6, 0.5, 0.3, 0.3, 0.3]
    fired = [i for i, loss in enumerate(losses) if detector.observe(loss)]
    # i=4: window (.45, .42, .41), mean .427 < .5, variance 2.9e-4 < .01, armed from the start.
    # i=5..7: lower still, but no new peak yet (a mean above .427 + √2.9e-4 = .444).
    # i=8: mean .763 is the peak that re-arms; i=12: (.5, .3, .3), mean .367, variance .0089.
    assert fired == [4, 12]
    mean, variance = detector.plateau  # type: ignore[misc]
    assert mean == pytest.approx(1.1 / 3) and variance == pytest.approx(0.08 / 9)
    assert not detector.armed


def test_plateau_needs_a_full_window_and_both_thresholds() -> None:
    detector = LossPlateau(4, mean_threshold=0.5, variance_threshold=0.01)
    assert not any(detector.observe(v) for v in (0.1, 0.1, 0.1))  # the window is not full yet
    assert detector.observe(0.1)
    detector = LossPlateau(3, mean_threshold=0.5, variance_threshold=0.01)
    # means of .3 with variances of .18: low enough a mean, far too much variance
    assert not any(detector.observe(v) for v in (0.0, 0.9, 0.0, 0.9, 0.0, 0.01))
    assert detector.observe(0.01)  # (0, .01, .01): mean .007, variance 2e-5
    detector = LossPlateau(2, mean_threshold=0.5, variance_threshold=0.01)
    assert not any(detector.observe(v) for v in (0.7, 0.7, 0.7))  # steady, but above the mean's


def test_plateau_detector_rejects_a_diverged_loss_and_a_short_window() -> None:
    with pytest.raises(ConfigError, match="at least 2"):
        LossPlateau(1, 0.1, 0.1)
    with pytest.raises(ConfigError, match="diverged"):
        LossPlateau(2, 0.1, 0.1).observe(float("nan"))


# --- the hard buffer ------------------------------------------------------------------------


def _identity_classifier() -> MultiHeadClassifier:
    """logits = x for two-dimensional inputs: the loss of label 0 grows with x[1] − x[0]."""
    model = MultiHeadClassifier(torch.nn.Identity(), 2)
    model.add_head(0, 2)
    with torch.no_grad():
        model.heads["0"].weight.copy_(torch.eye(2))  # type: ignore[operator]
        model.heads["0"].bias.zero_()  # type: ignore[union-attr]
    return model


def _margins(values: Sequence[float]) -> torch.Tensor:
    return torch.tensor([[0.0, v] for v in values])


def test_hard_buffer_keeps_the_highest_losses_of_the_batch_and_itself() -> None:
    model = _identity_classifier()
    buffer = HardBuffer(3)
    zeros = torch.zeros(5, dtype=torch.int64)
    buffer.refresh(model, _margins([0.0, 3.0, -1.0, 2.0, 1.0]), zeros)
    assert buffer.x is not None and buffer.x[:, 1].tolist() == [3.0, 2.0, 1.0]
    assert len(buffer) == 3
    expected = F.cross_entropy(buffer.x, torch.zeros(3, dtype=torch.int64), reduction="none")
    torch.testing.assert_close(buffer.loss, expected)
    # a new batch: its harder samples displace the buffer's easiest, its easy ones stay out
    buffer.refresh(model, _margins([5.0, -2.0, 1.5]), zeros[:3])
    assert buffer.x[:, 1].tolist() == [5.0, 3.0, 2.0]
    x, y = buffer.joined(_margins([9.0]), zeros[:1])
    assert x[:, 1].tolist() == [5.0, 3.0, 2.0, 9.0] and y.tolist() == [0, 0, 0, 0]
    assert model.training  # scoring in eval mode, the mode restored


def test_a_buffer_smaller_than_a_batch_and_bad_sizes() -> None:
    buffer = HardBuffer(1)
    buffer.refresh(_identity_classifier(), _margins([1.0, 4.0]), torch.zeros(2, dtype=torch.int64))
    assert buffer.x is not None and buffer.x[:, 1].tolist() == [4.0]
    with pytest.raises(ConfigError, match="at least one sample"):
        HardBuffer(0)


def test_replay_trains_on_the_buffer_and_the_watched_loss_is_the_task_loss() -> None:
    model = _identity_classifier()
    method = TaskFreeMAS(hard_buffer=2, strength=5.0, replay=True, watch="batch+buffer")
    zeros = torch.zeros(3, dtype=torch.int64)
    first = Batch(_margins([1.0, 2.0, 3.0]), zeros, 0)
    assert method.stream_batch(model, first) is not None
    method.after_stream_batch(model, first)
    incoming = Batch(_margins([0.5, -1.0, 4.0]), zeros, 0)
    trained = method.stream_batch(model, incoming)
    assert trained.x[:, 1].tolist() == [3.0, 2.0, 0.5, -1.0, 4.0] and trained.heads == 0
    expected = F.cross_entropy(trained.x, torch.zeros(5, dtype=torch.int64))
    assert method.watched == pytest.approx(float(expected))  # CE of batch and buffer, no penalty
    alone = TaskFreeMAS(hard_buffer=2, replay=False, watch="batch")
    assert alone.stream_batch(model, first) is first
    alone.after_stream_batch(model, first)
    assert alone.stream_batch(model, incoming) is incoming and len(alone.buffer) == 2
    expected = F.cross_entropy(incoming.x, zeros)
    assert alone.watched == pytest.approx(float(expected))  # the incoming batch's alone


# --- the importance: exact per sample on the buffer, a cumulative moving average -----------


def _loop_importance(model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """MAS's definition one sample at a time: (1/N) Σ_k |∂‖F(x_k)‖²/∂θ|."""
    total = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for k in range(len(x)):
        model.zero_grad()
        model(x[k : k + 1]).square().sum().backward()
        for n, p in model.named_parameters():
            assert p.grad is not None
            total[n] += p.grad.abs()
    return {n: t / len(x) for n, t in total.items()}


def test_importance_is_exact_on_the_buffer_and_averaged_over_updates(mnist: ImageDataset) -> None:
    torch.manual_seed(0)
    model = build_model("mlp", (28, 28), hidden=(16,))
    model.add_head(0, 2)
    method = TaskFreeMAS(hard_buffer=8, strength=2.0)
    images = mnist.train_x[:24].float() / 255
    news = []
    merged: Importance | None = None
    for k in range(3):
        method.buffer.x = images[8 * k : 8 * (k + 1)]
        method.buffer.y = torch.zeros(8, dtype=torch.int64)
        news.append(_loop_importance(model, method.buffer.x))
        part = mas(model, [method.buffer.x])
        merged = part if merged is None else merged.merge(part)
        method.consolidate(model)
        anchors = {n: p.detach().clone() for n, p in model.named_parameters()}
        assert method.updates == k + 1 and method.omega is not None
        for name, value in method.omega.items():  # Ω after k updates: the mean of their Ω_new
            mean = sum(new[name] for new in news) / len(news)
            torch.testing.assert_close(value, mean, rtol=1e-5, atol=1e-8)
        with torch.no_grad():  # the model moves on between updates
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
    # buffers of one size: the average over updates is the merged Importance of their samples
    assert merged is not None and merged.n_samples == 24
    for name, value in method.omega.items():
        torch.testing.assert_close(value, merged[name], rtol=1e-5, atol=1e-8)
    # the penalty: λ, Ω and the anchors θ* of the last update
    assert method.penalty is not None and method.penalty.strength == 2.0
    for name, anchor in method.penalty.anchors.items():
        torch.testing.assert_close(anchor, anchors[name])
        torch.testing.assert_close(method.penalty.omegas[name], method.omega[name])


# --- no boundaries for task-free methods; the true ones for the others ---------------------


class _Spy(TaskFreeMAS):
    """Task-free MAS that records what it is shown."""

    def __init__(self, **fields: Any) -> None:
        super().__init__(**fields)
        self.shown: list[tuple[int, object]] = []
        self.boundary_calls = 0

    def stream_batch(self, model: MultiHeadClassifier, incoming: Batch) -> Batch:
        self.shown.append((len(incoming.x), incoming.heads))
        return super().stream_batch(model, incoming)

    def before_task(self, model: MultiHeadClassifier, task: Task, seen: Sequence[Task]) -> None:
        self.boundary_calls += 1
        super().before_task(model, task, seen)


class _BoundarySpy(MAS):
    def __init__(self, **fields: Any) -> None:
        super().__init__(**fields)
        self.calls: list[tuple[str, int, int]] = []

    def before_task(self, model: MultiHeadClassifier, task: Task, seen: Sequence[Task]) -> None:
        self.calls.append(("before", task.index, len(task.train)))

    def after_task(self, model: MultiHeadClassifier, task: Task, seen: Sequence[Task]) -> None:
        self.calls.append(("after", task.index, len(task.train)))
        super().after_task(model, task, seen)


@pytest.fixture(scope="module")
def short_stream(mnist: ImageDataset) -> Scenario:
    return small_split_mnist(mnist, "domain", n_train=300, n_tasks=3, n_test=300)


# a short stream learns at a higher rate than the tuned default (5e-5 for 10.8k samples a task)
CONFIG = StreamConfig(lr=1e-3, evaluations=6, boundaries="blurred", blur=0.4)


def test_task_free_methods_never_see_a_boundary(short_stream: Scenario) -> None:
    spy = _Spy(mean_threshold=0.6, variance_threshold=0.05)
    result = run_stream_method(spy, short_stream, lambda: small_mlp(short_stream), CONFIG)
    assert spy.boundary_calls == 0
    assert spy.shown == [(10, 0)] * 90  # 900 samples in batches of 10, all on the shared head
    assert result.accuracy.n_tasks == 3 and not np.isnan(result.accuracy.values[2]).any()
    assert np.isnan(result.accuracy.values[0, 1:]).all()  # the usual layout: not yet learned
    assert len(result.updates) == spy.updates >= 1
    assert all(0 < u <= 900 and u % 10 == 0 for u in result.updates)
    assert len(result.positions) == len(result.curve) >= 6 and result.positions[-1] == 900
    assert result.boundaries == (300, 600, 900)


def test_boundary_methods_are_given_the_true_boundaries_and_the_data_shown(
    short_stream: Scenario,
) -> None:
    spy = _BoundarySpy(strength=1.0)
    run_stream_method(spy, short_stream, lambda: small_mlp(short_stream), CONFIG)
    stream = stream_module.make_stream(short_stream, 10, "blurred", blur=0.4, seed=0)
    seen = [len(stream.seen_rows(t, stream.boundaries[t])) for t in range(3)]
    assert seen[0] < 300 and seen[2] == 300  # a blurred boundary: some of task 0 come later
    assert spy.calls == [
        ("before", 0, 300),
        ("after", 0, seen[0]),
        ("before", 1, 300),
        ("after", 1, seen[1]),
        ("before", 2, 300),
        ("after", 2, 300),
    ]


def test_online_finetune_equals_finetune_given_boundaries(short_stream: Scenario) -> None:
    runs = [
        run_stream_method(m, short_stream, lambda: small_mlp(short_stream), CONFIG)
        for m in (OnlineFinetune(), make_method("finetune"))
    ]
    np.testing.assert_array_equal(runs[0].accuracy.values, runs[1].accuracy.values)
    assert runs[0].curve == runs[1].curve and runs[0].updates == runs[1].updates == ()


def test_the_task_loop_refuses_task_free_methods(
    short_stream: Scenario, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ConfigError, match="memaware stream"):
        run_method(
            TaskFreeMAS(), short_stream, lambda: small_mlp(short_stream), TrainConfig(epochs=1)
        )
    with pytest.raises(ConfigError, match="memaware stream"):
        ExperimentSpec(scenario="domain", methods=("online-finetune",)).check()
    assert "task-free-mas" not in methods_for("domain") and "mas" in methods_for("domain")
    for command in (
        ["run", "--scenario", "domain", "--methods", "task-free-mas"],
        ["sweep", "--scenario", "domain", "--method", "task-free-mas"],
    ):
        assert main(command) == 2
        assert "memaware stream" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (StreamSpec(scenario="task"), "no task id to pick a head with"),
        (StreamSpec(methods=("joint",)), "joint keeps every task's data"),
        (StreamSpec(methods=("lwf",)), "cannot learn from a one-pass stream"),
        (StreamSpec(methods=("gem",)), "unknown method"),
        (StreamSpec(benchmark="folders"), "reads images from disk"),
        (StreamSpec(method_options={"ewc": {"strength": 1.0}}), "which this run does not train"),
        (StreamSpec(method_options={"task-free-mas": {"window": 1}}), "window must be"),
        (StreamSpec(seeds=()), "seeds"),
    ],
)
def test_stream_specs_that_make_no_sense_are_refused(spec: StreamSpec, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        spec.check()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"window": 1}, "window must be an integer >= 2"),
        ({"mean_threshold": 0.0}, "mean_threshold must be a finite number > 0"),
        ({"variance_threshold": -1.0}, "variance_threshold must be"),
        ({"hard_buffer": 0}, "hard_buffer must be an integer >= 1"),
        ({"strength": -1.0}, "strength must be"),
        ({"norm": "l3"}, "norm must be"),
    ],
)
def test_options_are_checked(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TaskFreeMAS(**fields)


def test_options_reach_the_cli_and_the_registry() -> None:
    assert METHODS["task-free-mas"] is TaskFreeMAS and METHODS["online-finetune"] is OnlineFinetune
    assert parse_option("task-free-mas.hard_buffer=100") == ("task-free-mas", "hard_buffer", 100)
    assert parse_option("task-free-mas.replay=false")[2] is False
    assert make_method("task-free-mas", 3.0).options()["strength"] == 3.0  # --lambda reaches it


def test_stream_config_is_checked() -> None:
    for fields, message in (
        ({"passes": 0}, "passes"),
        ({"lr": 0.0}, "learning rate"),
        ({"boundaries": "soft"}, "unknown boundaries"),
        ({"blur": 2.0}, "blur"),
        ({"momentum": 0.5}, "momentum is an option of the sgd"),
    ):
        with pytest.raises(ConfigError, match=message):
            StreamConfig(**fields)  # type: ignore[arg-type]


# --- a short stream end to end ----------------------------------------------------------------


def test_memaware_stream_end_to_end(
    short_stream: Scenario,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(stream_module, "make_scenario", lambda *a, **k: short_stream)
    out = tmp_path / "stream"
    code = main(
        [
            "stream",
            "--methods",
            "task-free-mas,online-finetune,mas",
            "--boundaries",
            "blurred",
            "--blur",
            "0.4",
            "--passes",
            "2",
            "--lr",
            "0.001",
            "--evaluations",
            "6",
            "--hidden",
            "100,100",
            "--option",
            "task-free-mas.mean_threshold=0.6",
            "--option",
            "task-free-mas.variance_threshold=0.05",
            "--seeds",
            "2",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "| task-free-mas |" in printed and "never saw a boundary" in printed
    results = json.loads((out / "results.json").read_text())
    assert list(results["methods"]) == ["task-free-mas", "online-finetune", "mas"]
    assert results["stream"]["boundaries"] == "blurred" and results["stream"]["passes"] == 2
    assert results["stream"]["boundary_samples"] == [300, 600, 900]
    for name, entry in results["methods"].items():
        matrix = entry["accuracy_matrix"]
        assert len(matrix) == 3 and matrix[0][1] is None and matrix[2][0] is not None, name
        assert len(entry["runs"]) == 2 and entry["task_free"] == (name != "mas")
        for run in entry["runs"]:
            assert run["stream"]["positions"][-1] == 900
            assert len(run["stream"]["accuracy"][0]) == 3
    assert results["methods"]["task-free-mas"]["runs"][0]["stream"]["importance_updates"]
    assert results["methods"]["mas"]["runs"][0]["stream"]["importance_updates"] == []
    for name in ("results.md", "stream.png", "comparison.png", "accuracy.png"):
        assert (out / name).is_file(), name
    assert (out / "stream.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "stream.png" in (out / "results.md").read_text()


def test_memaware_stream_bad_input_exits_2_before_reading_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "never"
    assert main(["stream", "--scenario", "task", "--out", str(out)]) == 2
    assert "no task id" in capsys.readouterr().err and not out.exists()
    assert main(["stream", "--methods", "joint", "--out", str(out)]) == 2
    assert main(["stream", "--option", "task-free-mas.window=0", "--out", str(out)]) == 2
    assert not out.exists()
