"""A scenario's tasks as one stream: every sample once, sharp or linearly blurred boundaries, seeded."""

from __future__ import annotations

import pytest
import torch

from memaware.data.scenarios import Scenario, Task
from memaware.data.streams import make_stream
from memaware.errors import ConfigError


def _coded_scenario(sizes: tuple[int, ...] = (400, 300, 500)) -> Scenario:
    """Tasks whose input x = (task, row) names the sample, labels = row % 2."""
    tasks = []
    for t, n in enumerate(sizes):
        rows = torch.arange(n, dtype=torch.float32)
        x = torch.stack([torch.full((n,), float(t)), rows], dim=1)
        tasks.append(
            Task.from_tensors(t, f"t{t}", 0, 2, x, rows.long() % 2, x[:10], rows[:10].long() % 2)
        )
    return Scenario("coded", "domain", tuple(tasks))


def _check_samples(
    stream_x: torch.Tensor, stream_y: torch.Tensor, tasks: torch.Tensor, rows: torch.Tensor
) -> None:
    assert torch.equal(stream_x[:, 0].long(), tasks) and torch.equal(stream_x[:, 1].long(), rows)
    assert torch.equal(stream_y, rows % 2)


@pytest.mark.parametrize("kind", ["sharp", "blurred"])
def test_every_sample_appears_once_with_its_label(kind: str) -> None:
    scenario = _coded_scenario()
    stream = make_stream(scenario, 16, kind, seed=3)
    _check_samples(stream.x, stream.y, stream.tasks, stream.rows)
    for t, n in enumerate((400, 300, 500)):
        assert sorted(stream.rows[stream.tasks == t].tolist()) == list(range(n))
    assert stream.n_samples == 1200 and stream.edges[0] == 0 and stream.edges[-1] == 1200
    batches = list(stream)
    assert len(batches) == stream.n_batches == len(stream)
    assert torch.equal(torch.cat([x for x, _ in batches]), stream.x)


def test_sharp_boundaries_fall_between_batches_of_one_task() -> None:
    stream = make_stream(_coded_scenario(), 64, "sharp", seed=0)
    # each task cut into its own batches: 400 = 6·64 + 16, 300 = 4·64 + 44, 500 = 7·64 + 52
    assert stream.boundaries == (7, 12, 20)
    assert [stream.samples_seen(b) for b in stream.boundaries] == [400, 700, 1200]
    for b, (start, end) in enumerate(zip(stream.edges[:-1], stream.edges[1:], strict=True)):
        assert len(set(stream.tasks[start:end].tolist())) == 1, b
    assert torch.equal(stream.tasks, torch.sort(stream.tasks).values)  # task after task
    assert stream.blur == 0.0 and all(a == b for a, b in stream.windows)
    assert stream.mixing(7).tolist() == [400, 0, 0]


def test_blurred_boundaries_mix_linearly_over_the_window() -> None:
    sizes = (4000, 4000, 4000)
    stream = make_stream(_coded_scenario(sizes), 10, "blurred", blur=0.5, seed=1)
    width = 0.5 * 4000
    for t, c in ((0, 4000), (1, 8000)):
        start, end = stream.windows[t]
        assert (start, end) == (c - width / 2, c + width / 2)
        assert stream.boundaries[t] == c // 10  # the true boundary: the middle of the window
        # outside the window one task only, inside the next one's share rises linearly
        assert set(stream.tasks[int(start) - 300 : int(start) - 100].tolist()) == {t}
        assert set(stream.tasks[int(end) + 100 : int(end) + 300].tolist()) == {t + 1}
        quarters = stream.tasks[int(start) : int(end)].reshape(4, -1)
        shares = (quarters == t + 1).double().mean(1)
        torch.testing.assert_close(
            shares, torch.tensor([1, 3, 5, 7], dtype=torch.float64) / 8, atol=0.06, rtol=0
        )
    # at the true boundary about an eighth of the window of each side is on the other side
    seen = stream.mixing(stream.boundaries[0])
    assert 4000 - width / 8 - 100 < seen[0] < 4000 - width / 8 + 100
    assert abs(int(seen[1]) - width / 8) < 100
    assert stream.boundaries[-1] == stream.n_batches == 1200
    assert all(e - s == 10 for s, e in zip(stream.edges[:-1], stream.edges[1:], strict=True))


@pytest.mark.parametrize("kind", ["sharp", "blurred"])
def test_the_seed_sets_the_order(kind: str) -> None:
    scenario = _coded_scenario()
    a, b = make_stream(scenario, 16, kind, seed=5), make_stream(scenario, 16, kind, seed=5)
    c = make_stream(scenario, 16, kind, seed=6)
    assert torch.equal(a.x, b.x) and torch.equal(a.tasks, b.tasks) and torch.equal(a.rows, b.rows)
    assert not torch.equal(a.rows, c.rows)
    assert a.boundaries == c.boundaries  # where the boundaries are does not depend on the seed


def test_seen_rows_are_the_task_samples_shown_so_far() -> None:
    stream = make_stream(_coded_scenario(), 16, "blurred", blur=0.5, seed=2)
    b = stream.boundaries[0]
    seen = stream.seen_rows(0, b)
    shown = stream.x[: stream.samples_seen(b)]
    assert sorted(seen.tolist()) == sorted(shown[shown[:, 0] == 0][:, 1].long().tolist())
    assert 0 < len(seen) < 400  # some of task 0 come after its true boundary
    assert len(stream.seen_rows(0, stream.n_batches)) == 400


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"boundaries": "soft"}, "unknown boundaries"),
        ({"batch_size": 0}, "batch size"),
        ({"batch_size": 1000}, "at least one batch"),
        ({"boundaries": "blurred", "blur": 1.5}, "blur must be in"),
        ({"boundaries": "blurred", "blur": 0.0}, "blur must be in"),
    ],
)
def test_bad_streams_are_refused(kwargs: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {"batch_size": 16, "boundaries": "sharp", **kwargs}
    with pytest.raises(ConfigError, match=message):
        make_stream(
            _coded_scenario(),
            arguments.pop("batch_size"),  # type: ignore[arg-type]
            arguments.pop("boundaries"),  # type: ignore[arg-type]
            **arguments,  # type: ignore[arg-type]
        )
