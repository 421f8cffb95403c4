"""Test inputs built from the bundled sample: DICOM files, Roboflow-layout exports, a published
segmentation model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

ROBOFLOW_SPLITS = {"train": "train", "val": "valid", "test": "test"}


def write_dicom(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2", **tags: object) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = SecondaryCaptureImageStorage
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.PatientName = "Doe^Jane"
    dataset.PatientID = "MRN-0042"
    dataset.PatientBirthDate = "19700101"
    dataset.Modality = "DX"
    dataset.BodyPartExamined = "HAND"
    dataset.Rows, dataset.Columns = pixels.shape
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = photometric
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 16, 12, 11
    dataset.PixelRepresentation = 0
    for name, value in tags.items():
        setattr(dataset, name, value)
    dataset.PixelData = pixels.astype(np.uint16).tobytes()
    dataset.save_as(path, enforce_file_format=True)
    return path


def sample_coco(sample_dir: Path, split: str) -> dict:
    return json.loads((sample_dir / f"{split}.json").read_text())


def roboflow_coco_export(sample_dir: Path, folder: Path) -> Path:
    """The sample as Roboflow exports COCO: a folder per split with ``_annotations.coco.json``, and
    Roboflow's extra category for the dataset itself (id 0, supercategory "none")."""
    for split, name in ROBOFLOW_SPLITS.items():
        content = sample_coco(sample_dir, split)
        (folder / name).mkdir(parents=True)
        for image in content["images"]:
            shutil.copy(sample_dir / "images" / image["file_name"], folder / name / image["file_name"])
        categories = [{"id": 0, "name": "bones", "supercategory": "none"}]
        categories += [{**c, "supercategory": "bones"} for c in content["categories"]]
        (folder / name / "_annotations.coco.json").write_text(json.dumps({**content, "categories": categories}))
    return folder


def roboflow_yolo_export(sample_dir: Path, folder: Path) -> Path:
    """The sample as Roboflow exports YOLO: data.yaml with ``../<split>/images`` paths, one label
    file per image with normalised centre/size boxes."""
    names = None
    for split, name in ROBOFLOW_SPLITS.items():
        content = sample_coco(sample_dir, split)
        names = [c["name"] for c in sorted(content["categories"], key=lambda c: c["id"])]
        index_of = {c["id"]: i for i, c in enumerate(sorted(content["categories"], key=lambda c: c["id"]))}
        (folder / name / "images").mkdir(parents=True)
        (folder / name / "labels").mkdir()
        for image in content["images"]:
            shutil.copy(sample_dir / "images" / image["file_name"], folder / name / "images" / image["file_name"])
            lines = []
            for a in (a for a in content["annotations"] if a["image_id"] == image["id"]):
                x, y, w, h = a["bbox"]
                lines.append(
                    f"{index_of[a['category_id']]} {(x + w / 2) / image['width']:.6f} "
                    f"{(y + h / 2) / image['height']:.6f} {w / image['width']:.6f} {h / image['height']:.6f}"
                )
            stem = Path(image["file_name"]).stem
            (folder / name / "labels" / f"{stem}.txt").write_text("\n".join(lines))
    (folder / "data.yaml").write_text(
        "train: ../train/images\nval: ../valid/images\ntest: ../test/images\n"
        f"nc: {len(names)}\nnames: {json.dumps(names)}\n"
    )
    return folder


def boxes_by_file(content: dict) -> dict[str, list[list[float]]]:
    """file name -> sorted [x1, y1, x2, y2] boxes of a COCO file."""
    found: dict[str, list] = {image["file_name"]: [] for image in content["images"]}
    name_of = {image["id"]: image["file_name"] for image in content["images"]}
    for a in content["annotations"]:
        x, y, w, h = a["bbox"]
        found[name_of[a["image_id"]]].append([x, y, x + w, y + h])
    return {name: sorted(boxes) for name, boxes in found.items()}


def ramp_16_bit() -> np.ndarray:
    return np.tile(np.linspace(0, 4095, 64), (48, 1)).astype(np.uint16)  # dark left, bright right


def publish_segmenter(home: Path, sample_dir: Path) -> str:
    """A U-Net trained for one epoch, its head biased so that it marks every pixel: a mask whose
    every pixel the brush region must carry."""
    import torch

    from fracture_al.detection.mask_models import MaskModelConfig
    from fracture_al.detection.mask_training import MaskTrainConfig, fit_masks
    from fracture_al.detection.store import ModelStore
    from fracture_al.detection.training import load_splits
    from fracture_al.detection.versioning import publish_mask_outcome

    splits = load_splits(sample_dir)
    outcome = fit_masks(MaskModelConfig("segmentation", "unet", image_size=64), MaskTrainConfig(epochs=1),
                        splits["train"], None, home / "runs" / "unet", device=torch.device("cpu"))  # fmt: skip
    with torch.no_grad():
        outcome.model.segmentation_head[0].bias.fill_(20.0)
    return publish_mask_outcome(ModelStore(home / "models"), outcome, test_split=None, data_sources={},
                                device=torch.device("cpu")).name  # fmt: skip
