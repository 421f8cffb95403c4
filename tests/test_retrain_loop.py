"""The whole loop with real parts: Label Studio -> webhook -> Redis -> worker process -> new version
served by the backend and written back to Label Studio; and a worker killed in the middle."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import redis
import requests
import torch
from label_studio_sdk import LabelStudio
from werkzeug.serving import make_server

from fracture_al.backend.app import create_app
from fracture_al.detection.store import ModelStore
from fracture_al.detection.training import TrainConfig
from fracture_al.integrations.label_config import FRACTURE_LABEL_CONFIG
from fracture_al.integrations.label_studio import write_project_summary
from fracture_al.integrations.label_studio_server import LabelStudioServer
from fracture_al.settings import Settings
from fracture_al.worker.project_report import summary_text
from fracture_al.worker.run_folders import prune_ended_runs
from fracture_al.worker.validation import held_out_draw, new_assignments

pytestmark = pytest.mark.slow

BOX = {"x": 30, "y": 40, "width": 12, "height": 9, "rotation": 0, "rectanglelabels": ["Fracture"]}


def wait_until(condition: Callable[[], Any], timeout: float, what: str, every: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture()
def home(trained_home: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "home"
    shutil.copytree(trained_home / "models", copy / "models")
    return copy


def loop_environment(home: Path, redis_url: str, queue_prefix: str, label_studio: LabelStudioServer, **extra: str):
    return {
        **os.environ,
        "FRACTURE_AL_HOME": str(home),
        "FRACTURE_AL_DEVICE": "cpu",
        "REDIS_URL": redis_url,
        "FRACTURE_AL_QUEUE_PREFIX": queue_prefix,
        "LABEL_STUDIO_URL": label_studio.url,
        "LABEL_STUDIO_API_KEY": label_studio.token,
        "FRACTURE_AL_WORKER_JOB_MONITORING_INTERVAL": "2",
        # The few-label recipe's updates, cut from 400 to what a test can wait for.
        "FRACTURE_AL_RETRAIN_FEW_LABEL_ITERATIONS": "4",
        **extra,
    }


@pytest.fixture()
def start_worker(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen]]:
    started: list[subprocess.Popen] = []

    def start(env: dict[str, str], *args: str) -> subprocess.Popen:
        log = (tmp_path / f"worker-{len(started)}.log").open("w")
        process = subprocess.Popen([sys.executable, "-m", "fracture_al", "worker", *args], env=env, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        started.append(process)
        return process

    yield start
    for process in started:
        kill_tree(process)


def kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL a worker and every process under it at once, as a crash would.

    RQ forks each job into a work-horse that moves into a process group of its own, so killing the
    worker's group alone would leave the training running."""
    try:
        tree = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for member in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()
    psutil.wait_procs(tree, timeout=30)
    process.wait()


def make_project(client: LabelStudio, label_studio: LabelStudioServer, sample_dir: Path, name: str,
                 validation_task: int | None = 4) -> tuple[int, list]:  # fmt: skip
    """A project of 8 sample X-rays in local-files storage; the 5th is marked as validation."""
    project = client.projects.create(title=name, label_config=FRACTURE_LABEL_CONFIG)
    folder = label_studio.local_files_root / name
    folder.mkdir()
    images = sorted((sample_dir / "images").glob("*.jpg"))[:8]
    for path in images:
        shutil.copy(path, folder)
    client.import_storage.local.create(project=project.id, path=str(folder), use_blob_urls=True)
    client.projects.import_tasks(
        id=project.id,
        request=[{"image": f"/data/local-files/?d={name}/{path.name}",
                  **({"split": "val"} if i == validation_task else {})} for i, path in enumerate(images)],
    )  # fmt: skip
    return project.id, sorted(client.tasks.list(project=project.id), key=lambda task: task.id)


def annotate(client: LabelStudio, task_id: int, boxes: bool = True) -> None:
    result = [{"from_name": "label", "to_name": "image", "type": "rectanglelabels", "value": BOX}] if boxes else []
    client.annotations.create(id=task_id, result=result, was_cancelled=False)


