"""Talking to a Label Studio project through label-studio-sdk: export labels, list and fill tasks.

Label Studio's own COCO export lists only annotated tasks, numbers categories from 0 (torchvision's
background) and writes file names relative to the server's disk, so training sets are built from
the JSON export instead: percent coordinates, every annotation with its state.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from label_studio_sdk import LabelStudio, PredictionRequest
from label_studio_sdk.core.api_error import ApiError

from fracture_al.detection.coco import annotation_record
from fracture_al.detection.images import ImageLoadError, load_image
from fracture_al.detection.masks import mask_to_polygons
from fracture_al.integrations.image_source import ImageFetchError
from fracture_al.integrations.label_config import MaskTarget, RectangleTarget
from fracture_al.integrations.mask_regions import annotation_mask
from fracture_al.integrations.regions import percent_to_box
from fracture_al.integrations.task_fields import (
    REVIEW_ARM_FIELD,
    REVIEW_MODEL_VERSION_FIELD,
    REVIEW_RANK_FIELD,
    REVIEW_REQUEST_FIELD,
    REVIEW_UNCERTAINTY_FIELD,
)
from fracture_al.sampling.queue import QueueEntry

log = logging.getLogger(__name__)


class LabelStudioUnavailableError(ConnectionError):
    """Label Studio cannot be reached, or refuses the API key."""


def connect(url: str, api_key: str, *, timeout: float = 60.0) -> LabelStudio:
    """An SDK client, checked with one cheap call so that a wrong URL or key fails here, clearly."""
    client = LabelStudio(base_url=url, api_key=api_key, timeout=timeout)
    try:
        client.users.whoami()
    except httpx.HTTPError as error:
        raise LabelStudioUnavailableError(f"Label Studio at {url} is unreachable ({type(error).__name__})") from None
    except ApiError as error:
        raise LabelStudioUnavailableError(
            f"Label Studio at {url} refused the API key (HTTP {error.status_code}): check LABEL_STUDIO_API_KEY"
        ) from None
    return client


def export_annotated_tasks(client: LabelStudio, project_id: int) -> list[dict[str, Any]]:
    """Every task with at least one annotation, in Label Studio's JSON export format."""
    chunks = client.projects.exports.download_sync(project_id, export_type="JSON", download_all_tasks=False)
    return json.loads(b"".join(chunks))


def predictions_by_task(client: LabelStudio, project_id: int) -> dict[int, list[dict[str, Any]]]:
    """``{task id: [{"model_version", "result"}, ...]}`` for the whole project, in one paged listing
    (the JSON export lists only the predictions' ids)."""
    shown: dict[int, list[dict[str, Any]]] = {}
    for prediction in client.predictions.list(project=project_id):
        shown.setdefault(prediction.task, []).append(
            {"model_version": prediction.model_version, "result": prediction.result or []}
        )
    return shown


def unlabelled_task_ids(client: LabelStudio, project_id: int) -> list[int]:
    return [
        task.id
        for task in client.tasks.list(project=project_id, fields="task_only")
        if not task.is_labeled and not (task.total_annotations or 0)
    ]


def latest_annotation(task: dict[str, Any]) -> dict[str, Any] | None:
    """The annotation that counts for training: the most recently updated one not cancelled (skipped)."""
    kept = [a for a in task.get("annotations", []) if not a.get("was_cancelled")]
    return max(kept, key=lambda a: (a.get("updated_at") or a.get("created_at") or "", a.get("id", 0)), default=None)


def annotation_boxes(annotation: dict[str, Any], target: RectangleTarget, width: int, height: int) -> list[tuple]:
    """``(label value, [x1, y1, x2, y2])`` per rectangle of ``target``'s control, in pixels."""
    boxes = []
    for region in annotation.get("result", []):
        value = region.get("value", {})
        if region.get("from_name") != target.from_name or not value.get("rectanglelabels"):
            continue
        box = percent_to_box(value, width, height)
        if value.get("rotation"):
            box = rotated_box_hull(box, value["rotation"])
        x1, y1, x2, y2 = box
        clipped = [max(0.0, x1), max(0.0, y1), min(float(width), x2), min(float(height), y2)]
        boxes.append((value["rectanglelabels"][0], clipped))
    return boxes


