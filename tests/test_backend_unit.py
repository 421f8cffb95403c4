"""The ML backend's pieces and its HTTP surface, with a real model and real loopback HTTP."""

from __future__ import annotations

import base64
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from builders import publish_segmenter
from flask.testing import FlaskClient
from loopback_servers import FileServer, url_of

from fracture_al.backend.app import create_app
from fracture_al.detection.store import ModelStore
from fracture_al.integrations.image_source import ImageFetchError, ImageSource, LabelStudioConnection
from fracture_al.integrations.label_config import LabelConfigError, rectangle_target
from fracture_al.integrations.regions import box_to_percent, percent_to_box, prediction_regions
from fracture_al.settings import Settings

TOKEN = "0123456789abcdef0123456789abcdef01234567"
CONFIG = """<View>
  <Image name="xray" value="$image"/>
  <RectangleLabels name="findings" toName="xray" model_score_threshold="0.0">
    <Label value="Fracture" predicted_values="fracture"/>
    <Label value="Hardware"/>
  </RectangleLabels>
</View>"""


# Conversion and label mapping ------------------------------------------------------------------------
def test_pixel_box_to_percent_and_back() -> None:
    value = box_to_percent([40, 30, 100, 90], width=200, height=300)
    assert value == {"x": 20.0, "y": 10.0, "width": 30.0, "height": 20.0}
    assert percent_to_box(value, 200, 300) == pytest.approx([40, 30, 100, 90])


def test_boxes_are_clipped_to_the_image() -> None:
    value = box_to_percent([-5, 10, 210, 50], width=200, height=100)
    assert value["x"] == 0 and value["x"] + value["width"] == 100


def test_labels_map_by_predicted_values_and_by_name() -> None:
    target = rectangle_target(CONFIG, ("fracture",))
    assert (target.from_name, target.to_name, target.value_key) == ("findings", "xray", "image")
    assert target.label_of_class == {"fracture": "Fracture"}
    assert target.score_threshold == 0.0
    by_name = rectangle_target(CONFIG.replace(' predicted_values="fracture"', ""), ("fracture",))
    assert by_name.label_of_class == {"fracture": "Fracture"}  # case-insensitive name match


def test_unmapped_classes_and_low_scores_are_not_emitted() -> None:
    target = rectangle_target(CONFIG.replace('model_score_threshold="0.0"', ""), ("fracture", "cast"))
    regions = prediction_regions(
        np.array([[0, 0, 10, 10], [5, 5, 20, 20], [1, 1, 2, 2]]),
        np.array([0.9, 0.8, 0.2]),
        ["fracture", "cast", "fracture"],
        width=100,
        height=50,
        target=target,
        threshold=0.5,
    )
    assert len(regions) == 1
    region = regions[0]
    assert region["value"]["rectanglelabels"] == ["Fracture"]
    assert (region["from_name"], region["to_name"], region["type"]) == ("findings", "xray", "rectanglelabels")
    assert (region["original_width"], region["original_height"]) == (100, 50)
    assert region["value"]["height"] == pytest.approx(20.0)


@pytest.mark.parametrize(
    "config",
    [
        "<View><Image name='i' value='$image'/><Choices name='c' toName='i'><Choice value='a'/></Choices></View>",
        "<View",
    ],
)
def test_config_without_rectangles_is_refused(config: str) -> None:
    with pytest.raises(LabelConfigError):
        rectangle_target(config, ("fracture",))


def test_label_studio_paths_are_fetched_with_the_token(file_server: FileServer) -> None:
    source = ImageSource()
    data = source.fetch("/data/upload/1/xray.jpg", LabelStudioConnection(url_of(file_server), TOKEN))
    assert data == file_server.files["/data/upload/1/xray.jpg"]
    assert file_server.seen_authorization == [f"Token {TOKEN}"]


def test_token_is_not_sent_to_other_allowed_hosts(file_server: FileServer) -> None:
    source = ImageSource(allowed_hosts=["127.0.0.1"])
    elsewhere = LabelStudioConnection("http://localhost:1", TOKEN)
    source.fetch(f"{url_of(file_server)}/data/upload/1/xray.jpg", elsewhere)
    assert file_server.seen_authorization == [None]


def test_foreign_hosts_redirects_and_oversized_files_are_refused(file_server: FileServer) -> None:
    connection = LabelStudioConnection(url_of(file_server), TOKEN)
    source = ImageSource(max_bytes=len(file_server.files["/data/upload/1/xray.jpg"]) * 2)
    with pytest.raises(ImageFetchError, match="not the Label Studio"):
        source.fetch("http://198.51.100.7/x.jpg", connection)
    with pytest.raises(ImageFetchError, match="redirects are not followed"):
        source.fetch(f"{url_of(file_server)}/redirect", connection)
    with pytest.raises(ImageFetchError, match="cap"):
        source.fetch(f"{url_of(file_server)}/big.jpg", connection)
    with pytest.raises(ImageFetchError, match="404"):
        source.fetch("/data/upload/1/missing.jpg", connection)
    with pytest.raises(ImageFetchError, match="scheme"):
        source.fetch("s3://bucket/x.jpg", connection)


