"""Image preprocessing without torchvision: what a backbone expects its inputs to look like.

Pillow reads and resizes, torch holds the result. The two transforms follow torchvision's
PIL code paths, so that a backbone pretrained with torchvision sees the inputs it was trained on:

* :func:`evaluation_transform`: ``Resize(resize)`` of the shorter side (bilinear, antialiased),
  ``CenterCrop(crop)``, ``ToTensor()``, ``Normalize(mean, std)``. Used for testing, validation
  and importance estimation;
* :func:`training_transform`: ``RandomResizedCrop(crop, scale=(0.08, 1), ratio=(3/4, 4/3))``,
  ``RandomHorizontalFlip(0.5)``, ``ToTensor()``, ``Normalize(mean, std)``. Its randomness comes
  from torch's global generator, which a ``DataLoader`` seeds in each worker from its own
  (seeded) generator, and which the training loop seeds in the main process: augmented runs
  repeat.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from memaware.errors import ConfigError, DataError

__all__ = [
    "Preprocessing",
    "evaluation_transform",
    "open_header",
    "read_rgb",
    "to_tensor",
    "training_transform",
]

# torchvision's RandomResizedCrop defaults: the crop covers 8–100 % of the image's area, with an
# aspect ratio between 3:4 and 4:3, tried 10 times before falling back to a centre crop.
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
CROP_ATTEMPTS = 10

# 16- and 32-bit integer greys that Pillow's own convert("RGB") would clip at 255 (PNG's 16-bit
# greys open as one of these).
_WIDE_GREYS = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})


@dataclass(frozen=True)
class Preprocessing:
    """Resize the shorter side to ``resize``, centre-crop ``crop``×``crop``, then (x − mean) / std.

    ``x`` is the RGB image as float32 in [0, 1], channels first; ``mean`` and ``std`` have one
    value per channel. The evaluation and importance transform of a backbone (torchvision's
    ``Resize(resize), CenterCrop(crop), ToTensor(), Normalize(mean, std)``); training
    augmentation crops to the same ``crop``.
    """

    resize: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __post_init__(self) -> None:
        for field in ("resize", "crop"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"preprocessing {field} must be an integer >= 1, got {value!r}")
        if self.crop > self.resize:
            raise ConfigError(
                f"preprocessing crop {self.crop} is larger than the resized shorter side "
                f"{self.resize}; choose crop <= resize"
            )
        for field in ("mean", "std"):
            values = getattr(self, field)
            try:
                floats = tuple(float(v) for v in values)
            except (TypeError, ValueError):
                raise ConfigError(
                    f"preprocessing {field} must be three numbers (R, G, B), got {values!r}"
                ) from None
            if len(floats) != 3 or not all(math.isfinite(v) for v in floats):
                raise ConfigError(
                    f"preprocessing {field} must be three finite numbers (R, G, B), got {values!r}"
                )
            if field == "std" and min(floats) <= 0:
                raise ConfigError(f"preprocessing std must be > 0 per channel, got {values!r}")
            # Lists from a JSON config become the tuples the type says (the class is frozen).
            object.__setattr__(self, field, floats)


def open_header(path: Path) -> tuple[int, int]:
    """The ``(width, height)`` of the image file ``path``, read from its header without decoding.

    Raises:
        DataError: ``path`` cannot be read or is not an image Pillow knows.
    """
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise DataError(_unreadable(path, error)) from None


def read_rgb(path: Path) -> Image.Image:
    """The image file ``path`` decoded as 8-bit RGB.

    Grey (``L``), palette (``P``), ``CMYK`` and other modes go through Pillow's ``convert("RGB")``;
    alpha (``LA``, ``RGBA``, ``PA``, transparent palettes) is dropped by that same conversion,
    which keeps each pixel's stored colour (torchvision's default loader does the same; nothing
    is composited). 16-bit greys are scaled to 8 bits (v / 257, rounded) instead of clipped.

    Raises:
        DataError: the file cannot be read, is not an image, or its data are truncated or
            corrupt.
    """
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in _WIDE_GREYS:
                wide = np.asarray(image).astype(np.float64)
                grey = np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8)
                return Image.fromarray(grey).convert("RGB")
            return image.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise DataError(_unreadable(path, error)) from None


def _unreadable(path: Path, error: BaseException) -> str:
    return (
        f"cannot read the image {path} ({error}); replace or delete the file, or re-extract "
        "the dataset"
    )


def to_tensor(image: Image.Image, preprocessing: Preprocessing) -> torch.Tensor:
    """The RGB ``image`` as float32 (3, H, W): (pixel / 255 − mean) / std, channel by channel."""
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)
    mean = torch.tensor(preprocessing.mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(preprocessing.std, dtype=torch.float32).view(3, 1, 1)
    return pixels.to(torch.float32).div_(255.0).sub_(mean).div_(std)


def evaluation_transform(image: Image.Image, preprocessing: Preprocessing) -> torch.Tensor:
    """``image`` resized (shorter side to ``resize``), centre-cropped to ``crop``, as a tensor.

    The longer side becomes ``int(resize · long / short)`` and the crop starts at
    ``round((size − crop) / 2)`` on each axis, as in torchvision.
    """
    width, height = image.size
    short, long = min(width, height), max(width, height)
    new_long = int(preprocessing.resize * long / short)
    size = (preprocessing.resize, new_long) if width <= height else (new_long, preprocessing.resize)
    resized = image.resize(size, Image.Resampling.BILINEAR)
    crop = preprocessing.crop
    left = round((size[0] - crop) / 2)
    top = round((size[1] - crop) / 2)
    return to_tensor(resized.crop((left, top, left + crop, top + crop)), preprocessing)


def _random_crop_box(width: int, height: int) -> tuple[int, int, int, int]:
    """A random ``(left, top, right, bottom)`` box as torchvision's ``RandomResizedCrop`` draws it.

    Area fraction s ~ U(0.08, 1) and log aspect ratio ~ U(log 3/4, log 4/3); box sides
    ``round(√(s·A·r))`` × ``round(√(s·A/r))``, placed uniformly. After 10 misses, the largest
    centred box whose aspect ratio lies within [3/4, 4/3].
    """
    area = width * height
    log_ratio = (math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]))
    for _ in range(CROP_ATTEMPTS):
        target_area = area * torch.empty(1).uniform_(*CROP_SCALE).item()
        aspect = math.exp(torch.empty(1).uniform_(*log_ratio).item())
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,)).item())
            left = int(torch.randint(0, width - w + 1, (1,)).item())
            return left, top, left + w, top + h
    ratio = width / height
    if ratio < CROP_RATIO[0]:
        w, h = width, round(width / CROP_RATIO[0])
    elif ratio > CROP_RATIO[1]:
        w, h = round(height * CROP_RATIO[1]), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def training_transform(image: Image.Image, preprocessing: Preprocessing) -> torch.Tensor:
    """A random resized crop of ``image`` to ``crop``×``crop``, flipped left–right with p = 0.5.

    Draws from torch's global generator (see :func:`_random_crop_box` for the crop); the crop is
    resized bilinearly in one pass from the original pixels.
    """
    box = _random_crop_box(*image.size)
    crop = preprocessing.crop
    out = image.resize((crop, crop), Image.Resampling.BILINEAR, box=box)
    if torch.rand(1).item() < 0.5:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return to_tensor(out, preprocessing)