def rotated_box_hull(box: list[float], degrees: float) -> list[float]:
    """Axis-aligned hull of a Label Studio rectangle rotated clockwise about its top-left corner."""
    x1, y1, x2, y2 = box
    angle = math.radians(degrees)
    corners = [(0.0, 0.0), (x2 - x1, 0.0), (x2 - x1, y2 - y1), (0.0, y2 - y1)]
    xs = [x1 + cx * math.cos(angle) - cy * math.sin(angle) for cx, cy in corners]
    ys = [y1 + cx * math.sin(angle) + cy * math.cos(angle) for cx, cy in corners]
    return [min(xs), min(ys), max(xs), max(ys)]


@dataclass
class ExportedDataset:
    folder: Path
    counts: dict[str, int]  # images per split
    skipped: dict[int, str]  # task id -> why it was left out
    masks: Path | None = None  # the same X-rays with their fracture outlines, when the config draws masks


MASKS_FOLDER = "masks"


def write_coco_dataset(
    tasks: Iterable[dict[str, Any]],
    target: RectangleTarget | None,
    fetch: Callable[[str], bytes],
    folder: Path,
    *,
    split_of: Callable[[dict[str, Any]], str],
    mask_targets: Sequence[MaskTarget] = (),
) -> ExportedDataset:
    """Turn exported tasks into ``folder/{train,val}.json`` and ``folder/images/task-<id>.png``; with
    ``mask_targets`` (the config's brush and polygon controls), also ``folder/masks/{train,val}.json``:
    each X-ray's fracture mask as polygon outlines, one COCO annotation per outline (what a
    segmenter trains on). ``target`` None: a config that draws masks only, no boxes.

    An annotated task without boxes (or mask) is a negative X-ray. Images are decoded and saved as
    PNG so the labels refer to exactly the pixels the trainer reads (EXIF rotation applied, 16-bit
    rescaled).
    """
    if target is None and not mask_targets:
        raise ValueError("nothing to export: the config has neither boxes nor masks")
    (folder / "images").mkdir(parents=True, exist_ok=True)
    label_of_class = target.label_of_class if target is not None else {}
    class_of_label = {label: name for name, label in label_of_class.items()}
    class_names = sorted(label_of_class) or ["fracture"]
    category_of = {name: index + 1 for index, name in enumerate(class_names)}
    value_key = target.value_key if target is not None else mask_targets[0].value_key
    splits: dict[str, dict[str, list]] = {}
    outlined: dict[str, dict[str, list]] = {}
    skipped: dict[int, str] = {}
    for task in tasks:
        annotation = latest_annotation(task)
        if annotation is None:
            skipped[task["id"]] = "only cancelled annotations"
            continue
        reference = task.get("data", {}).get(value_key)
        try:
            image = load_image(fetch(reference), name=str(reference))
        except (ImageFetchError, ImageLoadError) as error:
            skipped[task["id"]] = str(error)
            log.warning("task %s left out of training: %s", task["id"], error)
            continue
        file_name = f"task-{task['id']}.png"
        image.save(folder / "images" / file_name)
        record = {"id": task["id"], "file_name": file_name, "width": image.width, "height": image.height,
                  "annotation_id": annotation.get("id")}  # fmt: skip
        split_name = split_of(task)
        split = splits.setdefault(split_name, {"images": [], "annotations": []})
        split["images"].append(record)
        for label, box in annotation_boxes(annotation, target, image.width, image.height) if target else []:
            if label not in class_of_label:
                continue
            split["annotations"].append(
                annotation_record(len(split["annotations"]) + 1, task["id"], category_of[class_of_label[label]], box)
            )
        if mask_targets:
            masks = outlined.setdefault(split_name, {"images": [], "annotations": []})
            masks["images"].append(record)
            mask = annotation_mask(annotation, mask_targets, image.width, image.height)
            for polygon in mask_to_polygons(mask):
                masks["annotations"].append(outline_record(len(masks["annotations"]) + 1, task["id"], polygon))
    categories = [{"id": category_of[name], "name": name} for name in class_names]
    for name, content in splits.items():
        (folder / f"{name}.json").write_text(json.dumps({**content, "categories": categories}))
    masks_folder = None
    if outlined:
        masks_folder = folder / MASKS_FOLDER
        masks_folder.mkdir(exist_ok=True)
        if not (masks_folder / "images").exists():
            (masks_folder / "images").symlink_to(Path("..") / "images", target_is_directory=True)
        for name, content in outlined.items():
            (masks_folder / f"{name}.json").write_text(json.dumps({**content, "categories": [FRACTURE_CATEGORY]}))
    return ExportedDataset(folder, {name: len(c["images"]) for name, c in splits.items()}, skipped, masks_folder)