def test_local_paths_only_under_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "a.jpg").write_bytes(b"abc")
    (tmp_path / "secret.txt").write_text("no")
    source = ImageSource(local_root=root)
    assert source.fetch(str(root / "a.jpg"), None) == b"abc"
    assert source.fetch("a.jpg", None) == b"abc"
    for traversal in ("../secret.txt", str(root / ".." / "secret.txt"), f"file://{tmp_path}/secret.txt"):
        with pytest.raises(ImageFetchError, match="outside the allowed image root"):
            source.fetch(traversal, None)
    with pytest.raises(ImageFetchError, match="refused"):
        ImageSource().fetch(str(root / "a.jpg"), None)


# The HTTP surface -----------------------------------------------------------------------------------
@pytest.fixture()
def home(trained_home: Path, tmp_path: Path) -> Path:
    """A private copy of the trained home, so tests may publish versions into it."""
    copy = tmp_path / "home"
    shutil.copytree(trained_home / "models", copy / "models")
    return copy


def client_for(home: Path, **settings: object) -> FlaskClient:
    return create_app(Settings(home=home, device="cpu", **settings)).test_client()


def test_health_and_setup_report_the_current_version(home: Path) -> None:
    client = client_for(home)
    assert client.get("/health").json["status"] == "UP"
    reply = client.post("/setup", json={"project": "3.1700000000", "schema": CONFIG, "hostname": "http://x:1"})
    assert reply.status_code == 200
    assert reply.json == {"model_version": "v0001"}


def test_a_new_home_serves_the_shipped_model_and_a_tampered_one_is_503_with_advice(
    tmp_path: Path, sample_dir: Path
) -> None:
    client = client_for(tmp_path / "home", local_image_root=sample_dir / "images")
    reply = client.post("/setup", json={"project": "1.1", "schema": CONFIG})
    assert reply.status_code == 200 and reply.json == {"model_version": "v0001"}
    weights = tmp_path / "home" / "models" / "versions" / "v0001" / "model.pt"
    content = bytearray(weights.read_bytes())
    content[-100] ^= 0xFF
    weights.write_bytes(bytes(content))
    image = sorted((sample_dir / "images").glob("*.jpg"))[0].name
    reply = client.post("/predict", json={"tasks": [{"id": 1, "data": {"image": image}}], "project": "1.1",
                                          "label_config": CONFIG})  # fmt: skip
    assert reply.status_code == 503
    assert "damaged or replaced" in reply.json["error"]


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        ("{not json", "application/json"),
        ("[1, 2]", "application/json"),
        ('{"tasks": "x"}', "application/json"),
        ('{"tasks": [{"id": 1}]}', "application/json"),
        ('{"tasks": []}', "text/plain"),
    ],
)
def test_malformed_predict_requests_get_400(home: Path, body: str, content_type: str) -> None:
    reply = client_for(home).post("/predict", data=body, content_type=content_type)
    assert reply.status_code == 400
    assert reply.json["error"]


