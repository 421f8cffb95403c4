"""The jobs RQ workers run: plain functions of plain arguments, configured by the worker's Settings.

``retrain_project``: export a project's labels, warm-start from the served model, train, gate,
publish (the detector on boxes, the segmenter on brush and polygon masks: ``worker.mask_retrain``);
then ``refresh_predictions`` fans the project's unlabelled tasks out over ``score_tasks`` jobs that
write the new version's predictions back to Label Studio and measure what the review queue ranks
by; ``rank_queue`` runs after the last of them and writes the queue into the project.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import httpx
from label_studio_sdk.core.api_error import ApiError
from rq import get_current_job
from rq.job import Dependency, Job

from fracture_al.detection.devices import choose_device
from fracture_al.detection.evaluation import ImageMatches, match_detections
from fracture_al.detection.mask_predictor import MaskPredictor
from fracture_al.detection.model import ModelConfig
from fracture_al.detection.model_files import load_model, version_model_config
from fracture_al.detection.predictor import Predictor
from fracture_al.detection.provenance import PROVENANCE_FILE, exported_records
from fracture_al.detection.recipes import retrain_train_config
from fracture_al.detection.shipped_model import open_store, verify_version
from fracture_al.detection.store import DETECTION, SEGMENTATION, ModelStore, ModelVersion, write_json
from fracture_al.detection.training import DataSplit, Initialisation, TrainConfig, evaluate_split, fit, load_splits
from fracture_al.detection.versioning import data_sources, staged_outcome
from fracture_al.integrations import label_studio
from fracture_al.integrations.image_source import ImageSource, LabelStudioConnection
from fracture_al.integrations.label_config import (
    RectangleTarget,
    choice_target,
    has_rectangles,
    mask_targets,
    rectangle_target,
)
from fracture_al.integrations.mask_predictions import MaskTaskPredictor
from fracture_al.integrations.task_predictions import TaskPrediction, TaskPredictor
from fracture_al.settings import Settings
from fracture_al.worker.connection import REDIS_TROUBLE
from fracture_al.worker.gate import GateRule, quality_gate
from fracture_al.worker.mask_retrain import retrain_segmenter
from fracture_al.worker.project_report import project_report, save_report, summary_text
from fracture_al.worker.queues import (
    RANK_QUEUE,
    REFRESH_PREDICTIONS,
    SCORE_TASKS,
    QueueConfig,
    RetrainScheduler,
    enqueue_job,
)
from fracture_al.worker.review_queue import ReviewQueueStore, rank_stored_signals
from fracture_al.worker.run_folders import prune_ended_runs, remove_run_folder
from fracture_al.worker.scored_cache import ScoredPredictions
from fracture_al.worker.validation import SPLIT_FIELD, TRAINING, new_assignments, split_of, with_assignments

log = logging.getLogger(__name__)


class JobProgress:
    """Progress in the job's meta (what `fracture-al jobs` shows), saved at most every few seconds."""

    def __init__(self, job: Job | None, every_seconds: float = 2.0):
        self.job = job
        self.every_seconds = every_seconds
        self._saved_at = 0.0

    def update(self, *, force: bool = False, **values: Any) -> None:
        if self.job is None:
            return
        self.job.meta.update(values)
        if force or time.monotonic() - self._saved_at >= self.every_seconds:
            self._saved_at = time.monotonic()
            try:
                self.job.save_meta()
            except REDIS_TROUBLE as error:  # progress is for people watching: the job goes on without it
                log.warning("progress not saved, Redis unreachable (%s)", type(error).__name__)

    def iteration(self, info: dict[str, Any]) -> None:
        self.update(stage="train", **{k: round(v, 5) if isinstance(v, float) else v for k, v in info.items()})


def label_studio_client(settings: Settings):
    if not settings.label_studio_url or settings.label_studio_api_key is None:
        raise RuntimeError("the worker needs LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY to reach Label Studio")
    return label_studio.connect(settings.label_studio_url, settings.label_studio_api_key.get_secret_value())


def label_studio_connection(settings: Settings) -> LabelStudioConnection:
    return LabelStudioConnection(settings.label_studio_url, settings.label_studio_api_key.get_secret_value())


def retrain_project(project_id: int) -> dict[str, Any]:
    """Retrain on the project's latest labels and publish the result if it passes the gate.

    The job's run folder is kept for as long as a retry may resume from it, and removed after."""
    settings = Settings()
    job = get_current_job()
    # One folder per job id: a retried job finds its checkpoint there and resumes.
    run_dir = settings.runs_dir / (job.id if job is not None else f"retrain-{project_id}-{time.time_ns()}")
    if job is not None:
        prune_ended_runs(settings.runs_dir, f"{settings.queue_prefix}-retrain-", job.connection)
    try:
        result = _retrain(settings, job, project_id, run_dir)
    except BaseException:
        if job is None or not job.retries_left:
            remove_run_folder(run_dir)
        raise
    remove_run_folder(run_dir)
    return result


