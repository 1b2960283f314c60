"""The multi-head classifier keeps parameter names stable as heads are added."""

from __future__ import annotations

import pytest
import torch

from memaware.errors import ConfigError
from memaware.models import build_model


def test_names_stable_when_heads_added() -> None:
    model = build_model("mlp", (28, 28))
    model.add_head(0, 2)
    before = dict(model.named_parameters())
    model.add_head(1, 2)
    after = dict(model.named_parameters())
    assert all(after[name] is param for name, param in before.items())
    assert set(after) - set(before) == {"heads.1.weight", "heads.1.bias"}
    assert [n for n in after if n.startswith("backbone")] == [
        "backbone.1.weight",
        "backbone.1.bias",
        "backbone.3.weight",
        "backbone.3.bias",
    ]


def test_forward_heads_concatenates() -> None:
    model = build_model("mlp", (784,), hidden=(16,))
    model.add_head(0, 2)
    model.add_head(3, 5)
    x = torch.rand(4, 784)
    both = model.forward_heads(x, [0, 3])
    assert both.shape == (4, 7)
    assert torch.allclose(both[:, 2:], model(x, 3))


def test_head_errors() -> None:
    model = build_model("mlp", (784,), hidden=(8,))
    model.add_head(0, 2)
    with pytest.raises(ConfigError, match="has 2 outputs"):
        model.add_head(0, 3)
    with pytest.raises(ConfigError, match="no head 1"):
        model(torch.rand(1, 784), 1)
    with pytest.raises(ConfigError, match="unknown model"):
        build_model("resnet", (784,))