def test_predict_answers_every_task_in_order_even_when_images_fail(
    home: Path, file_server: FileServer, sample_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    local_root = tmp_path / "images"
    local_root.mkdir()
    shutil.copy(sorted((sample_dir / "images").glob("*.jpg"))[1], local_root / "local.jpg")
    client = client_for(home, local_image_root=local_root)
    client.post(
        "/setup", json={"project": "1.17", "schema": CONFIG, "hostname": url_of(file_server), "access_token": TOKEN}
    )
    tasks = [
        {"id": 11, "data": {"image": "/data/upload/1/xray.jpg"}},
        {"id": 12, "data": {"image": "/data/upload/1/missing.jpg"}},
        {"id": 13, "data": {"image": f"{url_of(file_server)}/corrupt.jpg"}},
        {"id": 14, "data": {"image": "../../etc/passwd"}},
        {"id": 15, "data": {"image": "http://203.0.113.9/x.jpg"}},
        {"id": 16, "data": {}},
        {"id": 17, "data": {"image": "local.jpg"}},
    ]
    reply = client.post("/predict", json={"tasks": tasks, "project": "1.17", "label_config": CONFIG})
    assert reply.status_code == 200
    results = reply.json["results"]
    assert len(results) == len(tasks)
    for index in (1, 2, 3, 4, 5):
        assert results[index]["result"] == []
    for index in (0, 6):
        result = results[index]
        assert result["model_version"] == "v0001"
        assert 0.0 <= result["score"] <= 1.0
        assert result["result"]  # threshold 0 in the config: every candidate box comes back
        for region in result["result"]:
            value = region["value"]
            assert 0 <= value["x"] <= value["x"] + value["width"] <= 100.0001
            assert 0 <= value["y"] <= value["y"] + value["height"] <= 100.0001
            assert 0 <= region["score"] <= 1
    for task_id in (12, 13, 14, 15, 16):
        assert f"task {task_id}: no prediction" in caplog.text
    assert TOKEN not in caplog.text


def test_boxes_are_shown_from_the_version_s_calibrated_threshold_unless_told_otherwise(
    home: Path, sample_dir: Path
) -> None:
    untuned = CONFIG.replace(' model_score_threshold="0.0"', "")
    image = sorted((sample_dir / "images").glob("*.jpg"))[0].name
    request = {"tasks": [{"id": 1, "data": {"image": image}}], "project": "1.1"}

    def shown_scores(label_config: str, **settings: object) -> list[float]:
        client = client_for(home, local_image_root=sample_dir / "images", **settings)
        client.post("/setup", json={"project": "1.1", "schema": label_config})
        reply = client.post("/predict", json={**request, "label_config": label_config})
        return [region["score"] for region in reply.json["results"][0]["result"]]

    every = len(shown_scores(CONFIG))  # the config's threshold 0: every candidate box
    assert every, "the fixture model keeps every candidate box: there should be some"
    metrics_file = home / "models" / "versions" / "v0001" / "metrics.json"
    metrics = json.loads(metrics_file.read_text())

    def calibrate(threshold: float) -> None:
        validation = {**metrics["validation"], "operating_threshold": threshold}
        metrics_file.write_text(json.dumps({**metrics, "validation": validation}))

    calibrate(0.0)
    assert len(shown_scores(untuned)) == every  # the version's own threshold
    calibrate(1.0)
    assert shown_scores(untuned) == []
    assert len(shown_scores(untuned, predict_score_threshold=0.0)) == every  # the deployment's setting wins
    assert len(shown_scores(CONFIG, predict_score_threshold=1.0)) == every  # the label config's over both


def test_the_task_score_is_the_fracture_probability_through_the_version_s_calibration(
    home: Path, sample_dir: Path
) -> None:
    from fracture_al.detection.image_score import ProbabilityCalibration, fracture_probability

    image = sorted((sample_dir / "images").glob("*.jpg"))[0].name
    request = {"tasks": [{"id": 1, "data": {"image": image}}], "project": "1.1", "label_config": CONFIG}
    metrics_file = home / "models" / "versions" / "v0001" / "metrics.json"
    metrics = json.loads(metrics_file.read_text())

    def served(calibration: dict[str, float] | None) -> dict:
        validation = {**metrics["validation"], "probability_calibration": calibration}
        metrics_file.write_text(json.dumps({**metrics, "validation": validation}))
        client = client_for(home, local_image_root=sample_dir / "images")
        client.post("/setup", json={"project": "1.1", "schema": CONFIG})
        return client.post("/predict", json=request).json["results"][0]

    uncalibrated = served(None)
    boxes = [region["score"] for region in uncalibrated["result"]]  # threshold 0: every candidate box
    assert boxes, "the fixture model keeps every candidate box: there should be some"
    assert uncalibrated["score"] == pytest.approx(fracture_probability(boxes), abs=1e-3)
    overconfident = ProbabilityCalibration(slope=0.5, intercept=-1.0)
    calibrated = served(overconfident.to_dict())
    assert calibrated["score"] == pytest.approx(overconfident(uncalibrated["score"]), abs=1e-3)
    assert abs(calibrated["score"] - uncalibrated["score"]) > 1e-4  # it did change the score
    assert [region["score"] for region in calibrated["result"]] == boxes  # boxes keep their own scores

    validation = {**metrics["validation"], "probability_calibration": {"slope": "steep", "intercept": 0}}
    metrics_file.write_text(json.dumps({**metrics, "validation": validation}))
    refused = client_for(home, local_image_root=sample_dir / "images").post("/predict", json=request)
    assert refused.status_code == 503 and "probability calibration" in refused.json["error"]
    metrics_file.write_text(json.dumps(metrics))


def test_a_new_version_is_served_without_restart(home: Path, file_server: FileServer) -> None:
    client = client_for(home)
    client.post("/setup", json={"project": "1.1", "schema": CONFIG, "hostname": url_of(file_server)})
    task = {"id": 1, "data": {"image": "/data/upload/1/xray.jpg"}}
    assert (
        client.post("/predict", json={"tasks": [task], "project": "1.1"}).json["results"][0]["model_version"] == "v0001"
    )

    store = ModelStore(home / "models")
    with store.stage() as staged:
        shutil.copytree(store.get("v0001").path, staged, dirs_exist_ok=True)
        store.publish(staged)
    assert client.post("/setup", json={"project": "1.1", "schema": CONFIG}).json["model_version"] == "v0002"
    reply = client.post("/predict", json={"tasks": [task], "project": "1.1"})
    assert reply.json["results"][0]["model_version"] == "v0002"


def test_basic_auth(home: Path) -> None:
    client = client_for(home, backend_basic_auth_user="ls", backend_basic_auth_password="s3cret")
    assert client.get("/health").status_code == 401
    wrong = base64.b64encode(b"ls:nope").decode()
    assert client.get("/health", headers={"Authorization": f"Basic {wrong}"}).status_code == 401
    right = base64.b64encode(b"ls:s3cret").decode()
    assert client.get("/health", headers={"Authorization": f"Basic {right}"}).status_code == 200


def test_webhook_acknowledges_unknown_events_and_rejects_garbage(home: Path) -> None:
    client = client_for(home)
    assert client.post("/webhook", json={"action": "PROJECT_UPDATED", "project": {"id": 1}}).status_code == 200
    assert client.post("/webhook", data="nope", content_type="application/json").status_code == 400


def test_the_backend_does_not_load_the_training_stack() -> None:
    """Every gunicorn worker imports the app: what only training and ranking need stays out."""
    import subprocess
    import sys

    # pycocotools' evaluation, not its 1-ms box IoU (pycocotools.mask), which ranking uses.
    heavy = ("fracture_al.detection.training", "pycocotools.coco", "pycocotools.cocoeval", "sklearn", "fiftyone",
             "matplotlib", "monai", "segmentation_models_pytorch", "skimage")  # fmt: skip
    loaded = subprocess.run(
        [sys.executable, "-c",
         f"import sys, fracture_al.backend.app; print([m for m in {heavy!r} if m in sys.modules])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert loaded == "[]"


MASK_CONFIG = """<View>
  <Image name="xray" value="$image"/>
  <BrushLabels name="mask" toName="xray"><Label value="Fracture"/></BrushLabels>
  <Choices name="call" toName="xray"><Choice value="Fracture"/><Choice value="Normal"/></Choices>
</View>"""


@pytest.mark.slow
def test_masks_and_the_call_come_from_the_segmenter_beside_the_detector_s_boxes(
    home: Path, sample_dir: Path
) -> None:
    from fracture_al.integrations.mask_regions import brush_to_mask

    image = sorted((sample_dir / "images").glob("*.jpg"))[0]
    task = {"id": 1, "data": {"image": image.name}}
    client = client_for(home, local_image_root=sample_dir / "images")
    brush_only = MASK_CONFIG.replace('<Choice value="Fracture"/><Choice value="Normal"/>', "").replace(
        '<Choices name="call" toName="xray"></Choices>', "")  # fmt: skip
    reply = client.post("/predict", json={"tasks": [task], "project": "1.1", "label_config": brush_only})
    assert reply.status_code == 503 and "train --task segmentation" in reply.json["error"]
    # Without a segmenter the call still comes, from the detector's fracture probability.
    reply = client.post("/predict", json={"tasks": [task], "project": "1.1", "label_config": MASK_CONFIG})
    assert reply.json["model_version"] == "v0001"
    assert [r["type"] for r in reply.json["results"][0]["result"]] == ["choices"]

    segmenter = publish_segmenter(home, sample_dir)
    assert client.post("/setup", json={"project": "1.1", "schema": MASK_CONFIG}).json["model_version"] == segmenter
    reply = client.post("/predict", json={"tasks": [task], "project": "1.1", "label_config": MASK_CONFIG})
    assert reply.status_code == 200, reply.json
    [result] = reply.json["results"]
    assert result["model_version"] == segmenter
    brush = [r for r in result["result"] if r["type"] == "brushlabels"]
    call = [r for r in result["result"] if r["type"] == "choices"]
    assert len(brush) == 1 and brush[0]["value"]["brushlabels"] == ["Fracture"]
    width, height = brush[0]["original_width"], brush[0]["original_height"]
    assert brush_to_mask(brush[0]["value"], width, height).all()  # every pixel, as the biased head says
    assert call[0]["value"] == {"choices": ["Fracture"]} and call[0]["score"] > 0.99

    both = MASK_CONFIG.replace("</View>", '<RectangleLabels name="box" toName="xray" model_score_threshold="0">'
                                          '<Label value="Fracture"/></RectangleLabels></View>')  # fmt: skip
    reply = client.post("/predict", json={"tasks": [task], "project": "2.1", "label_config": both})
    [result] = reply.json["results"]
    assert result["model_version"] == f"v0001+{segmenter}" == reply.json["model_version"]
    assert {r["type"] for r in result["result"]} == {"rectanglelabels", "brushlabels", "choices"}
