"""End to end with a real Label Studio: it calls our backend, stores our predictions, sends webhooks."""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from builders import publish_segmenter
from label_studio_sdk import LabelStudio
from PIL import Image
from werkzeug.serving import make_server

from fracture_al.backend.app import create_app
from fracture_al.integrations.label_config import mask_targets
from fracture_al.integrations.label_studio import export_annotated_tasks, latest_annotation
from fracture_al.integrations.label_studio_server import LabelStudioServer
from fracture_al.integrations.mask_regions import annotation_mask, brush_region, brush_to_mask
from fracture_al.settings import Settings

pytestmark = pytest.mark.slow

CONFIG = """<View>
  <Image name="image" value="$image" zoom="true"/>
  <RectangleLabels name="label" toName="image" model_score_threshold="0.0">
    <Label value="Fracture" background="red" predicted_values="fracture"/>
  </RectangleLabels>
</View>"""


BRUSH_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="outline" toName="image"><Label value="Fracture"/></BrushLabels>
  <Choices name="call" toName="image"><Choice value="Fracture"/><Choice value="Normal"/></Choices>
</View>"""


class RecordingSink:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __call__(self, event: dict[str, Any]) -> dict[str, Any]:
        self.events.append(event)
        return {"status": "recorded"}

    def wait_for(self, action: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events:
                if event.get("action") == action:
                    return event
            time.sleep(0.2)
        raise AssertionError(f"no {action} webhook within {timeout} s; got {[e.get('action') for e in self.events]}")


@contextlib.contextmanager
def serving(app) -> Iterator[str]:
    """The backend app on a free local port, for Label Studio to call; its URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()


@pytest.fixture()
def backend(trained_home: Path) -> Iterator[tuple[str, RecordingSink]]:
    sink = RecordingSink()
    with serving(create_app(Settings(home=trained_home, device="cpu"), event_sink=sink)) as url:
        yield url, sink


def upload(label_studio: LabelStudioServer, project_id: int, path: Path) -> None:
    with path.open("rb") as stream:
        reply = requests.post(
            f"{label_studio.url}/api/projects/{project_id}/import",
            headers={"Authorization": f"Token {label_studio.token}"},
            files={path.name: (path.name, stream, "image/jpeg")},
            timeout=60,
        )
    reply.raise_for_status()


def test_label_studio_stores_our_predictions_and_sends_annotations_back(
    label_studio: LabelStudioServer, backend: tuple[str, RecordingSink], sample_dir: Path
) -> None:
    backend_url, sink = backend
    client = LabelStudio(base_url=label_studio.url, api_key=label_studio.token)
    project = client.projects.create(title="fractures e2e", label_config=CONFIG)

    images = sorted((sample_dir / "images").glob("*.jpg"))
    for path in images[:2]:  # uploaded through the API
        upload(label_studio, project.id, path)
    local_dir = label_studio.local_files_root / f"project-{project.id}"
    local_dir.mkdir()
    for path in images[2:4]:  # served from local-files storage
        shutil.copy(path, local_dir)
    storage = client.import_storage.local.create(
        project=project.id, path=str(local_dir), use_blob_urls=True, regex_filter=r".*\.jpg"
    )
    client.import_storage.local.sync(id=storage.id)
    tasks = list(client.tasks.list(project=project.id))
    assert len(tasks) == 4
    # Uploads come as "/data/upload/...", local files as "<label studio url>/data/local-files/?d=...".
    kinds = {"upload" if "/data/upload/" in task.data["image"] else "local-files" for task in tasks}
    assert kinds == {"upload", "local-files"}
    assert all("/data/upload/" in t.data["image"] or "/data/local-files/" in t.data["image"] for t in tasks)

    client.ml.create(project=project.id, url=backend_url, title="fracture-al")
    client.actions.create(
        id="retrieve_tasks_predictions", project=project.id, selected_items={"all": True, "excluded": []}
    )

    sizes = {path.name: Image.open(path).size for path in images[:4]}
    regions_seen = 0
    for task in client.tasks.list(project=project.id):
        predictions = list(client.predictions.list(task=task.id))
        assert len(predictions) == 1, f"task {task.id} has {len(predictions)} predictions"
        prediction = predictions[0]
        assert prediction.model_version == "v0001"
        assert 0.0 <= prediction.score <= 1.0
        width, height = next(size for name, size in sizes.items() if task.data["image"].endswith(name))
        for region in prediction.result:
            regions_seen += 1
            value = region["value"]
            assert (region["original_width"], region["original_height"]) == (width, height)
            assert value["x"] >= 0 and value["x"] + value["width"] <= 100.0001
            assert value["y"] >= 0 and value["y"] + value["height"] <= 100.0001
            assert 0.0 <= region["score"] <= 1.0
            assert value["rectanglelabels"] == ["Fracture"]
    assert regions_seen > 0

    annotated = tasks[0]
    client.annotations.create(
        id=annotated.id,
        result=[
            {
                "from_name": "label",
                "to_name": "image",
                "type": "rectanglelabels",
                "original_width": 300,
                "original_height": 400,
                "value": {"x": 10, "y": 20, "width": 15, "height": 10, "rotation": 0, "rectanglelabels": ["Fracture"]},
            }
        ],
    )
    event = sink.wait_for("ANNOTATION_CREATED")
    assert event["annotation"]["task"] == annotated.id
    assert event["project"]["id"] == project.id