def _retrain(settings: Settings, job: Job | None, project_id: int, run_dir: Path) -> dict[str, Any]:
    progress = JobProgress(job)
    if job is not None:
        RetrainScheduler(QueueConfig(**settings.queueing), job.connection).mark_started(project_id)
    progress.update(stage="export", force=True)

    client = label_studio_client(settings)
    store = open_store(settings.models_dir)
    current = store.current() if store.current_name() else None
    class_names = store.detector_class_names()
    config = client.projects.get(id=project_id).label_config
    # A project draws boxes, masks or both: each kind retrains the model that predicts it.
    target = rectangle_target(config, tuple(class_names)) if has_rectangles(config) else None
    source, connection = ImageSource(**settings.image_fetching), label_studio_connection(settings)
    tasks = label_studio.export_annotated_tasks(client, project_id)
    assigned = {} if settings.validation_data is not None else new_assignments(tasks, settings.validation_share)
    label_studio.write_task_fields(client, {task_id: {SPLIT_FIELD: split} for task_id, split in assigned.items()})
    dataset = label_studio.write_coco_dataset(
        with_assignments(tasks, assigned),
        target,
        lambda reference: source.fetch(reference, connection),
        run_dir / "data",
        split_of=lambda task: split_of(task) or TRAINING,
        mask_targets=mask_targets(config),
    )
    if not dataset.counts.get("train"):
        progress.update(stage="done", result="nothing to train on", force=True)
        return {"status": "skipped", "reason": "no annotated training tasks", "skipped_tasks": dataset.skipped}
    segmentation = None
    if dataset.masks is not None:
        progress.update(stage="segmenter", force=True)
        segmentation = retrain_segmenter(settings, store, project_id, dataset.masks, run_dir / "segmenter",
                                         choose_device(settings.device), gate_rule(settings))  # fmt: skip
    if target is None:
        # Without boxes, the segmenter's masks are the project's pre-annotations and its queue.
        scoring = _refresh(settings, job, project_id, segmentation.get("model_version"))
        progress.update(stage="done", result=f"segmenter {segmentation['status']}", force=True)
        return {**segmentation, "skipped_tasks": dataset.skipped, "scoring_job": scoring}

    splits = load_splits(run_dir / "data")
    validation = _validation_split(settings, splits, class_names)
    device = choose_device(settings.device)
    model_config = version_model_config(current) if current else ModelConfig(class_names=class_names)
    labelled = len(splits["train"].coco.images)
    recipe_name, train_config = retrain_recipe(settings, labelled, warm_start=current is not None)
    progress.update(recipe=recipe_name)
    outcome = fit(
        model_config,
        train_config,
        splits["train"],
        None,  # the gate judges the finished candidate on the validation set, once
        run_dir,
        device=device,
        init=Initialisation(
            model_file=current.weights_path if current else None,
            weights_dirs=settings.weights_dirs,
            allow_download=settings.allow_weight_download,
        ),
        resume=True,
        on_iteration=progress.iteration,
    )

    progress.update(stage="gate", force=True)
    candidate_metrics, candidate_matches = _validate(outcome.model, model_config, validation, train_config, device)
    current_matches = None
    if current is not None:
        verify_version(current)
        current_model, current_config = load_model(current.weights_path, device)
        _, current_matches = _validate(current_model, current_config, validation, train_config, device)
    # The candidate's display threshold is calibrated on the project's own validation X-rays.
    decision = quality_gate(candidate_matches, current_matches, gate_rule(settings),
                            candidate_threshold=(candidate_metrics or {}).get("operating_threshold"),
                            current_threshold=current.operating_threshold if current else None)  # fmt: skip
    sources = {**data_sources(train=splits["train"], val=validation), "label_studio_project": project_id}
    with staged_outcome(store, outcome, test_split=None, data_sources=sources,
                        validation_metrics=candidate_metrics) as staged:  # fmt: skip
        write_json(staged / PROVENANCE_FILE, {
            "source": "retrained", "label_studio_project": project_id, "warm_start": current.name if current else None,
            "recipe": recipe_name,
            "trained_on": exported_records(splits["train"]),
            "validated_on": exported_records(validation) if validation is not None else [],
            "validation_assigned": assigned, "gate": decision.to_dict(),
        })  # fmt: skip
        if decision.passed:
            version = store.publish(staged)
        else:
            kept = store.reject(staged, decision.to_dict())
    verdict = _report_to_project(settings, client, project_id, tasks, target, store)
    if not decision.passed:
        progress.update(stage="done", result="kept, not served", reason=decision.reason, force=True)
        return {"status": "rejected", "gate": decision.to_dict(), "kept_at": str(kept), "queue_verdict": verdict,
                "segmentation": segmentation}  # fmt: skip

    scoring = _refresh(settings, job, project_id, version.name)
    progress.update(stage="done", result="published", model_version=version.name, reason=decision.reason, force=True)
    return {
        "status": "published",
        "model_version": version.name,
        "gate": decision.to_dict(),
        "train_images": dataset.counts.get("train", 0),
        "recipe": recipe_name,
        "skipped_tasks": dataset.skipped,
        "scoring_job": scoring,
        "queue_verdict": verdict,
        "segmentation": segmentation,
    }


