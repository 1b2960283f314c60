"""An image classification dataset with a fixed train/test split, and the checks a loader runs on it."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from memaware.errors import DataError

__all__ = ["ImageDataset", "validate"]


@dataclass(frozen=True, eq=False, repr=False)
class ImageDataset:
    """A classification dataset with a fixed train/test split.

    Images are uint8 tensors of shape N×(image shape), e.g. N×28×28 for MNIST (0 = background)
    or N×3×32×32 (channels first) for CIFAR; labels are int64 tensors of shape N. Loaders may
    return the same cached instance to several callers: do not modify the tensors in place.
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: tuple[str, ...]
    #: Where the data was read from (a folder, a package file or a URL list), for messages.
    source: str = ""

    @property
    def n_classes(self) -> int:
        """Number of classes (the length of ``classes``)."""
        return len(self.classes)

    def __repr__(self) -> str:
        # The default repr would print the tensors' contents.
        return (
            f"ImageDataset(name={self.name!r}, train={tuple(self.train_x.shape)}, "
            f"test={tuple(self.test_x.shape)}, n_classes={self.n_classes}, "
            f"source={self.source!r})"
        )


def validate(
    ds: ImageDataset,
    *,
    expected_shape: tuple[int, ...] | None = None,
    n_classes: int = 10,
    expected_sizes: tuple[int, int] | None = None,
    min_per_class: int = 1,
) -> None:
    """Check that ``ds`` holds what a loader promises; raise :class:`DataError` if not.

    Checks dtypes (uint8 images, int64 labels), the shape of one image (``expected_shape``;
    when None, that of the first training image, so that both splits share one shape),
    matching numbers of images and labels, labels in ``[0, n_classes)``, at least
    ``min_per_class`` examples of every class in both splits, and, when given, the exact
    ``(train, test)`` sizes.
    """
    where = ds.source or ds.name
    hint = "the files may be corrupt or hold another dataset; get a fresh copy"
    if len(ds.classes) != n_classes:
        raise DataError(
            f"{where}: {ds.name} names {len(ds.classes)} classes but {n_classes} are expected"
        )
    shape = tuple(ds.train_x.shape[1:]) if expected_shape is None else expected_shape
    for split, x, y in (("train", ds.train_x, ds.train_y), ("test", ds.test_x, ds.test_y)):
        if x.dtype != torch.uint8 or x.dim() < 2 or tuple(x.shape[1:]) != shape:
            raise DataError(
                f"{where}: {split} images are {x.dtype} of shape {tuple(x.shape)}; expected "
                f"uint8 of shape N×{'×'.join(map(str, shape))}; {hint}"
            )
        if y.dtype != torch.int64 or y.dim() != 1:
            raise DataError(
                f"{where}: {split} labels are {y.dtype} of shape {tuple(y.shape)}; expected a "
                f"1-D int64 tensor; {hint}"
            )
        if len(x) != len(y):
            raise DataError(
                f"{where}: {split} split has {len(x)} images but {len(y)} labels; {hint}"
            )
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= n_classes):
            raise DataError(
                f"{where}: {split} labels range over [{int(y.min())}, {int(y.max())}] but must "
                f"lie in [0, {n_classes}); {hint}"
            )
        counts = torch.bincount(y, minlength=n_classes).tolist()
        short = {ds.classes[c]: n for c, n in enumerate(counts) if n < min_per_class}
        if short:
            raise DataError(
                f"{where}: {split} split has fewer than {min_per_class} examples of classes "
                f"{short} (class: count); {hint}"
            )
    if expected_sizes is not None:
        sizes = (len(ds.train_y), len(ds.test_y))
        if sizes != expected_sizes:
            raise DataError(
                f"{where}: {ds.name} has {sizes[0]} training and {sizes[1]} test examples; "
                f"expected {expected_sizes[0]} and {expected_sizes[1]}; {hint}"
            )
