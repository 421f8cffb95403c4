"""A domain shift built from FracAtlas' own ``body_part`` metadata, for the benchmarks that adapt a
pretrained detector to a team's own X-rays (few-label fine-tuning, active learning).

    source     FracAtlas train X-rays that show no hand    (the "pretrained" model's data)
    source_val FracAtlas val X-rays that show no hand      (its model selection)
    pool       FracAtlas train X-rays that show a hand     (the team's unlabelled X-rays)
    target     FracAtlas val + test X-rays that show a hand (the team's test set)

An X-ray "shows a hand" when ``hand`` is among its body parts (a hand + shoulder film counts).
``write_domain_shift`` writes each part as a COCO file beside a link to the images, so every
part is a dataset folder :func:`detection.training.load_splits` can read.

    python benchmarks/domain_shift.py --data ../shared/data/fracatlas --out benchmarks/results/hand_shift
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
from pathlib import Path
from typing import Any

TARGET_PART = "hand"
PARTS = ("source", "source_val", "pool", "target")


def shows(image: dict[str, Any], part: str) -> bool:
    return part in (image.get("body_part") or [])


def subset(coco: dict[str, Any], images: list[dict[str, Any]]) -> dict[str, Any]:
    ids = {image["id"] for image in images}
    return {
        **{key: value for key, value in coco.items() if key not in ("images", "annotations")},
        "images": images,
        "annotations": [a for a in coco.get("annotations", []) if a["image_id"] in ids],
    }


def merge(*cocos: dict[str, Any]) -> dict[str, Any]:
    """FracAtlas' splits share one id space (they partition annotations.json), so merging is a union."""
    return {
        **{key: value for key, value in cocos[0].items() if key not in ("images", "annotations")},
        "images": [image for coco in cocos for image in coco["images"]],
        "annotations": [annotation for coco in cocos for annotation in coco.get("annotations", [])],
    }


def domain_shift(data: Path, part: str = TARGET_PART) -> dict[str, dict[str, Any]]:
    """The four parts as COCO dictionaries."""
    train, val, test = (json.loads((data / f"{name}.json").read_text()) for name in ("train", "val", "test"))
    target = merge(val, test)
    return {
        "source": subset(train, [i for i in train["images"] if not shows(i, part)]),
        "source_val": subset(val, [i for i in val["images"] if not shows(i, part)]),
        "pool": subset(train, [i for i in train["images"] if shows(i, part)]),
        "target": subset(target, [i for i in target["images"] if shows(i, part)]),
    }


def labelled_subset(pool: dict[str, Any], size: int, seed: int) -> dict[str, Any]:
    """``size`` pool X-rays drawn at random; for one seed, a smaller set is inside every larger one."""
    order = sorted(pool["images"], key=lambda image: image["id"])
    random.Random(seed).shuffle(order)
    if size > len(order):
        raise ValueError(f"asked for {size} X-rays from a pool of {len(order)}")
    return subset(pool, order[:size])


def unlabelled_rest(pool: dict[str, Any], size: int, seed: int) -> dict[str, Any]:
    """The pool X-rays ``labelled_subset(pool, size, seed)`` leaves out: no model fine-tuned on that
    subset, or on a smaller one of the same seed, has seen them."""
    labelled = {image["id"] for image in labelled_subset(pool, size, seed)["images"]}
    return subset(pool, [image for image in pool["images"] if image["id"] not in labelled])


def write_dataset(folder: Path, images: Path, train: dict[str, Any], val: dict[str, Any] | None = None,
                  test: dict[str, Any] | None = None) -> Path:
    """A dataset folder (train/val/test.json and an ``images`` link) that load_splits reads."""
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / "images"
    if link.is_symlink() and link.resolve() != images.resolve():
        link.unlink()  # a folder reused for another data set
    if not link.exists():
        with contextlib.suppress(FileExistsError):  # another benchmark process beside this one made it
            link.symlink_to(images.resolve(), target_is_directory=True)
    for name, coco in (("train", train), ("val", val), ("test", test)):
        if coco is not None:
            # Written aside, then renamed: processes started side by side read whole files only.
            temporary = folder / f"{name}.json.{os.getpid()}"
            temporary.write_text(json.dumps(coco))
            temporary.replace(folder / f"{name}.json")
    return folder


def describe(parts: dict[str, dict[str, Any]]) -> dict[str, dict[str, int]]:
    return {
        name: {
            "images": len(coco["images"]),
            "with_fracture": len({a["image_id"] for a in coco["annotations"]}),
            "boxes": len(coco["annotations"]),
        }
        for name, coco in parts.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/fracatlas"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/hand_shift"))
    args = parser.parse_args()
    parts = domain_shift(args.data)
    write_dataset(args.out / "source", args.data / "images", parts["source"], parts["source_val"], parts["target"])
    print(json.dumps(describe(parts), indent=2))


if __name__ == "__main__":
    main()
