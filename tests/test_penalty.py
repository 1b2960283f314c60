"""QuadraticPenalty: λ Σ_i Ω_i (θ_i − θ*_i)², its hand-written gradient, and its state."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from memaware.errors import ConfigError
from memaware.importance import Importance, mas
from memaware.penalties import QuadraticPenalty


def make_model(seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 4), nn.Tanh(), nn.Linear(4, 3)
    )
    return model.to(dtype)


def random_importance(model: nn.Module, skip: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    omega = {n: torch.rand_like(p) * 3 for n, p in model.named_parameters() if n not in skip}
    first = next(iter(omega))
    omega[first].view(-1)[:3] = 0  # some unimportant entries
    return omega


def perturb(model: nn.Module, scale: float = 0.3) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def expected_value(
    omega: dict[str, torch.Tensor], anchors: dict[str, torch.Tensor], model: nn.Module, lam: float
) -> torch.Tensor:
    params = dict(model.named_parameters())
    return lam * sum(
        (omega[n].double() * (params[n].detach().double() - anchors[n].double()).square()).sum()
        for n in omega
    )


def test_zero_at_the_anchor_with_zero_gradient() -> None:
    model = make_model(1)
    penalty = QuadraticPenalty(model, random_importance(model), strength=3.0)
    value = penalty()
    assert value.item() == 0.0
    value.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.all(p.grad == 0), name


@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0, 37.0])
def test_value_and_gradient_after_perturbation(lam: float) -> None:
    model = make_model(2)
    omega = random_importance(model)
    anchors = {n: p.detach().clone() for n, p in model.named_parameters()}
    penalty = QuadraticPenalty(model, omega, strength=lam)
    perturb(model)
    value = penalty()
    torch.testing.assert_close(
        value.double(), expected_value(omega, anchors, model, lam), rtol=1e-5, atol=1e-9
    )
    value.backward()
    for name, p in model.named_parameters():
        expected = 2 * lam * omega[name] * (p.detach() - anchors[name])
        torch.testing.assert_close(p.grad, expected, rtol=1e-6, atol=1e-7)


def test_gradient_is_exact_for_exactly_representable_values() -> None:
    """With Ω = s² (s dyadic) and dyadic θ − θ*, 2λΩ(θ−θ*) has no rounding: compare bitwise."""
    model = make_model(3)
    torch.manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randint(-16, 16, p.shape) / 8.0)
    anchors = {n: p.detach().clone() for n, p in model.named_parameters()}
    roots = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0])
    omega = {n: roots[torch.randint(0, 6, p.shape)].square() for n, p in model.named_parameters()}
    lam = 0.75
    penalty = QuadraticPenalty(model, omega, strength=lam)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randint(-8, 8, p.shape) / 16.0)
    penalty().backward()
    for name, p in model.named_parameters():
        expected = 2 * lam * omega[name] * (p.detach() - anchors[name])
        assert torch.equal(p.grad, expected), name


def test_gradcheck_float64() -> None:
    model = nn.Sequential(nn.Linear(3, 2), nn.Tanh(), nn.Linear(2, 2)).double()
    torch.manual_seed(4)
    omega = {n: torch.rand_like(p) + 0.1 for n, p in model.named_parameters()}
    penalty = QuadraticPenalty(model, omega, strength=1.7)
    perturb(model)
    original = penalty._params

    def value(*params: torch.Tensor) -> torch.Tensor:
        penalty._params = list(params)
        try:
            return penalty()
        finally:
            penalty._params = original

    inputs = tuple(p.detach().clone().requires_grad_(True) for p in original)
    assert torch.autograd.gradcheck(value, inputs, eps=1e-6, atol=1e-8, rtol=1e-6)


def test_parameters_without_importance_are_not_penalised() -> None:
    model = make_model(5)
    skip = ("5.weight", "5.bias")  # e.g. a head added after the importance was computed
    omega = random_importance(model, skip=skip)
    penalty = QuadraticPenalty(model, omega, strength=2.0)
    assert set(penalty.names) == set(omega)
    with torch.no_grad():
        model[5].weight.add_(10.0)
        model[5].bias.add_(-4.0)
    assert penalty().item() == 0.0
    penalty().backward()
    assert model[5].weight.grad is None and model[5].bias.grad is None
    assert set(penalty.omegas) == set(omega) and set(penalty.anchors) == set(omega)


def test_empty_importance_is_zero() -> None:
    model = make_model(6)
    penalty = QuadraticPenalty(model, {}, strength=5.0)
    assert penalty().item() == 0.0
    assert penalty.state_dict() == {}


def test_bad_strength_names_and_shapes_are_config_errors() -> None:
    model = make_model(7)
    omega = random_importance(model)
    with pytest.raises(ConfigError, match="strength"):
        QuadraticPenalty(model, omega, strength=-0.1)
    with pytest.raises(ConfigError, match="not parameters"):
        QuadraticPenalty(model, {**omega, "9.weight": torch.ones(1)})
    with pytest.raises(ConfigError, match="shape"):
        QuadraticPenalty(model, {**omega, "3.bias": torch.ones(5)})


def test_explicit_anchors_and_an_importance_object() -> None:
    model = make_model(8)
    x = torch.randn(6, 1, 4, 4)
    imp = mas(model, [x])
    anchors = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    penalty = QuadraticPenalty(model, imp, strength=0.5, anchors=anchors)
    omega = {n: imp[n] for n in imp}
    torch.testing.assert_close(
        penalty().double(), expected_value(omega, anchors, model, 0.5), rtol=1e-5, atol=1e-9
    )
    for name in imp:
        assert torch.equal(penalty.omegas[name], imp[name])
        assert torch.equal(penalty.anchors[name], anchors[name])


def test_buffers_are_copies_and_appear_in_the_state_dict() -> None:
    model = make_model(9)
    omega = random_importance(model)
    penalty = QuadraticPenalty(model, omega, strength=1.0)
    state = penalty.state_dict()
    expected_keys = {
        f"{kind}__{n.replace('.', '__')}" for n in omega for kind in ("omega", "anchor")
    }
    assert set(state) == expected_keys
    for name, param in model.named_parameters():
        key = name.replace(".", "__")
        assert torch.equal(state[f"omega__{key}"], omega[name])
        assert torch.equal(state[f"anchor__{key}"], param.detach())
    # later changes to the inputs or the parameters do not move Ω or θ*
    before = {k: v.clone() for k, v in state.items()}
    for value in omega.values():
        value.add_(1.0)
    perturb(model)
    for key, value in penalty.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_state_dict_round_trip_into_a_fresh_penalty_with_the_same_importance() -> None:
    model = make_model(10)
    omega = random_importance(model)
    saved = QuadraticPenalty(model, omega, strength=2.0)
    perturb(model)
    fresh = QuadraticPenalty(model, omega, strength=2.0)  # anchored at the perturbed values
    fresh.load_state_dict(saved.state_dict())
    torch.testing.assert_close(fresh(), saved())
    assert fresh().item() > 0


def test_state_dict_round_trip_with_a_different_importance() -> None:
    model = make_model(11)
    omega = random_importance(model)
    saved = QuadraticPenalty(model, omega, strength=1.0)
    other = QuadraticPenalty(model, {n: 4 * v for n, v in omega.items()}, strength=1.0)
    perturb(model)
    other.load_state_dict(saved.state_dict())
    torch.testing.assert_close(other(), saved())


def test_penalty_adds_to_a_task_loss_gradient() -> None:
    model = make_model(12)
    omega = random_importance(model)
    anchors = {n: p.detach().clone() for n, p in model.named_parameters()}
    penalty = QuadraticPenalty(model, omega, strength=0.3)
    perturb(model)
    x = torch.randn(5, 1, 4, 4)
    task = model(x).square().mean()
    task_grads = torch.autograd.grad(task, list(model.parameters()), retain_graph=True)
    (task + penalty()).backward()
    for (name, p), g in zip(model.named_parameters(), task_grads, strict=True):
        expected = g + 2 * 0.3 * omega[name] * (p.detach() - anchors[name])
        torch.testing.assert_close(p.grad, expected, rtol=1e-5, atol=1e-7)


def test_penalty_from_a_loaded_importance_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    model = make_model(13)
    imp = mas(model, [torch.randn(4, 1, 4, 4)])
    imp.save(tmp_path / "omega.safetensors")
    loaded = Importance.load(tmp_path / "omega.safetensors", model=model)
    penalty = QuadraticPenalty(model, loaded, strength=1.0)
    anchors = {n: p.detach().clone() for n, p in model.named_parameters()}
    perturb(model)
    omega = {n: imp[n] for n in imp}
    torch.testing.assert_close(
        penalty().double(), expected_value(omega, anchors, model, 1.0), rtol=1e-5, atol=1e-9
    )


def test_add_to_grad_equals_the_loss_term_gradient() -> None:
    """task.backward(); add_to_grad()  ==  (task + penalty()).backward(), unused parameters included."""
    model = make_model(14)
    omega = random_importance(model, skip=("5.bias",))
    penalty = QuadraticPenalty(model, omega, strength=0.7)
    perturb(model)
    x = torch.randn(5, 1, 4, 4)

    def task_loss() -> torch.Tensor:
        hidden = model[:5](x)  # the last layer is left out, like another task's head
        return hidden.square().mean()

    (task_loss() + penalty()).backward()
    expected = {
        n: p.grad.clone() if p.grad is not None else None for n, p in model.named_parameters()
    }
    model.zero_grad(set_to_none=True)
    task_loss().backward()
    assert model[5].weight.grad is None
    penalty.add_to_grad()
    for name, p in model.named_parameters():
        if expected[name] is None:
            assert p.grad is None, name  # not used and not penalised: left alone
        else:
            torch.testing.assert_close(p.grad, expected[name], rtol=1e-6, atol=1e-7)


def test_add_to_grad_after_dtype_change_and_state_load() -> None:
    model = make_model(15)
    omega = random_importance(model)
    anchors = {n: p.detach().clone() for n, p in model.named_parameters()}
    penalty = QuadraticPenalty(model, omega, strength=1.5)
    penalty.add_to_grad()  # fills the cached buffer lists
    model.double()
    penalty.double()
    perturb(model)
    model.zero_grad(set_to_none=True)
    penalty.add_to_grad()
    for name, p in model.named_parameters():
        expected = 2 * 1.5 * omega[name].double() * (p.detach() - anchors[name].double())
        torch.testing.assert_close(p.grad, expected)
    other = QuadraticPenalty(model, {n: 2 * v for n, v in omega.items()}, strength=1.5).double()
    other.load_state_dict(penalty.state_dict())
    model.zero_grad(set_to_none=True)
    other.add_to_grad()
    for name, p in model.named_parameters():
        expected = 2 * 1.5 * omega[name].double() * (p.detach() - anchors[name].double())
        torch.testing.assert_close(p.grad, expected)


# ---------------------------------------------------------------------------------------------
# half precision: Ω, θ*, 2λΩ and the arithmetic in float32, the gradient rounded once


def large_importance(model: nn.Module, scale: float = 1e6) -> dict[str, torch.Tensor]:
    """Ω of the size large logits give after many samples: beyond float16's 65504."""
    torch.manual_seed(16)
    return {n: (torch.rand(p.shape) + 0.5) * scale for n, p in model.named_parameters()}


