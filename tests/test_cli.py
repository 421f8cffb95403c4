"""The ``fracture-al`` command line, run as a user runs it (a subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fracture_al.detection.data import CocoFile


def run_cli(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "FRACTURE_AL_HOME": str(home), "FRACTURE_AL_DEVICE": "cpu"}
    return subprocess.run(
        [sys.executable, "-m", "fracture_al", *args], env=env, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory, sample_dir: Path) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("inputs")
    jpeg = sorted((sample_dir / "images").glob("*.jpg"))[0]
    sixteen = folder / "xray16.png"
    gray = np.asarray(Image.open(jpeg).convert("L"), dtype=np.uint16) * 16  # 12-bit range
    Image.fromarray(gray).save(sixteen)
    corrupt = folder / "corrupt.jpg"
    corrupt.write_bytes(jpeg.read_bytes()[:300])
    return {"jpeg": jpeg, "png16": sixteen, "corrupt": corrupt}


def test_predict_json_on_jpeg_and_16_bit_png(trained_home: Path, inputs: dict[str, Path], tmp_path: Path) -> None:
    result = run_cli(
        trained_home,
        "predict",
        str(inputs["jpeg"]),
        str(inputs["png16"]),
        "--json",
        "--threshold",
        "0",
        "--overlay",
        str(tmp_path / "overlays"),
    )
    assert result.returncode == 0, result.stderr
    answers = json.loads(result.stdout)
    assert [a["image"] for a in answers] == [str(inputs["jpeg"]), str(inputs["png16"])]
    for answer in answers:
        assert answer["model_version"] == "v0001"
        assert answer["detections"]  # threshold 0: every candidate box is printed
        for detection in answer["detections"]:
            x1, y1, x2, y2 = detection["box_xyxy"]
            assert 0 <= x1 < x2 <= answer["width"] and 0 <= y1 < y2 <= answer["height"]
            assert 0 <= detection["score"] <= 1
        assert Path(answer["overlay"]).is_file()
    assert answers[0]["width"] == Image.open(inputs["jpeg"]).width


def test_predict_reports_a_corrupt_file_and_still_answers_the_rest(trained_home: Path, inputs: dict[str, Path]) -> None:
    result = run_cli(trained_home, "predict", str(inputs["corrupt"]), str(inputs["jpeg"]), "--json")
    assert result.returncode == 1
    assert "corrupt.jpg" in result.stderr and "truncated" in result.stderr
    answers = json.loads(result.stdout)
    assert "error" in answers[0] and "detections" in answers[1]


def test_predict_table_output(trained_home: Path, inputs: dict[str, Path]) -> None:
    result = run_cli(trained_home, "predict", str(inputs["jpeg"]), "--threshold", "0")
    assert result.returncode == 0, result.stderr
    assert "fractures found (threshold 0.00)" in result.stdout


def test_evaluate_agrees_with_pycocotools_on_what_predict_prints(trained_home: Path, sample_dir: Path) -> None:
    """``evaluate`` (data loader, batched inference, our metrics) against an independent path: the
    boxes ``predict`` prints for the same X-rays, scored here by pycocotools and scikit-learn."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    result = run_cli(trained_home, "evaluate", "--json", "--split", "test")
    assert result.returncode == 0, result.stderr
    evaluated = json.loads(result.stdout)

    truth = COCO(str(sample_dir / "test.json"))
    images = truth.loadImgs(truth.getImgIds())
    assert images
    printed = run_cli(trained_home, "predict", "--json", "--threshold", "0",
                      *(str(sample_dir / "images" / image["file_name"]) for image in images))  # fmt: skip
    assert printed.returncode == 0, printed.stderr
    detections = [
        {"image_id": image["id"], "category_id": 1, "score": found["score"],
         "bbox": [x1, y1, x2 - x1, y2 - y1]}
        for image, answer in zip(images, json.loads(printed.stdout), strict=True)
        for found in answer["detections"] for x1, y1, x2, y2 in [found["box_xyxy"]]
    ]  # fmt: skip
    assert detections
    coco_eval = COCOeval(truth, truth.loadRes(detections), "bbox")
    coco_eval.evaluate()
    coco_eval.accumulate()
    coco_eval.summarize()
    assert evaluated["mAP50"] == pytest.approx(coco_eval.stats[1], abs=0.02)

    fractured = [bool(truth.getAnnIds(imgIds=[image["id"]])) for image in images]
    flagged = [any(found["score"] >= 0.5 for found in answer["detections"]) for answer in json.loads(printed.stdout)]
    assert 0 < sum(fractured) < len(fractured)
    agreeing = sum(f == g for f, g in zip(fractured, flagged, strict=True))
    assert evaluated["accuracy"] == pytest.approx(agreeing / len(images))  # printed scores are rounded: no AUROC