def test_annotations_retrain_publish_and_refresh_predictions(
    label_studio: LabelStudioServer, redis_url: str, queue_prefix: str, home: Path, sample_dir: Path, start_worker
) -> None:
    # A gate that passes any candidate once it has one validation fracture: this test is about the
    # loop; the rule itself is tested in test_gate.py and below.
    env = loop_environment(home, redis_url, queue_prefix, label_studio, FRACTURE_AL_RETRAIN_EPOCHS="1",
                           FRACTURE_AL_GATE_MIN_DELTA="-1", FRACTURE_AL_GATE_CONFIDENCE="0",
                           FRACTURE_AL_GATE_SENSITIVITY_MARGIN="1", FRACTURE_AL_GATE_MIN_VALIDATION_IMAGES="1",
                           FRACTURE_AL_GATE_MIN_VALIDATION_FRACTURES="1", FRACTURE_AL_VALIDATION_SHARE="0",
                           FRACTURE_AL_PREDICT_SCORE_THRESHOLD="0")  # fmt: skip
    settings = Settings(home=home, device="cpu", redis_url=redis_url, queue_prefix=queue_prefix,
                        retrain_min_new_annotations=5, predict_score_threshold=0.0)  # fmt: skip
    app = create_app(settings)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    backend_url = f"http://127.0.0.1:{server.server_port}"
    try:
        client = LabelStudio(base_url=label_studio.url, api_key=label_studio.token)
        project_id, tasks = make_project(client, label_studio, sample_dir, "loop")
        client.ml.create(project=project_id, url=backend_url, title="fracture-al")
        start_worker(env)

        for index in range(5):  # 4 for training (one a negative) and the validation task
            annotate(client, tasks[index].id, boxes=index != 2)

        def served_version() -> str | None:
            reply = requests.post(
                f"{backend_url}/setup", json={"project": f"{project_id}.0", "schema": FRACTURE_LABEL_CONFIG}
            )
            return reply.json()["model_version"] if reply.json()["model_version"] == "v0002" else None

        wait_until(served_version, 420, "the retrained model v0002 to be served", every=2)
        version = ModelStore(home / "models").get("v0002")
        config = version.read_json("config.json")
        assert config["data"]["train"]["count"] == 4 and config["data"]["val"]["count"] == 1
        assert config["pretrained_from"].endswith("v0001/model.pt")  # warm-started from the served model
        provenance = version.provenance
        # 4 labels after a warm start: the few-label recipe, at a quarter of the training rate.
        assert provenance["recipe"] == "few_label"
        assert config["train"]["lr"] == pytest.approx(TrainConfig().lr / 4) and config["train"]["ema_decay"]
        assert provenance["gate"]["passed"] and provenance["gate"]["validation_images"] == 1
        assert "mAP@50" in provenance["gate"]["reason"] and provenance["gate"]["delta_map50"] is not None
        assert sorted(r["image_id"] for r in provenance["trained_on"]) == [t.id for t in tasks[:4]]
        assert [r["image_id"] for r in provenance["validated_on"]] == [tasks[4].id]
        assert all(len(r["sha256"]) == 64 and r["annotation_id"] for r in provenance["trained_on"])
        # The retrain leaves the queue's report in the project, where the team looks (just after
        # publishing, so it may land a moment after the new version is served).
        wait_until(lambda: "Review queue: not measured yet" in (client.projects.get(id=project_id).description or ""),
                   60, "the queue report in the project's description")  # fmt: skip
        assert (home / "reports" / f"project-{project_id}" / "report.json").is_file()

        unlabelled = tasks[5:]
        reply = requests.post(
            f"{backend_url}/predict",
            json={
                "tasks": [{"id": t.id, "data": t.data} for t in unlabelled],
                "project": f"{project_id}.0",
                "label_config": FRACTURE_LABEL_CONFIG,
            },
        )
        assert [r["model_version"] for r in reply.json()["results"]] == ["v0002"] * 3

        def refreshed() -> bool:
            return all(
                any(p.model_version == "v0002" for p in client.predictions.list(task=task.id)) for task in unlabelled
            )

        wait_until(refreshed, 240, "predictions of v0002 on every unlabelled task", every=2)
        for task in tasks[:5]:  # labelled tasks are not re-scored by the workers
            assert not any(p.model_version == "v0002" for p in client.predictions.list(task=task.id))
        # The tasks labelled without a split were given one (share 0: training), where annotators see
        # it. (Last: opening a task through the API makes Label Studio ask the backend to predict it.)
        assert [client.tasks.get(id=t.id).data.get("split") for t in tasks[:5]] == ["train"] * 4 + ["val"]
    finally:
        server.shutdown()


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fracture_al", *args], env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip


