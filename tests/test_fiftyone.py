"""FiftyOne with its real database: evaluation on a case built so TP/FP/FN are known, mistakenness
on a deleted box, near-duplicates, saved views, tags surviving a refresh; the App served and
screenshotted in headless Chromium."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from fracture_al.detection.predictor import ImagePrediction
from fracture_al.integrations.fiftyone_inspect import (
    InspectionSample,
    LabelledImage,
    build_dataset,
    configure_fiftyone,
    images_from_folder,
    inspect_images,
)
from fracture_al.integrations.loopback import free_port, wait_until_answering

# Where tests leave files for people to look at (the App screenshot); CI keeps it.
ARTIFACTS = Path(os.environ.get("FRACTURE_AL_TEST_ARTIFACTS", Path(__file__).parents[1] / "test-artifacts"))


@pytest.fixture(scope="session")
def fiftyone_database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("fiftyone-home")
    configure_fiftyone(home)
    import fiftyone  # noqa: F401  (configured before its first import)

    return home


@pytest.fixture()
def dataset_name(fiftyone_database: Path):
    import fiftyone as fo

    name = f"fracture-al-test-{secrets.token_hex(3)}"
    yield name
    if fo.dataset_exists(name):
        fo.delete_dataset(name)


def prediction(width: int, height: int, *boxes: tuple[list[float], float]) -> ImagePrediction:
    return ImagePrediction(width, height, np.array([b for b, _ in boxes], dtype=float).reshape(-1, 4),
                           np.array([s for _, s in boxes], dtype=float), ["fracture"] * len(boxes))  # fmt: skip


def known_case(sample_dir: Path) -> list[InspectionSample]:
    """A: found (TP). B: missed, with a false alarm elsewhere (FN + FP). C: a healthy X-ray with a
    false alarm (FP). D: its box deleted from the ground truth while the model is sure of it (FP, and
    a possible missing label). E: not labelled yet, an exact copy of A's embedding."""
    files = sorted((sample_dir / "images").glob("*.jpg"))[:5]
    size = 400, 500
    box, elsewhere = [100.0, 120.0, 180.0, 200.0], [250.0, 300.0, 330.0, 380.0]
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(5, 16))
    vectors[4] = vectors[0]
    cases = [
        ([("fracture", box)], prediction(*size, (box, 0.99))),
        ([("fracture", box)], prediction(*size, (elsewhere, 0.9))),
        ([], prediction(*size, (elsewhere, 0.8))),
        ([], prediction(*size, (box, 0.99))),
        (None, prediction(*size, (box, 0.6))),
    ]
    return [
        InspectionSample(LabelledImage(path, *size, truth, {"case": "ABCDE"[i]}), predicted, vectors[i], 0.5)
        for i, (path, (truth, predicted)) in enumerate(zip(files, cases, strict=True))
    ]


def test_evaluation_mistakenness_duplicates_views_and_tags(sample_dir: Path, dataset_name: str, tmp_path: Path):
    import fiftyone as fo

    samples = known_case(sample_dir)
    summary = build_dataset(dataset_name, samples, score_threshold=0.5, duplicate_threshold=0.01,
                            plot_dir=tmp_path)  # fmt: skip
    assert (summary.samples, summary.labelled) == (5, 4)
    assert (summary.true_positives, summary.false_positives, summary.false_negatives) == (1, 3, 1)
    dataset = fo.load_dataset(dataset_name)
    by_case = {s["case"]: s for s in dataset}
    assert (by_case["A"]["eval_tp"], by_case["B"]["eval_fn"], by_case["C"]["eval_fp"]) == (1, 1, 1)
    assert [d["eval"] for d in by_case["B"]["predictions"].detections] == ["fp"]
    assert not by_case["E"].has_field("eval_tp") or by_case["E"]["eval_tp"] is None
    assert by_case["D"]["possible_missing"] >= 1 and by_case["A"]["possible_missing"] == 0
    assert summary.pr_curve is not None and summary.pr_curve.is_file()

    assert set(dataset.list_saved_views()) >= {"likely-label-errors", "model-misses", "false-alarms", "near-duplicates"}
    assert [s["case"] for s in dataset.load_saved_view("model-misses")] == ["B"]
    assert sorted(s["case"] for s in dataset.load_saved_view("false-alarms")) == ["B", "C", "D"]
    assert "D" in [s["case"] for s in dataset.load_saved_view("likely-label-errors")]
    assert sorted(s["case"] for s in dataset.load_saved_view("near-duplicates")) == ["A", "E"]
    assert dataset.get_brain_info("backbone_map") is not None and dataset.has_field("uniqueness")

    by_case["D"].tags.append("relabel")
    by_case["D"].save()
    build_dataset(dataset_name, samples, score_threshold=0.5, duplicate_threshold=0.01)  # a refresh
    assert [s["case"] for s in fo.load_dataset(dataset_name).match_tags("relabel")] == ["D"]
    json.dumps(summary.views)  # the CLI prints it as JSON


