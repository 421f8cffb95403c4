"""Inspecting dataset errors in FiftyOne: ground truth beside a model version's predictions, its
evaluation, FiftyOne Brain's mistakenness, uniqueness, 2-D map and near-duplicates computed from the
detector's own backbone embeddings (Brain's default models need downloads), and saved views. Where
the labels outline fractures (FracAtlas' polygons, Label Studio brush or polygon annotations) and a
segmentation model is published, the true and predicted masks are segmentation labels beside the
boxes, evaluated pixel by pixel with FiftyOne's own ``evaluate_segmentations``.

FiftyOne keeps its database under ``FRACTURE_AL_HOME/fiftyone`` (an embedded MongoDB it starts on
first use) unless ``FIFTYONE_DATABASE_DIR`` or ``FIFTYONE_DATABASE_URI`` says otherwise.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fracture_al.detection.coco import xyxy_to_xywh
from fracture_al.detection.predictor import ImagePrediction
from fracture_al.integrations.task_fields import REVIEW_ARM_FIELD, REVIEW_RANK_FIELD, SPLIT_FIELD

log = logging.getLogger(__name__)

GROUND_TRUTH = "ground_truth"
PREDICTIONS = "predictions"
EVAL_KEY = "eval"
GROUND_TRUTH_MASK = "ground_truth_mask"
PREDICTED_MASK = "predicted_mask"
MASK_EVAL_KEY = "eval_mask"
MASK_TARGETS = {1: "fracture"}  # pixel value -> label, as the App colours and names it
# Queue fields copied onto each sample, so the app can sort by rank or filter the random arm.
REVIEW_FIELDS = (REVIEW_RANK_FIELD, REVIEW_ARM_FIELD)
VIEWS = ("likely-label-errors", "model-misses", "false-alarms", "near-duplicates")


def configure_fiftyone(home: Path) -> None:
    """Point FiftyOne at its database under ``home``, without telemetry; call before importing it."""
    if "FIFTYONE_DATABASE_URI" not in os.environ:
        os.environ.setdefault("FIFTYONE_DATABASE_DIR", str(home / "fiftyone"))
    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")  # MongoDB 6.0 works; skip its notice


@dataclass
class LabelledImage:
    filepath: Path
    width: int
    height: int
    ground_truth: list[tuple[str, list[float]]] | None  # (label, xyxy px); None = not labelled yet
    fields: dict[str, Any] = field(default_factory=dict)  # split, task id, body part, ...
    mask: np.ndarray | None = None  # fracture pixels (height x width, bool) where the labels outline them


@dataclass
class InspectionSample:
    image: LabelledImage
    prediction: ImagePrediction
    embedding: np.ndarray
    uncertainty: float
    predicted_mask: np.ndarray | None = None  # a segmentation model's fracture pixels, at its threshold


@dataclass
class InspectionSummary:
    dataset: str
    samples: int
    labelled: int
    mAP: float | None
    true_positives: int
    false_positives: int
    false_negatives: int
    views: dict[str, int]  # saved view -> samples in it
    pr_curve: Path | None
    # images with both masks, fracture Dice and pixel accuracy over their pixels (None: no masks)
    segmentation: dict[str, float] | None = None


def build_dataset(
    name: str,
    samples: Sequence[InspectionSample],
    *,
    score_threshold: float,
    duplicate_threshold: float,
    plot_dir: Path | None = None,
    info: dict[str, Any] | None = None,
) -> InspectionSummary:
    """Create or refresh dataset ``name`` (tags the team set on its samples are kept), evaluate,
    run the Brain methods and save the views."""
    import fiftyone as fo

    tags_of = {}
    if fo.dataset_exists(name):
        tags_of = dict(zip(*fo.load_dataset(name).values(["filepath", "tags"]), strict=True))
    dataset = fo.Dataset(name, overwrite=True, persistent=True)
    dataset.info = info or {}  # where the samples came from, for sending tagged ones back
    dataset.save()
    dataset.add_samples([_sample(s, tags_of.get(str(s.image.filepath), [])) for s in samples])
    dataset.compute_metadata()

    labelled = dataset.exists(GROUND_TRUTH)  # with boxes: what the detector is evaluated on
    mAP, counts, pr_curve = None, {"tp": 0, "fp": 0, "fn": 0}, None
    if len(labelled):
        results = labelled.evaluate_detections(
            PREDICTIONS, gt_field=GROUND_TRUTH, eval_key=EVAL_KEY, iou=0.5, compute_mAP=True
        )
        mAP = float(results.mAP())
        counts = {key: int(sum(labelled.values(f"{EVAL_KEY}_{key}"))) for key in counts}
        pr_curve = _save_pr_curve(results, plot_dir) if plot_dir is not None else None
        _mistakenness(labelled)
    embeddings = np.stack([s.embedding for s in samples]) if samples else np.zeros((0, 1))
    duplicates = _embedding_methods(dataset, embeddings, duplicate_threshold)
    views = _save_views(dataset, score_threshold, duplicates)
    # Labelled: with boxes or a mask (a project may draw only masks).
    labelled_count = sum(s.image.ground_truth is not None or s.image.mask is not None for s in samples)
    return InspectionSummary(name, len(dataset), labelled_count, mAP, counts["tp"], counts["fp"], counts["fn"],
                             views, pr_curve, _evaluate_masks(dataset))  # fmt: skip


def _evaluate_masks(dataset) -> dict[str, float] | None:
    """Fracture Dice and pixel accuracy of the predicted masks against the true ones, pooled over the
    pixels of the X-rays that have both; each such sample gets FiftyOne's ``eval_mask_*`` fields."""
    if not dataset.has_field(GROUND_TRUTH_MASK) or not dataset.has_field(PREDICTED_MASK):
        return None
    dataset.default_mask_targets = MASK_TARGETS
    dataset.save()
    both = dataset.exists(GROUND_TRUTH_MASK).exists(PREDICTED_MASK)
    if not len(both):
        return None
    # Background named too: FiftyOne counts only the pixel values its mask targets name.
    results = both.evaluate_segmentations(PREDICTED_MASK, gt_field=GROUND_TRUTH_MASK, eval_key=MASK_EVAL_KEY,
                                          mask_targets={0: "background", **MASK_TARGETS})  # fmt: skip
    # FiftyOne's own dice_score() counts the background class as a hit too: the fracture class's Dice
    # is read off its pixel confusion matrix (rows truth, columns prediction).
    matrix = np.asarray(results.pixel_confusion_matrix, dtype=float)
    fracture = list(results.classes).index(MASK_TARGETS[1])
    true_pixels, predicted_pixels = matrix[fracture].sum(), matrix[:, fracture].sum()
    dice = 2 * matrix[fracture, fracture] / (true_pixels + predicted_pixels) if true_pixels + predicted_pixels else 1.0
    return {"images": len(both), "dice": float(dice), "pixel_accuracy": float(np.trace(matrix) / matrix.sum())}