def nudge(model: nn.Module, step: float) -> None:
    """Move every parameter by a few multiples of ``step`` (rounded to the parameter's dtype)."""
    torch.manual_seed(17)
    with torch.no_grad():
        for p in model.parameters():
            p.add_((torch.randint(-3, 4, p.shape) * step).to(p.dtype))


def float32_gradient(
    omega: dict[str, torch.Tensor], anchors: dict[str, torch.Tensor], model: nn.Module, lam: float
) -> dict[str, torch.Tensor]:
    """2λΩ(θ − θ*) computed in float64 from the float32 state, then rounded to each parameter's dtype."""
    return {
        n: (2 * lam * omega[n].double() * (p.detach().double() - anchors[n].double())).to(p.dtype)
        for n, p in model.named_parameters()
    }


@pytest.mark.parametrize(
    ("dtype", "lam"),
    # float16 with λ = 1: 2λΩ = 2e6 and Ω itself do not fit float16, the terms 2λΩ(θ − θ*) do;
    # bfloat16 with λ = 1e4 (2λΩ = 2e10): bfloat16 has float32's range.
    [(torch.float16, 1.0), (torch.bfloat16, 1e4)],
    ids=["float16", "bfloat16"],
)
def test_half_precision_penalty_is_finite_and_matches_float32(
    dtype: torch.dtype, lam: float
) -> None:
    model = make_model(16, dtype)
    omega = large_importance(model)
    anchors = {n: p.detach().float() for n, p in model.named_parameters()}
    penalty = QuadraticPenalty(model, omega, strength=lam)
    for name in omega:
        assert penalty.omegas[name].dtype == torch.float32
        assert torch.equal(penalty.omegas[name], omega[name])
        assert torch.equal(penalty.anchors[name], anchors[name])  # the half values, exactly
    nudge(model, 2**-10)
    value = penalty()
    assert value.dtype == torch.float32 and torch.isfinite(value)
    torch.testing.assert_close(
        value.double(), expected_value(omega, anchors, model, lam), rtol=1e-5, atol=0
    )
    expected = float32_gradient(omega, anchors, model, lam)
    value.backward()
    loss_term_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    penalty.add_to_grad()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.dtype == dtype, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().max() > 0, name
        for grad in (p.grad, loss_term_grads[name]):
            torch.testing.assert_close(grad.float(), expected[name].float(), rtol=3e-2, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_half_precision_gradient_is_added_in_float32_and_rounded_once(dtype: torch.dtype) -> None:
    model = make_model(17, dtype)
    omega = large_importance(model, scale=1e3)
    anchors = {n: p.detach().float() for n, p in model.named_parameters()}
    penalty = QuadraticPenalty(model, omega, strength=1.0)
    nudge(model, 2**-8)
    torch.manual_seed(18)
    task = {n: torch.randn(p.shape).to(dtype) for n, p in model.named_parameters()}
    for name, p in model.named_parameters():
        p.grad = task[name].clone()
    penalty.add_to_grad()
    for name, p in model.named_parameters():
        term = 2 * omega[name] * (p.detach().float() - anchors[name])
        assert p.grad is not None and torch.equal(p.grad, (task[name].float() + term).to(dtype))


def test_float16_gradient_beyond_its_range_is_a_config_error() -> None:
    """2λΩ(θ − θ*) = 2e10 · 2^-10 does not fit float16: a clear error, nothing written."""
    model = make_model(18, torch.float16)
    penalty = QuadraticPenalty(model, large_importance(model), strength=1e4)
    assert torch.isfinite(penalty()).item()  # at the anchor: 0
    nudge(model, 2**-10)
    assert torch.isfinite(penalty()).item()  # the value is float32: still finite
    with pytest.raises(ConfigError, match=r"beyond float16's largest value 65504"):
        penalty.add_to_grad()
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(ConfigError, match="float16"):
        penalty().backward()
    # the same λΩ for bfloat16 parameters is fine
    model.bfloat16()
    penalty.add_to_grad()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_half_precision_state_dict_round_trip_and_conversions() -> None:
    model = make_model(19, torch.float16)
    omega = large_importance(model)
    saved = QuadraticPenalty(model, omega, strength=1.0)
    state = saved.state_dict()
    assert {v.dtype for v in state.values()} == {torch.float32}
    nudge(model, 2**-10)
    fresh = QuadraticPenalty(model, {n: v / 4 for n, v in omega.items()}, strength=1.0)
    fresh.load_state_dict(state)
    assert torch.equal(fresh(), saved())
    saved.add_to_grad()
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    fresh.half()  # the state stays in float32: a float16 copy of Ω would be inf
    assert {v.dtype for v in fresh.state_dict().values()} == {torch.float32}
    fresh.add_to_grad()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.equal(p.grad, expected[name]), name
    assert fresh.to(torch.bfloat16).omegas["0.weight"].dtype == torch.float32
    assert fresh.double().omegas["0.weight"].dtype == torch.float64


def test_non_finite_strength_importance_or_coefficient_is_a_config_error() -> None:
    model = make_model(20)
    omega = random_importance(model)
    for strength in (float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="finite"):
            QuadraticPenalty(model, omega, strength=strength)
    for bad in (float("nan"), float("inf")):
        broken = {n: v.clone() for n, v in omega.items()}
        broken["3.weight"][0, 0] = bad
        with pytest.raises(ConfigError, match=r"importance of 3\.weight has non-finite"):
            QuadraticPenalty(model, broken)
    with pytest.raises(ConfigError, match=r"2λΩ of 5\.bias overflows torch\.float32"):
        QuadraticPenalty(model, {"5.bias": torch.full((3,), 1e30)}, strength=1e10)
    penalty = QuadraticPenalty(model, omega)
    state = penalty.state_dict()
    state["omega__0__bias"] = torch.full_like(state["omega__0__bias"], float("nan"))
    with pytest.raises(ConfigError, match="non-finite"):
        penalty.load_state_dict(state)
