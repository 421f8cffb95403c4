"""Pool scoring throughput against the bare batched model, in one run on one machine.

The pool path is a scoring job as the workers run it (``worker.jobs.score_tasks``): read the chunk's
tasks from a real Label Studio (started from ``.venv-labelstudio``, serving N FracAtlas X-rays as
local files), fetch every image over HTTP, predict, embed and measure TTA instability, and write
the predictions back. The bare path runs the same model calls (predict, embed, the two TTA views,
batch 8) on the same images already decoded in memory. Both use the shipped model on the CPU.

    python -m benchmarks.scoring_throughput --data ../shared/data/fracatlas --images 64 \\
        --out benchmarks/reported/scoring_throughput.json
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from label_studio_sdk import LabelStudio

from benchmarks.processor import processor
from fracture_al.detection.images import load_image
from fracture_al.detection.predictor import Predictor
from fracture_al.detection.shipped_model import open_store
from fracture_al.integrations.label_config import FRACTURE_LABEL_CONFIG
from fracture_al.integrations.label_studio_server import LabelStudioServer
from fracture_al.integrations.loopback import free_port


def bare(predictor: Predictor, paths: list[Path], batch_size: int) -> float:
    images = [load_image(path) for path in paths]
    started = time.perf_counter()
    predictor.predict(images, batch_size=batch_size)
    predictor.embed(images, batch_size=batch_size)
    predictor.predict_augmented(images, batch_size=batch_size)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="FracAtlas folder (test.json, images/).")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)

    names = [image["file_name"] for image in json.loads((args.data / "test.json").read_text())["images"]]
    names = names[: args.images]
    work = Path(tempfile.mkdtemp(prefix="scoring-"))
    (work / "files" / "images").mkdir(parents=True)
    for name in names:
        shutil.copy(args.data / "images" / name, work / "files" / "images" / name)
    server = LabelStudioServer(data_dir=work / "ls", port=free_port(), username="bench@example.org",
                               password=secrets.token_hex(8), token=secrets.token_hex(20),
                               local_files_root=work / "files")  # fmt: skip
    server.start(work / "label-studio.log")
    try:
        client = LabelStudio(base_url=server.url, api_key=server.token, timeout=120)
        project = client.projects.create(title="scoring", label_config=FRACTURE_LABEL_CONFIG)
        client.import_storage.local.create(project=project.id, path=str(work / "files" / "images"), use_blob_urls=True)
        client.projects.import_tasks(id=project.id, request=[{"image": f"/data/local-files/?d=images/{name}"}
                                                             for name in names])  # fmt: skip
        task_ids = [task.id for task in client.tasks.list(project=project.id, fields="task_only")]
        os.environ.update(FRACTURE_AL_HOME=str(work / "home"), FRACTURE_AL_DEVICE="cpu",
                          LABEL_STUDIO_URL=server.url, LABEL_STUDIO_API_KEY=server.token)  # fmt: skip
        version = open_store(work / "home" / "models").current()
        predictor = Predictor.from_version(version, torch.device("cpu"))
        bare_seconds = bare(predictor, [work / "files" / "images" / name for name in names], batch_size=8)
        print(f"bare model: {len(names)} X-rays in {bare_seconds:.1f} s", flush=True)

        from fracture_al.worker.jobs import score_tasks

        started = time.perf_counter()
        outcome = score_tasks(project.id, task_ids, version.name)
        pool_seconds = time.perf_counter() - started
        print(f"scoring job: {len(task_ids)} tasks in {pool_seconds:.1f} s ({outcome['written']} written)", flush=True)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "command": "python -m benchmarks.scoring_throughput " + " ".join(sys.argv[1:]),
        "xrays": len(names),
        "bare_seconds": round(bare_seconds, 1),
        "bare_xrays_per_second": round(len(names) / bare_seconds, 3),
        "scoring_job_seconds": round(pool_seconds, 1),
        "scoring_job_xrays_per_second": round(len(names) / pool_seconds, 3),
        "throughput_ratio": round(bare_seconds / pool_seconds, 3),
        "written": outcome["written"],
        "failed": outcome["failed"],
        "model": version.name,
        "machine": processor(),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
