"""``fracture-al up``: the whole loop on one machine, on loopback, stopped cleanly with Ctrl-C.

Starts Redis (embedded unless REDIS_URL is given), Label Studio (from its own virtualenv unless
LABEL_STUDIO_URL is given), the ML backend under gunicorn and one worker; makes sure a model
exists; creates or reuses the project, imports the X-rays, connects the backend (Label Studio then
registers the retraining webhook itself) and queues a scoring pass, which writes predictions and
the review queue into the project.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fracture_al.integrations.dataset_folder import DatasetFolder
from fracture_al.integrations.label_config import FRACTURE_LABEL_CONFIG
from fracture_al.integrations.label_studio import connect
from fracture_al.integrations.label_studio_import import import_dataset
from fracture_al.integrations.label_studio_server import LabelStudioServer
from fracture_al.integrations.loopback import port_is_free, wait_until_answering
from fracture_al.integrations.sources.folder import read_folder
from fracture_al.settings import Settings


class StackError(RuntimeError):
    """A part of the stack cannot start; the message says which and what to do."""


@dataclass
class Child:
    name: str
    process: subprocess.Popen | None
    log: Path
    arguments: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict, repr=False)
    restarts: list[float] = field(default_factory=list)  # monotonic times


# A child that dies is started again, unless it died this many times within the window: then
# something is wrong that restarting will not fix, and the stack stops with the child's log named.
MAX_RESTARTS, RESTART_WINDOW_SECONDS = 5, 600


@dataclass
class Stack:
    settings: Settings
    images: Path
    project_title: str
    label_studio_port: int
    say: Callable[[str], None]
    children: list[Child] = field(default_factory=list)
    label_studio: LabelStudioServer | None = None
    redis_url: str | None = None

    @property
    def log_dir(self) -> Path:
        return self.settings.home / "logs"

    @property
    def backend_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.backend_port}"

    def check_ports(self) -> None:
        wanted = {"the ML backend": self.settings.backend_port}
        if not self.settings.label_studio_url:
            wanted["Label Studio"] = self.label_studio_port
        for what, port in wanted.items():
            if not port_is_free(port):
                flag = "--label-studio-port" if what == "Label Studio" else "--backend-port"
                raise StackError(f"port {port} for {what} is already in use (is another `fracture-al up` running?): "
                                 f"stop what holds it or choose another with {flag}")  # fmt: skip

    def start_redis(self) -> None:
        from fracture_al.worker.connection import connect as connect_redis

        connection = connect_redis(self.settings.redis_url, self.settings.redis_file)
        connection.ping()
        if self.settings.redis_url:
            self.redis_url = self.settings.redis_url
        else:  # the children join the embedded server this process owns, through its socket
            self.redis_url = f"unix://{connection.connection_pool.connection_kwargs['path']}"
        self.say(f"Redis: {self.settings.redis_url or 'embedded, ' + str(self.settings.redis_file)}")

    def ensure_model(self) -> None:
        from fracture_al.detection.shipped_model import open_store

        store = open_store(self.settings.models_dir)  # a new home starts from the shipped detector
        if store.current_name():
            self.say(f"model: {store.current_name()} ({store.current().provenance.get('source', 'trained')})")
            return
        self.say("no model yet: training one on the bundled sample X-rays (a few minutes on a CPU)")
        result = subprocess.run([sys.executable, "-m", "fracture_al", "train"], env=self.environment())
        if result.returncode != 0:
            raise StackError("training the first model failed (see above)")

    def start_label_studio(self) -> tuple[str, str]:
        """(URL, API key) of the Label Studio to use; starts one unless LABEL_STUDIO_URL is given."""
        if self.settings.label_studio_url:
            if self.settings.label_studio_api_key is None:
                raise StackError("LABEL_STUDIO_URL is set: set LABEL_STUDIO_API_KEY too")
            return self.settings.label_studio_url, self.settings.label_studio_api_key.get_secret_value()
        credentials = self._label_studio_credentials()
        self.settings.datasets_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.label_studio = LabelStudioServer(
            data_dir=self.settings.home / "label-studio",
            port=self.label_studio_port,
            username=credentials["username"],
            password=credentials["password"],
            token=credentials["token"],
            local_files_root=self.settings.datasets_dir,
        )
        self.say(f"starting Label Studio on {self.label_studio.url} (first start: about a minute)")
        self.label_studio.start(self.log_dir / "label-studio.log")
        return self.label_studio.url, credentials["token"]

    def start_backend_and_worker(self, label_studio_url: str, api_key: str) -> None:
        env = self.environment(LABEL_STUDIO_URL=label_studio_url, LABEL_STUDIO_API_KEY=api_key)
        backend = self._spawn("backend", ["serve", "--port", str(self.settings.backend_port)], env)
        if not wait_until_answering(f"{self.backend_url}/health", timeout=120, process=backend.process):
            raise StackError(f"the ML backend did not become healthy; see {backend.log}")
        worker = self._spawn("worker", ["worker"], env)
        if not self._wait_for_worker(worker):
            raise StackError(f"the worker did not register with Redis; see {worker.log}")

    def prepare_project(self, label_studio_url: str, api_key: str) -> int:
        from fracture_al.worker.connection import connect as connect_redis
        from fracture_al.worker.queues import REFRESH_PREDICTIONS, QueueConfig, enqueue_job

        client = connect(label_studio_url, api_key)
        project = next((p for p in client.projects.list() if p.title == self.project_title), None)
        if project is None:
            project = client.projects.create(title=self.project_title, label_config=FRACTURE_LABEL_CONFIG)
        dataset = DatasetFolder(self.settings.datasets_dir / self.images.name)
        report = dataset.add(read_folder(self.images))
        for path, reason in report.failed.items():
            self.say(f"not imported: {path}: {reason}")
        imported = import_dataset(client, project.id, dataset, dataset.images(), files_root=self.settings.files_root)
        self.say(
            f"project {project.title!r}: {imported.created} X-rays imported, {imported.already_there} already there"
        )
        if not any(backend.url == self.backend_url for backend in client.ml.list(project=project.id)):
            auth = {}
            if self.settings.backend_basic_auth_user and self.settings.backend_basic_auth_password:
                auth = {"auth_method": "BASIC_AUTH", "basic_auth_user": self.settings.backend_basic_auth_user,
                        "basic_auth_pass": self.settings.backend_basic_auth_password.get_secret_value()}  # fmt: skip
            client.ml.create(
                project=project.id, url=self.backend_url, title="fracture-al", is_interactive=False, **auth
            )
        connection = connect_redis(self.settings.redis_url, self.settings.redis_file)
        enqueue_job(QueueConfig(**self.settings.queueing), "scoring", connection, REFRESH_PREDICTIONS, project.id,
                    description=f"score project {project.id} with its current model")  # fmt: skip
        return project.id

    def watch(self) -> Child | None:
        """Restart children that die; block until one dies too often (returned) or Ctrl-C (None)."""
        try:
            while True:
                for child in self.children:
                    if child.process.poll() is not None and not self._restart(child):
                        return child
                if self.label_studio and self.label_studio.process and self.label_studio.process.poll() is not None:
                    return Child("label-studio", self.label_studio.process, self.log_dir / "label-studio.log")
                time.sleep(1)
        except KeyboardInterrupt:
            return None

    def stop(self) -> None:
        """Worker first (it may be writing to Label Studio), then the backend, then Label Studio."""
        for child in reversed(self.children):
            self.say(f"stopping {child.name}")
            _stop_process(child.process)
        if self.label_studio is not None:
            self.say("stopping Label Studio")
            self.label_studio.stop()
        if self.redis_url and not self.settings.redis_url:
            from fracture_al.worker.connection import shutdown_embedded

            self.say("stopping the embedded Redis")
            shutdown_embedded(self.settings.redis_file)

    def environment(self, **extra: str) -> dict[str, str]:
        """The children's environment; they join the Redis this process started or was given."""
        return self.settings.child_environment(**({"REDIS_URL": self.redis_url} if self.redis_url else {}), **extra)

    def _spawn(self, name: str, arguments: list[str], env: dict[str, str]) -> Child:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        child = Child(name, None, self.log_dir / f"{name}.log", arguments, env)
        self._start(child)
        self.children.append(child)
        return child

    def _start(self, child: Child) -> None:
        arguments = list(child.arguments)
        if child.name == "worker":  # a fresh RQ name: a killed worker's record outlives it for minutes
            arguments += ["--name", self._worker_name(child)]
        command = [sys.executable, "-m", "fracture_al", *arguments]
        with child.log.open("ab") as stream:
            child.process = subprocess.Popen(
                command, env=child.env, stdout=stream, stderr=subprocess.STDOUT, start_new_session=True
            )

    def _worker_name(self, child: Child) -> str:
        return f"up-{os.getpid()}-{len(child.restarts)}"

    def _restart(self, child: Child) -> bool:
        """Start a dead child again; False when it has died too often to keep trying."""
        now = time.monotonic()
        child.restarts = [t for t in child.restarts if now - t < RESTART_WINDOW_SECONDS]
        if len(child.restarts) >= MAX_RESTARTS:
            return False
        child.restarts.append(now)
        self.say(f"{child.name} exited with {child.process.returncode}; starting it again (see {child.log})")
        self._start(child)
        return True

    def _wait_for_worker(self, worker: Child, timeout: float = 60.0) -> bool:
        from rq import Worker

        from fracture_al.worker.connection import connect as connect_redis

        connection = connect_redis(self.settings.redis_url, self.settings.redis_file)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and worker.process.poll() is None:
            if any(w.name == self._worker_name(worker) for w in Worker.all(connection=connection)):
                return True
            time.sleep(0.5)
        return False

    def _label_studio_credentials(self) -> dict[str, str]:
        """Made once per home and kept, readable by this user only."""
        path = self.settings.home / "label-studio" / "credentials.json"
        if path.is_file():
            return json.loads(path.read_text())
        path.parent.mkdir(parents=True, exist_ok=True)
        credentials = {"username": "admin@fracture-al.local", "password": secrets.token_urlsafe(12),
                       "token": secrets.token_hex(20)}  # fmt: skip
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as stream:
            json.dump(credentials, stream)
        return credentials

    def login(self) -> dict[str, str] | None:
        if self.label_studio is None:
            return None
        return self._label_studio_credentials()


def _stop_process(process: subprocess.Popen) -> None:
    """SIGINT: gunicorn shuts down at once, an RQ worker after its current job; a second SIGINT
    makes RQ stop that job's work-horse too. Whatever is left of the process group is killed."""
    for grace in (20, 10):
        if process.poll() is not None:
            return
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
