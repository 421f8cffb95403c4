"""`fracture-al serve`: the backend under gunicorn, as operators run it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import requests

from integrations.loopback import free_port, wait_until_answering

CONFIG = """<View><Image name="image" value="$image"/>
<RectangleLabels name="label" toName="image" model_score_threshold="0"><Label value="fracture"/></RectangleLabels>
</View>"""
TOKEN = "feedfacefeedfacefeedfacefeedfacefeedface"


def test_gunicorn_backend_serves_predictions_and_keeps_tokens_out_of_its_logs(
    trained_home: Path, sample_dir: Path, tmp_path: Path
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(sorted((sample_dir / "images").glob("*.jpg"))[0], images / "xray.jpg")
    port = free_port()
    env = {**os.environ, "FRACTURE_AL_HOME": str(trained_home), "FRACTURE_AL_DEVICE": "cpu",
           "FRACTURE_AL_LOCAL_IMAGE_ROOT": str(images), "FRACTURE_AL_REDIS_URL": "redis://127.0.0.1:1/0"}  # fmt: skip
    log = tmp_path / "serve.log"
    process = subprocess.Popen([sys.executable, "-m", "fracture_al", "serve", "--port", str(port)], env=env,
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
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
        shutil.rmtree(trained_home / "spool", ignore_errors=True)
    text = log.read_text()
    assert "POST /predict" in text  # gunicorn's access log is on
    assert TOKEN not in text