def test_models_list_show_and_promote(trained_home: Path) -> None:
    listed = json.loads(run_cli(trained_home, "models", "list", "--json").stdout)
    assert listed[0]["version"] == "v0001" and listed[0]["current"]
    shown = run_cli(trained_home, "models", "show")
    assert "losses.png" in shown.stdout
    # The fixture's few validation X-rays fit no calibration, and the version says so.
    assert "fracture probability the noisy-OR of the box scores, uncalibrated" in " ".join(shown.stdout.split())
    missing = run_cli(trained_home, "models", "promote", "v0042")
    assert missing.returncode != 0 and "v0042" in missing.stderr and "v0001" in missing.stderr


def test_listing_models_in_a_fresh_home_loads_no_torch(tmp_path: Path) -> None:
    """`models list` reads the store's files: it installs the shipped detector into a new home and
    lists it without the seconds that importing torch costs."""
    code = ("import sys; from fracture_al.cli import main; "
            f"main(['--home', {str(tmp_path)!r}, 'models', 'list', '--json'], standalone_mode=False); "
            "print([m for m in ('torch', 'torchvision') if m in sys.modules])")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    *listing, loaded = result.stdout.strip().splitlines()
    assert json.loads("\n".join(listing))[0]["version"] == "v0001" and loaded == "[]"


@pytest.mark.slow
def test_a_fresh_home_predicts_with_the_shipped_model(tmp_path: Path, sample_dir: Path) -> None:
    # The sample's fractured X-rays of val and test: FracAtlas X-rays the shipped model did not train on.
    fractured = [sample_dir / "images" / record.file_name for split in ("val", "test")
                 for record in CocoFile(sample_dir / f"{split}.json").images if record.boxes]  # fmt: skip
    assert fractured
    result = run_cli(tmp_path, "predict", *map(str, fractured), "--json", "--threshold", "0")
    assert result.returncode == 0, result.stderr
    answers = json.loads(result.stdout)
    assert len(answers) == len(fractured) and {answer["model_version"] for answer in answers} == {"v0001"}
    assert any(answer["detections"] for answer in answers)
    listed = json.loads(run_cli(tmp_path, "models", "list", "--json").stdout)
    assert [(row["version"], row["source"]) for row in listed] == [("v0001", "shipped")]
    written = list(tmp_path.rglob("*"))
    assert written
    assert [path for path in written if path.stat().st_mode & 0o077] == []  # this user's only




@pytest.mark.slow
def test_segmentation_is_trained_served_and_predicted_beside_the_detector(
    tmp_path: Path, inputs: dict[str, Path], sample_dir: Path
) -> None:
    """The study's form: train a U-Net, then `predict --image x.jpg` prints the fracture probability
    and writes the mask overlay. The detector stays the served detection model."""
    home = tmp_path / "home"
    trained = run_cli(home, "train", "--task", "segmentation", "--arch", "unet", "--epochs", "1", "--image-size", "128")
    assert trained.returncode == 0, trained.stderr
    models = json.loads(run_cli(home, "models", "list", "--json").stdout)
    assert [(m["version"], m["task"], m["current"]) for m in models] == [
        ("v0001", "detection", True), ("v0002", "segmentation", True)]  # fmt: skip
    assert (home / "models" / "versions" / "v0002" / "plots" / "test_predictions.png").is_file()

    image = sorted((sample_dir / "images").glob("*.jpg"))[0]
    printed = run_cli(home, "predict", "--image", str(image), "--task", "segmentation", "--json",
                      "--overlay", str(tmp_path / "overlays"))  # fmt: skip
    assert printed.returncode == 0, printed.stderr
    [result] = json.loads(printed.stdout)
    assert result["model_version"] == "v0002" and result["task"] == "segmentation"
    assert 0.0 <= result["probability"] <= 1.0 and result["fracture"] == (result["probability"] >= 0.5)
    assert Image.open(result["overlay"]).size[0] > 100
    detected = json.loads(run_cli(home, "predict", str(image), "--json").stdout)
    assert detected[0]["model_version"] == "v0001" and detected[0]["task"] == "detection"

    evaluated = run_cli(home, "evaluate", "--task", "segmentation", "--split", "val", "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    metrics = json.loads(evaluated.stdout)
    assert 0.0 <= metrics["dice_fractured"] <= 1.0 and "dice_fractured 95%" in metrics
    assert "run `fracture-al train --task classification` first" in run_cli(
        home, "predict", str(image), "--task", "classification").stderr
