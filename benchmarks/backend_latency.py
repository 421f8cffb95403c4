"""What the ML backend adds on top of the model: ``/predict`` latency and batch throughput.

Starts the backend exactly as users do (``fracture-al serve``, gunicorn) on the current model of
``--home``, with task images served over HTTP by a loopback file server that stands in for Label
Studio's ``/data/upload/``. Every request uses X-rays not sent before, so the image cache does not
flatter the numbers. The same images then go through the bare model in this process.

    python benchmarks/backend_latency.py --home benchmarks/results/home --data ../shared/data/fracatlas
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import requests
import torch
from rich.console import Console
from rich.table import Table

from fracture_al.detection.images import load_image
from fracture_al.detection.model_files import version_model_config
from fracture_al.detection.predictor import Predictor
from fracture_al.detection.store import ModelStore
from fracture_al.integrations.loopback import free_port, wait_until_answering

CONFIG = """<View><Image name="image" value="$image"/>
<RectangleLabels name="label" toName="image"><Label value="fracture"/></RectangleLabels></View>"""


class CountingHandler(SimpleHTTPRequestHandler):
    served: ClassVar[list[str]] = []

    def log_message(self, format: str, *args: object) -> None:
        if len(args) > 1 and str(args[1]) == "200":
            CountingHandler.served.append(self.path)


def serve_images(folder: Path) -> tuple[ThreadingHTTPServer, str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(CountingHandler, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}"


def start_backend(home: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "FRACTURE_AL_HOME": str(home), "FRACTURE_AL_DEVICE": "cpu"}
    process = subprocess.Popen(
        [sys.executable, "-m", "fracture_al", "serve", "--port", str(port), "--threads", "1"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    if wait_until_answering(f"http://127.0.0.1:{port}/health", timeout=120, process=process):
        return process
    process.kill()
    raise RuntimeError("backend did not start")


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, default=Path("benchmarks/results/home"))
    parser.add_argument("--data", type=Path, default=Path("../shared/data/fracatlas"))
    parser.add_argument("--single", type=int, default=40, help="single-image requests to time")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/backend_latency.json"))
    args = parser.parse_args()

    version = ModelStore(args.home / "models").current()
    names = sorted(path.name for path in (args.data / "images").glob("*.jpg"))
    single_names, batch_names = names[: args.single], names[args.single : args.single + args.batch]
    file_server, ls_url = serve_images(args.data / "images")
    port = free_port()
    backend = start_backend(args.home, port)
    base = f"http://127.0.0.1:{port}"
    try:
        requests.post(f"{base}/setup", json={"project": "1.0", "schema": CONFIG, "hostname": ls_url}, timeout=30)
        task = lambda name: {"id": 0, "data": {"image": f"{ls_url}/{name}"}}  # noqa: E731
        warm = requests.post(f"{base}/predict", json={"tasks": [task(names[-1])], "project": "1.0"}, timeout=300)
        warm.raise_for_status()
        backend_single = []
        for name in single_names:
            started = time.perf_counter()
            requests.post(
                f"{base}/predict", json={"tasks": [task(name)], "project": "1.0"}, timeout=300
            ).raise_for_status()
            backend_single.append(time.perf_counter() - started)
        started = time.perf_counter()
        reply = requests.post(
            f"{base}/predict", json={"tasks": [task(n) for n in batch_names], "project": "1.0"}, timeout=600
        )
        reply.raise_for_status()
        backend_batch = time.perf_counter() - started
        assert len(reply.json()["results"]) == len(batch_names)
        fetched = 1 + len(single_names) + len(batch_names)
        assert len(CountingHandler.served) == fetched, f"backend fetched {len(CountingHandler.served)} of {fetched}"
    finally:
        os.killpg(backend.pid, signal.SIGTERM)
        backend.wait()
        file_server.shutdown()

    predictor = Predictor.from_version(version, torch.device("cpu"))
    predictor.predict([load_image(args.data / "images" / names[-1])])
    bare_single = []
    for name in single_names:
        image = load_image(args.data / "images" / name)
        started = time.perf_counter()
        predictor.predict([image])
        bare_single.append(time.perf_counter() - started)
    images = [load_image(args.data / "images" / name) for name in batch_names]
    started = time.perf_counter()
    predictor.predict(images, batch_size=8)
    bare_batch = time.perf_counter() - started

    result = {
        "model_version": version.name,
        "arch": version_model_config(version).arch,
        "torch_threads": torch.get_num_threads(),
        "single_requests": len(single_names),
        "backend_p50_s": percentile(backend_single, 50),
        "backend_p95_s": percentile(backend_single, 95),
        "bare_p50_s": percentile(bare_single, 50),
        "bare_p95_s": percentile(bare_single, 95),
        "p50_overhead": percentile(backend_single, 50) / percentile(bare_single, 50) - 1,
        "batch_size": len(batch_names),
        "backend_batch_images_per_s": len(batch_names) / backend_batch,
        "bare_batch_images_per_s": len(batch_names) / bare_batch,
        "batch_overhead": backend_batch / bare_batch - 1,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))

    table = Table(title=f"/predict vs bare model ({version.name}, CPU, {torch.get_num_threads()} threads)")
    for column in ("", "p50 s (1 image)", "p95 s (1 image)", f"images/s (batch {len(batch_names)})"):
        table.add_column(column, justify="right")
    table.add_row("backend", f"{result['backend_p50_s']:.3f}", f"{result['backend_p95_s']:.3f}",
                  f"{result['backend_batch_images_per_s']:.2f}")  # fmt: skip
    table.add_row("bare model", f"{result['bare_p50_s']:.3f}", f"{result['bare_p95_s']:.3f}",
                  f"{result['bare_batch_images_per_s']:.2f}")  # fmt: skip
    table.add_row("overhead", f"{100 * result['p50_overhead']:+.1f}%", "", f"{100 * result['batch_overhead']:+.1f}%")
    Console().print(table)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
