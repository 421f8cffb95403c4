"""Label Studio's "Retrieve predictions" over tasks already scored: how long ``/predict`` takes for
many tasks in one request once the served version's results are in the scored cache.

A stand-in Label Studio (a loopback file server with Label Studio's ``/data/upload`` paths, so
every image is still fetched over HTTP) serves N distinct FracAtlas X-rays; the tasks cycle over
them. The backend runs under gunicorn (``fracture-al serve``) with the shipped model and a Redis
(REDIS_URL, default the machine's, database 11, keys under a prefix of the run's own, removed after).

1. cold: one request with the N distinct X-rays (the model runs on each; fills the cache);
2. warm: a freshly started backend (nothing fetched yet) gets one request with all tasks (each
   X-ray tasks/N times): every image is fetched over HTTP and hashed, and answered from the cache.

    python -m benchmarks.retrieve_scored --data ../shared/data/fracatlas --images 1000 --tasks 1000 \\
        --out benchmarks/reported/retrieve_scored.json
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import redis
import requests

from fracture_al.integrations.loopback import free_port, wait_until_answering

CONFIG = """<View><Image name="image" value="$image"/>
<RectangleLabels name="label" toName="image"><Label value="fracture"/></RectangleLabels></View>"""
UPLOADS = "/data/upload/1/"


class LabelStudioFiles(SimpleHTTPRequestHandler):
    """Serves ``directory`` under Label Studio's upload path."""

    def translate_path(self, path: str) -> str:
        return super().translate_path("/" + path.removeprefix(UPLOADS).split("?")[0])

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def serving(env: dict[str, str], log: Path) -> Iterator[str]:
    """``fracture-al serve`` on a free port, stopped on the way out; yields its URL."""
    port = free_port()
    backend = subprocess.Popen([sys.executable, "-m", "fracture_al", "serve", "--port", str(port)], env=env,
                               stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        if not wait_until_answering(f"{url}/health", timeout=120, process=backend):
            raise SystemExit(f"the backend did not start; see {log}:\n{log.read_text()}")
        yield url
    finally:
        os.killpg(backend.pid, signal.SIGTERM)
        backend.wait(timeout=60)


def retrieve(url: str, names: list[str], count: int) -> tuple[float, list[dict]]:
    """One "Retrieve predictions" request for ``count`` tasks cycling over ``names``: (seconds, results)."""
    tasks = [{"id": i + 1, "data": {"image": UPLOADS + names[i % len(names)]}} for i in range(count)]
    started = time.perf_counter()
    reply = requests.post(f"{url}/predict", json={"tasks": tasks, "project": "1.1", "label_config": CONFIG},
                          timeout=3600)  # fmt: skip
    reply.raise_for_status()
    return time.perf_counter() - started, reply.json()["results"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="FracAtlas folder (test.json, images/).")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/11"))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    names = [image["file_name"] for split in ("test", "val", "train")
             for image in json.loads((args.data / f"{split}.json").read_text())["images"]][: args.images]  # fmt: skip
    prefix = f"fal-retrieve-{secrets.token_hex(4)}"
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        (work / "files").mkdir()
        for name in names:
            shutil.copy(args.data / "images" / name, work / "files" / name)
        files = ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(LabelStudioFiles, directory=str(work / "files"))
        )
        threading.Thread(target=files.serve_forever, daemon=True).start()
        env = {**os.environ, "FRACTURE_AL_HOME": str(work / "home"), "FRACTURE_AL_DEVICE": "cpu",
               "REDIS_URL": args.redis_url, "FRACTURE_AL_QUEUE_PREFIX": prefix,
               "LABEL_STUDIO_URL": f"http://127.0.0.1:{files.server_address[1]}",
               "LABEL_STUDIO_API_KEY": "0" * 40}  # fmt: skip
        try:
            # A backend of its own for each pass: the warm one has fetched nothing yet (its in-memory
            # image cache is empty), as a backend answering tasks the workers scored.
            with serving(env, work / "cold.log") as url:
                cold_seconds, cold = retrieve(url, names, len(names))
            print(f"cold: {len(names)} X-rays predicted in {cold_seconds:.1f} s", flush=True)
            with serving(env, work / "warm.log") as url:
                warm_seconds, warm = retrieve(url, names, args.tasks)
            print(f"warm: {args.tasks} tasks answered in {warm_seconds:.1f} s", flush=True)
        finally:
            files.shutdown()
            connection = redis.Redis.from_url(args.redis_url)
            for key in connection.scan_iter(match=f"*{prefix}*"):
                connection.delete(key)
    same = all(warm[i]["score"] == cold[i % len(names)]["score"] for i in range(args.tasks))
    result = {
        "command": "python -m benchmarks.retrieve_scored " + " ".join(sys.argv[1:]),
        "distinct_xrays": len(names),
        "tasks": args.tasks,
        "cold_seconds": round(cold_seconds, 2),
        "cold_xrays_per_second": round(len(names) / cold_seconds, 2),
        "warm_seconds": round(warm_seconds, 2),
        "warm_tasks_per_second": round(args.tasks / warm_seconds, 1),
        "warm_answers_equal_cold": same,
        "empty_results": sum(1 for r in warm if r["score"] == 0.0 and not r["result"]),
        "machine": f"{os.cpu_count()} CPU cores, device cpu",
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