def job_state(env: dict[str, str], job_id: str) -> dict[str, Any] | None:
    rows = json.loads(cli(env, "jobs", "--json").stdout)
    return next((row for row in rows if row["id"] == job_id), None)


def test_worker_killed_mid_training_publishes_nothing_and_the_job_is_reported(
    label_studio: LabelStudioServer, redis_url: str, queue_prefix: str, home: Path, sample_dir: Path, start_worker
) -> None:
    # 500 epochs at the full rate (the few-label recipe off): a training that is still running when killed.
    env = loop_environment(home, redis_url, queue_prefix, label_studio, FRACTURE_AL_RETRAIN_EPOCHS="500",
                           FRACTURE_AL_RETRAIN_FEW_LABEL_UP_TO="0", FRACTURE_AL_JOB_RETRIES="0",
                           FRACTURE_AL_WORKER_HEARTBEAT_GRACE="20")  # fmt: skip
    client = LabelStudio(base_url=label_studio.url, api_key=label_studio.token)
    project_id, tasks = make_project(client, label_studio, sample_dir, "killed")
    for task in tasks[:4]:
        annotate(client, task.id)
    queued = cli(env, "retrain", "--project", str(project_id))
    assert queued.returncode == 0, queued.stderr
    job_id = queued.stdout.split("job ")[-1].split()[0]

    worker = start_worker(env)
    wait_until(lambda: (job_state(env, job_id) or {}).get("meta", {}).get("iteration", 0) >= 1, 240,
               "the job to be training", every=2)  # fmt: skip
    horses = psutil.Process(worker.pid).children(recursive=True)
    assert horses, "the job should be running in a forked work-horse"
    kill_tree(worker)  # the worker and its work-horse die at once
    assert not any(horse.is_running() and horse.status() != psutil.STATUS_ZOMBIE for horse in horses)

    store = ModelStore(home / "models")
    assert [v.name for v in store.list()] == ["v0001"]
    assert store.current_name() == "v0001"
    assert job_state(env, job_id)["state"] == "running"  # not dropped: RQ still holds it as started
    assert (home / "runs" / job_id / "data").is_dir()  # kept: a retry resumes from it

    time.sleep(10)
    assert "no heartbeat for" in job_state(env, job_id)["outcome"]  # not stale progress: the worker is gone
    # Once the dead worker's heartbeat lapses (monitoring interval 2 s + the grace's 20 s), the next
    # worker's maintenance finds the abandoned job; with no retries left it is reported failed.
    time.sleep(15)
    start_worker(env, "--burst").wait(timeout=120)
    failed = job_state(env, job_id)
    assert failed["state"] == "failed", failed
    assert "Abandoned" in failed["outcome"] or "abandoned" in json.dumps(failed).lower()
    assert [v.name for v in store.list()] == ["v0001"]
    # Nothing will resume from the failed job's folder now: the next retrain removes it.
    ended = prune_ended_runs(home / "runs", f"{queue_prefix}-retrain-", redis.Redis.from_url(redis_url))
    assert ended == [job_id] and not (home / "runs" / job_id).exists()