def _sample(source: InspectionSample, tags: list[str]):
    import fiftyone as fo

    image = source.image
    sample = fo.Sample(filepath=str(image.filepath), tags=tags, **image.fields)
    width, height = image.width, image.height
    if image.ground_truth is not None:
        truth = [fo.Detection(label=name, bounding_box=_relative(b, width, height)) for name, b in image.ground_truth]
        sample[GROUND_TRUTH] = fo.Detections(detections=truth)
    prediction = source.prediction
    sample[PREDICTIONS] = fo.Detections(
        detections=[
            fo.Detection(label=label, bounding_box=_relative(box, width, height), confidence=float(score))
            for box, score, label in zip(prediction.boxes, prediction.scores, prediction.class_names, strict=True)
        ]
    )
    sample["fracture_score"] = prediction.image_score
    sample["uncertainty"] = source.uncertainty
    if image.mask is not None:
        sample[GROUND_TRUTH_MASK] = fo.Segmentation(mask=image.mask.astype(np.uint8))
    if source.predicted_mask is not None:
        sample[PREDICTED_MASK] = fo.Segmentation(mask=source.predicted_mask.astype(np.uint8))
    return sample


def _relative(box: Sequence[float], width: int, height: int) -> list[float]:
    """Pixel xyxy to FiftyOne's relative [x, y, width, height]."""
    x, y, w, h = xyxy_to_xywh(box)
    return [x / width, y / height, w / width, h / height]


def _mistakenness(labelled) -> None:
    """Per sample ``mistakenness``, ``possible_missing`` (confident predictions no box matches) and
    ``possible_spurious`` (boxes no prediction supports), from the detector's confidences."""
    import fiftyone.brain as fob

    fob.compute_mistakenness(labelled, PREDICTIONS, label_field=GROUND_TRUTH, progress=False)


def _embedding_methods(dataset, embeddings: np.ndarray, duplicate_threshold: float) -> list[str]:
    """Uniqueness, a 2-D map and near-duplicates over the backbone embeddings; returns the ids of
    samples that have a near-duplicate."""
    import fiftyone.brain as fob

    if len(dataset) < 3:
        return []
    fob.compute_uniqueness(dataset, embeddings=embeddings, progress=False)
    # t-SNE's perplexity, and the PCA FiftyOne runs before it, must fit the number of points.
    perplexity = max(2.0, min(30.0, (len(dataset) - 1) / 3))
    pca_dims = min(50, len(dataset), embeddings.shape[1])
    fob.compute_visualization(dataset, embeddings=embeddings, brain_key="backbone_map", method="tsne", seed=0,
                              perplexity=perplexity, pca_dims=pca_dims, verbose=False, progress=False)  # fmt: skip
    index = fob.compute_near_duplicates(dataset, embeddings=embeddings, threshold=duplicate_threshold, progress=False)
    return sorted({*index.neighbors_map, *(n for group in index.neighbors_map.values() for n, _ in group)})


