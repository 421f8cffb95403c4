"""The queues, from the command line: ``retrain`` (queue one now), ``jobs`` (what the workers do
and did), ``queue`` (a project's review queue) and ``report`` (whether that queue is working)."""

from __future__ import annotations

import json
from typing import get_args

import click
from rich.table import Table

from fracture_al.cli.base import (
    CliError,
    console,
    fmt,
    label_studio_client,
    main,
    model_store,
    redis_connection,
    settings_of,
)
from fracture_al.sampling.choices import Strategy, Uncertainty


@main.command()
@click.option("--project", "project_id", type=int, required=True, help="Label Studio project id.")
@click.pass_context
def retrain(context: click.Context, project_id: int) -> None:
    """Queue a retrain of PROJECT now (coalesced with one already waiting)."""
    from fracture_al.worker.queues import QueueConfig, RetrainScheduler

    settings = settings_of(context)
    scheduler = RetrainScheduler(QueueConfig(**settings.queueing), redis_connection(settings))
    request = scheduler.request(project_id, reason="manual", force=True)
    console.print(f"retrain of project {project_id}: {request.status} as job {request.job_id}")


@main.command()
@click.option("--limit", type=int, default=20, show_default=True, help="Jobs shown per state.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def jobs(context: click.Context, limit: int, as_json: bool) -> None:
    """Queued, running, finished and failed jobs, with their progress and errors."""
    from fracture_al.worker.status import job_rows

    settings = settings_of(context)
    rows = job_rows(settings.queue_prefix, redis_connection(settings), limit=limit,
                    monitoring_interval=settings.worker_job_monitoring_interval)  # fmt: skip
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    table = Table("state", "job", "what", "progress", "ended / error", title="fracture-al jobs")
    for row in rows:
        table.add_row(row["state"], row["id"], row["description"], row["progress"], row["outcome"])
    console.print(table)


@main.command()
@click.option("--project", "project_id", type=int, required=True, help="Label Studio project id.")
@click.option("--strategy", type=click.Choice(get_args(Strategy)), default=None,
              help="Batch selection (FRACTURE_AL_QUEUE_STRATEGY).")  # fmt: skip
@click.option("--uncertainty", type=click.Choice(get_args(Uncertainty)), default=None,
              help="Acquisition score (FRACTURE_AL_QUEUE_UNCERTAINTY).")  # fmt: skip
@click.option("--batch-size", type=int, default=None, help="X-rays at the top spread over embedding space.")
@click.option("--top", type=int, default=20, show_default=True, help="Rows shown (0 = all).")
@click.option("--refresh", is_flag=True, help="Queue a re-scoring of the project with the current model.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def queue(
    context: click.Context,
    project_id: int,
    strategy: str | None,
    uncertainty: str | None,
    batch_size: int | None,
    top: int,
    refresh: bool,
    as_json: bool,
) -> None:
    """The review queue of PROJECT: its unlabelled X-rays, the one to label first on top.

    Shows the queue last written to Label Studio, ranked again from the same scores when another
    --strategy, --uncertainty or --batch-size is asked for."""
    from fracture_al.worker.queues import REFRESH_PREDICTIONS, QueueConfig, enqueue_job
    from fracture_al.worker.review_queue import ReviewQueueStore, ranked_with

    settings = settings_of(context)
    connection = redis_connection(settings)
    if refresh:
        # The worker picks the project's current model: the detector, or the segmenter where it draws masks only.
        job = enqueue_job(QueueConfig(**settings.queueing), "scoring", connection, REFRESH_PREDICTIONS, project_id,
                          description=f"score project {project_id} with its current model")  # fmt: skip
        console.print(f"scoring of project {project_id} with its current model queued as job {job.id}")
        return
    store = ReviewQueueStore(settings.queue_prefix, connection)
    ranking = store.ranking(project_id)
    if ranking is None:
        raise CliError(
            f"project {project_id} has no review queue yet: it is ranked after each new model version, "
            f"or run `fracture-al queue --project {project_id} --refresh` with a worker running"
        )
    options = settings.queue_ranking(ranking.get("task", "detection"), strategy=strategy, uncertainty=uncertainty,
                                     batch_size=batch_size)  # fmt: skip
    try:
        ranking = ranked_with(store, project_id, ranking, options)
    except ValueError as error:
        raise CliError(str(error)) from error
    entries = ranking["entries"]
    shown = entries[:top] if top else entries
    if as_json:
        payload = {"project": project_id, "model_version": ranking["model_version"], "options": options}
        click.echo(json.dumps({**payload, "total": len(entries), "entries": shown}, indent=2))
        return
    title = f"review queue of project {project_id} ({ranking['model_version']}, {options['uncertainty']}, " \
            f"{options['strategy']}): {len(entries)} unlabelled X-rays"  # fmt: skip
    table = Table("rank", "task", "uncertainty", "prediction score", "arm", title=title)
    for entry in shown:
        table.add_row(str(entry["rank"]), str(entry["task_id"]), f"{entry['uncertainty']:.4f}",
                      f"{entry['queue_score']:.4f}", entry.get("arm", "queue"))  # fmt: skip
    console.print(table)


@main.command()
@click.option("--project", "project_id", type=int, required=True, help="Label Studio project id.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def report(context: click.Context, project_id: int, as_json: bool) -> None:
    """Is the review queue working on PROJECT? Its learning curve, and how often labelling the
    queue's X-rays corrected the model, against X-rays drawn at random (the control arm).

    Writes report.json and queue_report.png under $FRACTURE_AL_HOME/reports/project-N."""
    from fracture_al.integrations.label_config import rectangle_target
    from fracture_al.integrations.label_studio import export_annotated_tasks, predictions_by_task
    from fracture_al.worker.project_report import project_report, save_report

    settings = settings_of(context)
    client, store = label_studio_client(settings), model_store(settings)
    target = rectangle_target(client.projects.get(id=project_id).label_config, tuple(store.detector_class_names()))
    tasks, predictions = export_annotated_tasks(client, project_id), predictions_by_task(client, project_id)
    built = project_report(tasks, predictions, target, store, project_id, settings.seed)
    files = save_report(built, settings.reports_dir / f"project-{project_id}")
    if as_json:
        click.echo(json.dumps({**built, "files": [str(f) for f in files]}, indent=2))
        return
    arms = Table("arm", "labelled", "model corrected", "rate (95%)", "missed", "false", "moved", "seconds/task",
                 title=f"review queue of project {project_id}")  # fmt: skip
    for arm, row in built["arms"].items():
        rate = f"{fmt(row['rate'])} ({fmt(row['low'])}-{fmt(row['high'])})" if row["rate"] is not None else "-"
        arms.add_row(arm, str(row["labelled"]), str(row["mistakes"]), rate, str(row["missed"]), str(row["false"]),
                     str(row["moved"]), fmt(row["lead_time_seconds"]["value"]))  # fmt: skip
    console.print(arms)
    curve = Table("version", "status", "labels", "val mAP@50", "val sensitivity", "val X-rays", title="learning curve")
    for point in built["learning_curve"]:
        curve.add_row(point["version"], point["status"], str(point["labels"]), fmt(point.get("mAP50")),
                      fmt(point.get("sensitivity")), str(point.get("validation_images")))  # fmt: skip
    console.print(curve)
    console.print(built["verdict"])
    for file in files:
        console.print(f"wrote {file}")