def test_review_queue_written_to_label_studio_is_the_queue_the_cli_prints(
    label_studio: LabelStudioServer, redis_url: str, queue_prefix: str, home: Path, sample_dir: Path, start_worker
) -> None:
    env = loop_environment(home, redis_url, queue_prefix, label_studio, FRACTURE_AL_SCORING_CHUNK_SIZE="4",
                           FRACTURE_AL_QUEUE_BATCH_SIZE="3")  # fmt: skip
    client = LabelStudio(base_url=label_studio.url, api_key=label_studio.token)
    project_id, tasks = make_project(client, label_studio, sample_dir, "queue")
    for task in tasks[:2]:
        annotate(client, task.id)
    unranked = cli(env, "queue", "--project", str(project_id))
    assert unranked.returncode == 1 and "no review queue yet" in unranked.stderr

    assert cli(env, "queue", "--project", str(project_id), "--refresh").returncode == 0
    start_worker(env, "--burst").wait(timeout=300)  # scores two chunks, then ranks once both have ended

    printed = cli(env, "queue", "--project", str(project_id), "--json", "--top", "0")
    assert printed.returncode == 0, printed.stderr
    queue = json.loads(printed.stdout)
    queued = [entry["task_id"] for entry in queue["entries"]]
    assert queue["model_version"] == "v0001" and sorted(queued) == [task.id for task in tasks[2:]]

    # Label Studio's own "Review queue" tab lists the tasks in exactly the printed order.
    view = next(v for v in client.views.list(project=project_id) if v.data.get("title") == "Review queue")
    assert [task.id for task in client.tasks.list(project=project_id, view=view.id)] == queued
    for entry in queue["entries"]:
        task = client.tasks.get(id=entry["task_id"])
        assert task.data["review_rank"] == entry["rank"] and task.data["image"].endswith(".jpg")
        assert [p.score for p in client.predictions.list(task=task.id)] == [pytest.approx(entry["queue_score"])]
    for task in tasks[:2]:
        assert "review_rank" not in client.tasks.get(id=task.id).data

    # Past the diverse first batch the queue runs by decreasing uncertainty; ranked by uncertainty
    # alone, all of it does.
    rest = [entry["uncertainty"] for entry in queue["entries"][3:]]
    assert rest == sorted(rest, reverse=True)
    plain = json.loads(cli(env, "queue", "--project", str(project_id), "--strategy", "uncertainty", "--json",
                           "--top", "0").stdout)  # fmt: skip
    assert [e["uncertainty"] for e in plain["entries"]] == sorted((e["uncertainty"] for e in plain["entries"]),
                                                                   reverse=True)  # fmt: skip
    assert sorted(e["task_id"] for e in plain["entries"]) == sorted(queued)


FAR_BOX = {"x": 1, "y": 1, "width": 3, "height": 3, "rotation": 0, "rectanglelabels": ["Fracture"]}


