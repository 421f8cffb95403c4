"""Seconds from the annotation that triggers a retrain to the new model being served.

For each size N, a fresh Label Studio project gets N FracAtlas train X-rays (plus the val split,
marked as validation, and a pool of unlabelled test X-rays). Their ground-truth boxes are submitted
as annotations through the API; the last one crosses the retrain threshold. The clock runs from that
submission until (a) the backend's ``/setup`` reports the new version and (b) every pool task holds
a prediction of it. Everything runs as users run it: Label Studio from its own virtualenv,
``fracture-al serve`` (gunicorn), ``fracture-al worker``, Redis from REDIS_URL or embedded.

    python benchmarks/retrain_loop.py --data ../shared/data/fracatlas --sizes 100 300 1000 --epochs 1
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
import torch
from label_studio_sdk import LabelStudio
from rich.console import Console
from rich.table import Table

from fracture_al.detection.data import CocoFile
from fracture_al.detection.store import ModelStore
from fracture_al.integrations.label_studio_server import LabelStudioServer
from fracture_al.integrations.loopback import free_port, wait_until_answering
from fracture_al.integrations.regions import box_to_percent

CONFIG = """<View><Image name="image" value="$image"/>
<RectangleLabels name="label" toName="image"><Label value="Fracture" predicted_values="fracture"/></RectangleLabels>
</View>"""


def start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(command, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def wait_until(condition, timeout: float, every: float = 1.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():
            return time.monotonic()
        time.sleep(every)
    raise TimeoutError("condition not met")


def annotation_result(coco: CocoFile, record) -> list[dict]:
    return [
        {"from_name": "label", "to_name": "image", "type": "rectanglelabels",
         "original_width": record.width, "original_height": record.height,
         "value": {**box_to_percent(box, record.width, record.height), "rotation": 0,
                   "rectanglelabels": ["Fracture"]}}
        for box in record.boxes
    ]  # fmt: skip


def run_size(size: int, args, client: LabelStudio, server: LabelStudioServer, backend_url: str, store: ModelStore,
             env: dict[str, str]) -> dict:  # fmt: skip
    train, val, test = (CocoFile(args.data / f"{name}.json") for name in ("train", "val", "test"))
    chosen = train.images[:size]
    pool = test.images[: args.pool]
    project = client.projects.create(title=f"loop-{size}", label_config=CONFIG)
    client.import_storage.local.create(project=project.id, path=str(args.data / "images"), use_blob_urls=True)
    url = lambda record: f"/data/local-files/?d=images/{record.file_name}"  # noqa: E731
    rows = (
        [{"image": url(r), "key": f"train-{r.image_id}"} for r in chosen]
        + [{"image": url(r), "key": f"val-{r.image_id}", "split": "val"} for r in val.images]
        + [{"image": url(r), "key": f"pool-{r.image_id}"} for r in pool]
    )
    for start_index in range(0, len(rows), 500):
        client.projects.import_tasks(id=project.id, request=rows[start_index : start_index + 500])
    tasks = {task.data["key"]: task.id for task in client.tasks.list(project=project.id, fields="task_only")}
    client.ml.create(project=project.id, url=backend_url, title="fracture-al")
    requests.post(f"{backend_url}/setup", json={"project": f"{project.id}.0", "schema": CONFIG}, timeout=30)

    before = store.current_name()
    labelled = [(f"train-{r.image_id}", train, r) for r in chosen] + [(f"val-{r.image_id}", val, r) for r in val.images]
    annotate_started = time.monotonic()
    for key, coco, record in labelled:  # the last submission crosses the threshold (set below)
        client.annotations.create(id=tasks[key], result=annotation_result(coco, record), was_cancelled=False)
        triggered_at = time.monotonic()
    annotate_seconds = triggered_at - annotate_started

    def served() -> bool:
        reply = requests.post(f"{backend_url}/setup", json={"project": f"{project.id}.0", "schema": CONFIG}, timeout=30)
        return reply.ok and reply.json()["model_version"] != before

    served_at = wait_until(served, args.timeout, every=2)
    version = store.current()
    pool_ids = [tasks[f"pool-{r.image_id}"] for r in pool]

    def refreshed() -> bool:
        return all(any(p.model_version == version.name for p in client.predictions.list(task=t)) for t in pool_ids)

    refreshed_at = wait_until(refreshed, args.timeout, every=5)
    metrics = version.metrics
    return {
        "labelled_images": size,
        "validation_images": len(val.images),
        "pool_images": len(pool),
        "epochs": args.epochs,
        "model_version": version.name,
        "annotation_api_seconds": annotate_seconds,
        "seconds_to_served": served_at - triggered_at,
        "seconds_to_pool_refreshed": refreshed_at - triggered_at,
        "train_seconds": metrics.get("train_seconds"),
        "validation_mAP50": metrics.get("validation", {}).get("mAP50"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/fracatlas"))
    parser.add_argument("--home", type=Path, default=Path("benchmarks/results/home"),
                        help="its current model is the warm start (train_fracatlas.py makes one)")  # fmt: skip
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 300, 1000])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--pool", type=int, default=60, help="unlabelled tasks to re-score")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/retrain_loop.json"))
    args = parser.parse_args()
    args.data = args.data.resolve()

    work = Path(tempfile.mkdtemp(prefix="retrain-loop-"))
    home = work / "home"
    shutil.copytree(args.home / "models", home / "models")
    store = ModelStore(home / "models")
    server = LabelStudioServer(data_dir=work / "ls", port=free_port(), username="bench@example.org",
                               password=secrets.token_hex(8), token=secrets.token_hex(20),
                               local_files_root=args.data)  # fmt: skip
    server.start(work / "label-studio.log")
    backend_port = free_port()
    results, processes = [], []
    try:
        validation_count = len(CocoFile(args.data / "val.json").images)
        for size in args.sizes:
            threshold = size + validation_count  # the last submission triggers the retrain
            env = {**os.environ, "FRACTURE_AL_HOME": str(home), "FRACTURE_AL_DEVICE": "auto",
                   "FRACTURE_AL_QUEUE_PREFIX": f"bench-{secrets.token_hex(3)}",
                   "LABEL_STUDIO_URL": server.url, "LABEL_STUDIO_API_KEY": server.token,
                   "FRACTURE_AL_RETRAIN_EPOCHS": str(args.epochs), "FRACTURE_AL_GATE_MIN_DELTA": "-1",
                   "FRACTURE_AL_RETRAIN_MIN_NEW_ANNOTATIONS": str(threshold)}  # fmt: skip
            processes = [
                start([sys.executable, "-m", "fracture_al", "serve", "--port", str(backend_port)], env,
                      work / f"backend-{size}.log"),
                start([sys.executable, "-m", "fracture_al", "worker"], env, work / f"worker-{size}.log"),
            ]  # fmt: skip
            if not wait_until_answering(f"http://127.0.0.1:{backend_port}/health", timeout=120, process=processes[0]):
                raise RuntimeError(f"the backend did not start; see {work / f'backend-{size}.log'}")
            client = LabelStudio(base_url=server.url, api_key=server.token, timeout=120)
            result = run_size(size, args, client, server, f"http://127.0.0.1:{backend_port}", store, env)
            results.append(result)
            print(json.dumps(result), flush=True)
            for process in processes:
                stop(process)
    finally:
        for process in processes:
            stop(process)
        server.stop()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"device": device, "results": results}, indent=2))
    table = Table(title=f"annotation -> new version served ({device}, {args.epochs} epoch(s) per retrain)")
    for column in ("labelled", "s to served", "s to pool refreshed", "train s", "val mAP@50"):
        table.add_column(column, justify="right")
    for row in results:
        table.add_row(str(row["labelled_images"]), f"{row['seconds_to_served']:.0f}",
                      f"{row['seconds_to_pool_refreshed']:.0f}", f"{row['train_seconds']:.0f}",
                      f"{row['validation_mAP50']:.3f}")  # fmt: skip
    Console().print(table)
    print(f"saved {args.out}; logs in {work}")


if __name__ == "__main__":
    main()
