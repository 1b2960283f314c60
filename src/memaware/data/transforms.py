"""Image preprocessing without torchvision: what a backbone expects its inputs to look like."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preprocessing:
    """Resize the shorter side to ``resize``, centre-crop ``crop``×``crop``, then (x − mean) / std.

    ``x`` is the RGB image as float32 in [0, 1], channels first; ``mean`` and ``std`` have one
    value per channel. The evaluation and importance transform of a backbone (torchvision's
    ``Resize(resize), CenterCrop(crop), ToTensor(), Normalize(mean, std)``).
    """

    resize: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