def _save_views(dataset, score_threshold: float, duplicates: list[str]) -> dict[str, int]:
    from fiftyone import ViewField as F

    labelled = dataset.exists(GROUND_TRUTH)
    shown = F("confidence") >= score_threshold
    views = {
        # Samples whose labels the model's confident boxes dispute, worst first.
        "likely-label-errors": labelled.match((F("possible_missing") > 0) | (F("possible_spurious") > 0)).sort_by(
            "mistakenness", reverse=True
        ),
        "model-misses": labelled.filter_labels(GROUND_TRUTH, F(EVAL_KEY) == "fn"),
        "false-alarms": labelled.filter_labels(PREDICTIONS, (F(EVAL_KEY) == "fp") & shown),
        "near-duplicates": dataset.select(duplicates, ordered=True),
    }
    if not dataset.has_field("possible_missing"):
        views["likely-label-errors"] = labelled.limit(0)
    if not dataset.has_field(f"{EVAL_KEY}_tp"):
        views["model-misses"] = views["false-alarms"] = labelled.limit(0)
    for view_name, view in views.items():
        dataset.save_view(view_name, view, overwrite=True)
    return {view_name: len(view) for view_name, view in views.items()}


def _save_pr_curve(results, plot_dir: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plot_dir.mkdir(parents=True, exist_ok=True)
    figure = results.plot_pr_curves(backend="matplotlib")
    figure = figure if hasattr(figure, "savefig") else plt.gcf()
    path = plot_dir / "pr_curve.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def inspect_images(
    images: Sequence[LabelledImage],
    predictor,
    *,
    batch_size: int = 8,
    uncertainty: str = "entropy",
    segmenter=None,
) -> list[InspectionSample]:
    """Run ``predictor`` over the images: every candidate box, the backbone embedding and the image's
    uncertainty (the review queue's score), and a segmentation model's mask when one is given, with a
    progress bar."""
    from tqdm import tqdm

    from fracture_al.detection.images import load_image
    from fracture_al.sampling.uncertainty import image_uncertainty

    inspected = []
    for start in tqdm(range(0, len(images), batch_size), desc="predict", unit="batch"):
        batch = images[start : start + batch_size]
        pixels = [load_image(image.filepath) for image in batch]
        predictions = predictor.predict(pixels, batch_size=batch_size)
        embeddings = predictor.embed(pixels, batch_size=batch_size)
        masks = ([m.mask(segmenter.threshold) for m in segmenter.predict(pixels, batch_size=batch_size)]
                 if segmenter is not None else [None] * len(batch))  # fmt: skip
        for image, prediction, embedding, mask in zip(batch, predictions, embeddings, masks, strict=True):
            score = image_uncertainty(prediction.scores, uncertainty, "max")
            inspected.append(InspectionSample(image, prediction, embedding, score, mask))
    return inspected


def images_from_folder(data_dir: Path, splits: Sequence[str] = ("train", "val", "test")) -> list[LabelledImage]:
    """The images of a dataset folder (FracAtlas layout, or what ``fracture-al import`` wrote), with
    their boxes, split and the folder's per-image metadata (FracAtlas's body part and view); where
    its annotations carry polygon outlines (FracAtlas' do), each image's fracture mask too."""
    import json

    from fracture_al.detection.coco import boxes_by_image
    from fracture_al.detection.masks import polygons_of, polygons_to_mask

    images = []
    for split in splits:
        path = Path(data_dir) / f"{split}.json"
        if not path.is_file():
            continue
        content = json.loads(path.read_text())
        boxes = boxes_by_image(content["annotations"], {c["id"]: c["name"] for c in content["categories"]})
        outlines: dict[int, list] = {}
        for annotation in content["annotations"]:
            outlines.setdefault(annotation["image_id"], []).extend(polygons_of(annotation.get("segmentation")))
        outlined = any(outlines.values())
        for entry in content["images"]:
            fields = {"split": split, "image_id": entry["id"]}
            fields.update({k: entry[k] for k in ("body_part", "view", "sha256") if k in entry})
            mask = (polygons_to_mask(outlines.get(entry["id"], []), entry["height"], entry["width"])
                    if outlined else None)  # fmt: skip
            images.append(LabelledImage(Path(data_dir) / "images" / entry["file_name"], entry["width"],
                                        entry["height"], boxes.get(entry["id"], []), fields, mask))  # fmt: skip
    return images


