"""Is the review queue working on this project? The project's learning curve, and what labelling
each arm's X-rays corrected in the model (sampling/control_arm.py, sampling/disagreement.py).

Built from a Label Studio JSON export (annotations with their ``lead_time``, the queue's fields in
each task's data), the project's predictions by model version, and the model store's provenance; written
by ``fracture-al report`` and, as a short summary in the project's description, after every retrain.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fracture_al.detection.bootstrap import bootstrap_interval
from fracture_al.detection.coco import xyxy_to_xywh
from fracture_al.detection.provenance import PROVENANCE_FILE
from fracture_al.detection.store import ModelStore, ModelVersion
from fracture_al.integrations.label_config import RectangleTarget
from fracture_al.integrations.label_studio import annotation_boxes, latest_annotation
from fracture_al.integrations.task_fields import REVIEW_ARM_FIELD, REVIEW_MODEL_VERSION_FIELD
from fracture_al.sampling.control_arm import QUEUE_ARM, RANDOM_ARM
from fracture_al.sampling.disagreement import Disagreement, arm_rate, compare_boxes, rate_ratio

REPORT_FILE = "report.json"
ARMS = (QUEUE_ARM, RANDOM_ARM)


@dataclass(frozen=True)
class ReviewedXray:
    """One labelled X-ray that the queue placed: its arm, and what its annotation changed."""

    task_id: int
    arm: str
    model_version: str
    disagreement: Disagreement
    lead_time: float | None  # seconds the annotator spent (Label Studio's lead_time)


def _image_size(*region_lists: Sequence[dict[str, Any]]) -> tuple[int, int] | None:
    for regions in region_lists:
        for region in regions:
            if region.get("original_width") and region.get("original_height"):
                return int(region["original_width"]), int(region["original_height"])
    return None


def _boxes(item: dict[str, Any], target: RectangleTarget, size: tuple[int, int]) -> list[tuple[str, list[float]]]:
    return [(label, xyxy_to_xywh(box)) for label, box in annotation_boxes(item, target, *size)]


def reviewed_xray(
    task: dict[str, Any], predictions: Sequence[dict[str, Any]], target: RectangleTarget
) -> ReviewedXray | None:
    """The task as the queue measure sees it, given its predictions (``{"model_version", "result"}``);
    None when the queue did not place it, it has no kept annotation, or the prediction annotators
    saw is gone."""
    data = task.get("data") or {}
    arm, version = data.get(REVIEW_ARM_FIELD), data.get(REVIEW_MODEL_VERSION_FIELD)
    annotation = latest_annotation(task)
    if arm not in ARMS or not version or annotation is None:
        return None
    shown = next((p for p in predictions if p.get("model_version") == version), None)
    if shown is None:
        return None
    size = _image_size(annotation.get("result") or [], shown.get("result") or []) or (100, 100)
    disagreement = compare_boxes(_boxes(shown, target, size), _boxes(annotation, target, size))
    lead_time = annotation.get("lead_time")
    return ReviewedXray(task["id"], arm, version, disagreement, float(lead_time) if lead_time is not None else None)


def _mean(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values else None


def arm_summary(xrays: Sequence[ReviewedXray], arm: str, seed: int = 0) -> dict[str, Any]:
    mine = [x for x in xrays if x.arm == arm]
    times = [x.lead_time for x in mine if x.lead_time is not None]
    return {
        **arm_rate([x.disagreement.mistake for x in mine]).to_dict(),
        **{kind: sum(getattr(x.disagreement, kind) > 0 for x in mine) for kind in ("missed", "false", "moved")},
        "lead_time_seconds": bootstrap_interval(times, _mean, seed=seed).to_dict(),
    }


def verdict(ratio: dict[str, Any], arms: dict[str, dict[str, Any]]) -> str:
    queue, control = arms[QUEUE_ARM], arms[RANDOM_ARM]
    if ratio["ratio"] is None:
        return (f"not measured yet: {queue['labelled']} queue and {control['labelled']} random-arm X-rays "
                "labelled; the queue is compared with random once both arms have labels")  # fmt: skip
    said = (f"the queue's X-rays held {ratio['ratio']:.2f} times the model mistakes per label of random "
            f"X-rays (95% interval {ratio['low']:.2f} to {ratio['high']:.2f}; "
            f"{queue['labelled']} queue and {control['labelled']} random X-rays labelled)")  # fmt: skip
    if ratio["low"] > 1.0:
        return f"the queue is beating random: {said}"
    if ratio["high"] < 1.0:
        return (f"the queue is doing WORSE than random: {said}; try another FRACTURE_AL_QUEUE_STRATEGY "
                "or label at random")
    return f"the queue is NOT shown to beat random yet: {said}"


def learning_curve(store: ModelStore, project_id: int) -> list[dict[str, Any]]:
    """Every candidate retrained in this project, served or kept, at the number of labels it was
    trained on, with the validation metrics its gate measured (the frozen set as it was then), and
    the model it started from at zero labels."""
    candidates = [(v, "served") for v in store.list()] + [(ModelVersion(p.name, p), "kept") for p in store.rejected()]
    points: dict[str, dict[str, Any]] = {}
    for version, status in candidates:
        if not (version.path / PROVENANCE_FILE).is_file():
            continue
        provenance = version.provenance
        gate = provenance.get("gate") or {}
        if provenance.get("label_studio_project") != project_id or not gate:
            continue
        size = {key: gate.get(key) for key in ("validation_images", "validation_fractures")}
        start = provenance.get("warm_start")
        if start and gate.get("current") and start not in points:
            points[start] = {"version": start, "status": "start", "labels": 0, **gate["current"], **size}
        labels = len(provenance.get("trained_on") or [])
        points[version.name] = {"version": version.name, "status": status, "labels": labels,
                                **gate["candidate"], **size}  # fmt: skip
    return sorted(points.values(), key=lambda point: (point["labels"], point["version"]))


def project_report(
    tasks: Sequence[dict[str, Any]],
    predictions: Mapping[int, Sequence[dict[str, Any]]],
    target: RectangleTarget,
    store: ModelStore,
    project_id: int,
    seed: int = 0,
) -> dict[str, Any]:
    """The report over the project's labelled ``tasks`` (its JSON export) and ``predictions``
    (label_studio.predictions_by_task)."""
    placed = (reviewed_xray(task, predictions.get(task["id"], []), target) for task in tasks)
    xrays = [x for x in placed if x is not None]
    arms = {arm: arm_summary(xrays, arm, seed) for arm in ARMS}
    ratio = rate_ratio(arm_rate([x.disagreement.mistake for x in xrays if x.arm == QUEUE_ARM]),
                       arm_rate([x.disagreement.mistake for x in xrays if x.arm == RANDOM_ARM])).to_dict()  # fmt: skip
    return {
        "project": project_id,
        "labelled_tasks": len(tasks),
        "placed_by_queue": len(xrays),
        "arms": arms,
        "mistake_ratio": ratio,
        "verdict": verdict(ratio, arms),
        "learning_curve": learning_curve(store, project_id),
        "xrays": [_xray_row(x) for x in xrays],
    }


def _xray_row(xray: ReviewedXray) -> dict[str, Any]:
    return {"task_id": xray.task_id, "arm": xray.arm, "model_version": xray.model_version,
            "lead_time": xray.lead_time, **xray.disagreement.to_dict()}  # fmt: skip


def summary_text(report: dict[str, Any]) -> str:
    """A few lines for the Label Studio project's description."""
    lines = [f"Review queue: {report['verdict']}."]
    curve = [p for p in report["learning_curve"] if p["status"] != "start"]
    if curve:
        last = curve[-1]
        lines.append(f"Latest retrain ({last['version']}, {last['status']}): validation mAP@50 "
                     f"{_number(last.get('mAP50'))}, sensitivity {_number(last.get('sensitivity'))} "
                     f"on {last['validation_images']} X-rays, trained on {last['labels']} labels.")  # fmt: skip
    lines.append("Details: fracture-al report --project " + str(report["project"]))
    return "\n".join(lines)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def save_report(report: dict[str, Any], folder: Path) -> list[Path]:
    """``report.json`` and its plots (learning curve, mistakes per label by arm) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / REPORT_FILE).write_text(json.dumps(report, indent=2))
    return [folder / REPORT_FILE, *plot_report(report, folder)]


def plot_report(report: dict[str, Any], folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (curve_axes, arm_axes) = plt.subplots(1, 2, figsize=(11, 4))
    curve = report["learning_curve"]
    for metric, marker in (("mAP50", "o"), ("sensitivity", "s")):
        points = [p for p in curve if p.get(metric) is not None]
        curve_axes.plot([p["labels"] for p in points], [p[metric] for p in points], marker=marker, label=metric)
        for p in points:
            if p["status"] == "kept":
                curve_axes.annotate("kept", (p["labels"], p[metric]), fontsize=7)
    curve_axes.set(xlabel="labels trained on", ylabel="validation metric", ylim=(0, 1),
                   title=f"Project {report['project']}: learning curve")  # fmt: skip
    curve_axes.legend()
    arms = [arm for arm in ARMS if report["arms"][arm]["rate"] is not None]
    rates = [report["arms"][arm] for arm in arms]
    errors = [[r["rate"] - r["low"] for r in rates], [r["high"] - r["rate"] for r in rates]]
    arm_axes.bar(arms, [r["rate"] for r in rates], color=["tab:blue", "tab:gray"][: len(arms)], yerr=errors, capsize=6)
    for index, r in enumerate(rates):
        arm_axes.annotate(f"n={r['labelled']}", (index, 0.02), ha="center", fontsize=8)
    arm_axes.set(ylabel="X-rays where the annotator corrected the model", ylim=(0, 1),
                 title="Model mistakes per label, by arm (95% Wilson)")  # fmt: skip
    figure.tight_layout()
    path = folder / "queue_report.png"
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return [path]