def test_masks_are_segmentation_labels_evaluated_pixel_by_pixel(sample_dir: Path, dataset_name: str) -> None:
    """A: a 10x10 fracture, half of it predicted. B: healthy, labelled with a mask only (a masks-only
    project), 50 pixels predicted. C: a fracture and no segmenter's mask. Pooled over A and B: 50
    hits, 50 misses, 50 false pixels -> Dice 100 / 200 = 0.5; 100 wrong pixels of 2 x 50 x 40 ->
    pixel accuracy 0.975. C is not evaluated; all three are labelled."""
    import fiftyone as fo

    files = sorted((sample_dir / "images").glob("*.jpg"))[:3]
    square, left_half, elsewhere, empty = (np.zeros((50, 40), dtype=bool) for _ in range(4))
    square[10:20, 10:20] = True
    left_half[10:20, 10:15] = True
    elsewhere[30:35, 20:30] = True
    box = [10.0, 10.0, 20.0, 20.0]
    cases = [([("fracture", box)], square, left_half), (None, empty, elsewhere), ([("fracture", box)], square, None)]
    samples = []
    for i, (path, (truth, mask, predicted)) in enumerate(zip(files, cases, strict=True)):
        image = LabelledImage(path, 40, 50, truth, {"case": "ABC"[i]}, mask)
        samples.append(InspectionSample(image, prediction(40, 50, (box, 0.9)), np.eye(3)[i], 0.5, predicted))

    summary = build_dataset(dataset_name, samples, score_threshold=0.5, duplicate_threshold=0.01)

    assert summary.segmentation == pytest.approx({"images": 2, "dice": 0.5, "pixel_accuracy": 0.975})
    assert (summary.samples, summary.labelled) == (3, 3)
    dataset = fo.load_dataset(dataset_name)
    assert dataset.default_mask_targets == {1: "fracture"}
    by_case = {s["case"]: s for s in dataset}
    assert np.array_equal(by_case["A"]["ground_truth_mask"].mask > 0, square)  # survived the database
    assert by_case["A"]["eval_mask_accuracy"] is not None  # FiftyOne's per-sample fields, for sorting in the App
    assert by_case["C"]["predicted_mask"] is None and by_case["C"]["eval_mask_accuracy"] is None


def test_a_folder_with_outlines_gives_each_x_ray_its_fracture_mask(sample_dir: Path) -> None:
    images = images_from_folder(sample_dir)
    fractured = [image for image in images if image.ground_truth]
    healthy = [image for image in images if image.ground_truth == []]
    assert fractured and healthy
    for image in fractured:  # the outlines lie inside their boxes (FracAtlas draws both)
        assert image.mask.shape == (image.height, image.width) and image.mask.any()
        inside = np.zeros_like(image.mask)
        for _, (x1, y1, x2, y2) in image.ground_truth:
            inside[max(0, int(y1) - 1) : int(y2) + 2, max(0, int(x1) - 1) : int(x2) + 2] = True
        assert not (image.mask & ~inside).any(), image.filepath
    assert not any(image.mask.any() for image in healthy)


@pytest.mark.slow
def test_inspection_adds_a_segmenters_masks_at_each_x_rays_size(trained_home: Path, sample_dir: Path) -> None:
    from fracture_al.detection.devices import choose_device
    from fracture_al.detection.mask_models import MaskModelConfig, build_mask_model
    from fracture_al.detection.mask_predictor import MaskPredictor
    from fracture_al.detection.predictor import Predictor
    from fracture_al.detection.store import ModelStore

    cpu = choose_device("cpu")
    detector = Predictor.from_version(ModelStore(trained_home / "models").current(), cpu)
    config = MaskModelConfig("segmentation", "unet", image_size=64)
    segmenter = MaskPredictor(build_mask_model(config, imagenet=False), config, cpu, "untrained")
    images = images_from_folder(sample_dir, splits=("val",))[:3]
    assert images

    inspected = inspect_images(images, detector, batch_size=2, segmenter=segmenter)

    assert len(inspected) == len(images)
    for sample in inspected:
        assert sample.predicted_mask.dtype == bool
        assert sample.predicted_mask.shape == (sample.image.height, sample.image.width)