def images_from_label_studio(
    client, project_id: int, fetch, media_dir: Path, target, mask_targets: Sequence = ()
) -> list[LabelledImage]:
    """Every task of the project: its image (fetched once into ``media_dir``: FiftyOne reads local
    files), the latest annotation's boxes as ground truth (None while unlabelled, and in a config
    without boxes: ``target`` None) and, where the config has brush or polygon controls
    (``mask_targets``), the fracture mask it draws; task id, split, queue rank and de-identified
    DICOM tags. ``fetch`` maps an image reference to its bytes."""
    from PIL import Image

    from fracture_al.detection.images import ImageLoadError, load_image
    from fracture_al.integrations.image_source import ImageFetchError
    from fracture_al.integrations.label_studio import annotation_boxes, latest_annotation
    from fracture_al.integrations.mask_regions import annotation_mask

    value_key = target.value_key if target is not None else mask_targets[0].value_key
    class_of_label = {label: name for name, label in target.label_of_class.items()} if target is not None else {}
    media_dir.mkdir(parents=True, exist_ok=True)
    images = []
    for task in client.tasks.list(project=project_id, fields="all"):
        data = task.data or {}
        path = media_dir / f"task-{task.id}.png"
        try:
            if path.is_file():
                with Image.open(path) as cached:  # the header is enough for the size
                    width, height = cached.size
            else:
                image = load_image(fetch(data.get(value_key)), name=f"task {task.id}")
                image.save(path)
                width, height = image.size
        except (ImageFetchError, ImageLoadError) as error:
            log.warning("task %s left out: %s", task.id, error)
            continue
        annotation = latest_annotation({"annotations": task.annotations or []})
        truth, mask = None, None
        if annotation is not None and target is not None:
            truth = [(class_of_label[label], box) for label, box in annotation_boxes(annotation, target, width, height)
                     if label in class_of_label]  # fmt: skip
        if annotation is not None and mask_targets:
            mask = annotation_mask(annotation, mask_targets, width, height)
        split = data.get(SPLIT_FIELD, "train" if annotation is not None else "unlabelled")
        fields = {"task_id": task.id, "split": split}
        fields.update({k: v for k, v in data.items() if k.startswith("dicom_") or k in REVIEW_FIELDS})
        images.append(LabelledImage(path, width, height, truth, fields, mask))
    return images


def label_studio_images(
    client, project_id: int, class_names: Sequence[str], fetch: Callable[[str], bytes], media_dir: Path
) -> list[LabelledImage]:
    """The project's tasks as images to inspect, boxes and masks read through its labelling config."""
    from fracture_al.integrations.label_config import has_rectangles, mask_targets, rectangle_target

    config = client.projects.get(id=project_id).label_config
    target = rectangle_target(config, tuple(class_names)) if has_rectangles(config) else None
    return images_from_label_studio(client, project_id, fetch, media_dir, target, mask_targets(config))


class SendBackError(ValueError):
    """Tagged samples that cannot go to Label Studio; the message says why and what to do."""


def send_tagged_back(
    client, dataset_name: str, tag: str, project_id: int | None, *, files_root: Path
) -> tuple[int, list[int], int]:
    """Put the samples of ``dataset_name`` tagged ``tag`` in front of annotators again: the tasks
    they came from, or (for a dataset built from a folder) tasks created for them in
    ``project_id``. Returns the project, the task ids and the id of the review view."""
    import fiftyone as fo

    from fracture_al.integrations.dataset_folder import DatasetFolder
    from fracture_al.integrations.label_studio import request_review
    from fracture_al.integrations.label_studio_import import SHA_FIELD, LabelStudioImportError, import_dataset

    if not fo.dataset_exists(dataset_name):
        raise SendBackError(f"no FiftyOne dataset {dataset_name!r}")
    dataset = fo.load_dataset(dataset_name)
    tagged = dataset.match_tags(tag)
    if not len(tagged):
        raise SendBackError(f"no sample of {dataset_name} is tagged {tag!r}")
    if dataset.info.get("source") == "label_studio":
        project_id, task_ids = dataset.info["project"], tagged.values("task_id")
    else:
        if project_id is None:
            raise SendBackError("this dataset was built from a folder: say which Label Studio project gets the tasks")
        if not tagged.has_field("sha256"):
            raise SendBackError("only datasets written by `fracture-al import` can be sent to Label Studio; import it")
        folder = DatasetFolder(Path(dataset.info["data"]))
        wanted = set(tagged.values("sha256"))
        try:
            import_dataset(client, project_id, folder, [i for i in folder.images() if i.sha256 in wanted],
                           files_root=files_root, boxes_as="annotations")  # fmt: skip
        except LabelStudioImportError as error:
            raise SendBackError(str(error)) from error
        task_ids = [t.id for t in client.tasks.list(project=project_id) if (t.data or {}).get(SHA_FIELD) in wanted]
    view_id = request_review(client, project_id, task_ids, tag)
    return project_id, task_ids, view_id
