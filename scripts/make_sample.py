"""Rebuild fracture_al/sample/ from a FracAtlas COCO staging (../shared/data/fracatlas).

Picks, per split, the first fractured and non-fractured X-rays in file-name order, so the sample
is reproducible; keeps the split each image has in the source.
"""

import argparse
import json
import shutil
from pathlib import Path

PER_SPLIT = {"train": (12, 12), "val": (4, 4), "test": (4, 4)}  # (fractured, not fractured)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--source", type=Path, default=Path("../shared/data/fracatlas"))
    parser.add_argument("--target", type=Path, default=Path("fracture_al/sample"))
    args = parser.parse_args()
    (args.target / "images").mkdir(parents=True, exist_ok=True)
    for split, (positives, negatives) in PER_SPLIT.items():
        coco = json.loads((args.source / f"{split}.json").read_text())
        boxed = {a["image_id"] for a in coco["annotations"]}
        images = sorted(coco["images"], key=lambda image: image["file_name"])
        chosen = [i for i in images if i["id"] in boxed][:positives]
        chosen += [i for i in images if i["id"] not in boxed][:negatives]
        ids = {image["id"] for image in chosen}
        subset = {
            **{k: v for k, v in coco.items() if k not in ("images", "annotations")},
            "images": chosen,
            "annotations": [a for a in coco["annotations"] if a["image_id"] in ids],
        }
        (args.target / f"{split}.json").write_text(json.dumps(subset, indent=1))
        for image in chosen:
            shutil.copy2(args.source / "images" / image["file_name"], args.target / "images")
    shutil.copy2(args.source / "SOURCE.md", args.target / "FRACATLAS_SOURCE.md")


if __name__ == "__main__":
    main()