def cli(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fracture_al", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def fiftyone_env(home: Path, database: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "FRACTURE_AL_HOME": str(home), "FRACTURE_AL_DEVICE": "cpu",
            "FIFTYONE_DATABASE_DIR": os.environ["FIFTYONE_DATABASE_DIR"], **extra}  # fmt: skip


@pytest.mark.slow
def test_inspect_a_folder_then_serve_it_in_the_app_and_screenshot_the_grid(
    trained_home: Path, sample_dir: Path, fiftyone_database: Path, dataset_name: str
) -> None:
    env = fiftyone_env(trained_home, fiftyone_database, FRACTURE_AL_PREDICT_SCORE_THRESHOLD="0.3")
    built = cli(env, "inspect", "--data", str(sample_dir), "--name", dataset_name, "--json")
    assert built.returncode == 0, built.stderr
    assert built.stdout.lstrip().startswith("{"), built.stdout[:800]
    summary = json.loads(built.stdout)
    sample_count = sum(
        len(json.loads((sample_dir / f"{s}.json").read_text())["images"]) for s in ("train", "val", "test")
    )
    assert summary["samples"] == summary["labelled"] == sample_count
    assert summary["true_positives"] + summary["false_negatives"] == sum(
        len(json.loads((sample_dir / f"{s}.json").read_text())["annotations"]) for s in ("train", "val", "test")
    )

    port = free_port()
    app = subprocess.Popen([sys.executable, "-m", "fracture_al", "app", "--name", dataset_name, "--port", str(port)],
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        assert wait_until_answering(f"http://127.0.0.1:{port}/", timeout=120, process=app), "the App did not answer"
        page = requests.get(f"http://127.0.0.1:{port}/datasets/{dataset_name}", timeout=30)
        assert page.status_code == 200 and "<html" in page.text.lower()
        query = {"query": f'{{ dataset(name: "{dataset_name}") {{ name sampleFields {{ path }} }} }}'}
        answer = requests.post(f"http://127.0.0.1:{port}/graphql", json=query, timeout=30).json()
        assert answer["data"]["dataset"]["name"] == dataset_name, answer
        paths = {field["path"] for field in answer["data"]["dataset"]["sampleFields"]}
        assert {"ground_truth", "ground_truth_mask", "predictions", "uncertainty", "mistakenness"} <= paths

        chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        if chromium is None:
            pytest.skip("Debian's chromium is not installed (make test installs it where apt-get may)")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        screenshot = ARTIFACTS / "fiftyone-app.png"
        screenshot.unlink(missing_ok=True)
        subprocess.run([chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--screenshot={screenshot}", "--window-size=1600,1000", "--virtual-time-budget=40000",
                        f"http://127.0.0.1:{port}/datasets/{dataset_name}"],
                       capture_output=True, timeout=180, check=True)  # fmt: skip
        pixels = np.asarray(Image.open(screenshot).convert("RGB"), dtype=float)
        assert pixels.shape[:2] == (1000, 1600) and pixels.std() > 20  # a rendered page, not a blank one
    finally:
        app.terminate()
        app.wait(timeout=60)


@pytest.mark.slow
def test_tagged_x_rays_go_back_to_label_studio_and_their_corrections_come_back(
    trained_home: Path, sample_dir: Path, fiftyone_database: Path, label_studio, tmp_path: Path
) -> None:
    import fiftyone as fo
    from label_studio_sdk import LabelStudio

    from fracture_al.integrations.label_config import FRACTURE_LABEL_CONFIG
    from fracture_al.integrations.regions import percent_to_box

    client = LabelStudio(base_url=label_studio.url, api_key=label_studio.token)
    home = label_studio.local_files_root / "fiftyone-home"
    shutil.copytree(trained_home / "models", home / "models")
    env = fiftyone_env(home, fiftyone_database, LABEL_STUDIO_URL=label_studio.url,
                       LABEL_STUDIO_API_KEY=label_studio.token,
                       FRACTURE_AL_LABEL_STUDIO_FILES_ROOT=str(label_studio.local_files_root))  # fmt: skip
    project = client.projects.create(title="inspected", label_config=FRACTURE_LABEL_CONFIG)
    imported = cli(env, "import", "coco", str(sample_dir / "val.json"), "--images", str(sample_dir / "images"),
                   "--dataset", "val-set", "--project", str(project.id))  # fmt: skip
    assert imported.returncode == 0, imported.stderr
    name = f"fracture-al-test-{secrets.token_hex(3)}"
    try:
        built = cli(env, "inspect", "--project", str(project.id), "--name", name, "--json")
        assert built.returncode == 0, built.stderr
        tasks = sorted(client.tasks.list(project=project.id, fields="all"), key=lambda t: t.id)
        assert json.loads(built.stdout)["labelled"] == len(tasks)

        dataset = fo.load_dataset(name)
        chosen = sorted(dataset, key=lambda s: s["task_id"])[:2]
        for sample in chosen:
            sample.tags.append("relabel")
            sample.save()
        sent = cli(env, "send-back", "--name", name, "--tag", "relabel")
        assert sent.returncode == 0, sent.stderr
        flagged = [t.id for t in client.tasks.list(project=project.id) if t.data.get("review_request") == "relabel"]
        assert flagged == [s["task_id"] for s in chosen]
        (tab,) = [v for v in client.views.list(project=project.id) if v.data.get("title") == "Review: relabel"]
        assert [t.id for t in client.tasks.list(project=project.id, view=tab.id)] == flagged
        # The current labels are there to correct: the task keeps its annotation.
        first = client.tasks.get(id=str(flagged[0]))
        assert len(first.annotations) == 1

        # An annotator corrects the first one: one box, moved. Inspecting again shows the correction.
        annotation = first.annotations[0]
        region = {"from_name": "label", "to_name": "image", "type": "rectanglelabels", "original_width": 100,
                  "original_height": 100, "value": {"x": 10, "y": 20, "width": 30, "height": 40, "rotation": 0,
                                                    "rectanglelabels": ["Fracture"]}}  # fmt: skip
        client.annotations.update(id=annotation["id"], result=[region])
        again = cli(env, "inspect", "--project", str(project.id), "--name", name, "--json")
        assert again.returncode == 0, again.stderr
        refreshed = fo.load_dataset(name).match(fo.ViewField("task_id") == flagged[0]).first()
        (box,) = refreshed["ground_truth"].detections
        assert np.allclose(box.bounding_box, [0.1, 0.2, 0.3, 0.4])
        assert "relabel" in refreshed.tags  # the team's tags survive a refresh

        # A dataset built from an imported folder (as `inspect --data` builds it, here without running
        # the model) goes to the project it is told, labels preloaded.
        folder = home / "datasets" / "val-set"
        images = images_from_folder(folder)
        unscored = [InspectionSample(image, prediction(image.width, image.height), np.full(4, float(i)), 0.0)
                    for i, image in enumerate(images)]  # fmt: skip
        build_dataset(f"{name}-folder", unscored, score_threshold=0.5, duplicate_threshold=0.01,
                      info={"source": "folder", "data": str(folder)})  # fmt: skip
        folder_dataset = fo.load_dataset(f"{name}-folder")
        positive = folder_dataset.match(fo.ViewField("ground_truth.detections").length() > 0).first()
        positive.tags.append("relabel")
        positive.save()
        review = client.projects.create(title="review", label_config=FRACTURE_LABEL_CONFIG)
        assert cli(env, "send-back", "--name", f"{name}-folder").returncode == 1  # which project?
        sent = cli(env, "send-back", "--name", f"{name}-folder", "--project", str(review.id))
        assert sent.returncode == 0, sent.stderr
        (task,) = client.tasks.list(project=review.id, fields="all")
        assert task.data["review_request"] == "relabel" and task.data["source_sha256"] == positive["sha256"]
        (annotation,) = task.annotations
        boxes = [percent_to_box(r["value"], positive.metadata.width, positive.metadata.height)
                 for r in annotation["result"]]  # fmt: skip
        truth = [d.bounding_box for d in positive["ground_truth"].detections]
        assert len(boxes) == len(truth)
        for (x1, y1, x2, y2), (x, y, w, h) in zip(sorted(boxes), sorted(truth), strict=True):
            width, height = positive.metadata.width, positive.metadata.height
            assert np.allclose([x1 / width, y1 / height, (x2 - x1) / width, (y2 - y1) / height], [x, y, w, h])
    finally:
        for dataset_name in (name, f"{name}-folder"):
            if fo.dataset_exists(dataset_name):
                fo.delete_dataset(dataset_name)
