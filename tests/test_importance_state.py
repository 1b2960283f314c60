"""The Importance state: exact merging, accumulation across tasks, the safetensors format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import memaware.importance.state as state_module
from memaware.errors import ConfigError, DataError
from memaware.importance import (
    ACCUMULATION_PRESETS,
    Importance,
    accumulate,
    fisher,
    local_mas,
    mas,
)


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 2, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(2 * 3 * 3, 6),
        nn.Tanh(),
        nn.Linear(6, 3),
    )


def assert_same(a: Importance, b: Importance, exact: bool = True) -> None:
    assert set(a) == set(b)
    assert a.counts == b.counts
    assert a.n_samples == b.n_samples
    for name in a:
        if exact:
            assert torch.equal(a.sums[name], b.sums[name]), name
        else:
            torch.testing.assert_close(a.sums[name], b.sums[name], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# the Mapping view and merging


def test_mapping_view_is_sum_over_count() -> None:
    imp = Importance(
        {"a": torch.tensor([2.0, 4.0]), "b": torch.tensor(3.0)}, {"a": 2, "b": 0}, 2, {"x": "y"}
    )
    assert len(imp) == 2 and list(imp) == ["a", "b"]
    assert torch.equal(imp["a"], torch.tensor([1.0, 2.0]))
    assert torch.equal(imp["b"], torch.tensor(3.0))  # a zero count divides by one
    assert set(imp.to_dict()) == {"a", "b"}
    assert "n_samples=2" in repr(imp)
    with pytest.raises(ValueError):
        Importance({"a": torch.zeros(1)}, {"b": 1}, 1)


@pytest.mark.parametrize("split", [1, 13, 29])
def test_merge_of_halves_equals_the_whole(split: int) -> None:
    model = make_model(1)
    x = torch.randn(30, 1, 5, 5)
    whole = mas(model, [x[:split], x[split:]])
    halves = mas(model, [x[:split]]).merge(mas(model, [x[split:]]))
    assert_same(halves, whole, exact=False)
    assert halves.meta == whole.meta
    assert halves.n_samples == 30 and set(halves.counts.values()) == {30}


def test_merge_of_fisher_halves_equals_the_whole() -> None:
    model = make_model(2)
    x, y = torch.randn(16, 1, 5, 5), torch.randint(0, 3, (16,))
    whole = fisher(model, [(x, y)])
    halves = fisher(model, [(x[:5], y[:5])]).merge(fisher(model, [(x[5:], y[5:])]))
    assert_same(halves, whole, exact=False)


def test_merge_with_names_present_on_one_side_only() -> None:
    a = Importance(
        {"w": torch.ones(2), "old": torch.full((3,), 6.0)}, {"w": 2, "old": 3}, 3, {"method": "mas"}
    )
    b = Importance(
        {"w": torch.full((2,), 4.0), "head": torch.full((1,), 5.0)}, {"w": 4, "head": 5}, 5
    )
    merged = a.merge(b)
    assert merged.counts == {"w": 6, "old": 3, "head": 5}
    assert merged.n_samples == 8
    assert merged.meta == {"method": "mas"}
    assert torch.equal(merged["w"], torch.full((2,), 5.0 / 6.0))
    assert torch.equal(merged["old"], torch.full((3,), 2.0))
    assert torch.equal(merged["head"], torch.ones(1))
    # inputs untouched, and the merged tensors do not alias b's
    assert torch.equal(a.sums["w"], torch.ones(2)) and a.counts["w"] == 2
    merged.sums["head"] += 1
    assert torch.equal(b.sums["head"], torch.full((1,), 5.0))
    assert b.merge(a).meta == {"method": "mas"}  # empty meta takes the other's


@pytest.mark.parametrize(
    ("options", "key", "value"),
    [
        ({"granularity": "batch"}, "granularity", "batch"),
        ({"norm": "l1"}, "norm", "l1"),
        ({"mode": "train"}, "mode", "train"),
    ],
)
def test_merge_refuses_another_kind_naming_both(
    options: dict[str, str], key: str, value: str
) -> None:
    model = make_model(7)
    x = torch.randn(8, 1, 5, 5)
    exact = mas(model, [x[:4]])
    other = mas(model, [x[4:]], **options)  # type: ignore[arg-type]
    assert exact.kind == "mas/sample/l2sq/eval"
    assert other.kind == exact.kind.replace(exact.meta[key], value)
    for a, b in ((exact, other), (other, exact)):
        with pytest.raises(ConfigError) as raised:
            a.merge(b)
        assert str(raised.value).startswith(
            f"cannot merge importance of kind {a.kind} with {b.kind}: "
            f"{key} {a.meta[key]} vs {b.meta[key]}; "
        )


def test_merge_refuses_mas_with_fisher_and_fisher_labels_and_l_mas() -> None:
    model = make_model(8)
    x, y = torch.randn(6, 1, 5, 5), torch.randint(0, 3, (6,))
    estimates = [
        mas(model, [x]),
        fisher(model, [(x, y)]),
        fisher(model, [(x, y)], labels="true", generator=torch.Generator().manual_seed(0)),
        local_mas(model, [x]),
    ]
    kinds = [e.kind for e in estimates]
    assert len(set(kinds)) == 4
    for i, a in enumerate(estimates):
        for j, b in enumerate(estimates):
            if i != j:
                with pytest.raises(ConfigError, match=f"kind {kinds[i]} with {kinds[j]}"):
                    a.merge(b)
    assert estimates[1].merge(fisher(model, [(x, y)])).n_samples == 12  # one kind: merges


def test_merge_of_saved_estimates_checks_their_kind(tmp_path: Path) -> None:
    model = make_model(9)
    x = torch.randn(6, 1, 5, 5)
    mas(model, [x[:3]]).save(tmp_path / "a.safetensors")
    mas(model, [x[:3]], granularity="batch").save(tmp_path / "b.safetensors")
    first = Importance.load(tmp_path / "a.safetensors", model=model)
    merged = first.merge(mas(model, [x[3:]]))
    assert_same(merged, mas(model, [x]), exact=False)
    with pytest.raises(ConfigError, match="granularity sample vs batch"):
        first.merge(Importance.load(tmp_path / "b.safetensors"))


def test_merge_names_options_present_on_one_side_only() -> None:
    a = Importance({"w": torch.ones(1)}, {"w": 1}, 1, {"method": "mas", "mode": "eval"})
    b = Importance({"w": torch.ones(1)}, {"w": 1}, 1, {"method": "mas", "heads": "current"})
    with pytest.raises(
        ConfigError,
        match=r"kind mas/eval with mas/current: mode eval vs \(unset\), heads \(unset\) vs current",
    ):
        a.merge(b)
    assert Importance({}, {}, 0).kind == "unspecified"


def test_merge_shape_mismatch_raises() -> None:
    a = Importance({"w": torch.ones(2)}, {"w": 1}, 1)
    b = Importance({"w": torch.ones(3)}, {"w": 1}, 1)
    with pytest.raises(ValueError, match="shapes"):
        a.merge(b)


# ---------------------------------------------------------------------------------------------
# accumulate


def test_accumulate_sum_by_hand() -> None:
    total = {"w": torch.tensor([1.0, 2.0]), "only_old": torch.tensor([7.0])}
    new = {"w": torch.tensor([0.5, 3.0]), "head": torch.tensor([4.0, 4.0])}
    out = accumulate(total, new, rule="sum")
    assert set(out) == {"w", "only_old", "head"}
    assert torch.equal(out["w"], torch.tensor([1.5, 5.0]))
    assert torch.equal(out["only_old"], torch.tensor([7.0]))
    assert torch.equal(out["head"], torch.tensor([4.0, 4.0]))  # new name: Ω_new as is
    # inputs are not modified and outputs do not alias them
    assert torch.equal(total["w"], torch.tensor([1.0, 2.0]))
    out["head"] += 1
    out["only_old"] += 1
    assert torch.equal(new["head"], torch.tensor([4.0, 4.0]))
    assert torch.equal(total["only_old"], torch.tensor([7.0]))


@pytest.mark.parametrize("alpha", [0.0, 0.25, 0.5, 1.0])
def test_accumulate_blend_by_hand(alpha: float) -> None:
    total = {"w": torch.tensor([1.0, 2.0]), "only_old": torch.tensor([7.0])}
    new = {"w": torch.tensor([0.5, 3.0]), "head": torch.tensor([4.0])}
    out = accumulate(total, new, rule="blend", alpha=alpha)
    expected = torch.tensor([alpha * 1.0 + (1 - alpha) * 0.5, alpha * 2.0 + (1 - alpha) * 3.0])
    torch.testing.assert_close(out["w"], expected)
    assert torch.equal(out["only_old"], torch.tensor([7.0]))
    assert torch.equal(out["head"], torch.tensor([4.0]))  # not (1 − α)·Ω_new


def test_accumulate_from_nothing_and_with_an_importance_object() -> None:
    model = make_model(3)
    imp = mas(model, [torch.randn(4, 1, 5, 5)])
    first = accumulate(None, imp)
    for name in imp:
        assert torch.equal(first[name], imp[name])
    second = accumulate(first, imp, **ACCUMULATION_PRESETS["mas"])
    for name in imp:
        torch.testing.assert_close(second[name], 2 * imp[name])
    third = accumulate(first, {k: 3 * v for k, v in imp.items()}, **ACCUMULATION_PRESETS["facil"])
    for name in imp:
        torch.testing.assert_close(third[name], 2 * imp[name])
    assert ACCUMULATION_PRESETS["avalanche"] == {"rule": "blend", "alpha": 0.5}


def test_accumulate_unknown_rule() -> None:
    with pytest.raises(ValueError, match="rule"):
        accumulate(None, {"w": torch.ones(1)}, rule="max")


# ---------------------------------------------------------------------------------------------
# save and load


def test_save_load_round_trip(tmp_path: Path) -> None:
    model = make_model(4)
    imp = mas(model, [torch.randn(6, 1, 5, 5), torch.randn(3, 1, 5, 5)], norm="l1")
    imp = imp.merge(Importance({"5.bias": torch.ones(3)}, {"5.bias": 2}, 0))  # unequal counts
    path = tmp_path / "omega.safetensors"
    imp.save(path)
    loaded = Importance.load(path, model=model)
    assert_same(loaded, imp)
    assert loaded.meta == {"method": "mas", "granularity": "sample", "norm": "l1", "mode": "eval"}
    assert loaded.counts["5.bias"] == 11 and loaded.counts["0.weight"] == 9
    for name in imp:
        assert torch.equal(loaded[name], imp[name])
        assert loaded.sums[name].dtype == imp.sums[name].dtype
    assert [p.name for p in tmp_path.iterdir()] == ["omega.safetensors"]  # no temporary left
    again = Importance.load(str(path))  # a str path, without a model
    assert_same(again, imp)


def test_save_float64_and_non_contiguous_and_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "imp.safetensors"
    Importance({"x": torch.zeros(1)}, {"x": 1}, 1).save(path)
    sums = {"w": torch.arange(6, dtype=torch.float64).reshape(2, 3).t()}  # non-contiguous view
    imp = Importance(sums, {"w": 4}, 4, {"k": "v"})
    imp.save(path)
    loaded = Importance.load(path)
    assert list(loaded) == ["w"]
    assert torch.equal(loaded.sums["w"], sums["w"])
    assert loaded.sums["w"].dtype == torch.float64
    assert loaded.meta == {"k": "v"} and loaded.n_samples == 4


def test_load_with_a_model_that_does_not_fit(tmp_path: Path) -> None:
    model = make_model(5)
    path = tmp_path / "omega.safetensors"
    mas(model, [torch.randn(3, 1, 5, 5)]).save(path)
    Importance.load(path, model=make_model(6))  # other values, same names and shapes: fine
    wider = nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(18, 7), nn.Tanh(), nn.Linear(7, 3)
    )
    with pytest.raises(DataError, match="shape"):
        Importance.load(path, model=wider)
    renamed = nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(18, 6), nn.Tanh(), nn.Linear(6, 3)
    )
    with pytest.raises(DataError, match="not in the model"):
        Importance.load(path, model=renamed)


def test_load_missing_corrupt_and_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        Importance.load(tmp_path / "missing.safetensors")
    with pytest.raises(DataError):
        Importance.load(tmp_path)  # a folder
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00\x01 definitely not safetensors" * 8)
    with pytest.raises(DataError, match="not a readable safetensors"):
        Importance.load(junk)
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(DataError):
        Importance.load(empty)
    text = tmp_path / "weights.json"
    text.write_text(json.dumps({"w": [1, 2]}))
    with pytest.raises(DataError):
        Importance.load(text)
    truncated = tmp_path / "truncated.safetensors"
    Importance({"w": torch.ones(100)}, {"w": 1}, 1).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:-50])
    with pytest.raises(DataError):
        Importance.load(truncated)
    foreign = tmp_path / "foreign.safetensors"  # valid safetensors, not ours
    save_file({"w": torch.ones(2)}, str(foreign))
    with pytest.raises(DataError, match="not a memaware importance file"):
        Importance.load(foreign)


@pytest.mark.parametrize(
    "metadata",
    [
        {"format": "memaware.importance/1", "n_samples": "3", "meta": "{}"},  # counts missing
        {"format": "memaware.importance/1", "counts": "{not json", "n_samples": "3", "meta": "{}"},
        {"format": "memaware.importance/1", "counts": '{"v": 3}', "n_samples": "3", "meta": "{}"},
        {
            "format": "memaware.importance/1",
            "counts": '{"w": 3}',
            "n_samples": "three",
            "meta": "{}",
        },
    ],
    ids=["no-counts", "bad-json", "counts-for-other-names", "bad-n-samples"],
)
def test_load_malformed_metadata_is_a_data_error(tmp_path: Path, metadata: dict[str, str]) -> None:
    path = tmp_path / "bad.safetensors"
    save_file({"sum.w": torch.ones(2)}, str(path), metadata=metadata)
    with pytest.raises(DataError):
        Importance.load(path)


def test_interrupted_save_leaves_an_existing_file_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "omega.safetensors"
    original = Importance({"w": torch.arange(4.0)}, {"w": 2}, 2, {"method": "mas"})
    original.save(path)
    before = path.read_bytes()

    def exploding_save_file(tensors: object, filename: str, metadata: object = None) -> None:
        Path(filename).write_bytes(b"half a file")  # something was written before the failure
        raise OSError("disk full")

    monkeypatch.setattr(state_module, "save_file", exploding_save_file)
    replacement = Importance({"w": torch.zeros(4)}, {"w": 9}, 9)
    with pytest.raises(OSError, match="disk full"):
        replacement.save(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["omega.safetensors"]  # no temporary left
    assert_same(Importance.load(path), original)


def test_interrupted_first_save_creates_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(state_module, "save_file", failing)
    with pytest.raises(KeyboardInterrupt):
        Importance({"w": torch.ones(1)}, {"w": 1}, 1).save(tmp_path / "new.safetensors")
    assert list(tmp_path.iterdir()) == []
