"""Image folders: layout, labels, the validation carve, transforms, loading and scenarios."""

from __future__ import annotations

import importlib.util
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from memaware.data.datasets import LoaderOptions, batches, for_evaluation
from memaware.data.folders import ImageFiles, folder_scenario, load_image_folder
from memaware.data.transforms import (
    Preprocessing,
    _random_crop_box,
    evaluation_transform,
    read_rgb,
    training_transform,
)
from memaware.errors import ConfigError, DataError

PRE = Preprocessing(resize=12, crop=8, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
PLAIN = Preprocessing(resize=12, crop=8, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))

# (mode saved, file suffix, (width, height)): the modes and odd sizes a real folder holds.
KINDS = [
    ("RGB", ".jpg", (40, 30)),
    ("L", ".png", (17, 5)),
    ("RGBA", ".png", (1, 300)),
    ("P", ".PNG", (20, 20)),
    ("LA", ".png", (9, 33)),
    ("I;16", ".png", (16, 16)),
    ("CMYK", ".JPEG", (25, 12)),
    ("RGB", ".png", (8, 8)),
]


def write_image(path: Path, mode: str, size: tuple[int, int], seed: int) -> None:
    """A noise image of ``size`` saved in ``mode`` (format from the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    width, height = size
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.uint16))
    else:
        rgb = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        image = rgb.convert(mode)
    image.save(path, format="JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG")


def write_split(folder: Path, classes: dict[str, int], seed: int) -> None:
    """``count`` images per class under ``folder/<class>/``, cycling through :data:`KINDS`."""
    n = 0
    for name, count in classes.items():
        for i in range(count):
            mode, suffix, size = KINDS[n % len(KINDS)]
            write_image(folder / name / f"img{i:02d}{suffix}", mode, size, seed + n)
            n += 1


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """alpha (3 classes, no val/), beta (3 classes, its own val/), gamma (2 classes)."""
    base = tmp_path_factory.mktemp("folders")
    write_split(base / "alpha" / "train", {"eel": 6, "cat": 6, "dog": 6}, 0)
    write_split(base / "alpha" / "test", {"cat": 2, "dog": 2, "eel": 2}, 100)
    write_split(base / "beta" / "train", {"x": 3, "y": 3, "z": 3}, 200)
    write_split(base / "beta" / "val", {"x": 1, "z": 1}, 300)
    write_split(base / "beta" / "test", {"x": 2, "y": 2, "z": 2}, 400)
    write_split(base / "gamma" / "train", {"a": 2, "b": 2}, 500)
    write_split(base / "gamma" / "test", {"a": 1, "b": 1}, 600)
    # Ignored: hidden files and folders, other file types.
    (base / "alpha" / "train" / "cat" / ".DS_Store").write_bytes(b"\0\1")
    (base / "alpha" / "train" / "cat" / "notes.txt").write_text("not an image")
    write_image(base / "alpha" / "train" / ".hidden" / "a.png", "RGB", (8, 8), 1)
    (base / ".cache").mkdir()
    return base


def test_classes_are_sorted_folder_names_and_labels_their_positions(root: Path) -> None:
    data = load_image_folder(root, "alpha", PRE)
    assert data.name == "alpha"
    assert data.classes == ("cat", "dog", "eel")
    assert data.n_classes == 3
    for split in (data.train, data.val, data.test):
        assert split.labels.dtype == torch.int64
        assert split.classes == data.classes
        for path, label in zip(split.files, split.labels.tolist(), strict=True):
            assert path.parent.name == data.classes[label]
            assert path.suffix.lower() in (".jpg", ".jpeg", ".png")
    assert len(data.train) + len(data.val) == 18
    assert len(data.test) == 6


def test_the_carved_validation_split_is_seeded_stratified_and_disjoint(root: Path) -> None:
    first = load_image_folder(root, "alpha", PRE, augment=True, validation_fraction=0.34, seed=3)
    again = load_image_folder(root, "alpha", PRE, augment=True, validation_fraction=0.34, seed=3)
    assert first.val.files == again.val.files and first.train.files == again.train.files
    # round(6 · 0.34) = 2 of each class of six.
    assert torch.bincount(first.val.labels).tolist() == [2, 2, 2]
    assert torch.bincount(first.train.labels).tolist() == [4, 4, 4]
    assert not set(first.val.files) & set(first.train.files)
    every = {p for p in (root / "alpha" / "train").glob("[!.]*/[!.]*") if p.suffix != ".txt"}
    assert set(first.val.files) | set(first.train.files) == every
    # The carve is evaluated, never augmented; the training part keeps augmenting.
    assert first.train.augment and not first.val.augment and not first.test.augment
    carves = {load_image_folder(root, "alpha", PRE, seed=s).val.files for s in range(4)}
    assert len(carves) > 1


def test_a_val_folder_is_used_as_it_is(root: Path) -> None:
    data = load_image_folder(root, "beta", PRE, validation_fraction=0.5)
    assert data.classes == ("x", "y", "z")
    assert len(data.train) == 9
    assert data.val.labels.tolist() == [0, 2]
    assert all(p.parent.parent.name == "val" for p in data.val.files)


@pytest.mark.parametrize(("mode", "suffix", "size"), KINDS)
def test_every_mode_reads_as_rgb_and_transforms_to_the_crop(
    tmp_path: Path, mode: str, suffix: str, size: tuple[int, int]
) -> None:
    path = tmp_path / f"image{suffix}"
    write_image(path, mode, size, 7)
    image = read_rgb(path)
    assert image.mode == "RGB" and image.size == size
    x = evaluation_transform(image, PLAIN)
    assert x.shape == (3, 8, 8) and x.dtype == torch.float32
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    for seed in range(20):
        torch.manual_seed(seed)
        y = training_transform(image, PLAIN)
        assert y.shape == (3, 8, 8) and float(y.min()) >= 0.0 and float(y.max()) <= 1.0


def test_sixteen_bit_greys_are_scaled_not_clipped(tmp_path: Path) -> None:
    path = tmp_path / "wide.png"
    Image.fromarray(np.array([[0, 257, 25700, 65535]], dtype=np.uint16)).save(path)
    pixels = np.asarray(read_rgb(path))
    assert pixels[0, :, 0].tolist() == [0, 1, 100, 255]
    assert (pixels[..., 0] == pixels[..., 2]).all()


def test_the_evaluation_transform_crops_the_centre_and_normalises(tmp_path: Path) -> None:
    # 4 wide, 2 high: the shorter side is already 2, so no resampling; the crop keeps columns 1–2.
    pixels = np.arange(4 * 2 * 3, dtype=np.uint8).reshape(2, 4, 3) * 10
    tiny = Preprocessing(resize=2, crop=2, mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 2.0))
    x = evaluation_transform(Image.fromarray(pixels), tiny)
    for c, (mean, std) in enumerate(zip(tiny.mean, tiny.std, strict=True)):
        for row in range(2):
            for col in range(2):
                expected = (pixels[row, col + 1, c] / 255.0 - mean) / std
                assert math.isclose(float(x[c, row, col]), expected, rel_tol=1e-6, abs_tol=1e-6)


def test_the_evaluation_transform_resizes_the_shorter_side_first() -> None:
    # A left half black, right half white 40×20 image: the shorter side 20 → 12 makes it 24×12,
    # and the centred 8×8 crop straddles the edge (columns 8–15 of 24), half dark, half light.
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, 20:] = 255
    x = evaluation_transform(Image.fromarray(pixels), PLAIN)
    assert float(x[:, :, :3].max()) < 0.05 and float(x[:, :, 5:].min()) > 0.95


def test_the_training_crop_follows_torchvision() -> None:
    torch.manual_seed(0)
    for _ in range(200):
        left, top, right, bottom = _random_crop_box(40, 30)
        w, h = right - left, bottom - top
        assert 0 <= left < right <= 40 and 0 <= top < bottom <= 30
        assert 0.08 * 1200 * 0.9 <= w * h <= 1200
        assert 3 / 4 * 0.85 <= w / h <= 4 / 3 * 1.15
    # No box of 8–100 % of a 1×300 image has a ratio in [3/4, 4/3]: the centred fallback.
    assert _random_crop_box(1, 300) == (0, 149, 1, 150)
    assert _random_crop_box(300, 1) == (149, 0, 150, 1)


def test_augmentation_repeats_under_a_seed_and_differs_across_seeds(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    write_image(path, "RGB", (40, 30), 3)
    image = read_rgb(path)
    torch.manual_seed(5)
    first = training_transform(image, PRE)
    torch.manual_seed(5)
    assert torch.equal(first, training_transform(image, PRE))
    torch.manual_seed(6)
    assert not torch.equal(first, training_transform(image, PRE))


def collect(data: ImageFiles, seed: int, workers: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    options = LoaderOptions(workers=workers, persistent_workers=False)
    return list(batches(data, 4, shuffle=True, generator=generator, loader=options))


def same(a: list[tuple[torch.Tensor, torch.Tensor]], b: list[tuple[torch.Tensor, ...]]) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x, u) and torch.equal(y, v) for (x, y), (u, v) in zip(a, b, strict=True)
    )


def test_batches_through_a_data_loader_repeat_with_the_generator_seed(root: Path) -> None:
    data = load_image_folder(root, "alpha", PRE, augment=True)
    evaluated = data.train.unaugmented()
    plain = collect(evaluated, 1, 0)
    # 15 training images (one of each class's six went to the validation split).
    assert [tuple(x.shape) for x, _ in plain] == [(4, 3, 8, 8)] * 3 + [(3, 3, 8, 8)]
    assert all(x.dtype == torch.float32 and y.dtype == torch.int64 for x, y in plain)
    assert sorted(torch.cat([y for _, y in plain]).tolist()) == sorted(evaluated.labels.tolist())
    # Without augmentation the order alone comes from the generator, whoever decodes.
    assert same(plain, collect(evaluated, 1, 2))
    assert not same(plain, collect(evaluated, 2, 0))
    # Augmented: workers seed torch's generator from the loader's; in-process, the run seeds it.
    assert same(collect(data.train, 1, 2), collect(data.train, 1, 2))
    torch.manual_seed(9)
    in_process = collect(data.train, 1, 0)
    torch.manual_seed(9)
    assert same(in_process, collect(data.train, 1, 0))
    assert not same(in_process, collect(evaluated, 1, 0))


def test_the_task_setting_has_a_head_per_folder_and_local_labels(root: Path) -> None:
    scenario = folder_scenario(root, ["alpha", "beta"], "task", PRE, augment=True)
    assert scenario.name == "folders-alpha-beta" and scenario.setting == "task"
    assert scenario.task_names == ["alpha", "beta"]
    assert [(t.index, t.head, t.n_classes) for t in scenario.tasks] == [(0, 0, 3), (1, 1, 3)]
    beta = scenario.tasks[1]
    assert beta.train.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert beta.val is not None and beta.val.labels.tolist() == [0, 2]
    assert scenario.input_shape == (3, 8, 8)


def test_the_class_setting_shifts_labels_by_the_folders_before(root: Path) -> None:
    scenario = folder_scenario(root, ["gamma", "alpha", "beta"], "class", PRE, augment=True)
    assert [(t.head, t.n_classes) for t in scenario.tasks] == [(0, 8)] * 3
    ranges = []
    for task in scenario.tasks:
        assert task.val is not None
        labels = torch.cat([task.train.labels, task.val.labels, task.test.labels])
        ranges.append((int(labels.min()), int(labels.max())))
    assert ranges == [(0, 1), (2, 4), (5, 7)]
    alpha = scenario.tasks[1]
    x, y = alpha.train[0]
    assert x.shape == (3, 8, 8) and int(y) == int(alpha.train.labels[0]) >= 2
    # Evaluation and importance see the shifted labels without augmentation.
    evaluated = for_evaluation(alpha.train)
    assert torch.equal(evaluated.labels, alpha.train.labels)
    assert torch.equal(evaluated[0][0], load_image_folder(root, "alpha", PRE).train[0][0])


def test_the_domain_setting_needs_equal_class_counts(root: Path) -> None:
    scenario = folder_scenario(root, ["alpha", "beta"], "domain", PRE)
    assert [(t.head, t.n_classes) for t in scenario.tasks] == [(0, 3), (0, 3)]
    assert scenario.tasks[1].test.labels.max() == 2
    with pytest.raises(ConfigError, match=r"alpha: 3, gamma: 2.*task or class"):
        folder_scenario(root, ["alpha", "gamma"], "domain", PRE)


def test_scenario_arguments_are_checked(root: Path) -> None:
    with pytest.raises(ConfigError, match="unknown scenario"):
        folder_scenario(root, ["alpha"], "joint", PRE)
    with pytest.raises(ConfigError, match="at least one"):
        folder_scenario(root, [], "task", PRE)
    with pytest.raises(ConfigError, match="'alpha' is repeated"):
        folder_scenario(root, ["alpha", "beta", "alpha"], "task", PRE)
    with pytest.raises(ConfigError, match="one folder name"):
        load_image_folder(root, "alpha/train", PRE)
    with pytest.raises(ConfigError, match="validation fraction"):
        load_image_folder(root, "alpha", PRE, validation_fraction=1.0)


def test_missing_folders_are_named(root: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"'delta' under .*alpha, beta, gamma\)"):
        load_image_folder(root, "delta", PRE)
    with pytest.raises(DataError, match="is not a folder"):
        load_image_folder(tmp_path / "nowhere", "alpha", PRE)
    write_split(tmp_path / "no_test" / "train", {"a": 1}, 0)
    with pytest.raises(DataError, match=r"no_test has no test/ folder"):
        load_image_folder(tmp_path, "no_test", PRE)
    write_split(tmp_path / "no_train" / "test", {"a": 1}, 0)
    with pytest.raises(DataError, match=r"no_train has no train/ folder"):
        load_image_folder(tmp_path, "no_train", PRE)


def test_empty_and_unknown_class_folders_are_errors(tmp_path: Path) -> None:
    write_split(tmp_path / "empty" / "train", {"a": 2}, 0)
    write_split(tmp_path / "empty" / "test", {"a": 1}, 0)
    (tmp_path / "empty" / "train" / "b").mkdir()
    (tmp_path / "empty" / "train" / "b" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match=r"empty/train/b holds no \.jpg, \.jpeg, \.png images"):
        load_image_folder(tmp_path, "empty", PRE)

    write_split(tmp_path / "extra" / "train", {"a": 2}, 0)
    write_split(tmp_path / "extra" / "test", {"a": 1, "z": 1}, 0)
    with pytest.raises(DataError, match=r"extra/test/z is a class that .*extra/train lacks"):
        load_image_folder(tmp_path, "extra", PRE)
    write_split(tmp_path / "extra" / "val", {"q": 1}, 0)
    shutil.rmtree(tmp_path / "extra" / "test" / "z")
    with pytest.raises(DataError, match=r"extra/val/q is a class"):
        load_image_folder(tmp_path, "extra", PRE)

    write_split(tmp_path / "bare" / "test", {"a": 1}, 0)
    (tmp_path / "bare" / "train").mkdir()
    write_image(tmp_path / "bare" / "train" / "loose.png", "RGB", (8, 8), 0)
    with pytest.raises(DataError, match=r"bare/train holds no class folders"):
        load_image_folder(tmp_path, "bare", PRE)


def test_unreadable_and_truncated_images_are_named(tmp_path: Path) -> None:
    write_split(tmp_path / "bad" / "train", {"a": 2}, 0)
    write_split(tmp_path / "bad" / "test", {"a": 1}, 0)
    fake = tmp_path / "bad" / "train" / "a" / "fake.jpg"
    fake.write_text("this is text, not a JPEG")
    with pytest.raises(DataError, match=r"cannot read the image .*bad/train/a/fake\.jpg"):
        load_image_folder(tmp_path, "bad", PRE)
    fake.unlink()

    # A header that opens, data cut short: found when the image is decoded.
    cut = tmp_path / "bad" / "test" / "a" / "cut.png"
    write_image(cut, "RGB", (40, 40), 1)
    cut.write_bytes(cut.read_bytes()[:2000])
    data = load_image_folder(tmp_path, "bad", PRE)
    index = data.test.files.index(cut)
    with pytest.raises(DataError, match=r"cannot read the image .*cut\.png.*truncated"):
        data.test[index]


def test_image_files_check_their_labels() -> None:
    with pytest.raises(ConfigError, match="2 image files need as many labels, got 1"):
        ImageFiles([Path("a.png"), Path("b.png")], torch.tensor([0]), ["a"], PRE)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"resize": 0}, "resize must be an integer >= 1"),
        ({"crop": True}, "crop must be an integer >= 1"),
        ({"crop": 13}, "crop 13 is larger than the resized shorter side 12"),
        ({"mean": (0.5, 0.5)}, "mean must be three finite numbers"),
        ({"mean": "abc"}, "mean must be three numbers"),
        ({"std": (1.0, 0.0, 1.0)}, "std must be > 0"),
        ({"std": (1.0, math.nan, 1.0)}, "std must be three finite numbers"),
    ],
)
def test_preprocessing_fields_are_checked(fields: dict[str, object], message: str) -> None:
    values: dict[str, object] = {"resize": 12, "crop": 8, "mean": (0, 0, 0), "std": (1, 1, 1)}
    with pytest.raises(ConfigError, match=message):
        Preprocessing(**(values | fields))  # type: ignore[arg-type]


def test_preprocessing_keeps_lists_as_float_tuples() -> None:
    pre = Preprocessing(12, 8, [0, 0.5, 1], [1, 2, 3])  # type: ignore[arg-type]
    assert pre.mean == (0.0, 0.5, 1.0) and pre.std == (1.0, 2.0, 3.0)


def test_the_cub_example_lays_the_release_out_as_a_folder(tmp_path: Path) -> None:
    release = tmp_path / "CUB_200_2011"
    rows = [("001.Black_footed_Albatross", 1), ("001.Black_footed_Albatross", 0)]
    rows += [("002.Laysan_Albatross", 1), ("002.Laysan_Albatross", 1), ("002.Laysan_Albatross", 0)]
    images, labels, split = [], [], []
    for image_id, (folder, train) in enumerate(rows, start=1):
        relative = f"{folder}/{folder.split('.')[1]}_{image_id:04d}.jpg"
        write_image(release / "images" / relative, "RGB", (20, 16), image_id)
        images.append(f"{image_id} {relative}")
        labels.append(f"{image_id} {folder[:3].lstrip('0')}")
        split.append(f"{image_id} {train}")
    for name, lines in (
        ("images", images),
        ("image_class_labels", labels),
        ("train_test_split", split),
    ):
        (release / f"{name}.txt").write_text("\n".join(lines) + "\n")
    path = Path(__file__).resolve().parents[1] / "examples" / "cub_to_folders.py"
    spec = importlib.util.spec_from_file_location("cub_to_folders", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main([str(release), str(tmp_path / "root")]) == 0
    data = load_image_folder(tmp_path / "root", "birds", PRE)
    assert data.classes == ("001.Black_footed_Albatross", "002.Laysan_Albatross")
    assert torch.cat([data.train.labels, data.val.labels]).sort().values.tolist() == [0, 1, 1]
    assert data.test.labels.tolist() == [0, 1]
    with pytest.raises(SystemExit, match="already exists"):
        module.main([str(release), str(tmp_path / "root")])