FRACTURE_CATEGORY = {"id": 1, "name": "fracture"}


def outline_record(annotation_id: int, image_id: int, polygon: Sequence[float]) -> dict[str, Any]:
    """A COCO annotation for one fracture outline (pixel x, y pairs): its box and its polygon."""
    xs, ys = polygon[0::2], polygon[1::2]
    return {**annotation_record(annotation_id, image_id, FRACTURE_CATEGORY["id"], [min(xs), min(ys), max(xs), max(ys)]),
            "segmentation": [list(polygon)]}  # fmt: skip


# Predictions written per request: a scoring chunk's in one, a whole project's in a few.
PREDICTIONS_PER_REQUEST = 500


def tasks_with_predictions(client: LabelStudio, project_id: int, task_ids: Sequence[int]) -> list[dict[str, Any]]:
    """``{"id", "data", "prediction_versions"}`` of the given tasks, read in one paged listing
    (not two requests per task)."""
    if not task_ids:
        return []
    query = json.dumps({"selectedItems": {"all": False, "included": list(task_ids)}})
    listed = client.tasks.list(project=project_id, query=query, fields="all", page_size=min(len(task_ids), 1000))
    return [
        {"id": task.id, "data": task.data or {},
         "prediction_versions": {_field(p, "model_version") for p in task.predictions or []}}
        for task in listed
    ]  # fmt: skip


def write_predictions(client: LabelStudio, project_id: int, results: Iterable[tuple[int, dict[str, Any]]]) -> int:
    """Store ``(task id, {"result", "score", "model_version"})`` pairs as Label Studio predictions, in
    bulk (one request per few hundred tasks)."""
    requests = [
        PredictionRequest(task=task_id, result=p["result"], score=p["score"], model_version=p["model_version"])
        for task_id, p in results
    ]
    for start in range(0, len(requests), PREDICTIONS_PER_REQUEST):
        client.projects.import_predictions(project_id, request=requests[start : start + PREDICTIONS_PER_REQUEST])
    return len(requests)


def _field(item: Any, name: str) -> Any:
    """A field of an SDK object or of the plain dict some listings return."""
    return item.get(name) if isinstance(item, dict) else getattr(item, name, None)