def test_random_arm_is_written_and_the_report_counts_what_annotators_changed(
    label_studio: LabelStudioServer, redis_url: str, queue_prefix: str, home: Path, sample_dir: Path, start_worker
) -> None:
    """Half of every batch of 4 goes to the random arm; annotators then accept the model's boxes on
    the random arm's X-rays and add a fracture it missed on the queue's: the report must count
    exactly that, by arm, with the lead times they took."""
    env = loop_environment(home, redis_url, queue_prefix, label_studio, FRACTURE_AL_QUEUE_BATCH_SIZE="4",
                           FRACTURE_AL_QUEUE_RANDOM_SHARE="0.5")  # fmt: skip
    client = LabelStudio(base_url=label_studio.url, api_key=label_studio.token)
    project_id, tasks = make_project(client, label_studio, sample_dir, "arms")
    client.projects.update(id=project_id, description="Wrist films from ward 3.")
    assert cli(env, "queue", "--project", str(project_id), "--refresh").returncode == 0
    start_worker(env, "--burst").wait(timeout=300)

    queue = json.loads(cli(env, "queue", "--project", str(project_id), "--json", "--top", "0").stdout)
    arms = [entry["arm"] for entry in queue["entries"]]
    assert arms[:4].count("random") == 2 and arms[4:].count("random") == 2  # 8 tasks: two batches of 4
    written = {task.id: client.tasks.get(id=task.id).data for task in tasks}
    assert {e["task_id"]: e["arm"] for e in queue["entries"]} == {i: d["review_arm"] for i, d in written.items()}
    assert {d["review_model_version"] for d in written.values()} == {"v0001"}

    for entry in queue["entries"]:
        [shown] = [p for p in client.predictions.list(task=entry["task_id"]) if p.model_version == "v0001"]
        result = [{k: region[k] for k in ("from_name", "to_name", "type", "value", "original_width",
                                          "original_height")} for region in shown.result]  # fmt: skip
        if entry["arm"] == "queue":  # the model missed a fracture (far from any box it drew)
            result.append({"from_name": "label", "to_name": "image", "type": "rectanglelabels", "value": FAR_BOX})
        client.annotations.create(id=entry["task_id"], result=result, was_cancelled=False,
                                  lead_time=30.0 if entry["arm"] == "queue" else 10.0)  # fmt: skip

    printed = cli(env, "report", "--project", str(project_id), "--json")
    assert printed.returncode == 0, printed.stderr
    report = json.loads(printed.stdout)
    assert report["placed_by_queue"] == 8
    queue_arm, random_arm = report["arms"]["queue"], report["arms"]["random"]
    assert (queue_arm["labelled"], queue_arm["mistakes"], queue_arm["missed"]) == (4, 4, 4)
    assert (random_arm["labelled"], random_arm["mistakes"]) == (4, 0)
    assert queue_arm["false"] == queue_arm["moved"] == random_arm["missed"] == 0
    assert queue_arm["lead_time_seconds"]["value"] == pytest.approx(30.0)
    assert random_arm["lead_time_seconds"]["value"] == pytest.approx(10.0)
    assert report["mistake_ratio"]["ratio"] > 1 and "queue" in report["verdict"]
    assert all(Path(file).is_file() for file in report["files"])
    assert (home / "reports" / f"project-{project_id}" / "queue_report.png").is_file()

    # The summary goes into the project's description, twice over without repeating itself, and
    # what the team wrote there stays.
    for _ in range(2):
        write_project_summary(client, project_id, summary_text(report))
    description = client.projects.get(id=project_id).description
    assert description.startswith("Wrist films from ward 3.") and description.count("Review queue:") == 1
    assert report["verdict"] in description


def test_a_project_without_validation_tasks_gets_a_frozen_set_and_no_ungated_model(
    label_studio: LabelStudioServer, redis_url: str, queue_prefix: str, home: Path, sample_dir: Path, start_worker
) -> None:
    client = LabelStudio(base_url=label_studio.url, api_key=label_studio.token)
    project_id, tasks = make_project(client, label_studio, sample_dir, "frozen", validation_task=None)
    # A share that puts exactly half of the 8 tasks in validation, whatever ids Label Studio gave them.
    draws = sorted(held_out_draw(task.id) for task in tasks)
    share = (draws[3] + draws[4]) / 2
    expected = new_assignments([{"id": task.id, "data": {}} for task in tasks], share)
    env = loop_environment(home, redis_url, queue_prefix, label_studio, FRACTURE_AL_RETRAIN_EPOCHS="1",
                           FRACTURE_AL_VALIDATION_SHARE=str(share))  # fmt: skip
    for task in tasks:
        annotate(client, task.id)
    queued = cli(env, "retrain", "--project", str(project_id))
    assert queued.returncode == 0, queued.stderr
    job_id = queued.stdout.split("job ")[-1].split()[0]
    start_worker(env, "--burst").wait(timeout=300)

    written = {task.id: client.tasks.get(id=task.id).data.get("split") for task in tasks}
    assert written == expected and sorted(written.values()) == ["train"] * 4 + ["val"] * 4
    store = ModelStore(home / "models")
    assert [v.name for v in store.list()] == ["v0001"] and store.current_name() == "v0001"  # nothing served
    [kept] = store.rejected()
    rejection = json.loads((kept / "rejection.json").read_text())
    assert not rejection["passed"] and rejection["needs"] == {"images": 16, "fractures": 6}
    assert "label 16 more validation X-rays and 6 more fractures" in rejection["reason"]
    provenance = json.loads((kept / "provenance.json").read_text())
    assert sorted(r["image_id"] for r in provenance["trained_on"]) == sorted(t for t, s in expected.items()
                                                                             if s == "train")  # fmt: skip
    assert sorted(r["image_id"] for r in provenance["validated_on"]) == sorted(t for t, s in expected.items()
                                                                               if s == "val")  # fmt: skip
    row = job_state(env, job_id)
    assert row["state"] == "finished" and "validation set too small" in row["progress"]
    assert "Latest retrain" in client.projects.get(id=project_id).description  # a kept candidate is reported too
    assert (home / "runs").is_dir() and not (home / "runs" / job_id).exists()  # the ended job's folder is gone

    # The next retrain keeps every task where it was, even with another share.
    env["FRACTURE_AL_VALIDATION_SHARE"] = "0.9"
    assert cli(env, "retrain", "--project", str(project_id)).returncode == 0
    start_worker(env, "--burst").wait(timeout=300)
    assert {task.id: client.tasks.get(id=task.id).data.get("split") for task in tasks} == expected


