"""The detector shipped in the package: a new home starts from it, verified, and it finds fractures
on bundled X-rays it was not trained on (the sample's val and test X-rays come from FracAtlas val
and test; it was trained on FracAtlas train)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from torchvision.ops import box_iou

from fracture_al.detection.data import CocoFile
from fracture_al.detection.image_score import UNCALIBRATED, ProbabilityCalibration, fracture_probability
from fracture_al.detection.images import load_image
from fracture_al.detection.model_files import saved_model_config, version_model_config
from fracture_al.detection.predictor import Predictor
from fracture_al.detection.shipped_model import SHIPPED_DIR, ShippedModelError, install_shipped, manifest, open_store
from fracture_al.detection.store import ModelStore

pytestmark = pytest.mark.slow  # runs the shipped detector on the CPU


def test_a_new_home_serves_the_verified_shipped_model_and_it_finds_a_fracture(tmp_path: Path, sample_dir: Path):
    store = open_store(tmp_path / "models")
    version = store.current()
    assert version.provenance["source"] == "shipped"
    assert version.provenance["sha256"] == manifest()["sha256"]
    assert open_store(tmp_path / "models").list() == [version]  # installed once, not per opening
    # The version's config.json (from the manifest) rebuilds the network its weights were saved with.
    assert version_model_config(version) == saved_model_config(version.weights_path)

    predictor = Predictor.from_version(version, torch.device("cpu"))
    # Whether it finds the fracture, not where its display threshold was calibrated (on FracAtlas
    # val; benchmarks/reported/shipped_on_sample.json counts at that threshold): the check is at 0.3.
    threshold = 0.3
    found = []
    for split in ("val", "test"):
        coco = CocoFile(sample_dir / f"{split}.json")
        fractured = [record for record in coco.images if record.boxes]
        assert fractured
        for record in fractured:
            shown = predictor.predict([load_image(sample_dir / "images" / record.file_name)])[0].above(threshold)
            if len(shown.boxes):
                overlap = box_iou(torch.as_tensor(shown.boxes), torch.tensor(record.boxes, dtype=torch.float32))
                found.append(bool((overlap >= 0.3).any()))
    assert any(found), "no fractured sample X-ray got a box overlapping its fracture"

    # Its fracture probability is served through the calibration fitted on FracAtlas val.
    calibration = version.probability_calibration
    fitted_on_val = manifest()["metrics"]["validation"]["probability_calibration"]
    assert calibration == ProbabilityCalibration.from_dict(fitted_on_val)
    assert calibration != UNCALIBRATED and predictor.calibration == calibration
    seen = predictor.predict([load_image(sample_dir / "images" / fractured[0].file_name)])[0]
    assert seen.image_score == pytest.approx(calibration(fracture_probability(seen.scores)))


def test_tampered_shipped_weights_are_refused(tmp_path: Path) -> None:
    folder = tmp_path / "shipped"
    shutil.copytree(SHIPPED_DIR, folder)
    weights = folder / manifest(folder)["file"]
    content = bytearray(weights.read_bytes())
    content[len(content) // 2] ^= 0xFF
    weights.write_bytes(bytes(content))
    store = ModelStore(tmp_path / "models")
    with pytest.raises(ShippedModelError, match=r"SHA-256 .* damaged or replaced"):
        install_shipped(store, folder)
    assert store.list() == []  # nothing half-installed


def test_an_installed_shipped_version_whose_file_changed_is_not_loaded(tmp_path: Path) -> None:
    version = open_store(tmp_path / "models").current()
    with version.weights_path.open("r+b") as stream:
        stream.seek(1000)
        byte = stream.read(1)
        stream.seek(1000)
        stream.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ShippedModelError, match="damaged or replaced"):
        Predictor.from_version(version, torch.device("cpu"))