def write_review_queue(client: LabelStudio, project_id: int, model_version: str, entries: list[QueueEntry]) -> int:
    """Write each entry's place in the queue onto its task, where annotators see and sort by it.

    The Data Manager's "Prediction score" of a task averages the scores of its predictions of the
    project's model version (or, with the model-version dropdown feature on, of the ML backend's),
    and is empty for a project without a model version. So ``model_version`` becomes the project's
    model version, and every prediction on the task gets the entry's queue score: the column then
    sorts the tasks in queue order whichever version it counts. The task's data gets the rank and
    the uncertainty as columns of their own, and the arm that placed it and the model version whose
    prediction annotators will see, for `fracture-al report`."""
    client.projects.update(id=project_id, model_version=model_version)
    predictions_of: dict[int, list[int]] = {}
    for prediction in client.predictions.list(project=project_id):
        predictions_of.setdefault(prediction.task, []).append(prediction.id)
    data_of = {task.id: task.data for task in client.tasks.list(project=project_id, fields="task_only")}
    written = 0
    for entry in entries:
        if entry.task_id not in data_of:
            continue  # deleted since it was scored
        for prediction_id in predictions_of.get(entry.task_id, []):
            client.predictions.update(id=prediction_id, score=entry.queue_score)
        ranked = {REVIEW_RANK_FIELD: entry.rank, REVIEW_UNCERTAINTY_FIELD: round(entry.uncertainty, 6),
                  REVIEW_ARM_FIELD: entry.arm, REVIEW_MODEL_VERSION_FIELD: model_version}  # fmt: skip
        client.tasks.update(id=str(entry.task_id), data={**data_of[entry.task_id], **ranked})
        written += 1
    return written


def write_task_fields(client: LabelStudio, values: dict[int, dict[str, Any]]) -> int:
    """Merge ``{task id: {field: value}}`` into each task's data; returns how many were written."""
    for task_id, fields in values.items():
        task = client.tasks.get(id=str(task_id))
        client.tasks.update(id=str(task_id), data={**task.data, **fields})
    return len(values)


REVIEW_VIEW_TITLE = "Review queue"


def ensure_review_queue_view(client: LabelStudio, project_id: int) -> int:
    """The project's "Review queue" tab in the Data Manager: unlabelled tasks by ascending prediction
    score, i.e. in queue order, so that "Label tasks as displayed" walks the queue."""
    return ensure_view(client, project_id, REVIEW_VIEW_TITLE, ordering=["tasks:predictions_score"], filters=[
        {"filter": "filter:tasks:total_annotations", "operator": "equal", "type": "Number", "value": 0}
    ])  # fmt: skip


def request_review(client: LabelStudio, project_id: int, task_ids: list[int], reason: str) -> int:
    """Flag tasks for another look (their data's ``review_request`` = ``reason``) and list them in a
    Data Manager tab of that name. Their current annotation stays in place for the annotator to
    correct; the update reaches the retraining webhook like any other. Returns the tab's id."""
    for task_id in task_ids:
        task = client.tasks.get(id=str(task_id))
        client.tasks.update(id=str(task_id), data={**task.data, REVIEW_REQUEST_FIELD: reason})
    return ensure_view(client, project_id, f"Review: {reason}", ordering=["tasks:id"], filters=[
        {"filter": f"filter:tasks:data.{REVIEW_REQUEST_FIELD}", "operator": "equal", "type": "String", "value": reason}
    ])  # fmt: skip


def ensure_view(client: LabelStudio, project_id: int, title: str, *, ordering: list[str], filters: list[dict]) -> int:
    """A Data Manager tab with this title, created once and reset to these filters and ordering."""
    data = {"title": title, "ordering": ordering, "filters": {"conjunction": "and", "items": filters}}
    for view in client.views.list(project=project_id):
        if (view.data or {}).get("title") == title:
            client.views.update(id=str(view.id), project=project_id, data={**view.data, **data})
            return view.id
    return client.views.create(project=project_id, data=data).id


REPORT_START = "--- fracture-al ---"
REPORT_END = "--- end of fracture-al ---"


def write_project_summary(client: LabelStudio, project_id: int, text: str) -> str:
    """Put ``text`` in the project's description between two marker lines, replacing the previous
    summary and keeping whatever people wrote around it. Returns the new description."""
    description = client.projects.get(id=project_id).description or ""
    section = re.compile(rf"\s*{re.escape(REPORT_START)}.*?{re.escape(REPORT_END)}\s*", re.DOTALL)
    kept = section.sub("\n\n", description).strip()
    updated = "\n\n".join(part for part in (kept, f"{REPORT_START}\n{text.strip()}\n{REPORT_END}") if part)
    client.projects.update(id=project_id, description=updated)
    return updated
