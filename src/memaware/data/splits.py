"""Seeded, class-stratified splits of a labelled set into two parts."""

from __future__ import annotations

import torch

__all__ = ["stratified_split"]


def stratified_split(
    labels: torch.Tensor, test_fraction: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices of ``labels`` into shuffled (train, test) index tensors, class by class.

    Each class puts ``round(count * test_fraction)`` of its examples in the test split,
    clamped so that a class with at least two examples appears in both splits.
    """
    train_parts: list[torch.Tensor] = []
    test_parts: list[torch.Tensor] = []
    for label in torch.unique(labels).tolist():
        members = torch.nonzero(labels == label).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        n_test = round(len(members) * test_fraction)
        if len(members) >= 2:
            n_test = min(max(n_test, 1), len(members) - 1)
        test_parts.append(members[:n_test])
        train_parts.append(members[n_test:])
    train = torch.cat(train_parts)
    test = torch.cat(test_parts)
    # Shuffle across classes so that taking a prefix of either split is not class-biased.
    return (
        train[torch.randperm(len(train), generator=generator)],
        test[torch.randperm(len(test), generator=generator)],
    )
