"""What a new user sees from the shipped detector on the bundled sample, before labelling anything.

Runs the shipped model (as a new home installs it) over the sample X-rays it was not trained on
(the sample's val and test X-rays, from FracAtlas val and test) and counts, at the backend's
default display threshold: fractures that get a box overlapping the true box by IoU >= 0.3, and
boxes on X-rays without a fracture.

    python -m benchmarks.shipped_on_sample --out benchmarks/reported/shipped_on_sample.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from torchvision.ops import box_iou

from fracture_al.detection.data import CocoFile
from fracture_al.detection.images import load_image
from fracture_al.detection.predictor import Predictor
from fracture_al.detection.shipped_model import open_store
from fracture_al.integrations.task_predictions import display_threshold
from fracture_al.settings import SAMPLE_DIR, Settings

MATCH_IOU = 0.3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threshold", type=float, default=Settings().predict_score_threshold,
                        help="Default: the backend's, i.e. the shipped version's calibrated display threshold.")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/shipped_on_sample.json"))
    args = parser.parse_args()

    version = open_store(Path(tempfile.mkdtemp()) / "models").current()
    predictor = Predictor.from_version(version, torch.device("cpu"))
    args.threshold = display_threshold(args.threshold, predictor.operating_threshold)
    rows = []
    for split in ("val", "test"):
        coco = CocoFile(SAMPLE_DIR / f"{split}.json")
        for record in coco.images:
            prediction = predictor.predict([load_image(SAMPLE_DIR / "images" / record.file_name)])[0]
            shown = prediction.above(args.threshold)
            truth = torch.tensor(record.boxes, dtype=torch.float32).reshape(-1, 4)
            overlap = box_iou(truth, torch.as_tensor(shown.boxes).reshape(-1, 4))
            found = int((overlap >= MATCH_IOU).any(dim=1).sum()) if len(shown.boxes) else 0
            false = int((overlap < MATCH_IOU).all(dim=0).sum()) if len(truth) else len(shown.boxes)
            rows.append({"file": record.file_name, "split": split, "fractures": len(record.boxes), "found": found,
                         "false_boxes": false, "image_score": prediction.image_score})  # fmt: skip
    fractured = [row for row in rows if row["fractures"]]
    healthy = [row for row in rows if not row["fractures"]]
    summary = {
        "model": version.provenance.get("name"),
        "threshold": args.threshold,
        "fractures": sum(row["fractures"] for row in fractured),
        "fractures_found": sum(row["found"] for row in fractured),
        "fractured_xrays_with_a_found_fracture": sum(row["found"] > 0 for row in fractured),
        "fractured_xrays": len(fractured),
        "healthy_xrays": len(healthy),
        "false_boxes_on_healthy_xrays": sum(row["false_boxes"] for row in healthy),
        "healthy_xrays_with_a_box": sum(row["false_boxes"] > 0 for row in healthy),
        "false_boxes_on_fractured_xrays": sum(row["false_boxes"] for row in fractured),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"summary": summary, "rows": rows}, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