def retrain_recipe(settings: Settings, labelled_images: int, *, warm_start: bool) -> tuple[str, TrainConfig]:
    """The recipe and training settings of a retrain on ``labelled_images`` X-rays, from ``settings``
    (the rule is detection.recipes.retrain_train_config)."""
    base = TrainConfig(
        epochs=settings.retrain_epochs,
        batch_size=settings.retrain_batch_size,
        time_budget_minutes=settings.retrain_time_budget_minutes,
        workers=0,
        seed=settings.seed,
    )
    return retrain_train_config(base, labelled_images, warm_start=warm_start,
                                few_label_up_to=settings.retrain_few_label_up_to,
                                few_label_iterations=settings.retrain_few_label_iterations)  # fmt: skip


def _refresh(settings: Settings, job: Job | None, project_id: int, published: str | None) -> str | None:
    """Queue the scoring of the project's unlabelled tasks with a just-published version; the id
    of that job, or None when nothing was published or no queue runs this job."""
    if published is None or job is None:
        return None
    return enqueue_job(QueueConfig(**settings.queueing), "scoring", job.connection, REFRESH_PREDICTIONS, project_id,
                       published).id  # fmt: skip


def refresh_predictions(project_id: int, model_version: str | None = None) -> dict[str, Any]:
    """Fan the project's unlabelled tasks out, in chunks, over ``score_tasks`` jobs on every worker,
    and queue ``rank_queue`` to run once they have all ended. Without ``model_version``, the
    project's current model: the detector where its labelling config draws boxes, else the segmenter."""
    settings = Settings()
    job = get_current_job()
    client = label_studio_client(settings)
    if model_version is None:
        boxes = has_rectangles(client.projects.get(id=project_id).label_config)
        model_version = open_store(settings.models_dir).current_name(DETECTION if boxes else SEGMENTATION)
        if model_version is None:
            raise RuntimeError(f"project {project_id} draws no boxes and no segmentation model is published yet")
    task_ids = label_studio.unlabelled_task_ids(client, project_id)
    size, queues = settings.scoring_chunk_size, QueueConfig(**settings.queueing)
    chunks = [task_ids[start : start + size] for start in range(0, len(task_ids), size)]
    jobs = [
        enqueue_job(queues, "scoring", job.connection, SCORE_TASKS, project_id, chunk, model_version)
        for chunk in chunks
    ]
    # A chunk that fails for good (after its retries) must not hold the queue back: rank what was scored.
    ranking = enqueue_job(queues, "scoring", job.connection, RANK_QUEUE, project_id, model_version,
                          depends_on=Dependency(jobs=jobs, allow_failure=True) if jobs else None)  # fmt: skip
    return {"model_version": model_version, "tasks": len(task_ids), "chunks": len(chunks), "jobs": [j.id for j in jobs],
            "rank_job": ranking.id}  # fmt: skip


def score_tasks(project_id: int, task_ids: list[int], model_version: str) -> dict[str, Any]:
    """Predict these tasks with ``model_version``, store the predictions in Label Studio and the
    review-queue signals in Redis. A retried chunk redoes only what its first run left undone."""
    settings = Settings()
    job = get_current_job()
    client = label_studio_client(settings)
    signal_store = ReviewQueueStore(settings.queue_prefix, job.connection) if job is not None else None
    scored = signal_store.scored_task_ids(project_id, model_version) if signal_store else set()
    version = open_store(settings.models_dir).get(model_version)
    label_config = client.projects.get(id=project_id).label_config
    listed = label_studio.tasks_with_predictions(client, project_id, task_ids)
    # Never a second prediction of the same version on a task.
    predicted = {task["id"] for task in listed if model_version in task["prediction_versions"]}
    tasks = [{"id": t["id"], "data": t["data"]} for t in listed if t["id"] not in predicted or t["id"] not in scored]
    predictions = _measured_predictions(settings, job, version, tasks, label_config)
    if signal_store is not None:
        signal_store.save_signals(project_id, model_version, (p.signals for p in predictions if p.signals))
    new = [p for p in predictions if p.error is None and p.task_id not in predicted]
    written = label_studio.write_predictions(client, project_id, ((p.task_id, p.to_label_studio()) for p in new))
    failed = {p.task_id: p.error for p in predictions if p.error is not None}
    return {"written": written, "failed": failed, "already_done": len(task_ids) - len(tasks)}


