"""`fracture-al serve`: the backend under gunicorn, as operators run it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from fracture_al.integrations.loopback import free_port, wait_until_answering

pytestmark = pytest.mark.slow  # starts gunicorn

CONFIG = """<View><Image name="image" value="$image"/>
<RectangleLabels name="label" toName="image" model_score_threshold="0"><Label value="fracture"/></RectangleLabels>
</View>"""
TOKEN = "feedfacefeedfacefeedfacefeedfacefeedface"


class Drip(BaseHTTPRequestHandler):
    """An image host that sends one byte every half second: per-read timeouts never fire."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "100000")
        self.end_headers()
        try:
            for _ in range(100_000):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.5)
        except OSError:
            pass

    def log_message(self, *args: object) -> None:
        pass


def test_gunicorn_backend_serves_predictions_and_keeps_tokens_out_of_its_logs(
    trained_home: Path, sample_dir: Path, tmp_path: Path
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(sorted((sample_dir / "images").glob("*.jpg"))[0], images / "xray.jpg")
    port = free_port()
    drip = ThreadingHTTPServer(("127.0.0.1", 0), Drip)
    drip.daemon_threads = True
    threading.Thread(target=drip.serve_forever, daemon=True).start()
    env = {**os.environ, "FRACTURE_AL_HOME": str(trained_home), "FRACTURE_AL_DEVICE": "cpu",
           "FRACTURE_AL_LOCAL_IMAGE_ROOT": str(images), "FRACTURE_AL_REDIS_URL": "redis://127.0.0.1:1/0",
           "FRACTURE_AL_ALLOWED_IMAGE_HOSTS": json.dumps(["localhost"]),
           "FRACTURE_AL_IMAGE_FETCH_TIMEOUT": "4"}  # fmt: skip
    log = tmp_path / "serve.log"
    command = [sys.executable, "-m", "fracture_al", "serve", "--port", str(port), "--threads", "3"]
    process = subprocess.Popen(command, env=env,
                               stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        if not wait_until_answering(f"{base}/health", timeout=90, process=process):
            raise AssertionError(f"backend did not start:\n{log.read_text()}")
        setup = requests.post(f"{base}/setup", json={"project": "1.1", "schema": CONFIG, "hostname": "http://127.0.0.1:1",
                                                     "access_token": TOKEN}, timeout=10)  # fmt: skip
        assert setup.json() == {"model_version": "v0001"}
        tasks = [{"id": 1, "data": {"image": "xray.jpg"}}, {"id": 2, "data": {"image": "/data/upload/1/x.jpg"}}]
        reply = requests.post(f"{base}/predict", json={"tasks": tasks, "project": "1.1"}, timeout=120)
        results = reply.json()["results"]
        assert len(results) == 2
        assert results[0]["result"] and results[1]["result"] == []  # the second image's Label Studio is down
        # Redis is unreachable here: the annotation event is kept on disk, not lost.
        hook = requests.post(f"{base}/webhook", json={"action": "ANNOTATION_CREATED", "project": {"id": 1}}, timeout=30)
        assert hook.json()["status"] == "spooled"
        assert len(list((trained_home / "spool" / "webhooks").glob("*.json"))) == 1

        # Four predictions wait on the dripping host: /health still answers at once, and each
        # prediction ends at the 4 s fetch deadline (or is told to come back), not with the drip.
        slow = {"tasks": [{"id": 9, "data": {"image": f"http://localhost:{drip.server_address[1]}/x.jpg"}}],
                "project": "1.1", "label_config": CONFIG}  # fmt: skip

        def timed_predict() -> tuple[int, float]:
            started = time.monotonic()
            status = requests.post(f"{base}/predict", json=slow, timeout=60).status_code
            return status, time.monotonic() - started

        with ThreadPoolExecutor(4) as pool:
            waiting = [pool.submit(timed_predict) for _ in range(4)]
            time.sleep(1)
            assert requests.get(f"{base}/health", timeout=3).status_code == 200
            outcomes = [future.result() for future in waiting]
        assert sorted(status for status, _ in outcomes) == [200, 200, 429, 429]
        assert all(seconds < 20 for status, seconds in outcomes if status == 200), outcomes
    finally:
        drip.shutdown()
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
        shutil.rmtree(trained_home / "spool", ignore_errors=True)
    text = log.read_text()
    assert "POST /predict" in text  # gunicorn's access log is on
    assert TOKEN not in text
