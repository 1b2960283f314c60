"""A shared backbone with one linear head per task, keyed by head id.

Parameter names are stable as heads are added (``backbone.*``, ``heads.<id>.weight``), so
importance keyed by ``named_parameters()`` names keeps pointing at the same tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

import torch
from torch import nn

from memaware.errors import ConfigError


class MultiHeadClassifier(nn.Module):
    """``logits = heads[h](backbone(x))``; task-incremental learning adds one head per task.

    Domain- and class-incremental scenarios use a single head (id ``0``) for every task.
    """

    memaware_own_parameters_only = True  # it applies parameters only through its layers

    def __init__(self, backbone: nn.Module, feature_dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.heads = nn.ModuleDict()

    def add_head(self, head: int, n_classes: int) -> None:
        """Create head ``head`` with ``n_classes`` outputs (a fresh ``nn.Linear``), unless it exists."""
        key = str(head)
        if key in self.heads:
            existing = self.heads[key]
            assert isinstance(existing, nn.Linear)
            if existing.out_features != n_classes:
                raise ConfigError(
                    f"head {head} has {existing.out_features} outputs but the task needs {n_classes}"
                )
            return
        param = next(self.backbone.parameters(), None)
        linear = nn.Linear(self.feature_dim, n_classes)
        if param is not None:
            linear = linear.to(device=param.device, dtype=param.dtype)
        self.heads[key] = linear

    @property
    def device(self) -> torch.device:
        """Where the model's parameters are (the CPU for a model without any)."""
        param = next(self.parameters(), None)
        return param.device if param is not None else torch.device("cpu")

    @property
    def head_ids(self) -> list[int]:
        """Ids of the heads created so far, in creation order."""
        return [int(k) for k in self.heads]

    def named_parameters_of_heads_besides(
        self, heads: Collection[int]
    ) -> list[tuple[str, nn.Parameter]]:
        """``(name, parameter)`` of every head not in ``heads``: those a step training ``heads``
        leaves alone, unless a method's loss term reaches them."""
        kept = {str(head) for head in heads}
        return [
            (f"heads.{key}.{name}", param)
            for key, head in self.heads.items()
            if key not in kept
            for name, param in head.named_parameters()
        ]

    def _head(self, head: int) -> nn.Module:
        key = str(head)
        if key not in self.heads:
            raise ConfigError(f"the model has no head {head}; it has {self.head_ids}")
        return self.heads[key]

    def forward(self, x: torch.Tensor, head: int = 0) -> torch.Tensor:
        """Logits of one head for a batch ``x``."""
        return self._head(head)(self.backbone(x))  # type: ignore[no-any-return]

    def forward_heads(self, x: torch.Tensor, heads: Sequence[int]) -> torch.Tensor:
        """Logits of several heads concatenated along the last dimension: ``[F_h1(x), F_h2(x), ...]``."""
        features = self.backbone(x)
        return torch.cat([self._head(h)(features) for h in heads], dim=-1)


def heads_output(heads: Sequence[int]) -> Callable[[nn.Module, torch.Tensor], torch.Tensor]:
    """The output function ``F(model, x)`` = the concatenated logits of ``heads`` (for importance)."""

    def forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(model, MultiHeadClassifier):
            raise ConfigError(
                f"selecting heads needs a MultiHeadClassifier, got {type(model).__name__}"
            )
        return model.forward_heads(x, heads)

    return forward