def _measured_predictions(settings: Settings, job: Job | None, version: ModelVersion, tasks: list[dict[str, Any]],
                          label_config: str) -> list[TaskPrediction]:  # fmt: skip
    """The version's pre-annotations of the tasks and what the review queue ranks them by: a
    segmentation version's masks (and the X-ray's call), else the detector's boxes."""
    device, connection = choose_device(settings.device), label_studio_connection(settings)
    source = ImageSource(**settings.image_fetching)
    if version.task == SEGMENTATION:
        masks = MaskTaskPredictor(source, settings.predict_batch_size, with_tta=settings.score_with_tta)
        return masks.predict(tasks, mask_targets(label_config), choice_target(label_config), connection,
                             segmenter=MaskPredictor.from_version(version, device), classifier=None, detector=None,
                             measure=True)  # fmt: skip
    cache = ScoredPredictions(lambda: job.connection, settings.queue_prefix) if job is not None else None
    boxes = TaskPredictor.create(source, **settings.task_predicting, cache=cache)
    return boxes.predict(tasks, label_config, Predictor.from_version(version, device), connection, measure=True)


def rank_queue(project_id: int, model_version: str) -> dict[str, Any]:
    """Rank the project's unlabelled tasks that ``model_version`` scored, and write each task's rank
    into Label Studio: the prediction's score (the Data Manager's "Prediction score" column, sorted
    ascending by the project's "Review queue" tab) and the task's ``review_rank`` and
    ``review_uncertainty`` data fields."""
    settings = Settings()
    job = get_current_job()
    client = label_studio_client(settings)
    store = ReviewQueueStore(settings.queue_prefix, job.connection)
    task = open_store(settings.models_dir).get(model_version).task
    options = settings.queue_ranking(task)
    unlabelled = set(label_studio.unlabelled_task_ids(client, project_id))
    entries = rank_stored_signals(store, project_id, model_version, unlabelled, options)
    written = label_studio.write_review_queue(client, project_id, model_version, entries)
    view_id = label_studio.ensure_review_queue_view(client, project_id)
    store.save_ranking(project_id, {"model_version": model_version, "task": task, "options": options,
                                    "entries": [entry.to_dict() for entry in entries]})  # fmt: skip
    return {"ranked": len(entries), "written": written, "unscored": len(unlabelled) - len(entries),
            "view": view_id, **options}  # fmt: skip


def _report_to_project(settings: Settings, client, project_id: int, tasks: list[dict[str, Any]],
                       target: RectangleTarget, store: ModelStore) -> str | None:  # fmt: skip
    """The queue report under the home's reports/ and, in short, in the project's description.
    Label Studio failing meanwhile is logged, not raised: the model was already published or kept."""
    try:
        predictions = label_studio.predictions_by_task(client, project_id)
        report = project_report(tasks, predictions, target, store, project_id, settings.seed)
        save_report(report, settings.reports_dir / f"project-{project_id}")
        label_studio.write_project_summary(client, project_id, summary_text(report))
    except (ApiError, httpx.HTTPError) as error:
        log.warning("queue report of project %s not written: Label Studio failed (%s)", project_id,
                    type(error).__name__)  # fmt: skip
        return None
    return report["verdict"]


def gate_rule(settings: Settings) -> GateRule:
    return GateRule(
        min_images=settings.gate_min_validation_images,
        min_fractures=settings.gate_min_validation_fractures,
        min_delta=settings.gate_min_delta,
        confidence=settings.gate_confidence,
        sensitivity_margin=settings.gate_sensitivity_margin,
        threshold=settings.predict_score_threshold,
        seed=settings.seed,
    )


def _validate(model, model_config: ModelConfig, validation: DataSplit | None, train_config: TrainConfig,
              device) -> tuple[dict[str, Any] | None, list[ImageMatches]]:  # fmt: skip
    """The model's metrics on the validation X-rays and its detections matched to them."""
    if validation is None:
        return None, []
    metrics, predictions = evaluate_split(model, validation, train_config, device, flip_tta=model_config.flip_tta,
                                          description="gate")  # fmt: skip
    return metrics, match_detections(validation.coco, predictions)


def _validation_split(
    settings: Settings, splits: dict[str, DataSplit | None], class_names: list[str]
) -> DataSplit | None:
    """The operator's fixed validation set if configured, else the project's tasks marked "val"."""
    if settings.validation_data is not None:
        folder = settings.validation_data
        return DataSplit.load(folder / "val.json", folder / "images", class_names)
    return splits["val"]