def test_a_brush_project_stores_our_masks_and_exports_a_drawn_mask_unchanged(
    label_studio: LabelStudioServer, trained_home: Path, sample_dir: Path, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    shutil.copytree(trained_home / "models", home / "models")
    publish_segmenter(home, sample_dir)  # marks every pixel: the mask Label Studio must give back
    client = LabelStudio(base_url=label_studio.url, api_key=label_studio.token)
    project = client.projects.create(title="fracture outlines", label_config=BRUSH_CONFIG)
    image = sorted((sample_dir / "images").glob("*.jpg"))[0]
    upload(label_studio, project.id, image)
    [task] = list(client.tasks.list(project=project.id))
    width, height = Image.open(image).size

    with serving(create_app(Settings(home=home, device="cpu"))) as backend_url:
        client.ml.create(project=project.id, url=backend_url, title="fracture-al")
        client.actions.create(
            id="retrieve_tasks_predictions", project=project.id, selected_items={"all": True, "excluded": []}
        )
    [prediction] = list(client.predictions.list(task=task.id))
    brush = [region for region in prediction.result if region["type"] == "brushlabels"]
    assert len(brush) == 1 and brush[0]["value"]["brushlabels"] == ["Fracture"]
    assert (brush[0]["original_width"], brush[0]["original_height"]) == (width, height)
    assert brush_to_mask(brush[0]["value"], width, height).all()
    assert [r["value"]["choices"] for r in prediction.result if r["type"] == "choices"] == [["Fracture"]]

    # An annotator's strokes, as Label Studio's brush stores them: two separate regions of one mask.
    drawn = np.zeros((height, width), dtype=bool)
    drawn[40:90, 30:120] = True
    drawn[height - 30 : height - 12, width - 50 : width - 20] = True
    targets = mask_targets(BRUSH_CONFIG)
    stroke = {key: value for key, value in brush_region(drawn, targets[0], 1.0).items() if key != "score"}
    client.annotations.create(id=task.id, result=[stroke])
    [exported] = export_annotated_tasks(client, project.id)  # what a retrain reads
    assert np.array_equal(annotation_mask(latest_annotation(exported), targets, width, height), drawn)


def test_a_wrong_api_key_is_named_as_such(label_studio: LabelStudioServer) -> None:
    from fracture_al.integrations.label_studio import LabelStudioUnavailableError, connect

    with pytest.raises(LabelStudioUnavailableError, match="refused the API key"):
        connect(label_studio.url, "f" * 40)
    assert connect(label_studio.url, label_studio.token) is not None