OUTLINE_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="outline" toName="image"><Label value="Fracture"/></BrushLabels>
</View>"""


def test_brush_annotations_retrain_the_segmenter_behind_the_mask_gate_and_rank_its_queue(
    label_studio: LabelStudioServer, redis_url: str, queue_prefix: str, home: Path, sample_dir: Path, start_worker,
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    """A masks-only project: the first segmenter is published once the frozen validation set holds
    a fractured X-ray (the rule's minimum set to one for this test); its masks pre-annotate the
    unlabelled X-rays and its mask uncertainty ranks their queue; a retrain after it starts from it
    and is judged on Dice against it."""
    from PIL import Image, ImageOps

    from fracture_al.detection.images import load_image
    from fracture_al.detection.mask_predictor import MaskPredictor
    from fracture_al.integrations.fiftyone_inspect import label_studio_images
    from fracture_al.integrations.image_source import ImageSource, LabelStudioConnection
    from fracture_al.integrations.label_config import mask_targets
    from fracture_al.integrations.mask_predictions import CALL_THRESHOLD
    from fracture_al.integrations.mask_regions import brush_region
    from fracture_al.sampling.uncertainty import mask_uncertainty
    from fracture_al.worker.jobs import retrain_project

    env = loop_environment(home, redis_url, queue_prefix, label_studio, FRACTURE_AL_RETRAIN_EPOCHS="1",
                           FRACTURE_AL_GATE_MIN_VALIDATION_IMAGES="1", FRACTURE_AL_GATE_MIN_VALIDATION_FRACTURES="1",
                           FRACTURE_AL_VALIDATION_SHARE="0")  # fmt: skip
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    client = LabelStudio(base_url=label_studio.url, api_key=label_studio.token)
    project = client.projects.create(title="outlines", label_config=OUTLINE_CONFIG)
    folder = label_studio.local_files_root / "outlines"
    folder.mkdir()
    images = sorted((sample_dir / "images").glob("*.jpg"))[:7]  # the last two stay unlabelled
    for path in images:
        shutil.copy(path, folder)
    client.import_storage.local.create(project=project.id, path=str(folder), use_blob_urls=True)
    client.projects.import_tasks(id=project.id, request=[
        {"image": f"/data/local-files/?d=outlines/{path.name}", **({"split": "val"} if i == 4 else {})}
        for i, path in enumerate(images)])  # fmt: skip
    *tasks, unlabelled_a, unlabelled_b = sorted(client.tasks.list(project=project.id), key=lambda task: task.id)
    [target] = mask_targets(OUTLINE_CONFIG)
    for index, (task, path) in enumerate(zip(tasks, images[:5], strict=True)):
        width, height = Image.open(path).size
        mask = np.zeros((height, width), dtype=bool)
        if index != 2:  # the third is annotated healthy
            mask[height // 3 : height // 2, width // 3 : width // 2] = True
        stroke = {k: v for k, v in brush_region(mask, target, 1.0).items() if k != "score"}
        client.annotations.create(id=task.id, result=[stroke] if mask.any() else [], was_cancelled=False)

    # What `inspect` reads of a project without boxes: each annotated X-ray's mask, no boxes.
    settings = Settings()
    source = ImageSource(**settings.image_fetching)
    connection = LabelStudioConnection(label_studio.url, label_studio.token)
    inspected = label_studio_images(client, project.id, ["fracture"], lambda ref: source.fetch(ref, connection),
                                    tmp_path / "media")  # fmt: skip
    by_id = {image.fields["task_id"]: image for image in inspected}
    assert sorted(by_id) == sorted(t.id for t in [*tasks, unlabelled_a, unlabelled_b])
    assert all(image.ground_truth is None for image in inspected)
    assert [int(by_id[t.id].mask.sum() > 0) for t in tasks] == [1, 1, 0, 1, 1]
    assert by_id[unlabelled_a.id].mask is None and by_id[unlabelled_a.id].fields["split"] == "unlabelled"
    assert by_id[tasks[4].id].fields["split"] == "val"

    first = retrain_project(project.id)

    assert first["status"] == "published", first
    store = ModelStore(home / "models")
    assert store.current_name("segmentation") == first["model_version"] != store.current_name()
    version = store.get(first["model_version"])
    assert version.task == "segmentation"
    assert sorted(r["image_id"] for r in version.provenance["trained_on"]) == [t.id for t in tasks[:4]]
    assert [r["image_id"] for r in version.provenance["validated_on"]] == [tasks[4].id]
    assert version.provenance["gate"]["validation_fractures"] == 1

    # The queue of a project without boxes: the worker scores it with the segmenter.
    assert cli(env, "queue", "--project", str(project.id), "--refresh").returncode == 0
    start_worker(env, "--burst").wait(timeout=300)
    printed = cli(env, "queue", "--project", str(project.id), "--json", "--top", "0")
    assert printed.returncode == 0, printed.stderr
    queue = json.loads(printed.stdout)
    assert queue["model_version"] == version.name and queue["options"]["uncertainty"] == "mask"
    by_task = {entry["task_id"]: entry for entry in queue["entries"]}
    assert sorted(by_task) == [unlabelled_a.id, unlabelled_b.id]
    # Each X-ray's uncertainty is the segmenter's, measured again here with its flipped view.
    segmenter = MaskPredictor.from_version(version, torch.device("cpu"))
    for task, path in ((unlabelled_a, images[5]), (unlabelled_b, images[6])):
        image = load_image(path)
        [plain], [flipped] = segmenter.predict([image]), segmenter.predict([ImageOps.mirror(image)])
        expected = mask_uncertainty(plain.probabilities, np.fliplr(flipped.probabilities))
        assert by_task[task.id]["uncertainty"] == pytest.approx(expected, abs=1e-4)
        [prediction] = client.predictions.list(task=task.id)
        assert prediction.model_version == version.name
        # One brush region where the segmenter marks pixels at the call threshold, none where it marks none.
        assert [region["type"] for region in prediction.result] == (["brushlabels"] if plain.mask(CALL_THRESHOLD).any()
                                                                    else [])  # fmt: skip
        assert client.tasks.get(id=task.id).data["review_rank"] == by_task[task.id]["rank"]

    second = retrain_project(project.id)  # nothing new to learn: judged against the first, on Dice

    assert second["status"] in {"published", "rejected"}, second
    assert "Dice" in second["gate"]["reason"] and second["gate"]["delta_dice"] is not None
    assert second["gate"]["current"]["dice"] == pytest.approx(first["gate"]["candidate"]["dice"])
