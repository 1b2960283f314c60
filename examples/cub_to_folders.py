"""Lay Caltech-UCSD Birds-200-2011 out as an image folder: <root>/<name>/{train,test}/<class>/<image>.

Run: python examples/cub_to_folders.py CUB_200_2011 DATA_ROOT [--name birds] [--symlink]

``CUB_200_2011`` is the folder the official ``CUB_200_2011.tgz`` extracts to (``images/``,
``images.txt``, ``image_class_labels.txt``, ``train_test_split.txt``). Each image goes to the
class folder it already has under ``images/`` (``001.Black_footed_Albatross`` …, which sort in
class-id order), in ``train/`` or ``test/`` as ``train_test_split.txt`` says; there is no
official validation split, so memaware carves one from ``train/``. Then
``memaware ... --benchmark folders --data-root DATA_ROOT --tasks birds``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

LISTS = ("images.txt", "image_class_labels.txt", "train_test_split.txt")


def _read_list(path: Path) -> dict[str, str]:
    """``<image id> <value>`` lines as id → value (the value is the rest of the line)."""
    table = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2:
            raise SystemExit(f"{path}:{number}: expected '<image id> <value>', got {line!r}")
        table[parts[0]] = parts[1].strip()
    return table


def convert(
    release: Path, root: Path, name: str = "birds", *, symlink: bool = False
) -> dict[str, int]:
    """Copy (or link) every image of the release into ``root/name``; the image count per split."""
    missing = [f for f in (*LISTS, "images") if not (release / f).exists()]
    if missing:
        raise SystemExit(
            f"{release} lacks {', '.join(missing)}; pass the folder CUB_200_2011.tgz extracts to"
        )
    target = root / name
    if target.exists():
        raise SystemExit(f"{target} already exists; remove it or choose another --name")
    paths, labels, splits = (_read_list(release / f) for f in LISTS)
    if not paths.keys() == labels.keys() == splits.keys():
        raise SystemExit(f"{', '.join(LISTS)} in {release} do not list the same image ids")
    counts = {"train": 0, "test": 0}
    for image_id, relative in paths.items():
        if splits[image_id] not in ("0", "1"):
            raise SystemExit(
                f"train_test_split.txt: image {image_id} is {splits[image_id]!r}, not 0 or 1"
            )
        split = "train" if splits[image_id] == "1" else "test"
        source = release / "images" / relative
        if not source.is_file():
            raise SystemExit(f"images.txt lists {source}, which does not exist")
        destination = target / split / Path(relative).parent.name / source.name
        destination.parent.mkdir(parents=True, exist_ok=True)
        if symlink:
            destination.symlink_to(source.resolve())
        else:
            shutil.copy2(source, destination)
        counts[split] += 1
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Lay CUB-200-2011 out as <root>/<name>/{train,test}/<class>/<image>."
    )
    parser.add_argument("release", type=Path, help="the extracted CUB_200_2011 folder")
    parser.add_argument("root", type=Path, help="the data root to write <name>/ under")
    parser.add_argument("--name", default="birds", help="the dataset folder's name (default birds)")
    parser.add_argument("--symlink", action="store_true", help="link the images instead of copying")
    args = parser.parse_args(argv)
    counts = convert(args.release, args.root, args.name, symlink=args.symlink)
    print(f"{args.root / args.name}: {counts['train']} training and {counts['test']} test images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
