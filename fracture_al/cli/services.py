"""The long-running parts: ``serve`` (the Label Studio ML backend under gunicorn), ``worker``
(an RQ worker) and ``up`` (the whole loop on one machine)."""

from __future__ import annotations

import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from fracture_al.cli.base import CliError, console, main, redis_connection, settings_of
from fracture_al.settings import SAMPLE_DIR


# Label Studio ML backend ----------------------------------------------------------------------------
@main.command()
@click.option("--host", default=None, help="Bind address (FRACTURE_AL_BACKEND_HOST, default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (FRACTURE_AL_BACKEND_PORT, default 9090).")
@click.option("--workers", type=int, default=None, help="gunicorn worker processes (each loads the model).")
@click.option("--threads", type=int, default=None, help="Threads per worker.")
@click.pass_context
def serve(context: click.Context, host: str | None, port: int | None, workers: int | None, threads: int | None) -> None:
    """Run the Label Studio ML backend under gunicorn."""
    settings = settings_of(context).with_overrides(
        backend_host=host, backend_port=port, backend_workers=workers, backend_threads=threads
    )
    # gunicorn's workers build their own Settings from the environment: hand the flags down that way.
    env = settings.child_environment()
    command = [
        sys.executable, "-m", "gunicorn",
        "--bind", f"{settings.backend_host}:{settings.backend_port}",
        "--workers", str(settings.backend_workers),
        "--threads", str(settings.backend_threads),
        "--timeout", "300",  # a "retrieve predictions" over many tasks is one long request
        "--access-logfile", "-",
        "fracture_al.backend.app:create_app()",
    ]  # fmt: skip
    os.execvpe(command[0], command, env)


# The whole loop on one machine ---------------------------------------------------------------------
@main.command()
@click.option("--images", type=click.Path(path_type=Path, exists=True, file_okay=False), default=SAMPLE_DIR / "images",
              show_default="the bundled sample X-rays", help="Folder of X-rays to import (DICOM too).")  # fmt: skip
@click.option("--project-title", default="Fracture X-rays", show_default=True)
@click.option("--label-studio-port", type=int, default=8080, show_default=True)
@click.option("--backend-port", type=int, default=None, help="ML backend port (FRACTURE_AL_BACKEND_PORT, 9090).")
@click.pass_context
def up(context: click.Context, images: Path, project_title: str, label_studio_port: int,
       backend_port: int | None) -> None:  # fmt: skip
    """Start Redis, Label Studio, the ML backend and a worker on loopback; Ctrl-C stops them all."""
    from fracture_al.integrations.label_studio import LabelStudioUnavailableError
    from fracture_al.integrations.label_studio_server import LabelStudioStartError
    from fracture_al.up import Stack, StackError

    settings = settings_of(context).with_overrides(backend_port=backend_port)
    # Ctrl-C, a closed terminal and a service manager's stop all end the stack cleanly, also where
    # SIGINT came in ignored (started in the background by a non-interactive shell).
    for stop_signal in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(stop_signal, _interrupt)
    stack = Stack(settings, images, project_title, label_studio_port, say=console.print)
    try:
        stack.check_ports()
        stack.start_redis()
        stack.ensure_model()
        url, api_key = stack.start_label_studio()
        stack.start_backend_and_worker(url, api_key)
        project_id = stack.prepare_project(url, api_key)
    except (StackError, LabelStudioStartError, LabelStudioUnavailableError) as error:
        stack.stop()
        raise CliError(str(error)) from error
    except BaseException:
        stack.stop()
        raise
    table = Table(show_header=False, title="fracture-al is ready")
    table.add_row("Label Studio", f"{url}/projects/{project_id}/data")
    login = stack.login()
    if login:
        table.add_row("login", f"{login['username']} / {login['password']}")
    table.add_row("ML backend", stack.backend_url)
    table.add_row("logs", str(stack.log_dir))
    console.print(table)
    console.print("ready: predictions and the review queue fill in as the worker scores the X-rays; Ctrl-C stops")
    exited = stack.watch()
    console.print("stopping...")
    stack.stop()
    if exited is not None:
        raise CliError(f"{exited.name} exited with {exited.process.returncode}; see {exited.log}")


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


# Retraining workers ---------------------------------------------------------------------------------
@main.command()
@click.option("--queues", default="training,scoring", show_default=True, help="Comma-separated queue kinds.")
@click.option("--gpu", default=None, help="Pin this worker to one GPU (sets CUDA_VISIBLE_DEVICES).")
@click.option("--name", default=None, help="Worker name (default: host and pid).")
@click.option("--burst", is_flag=True, help="Exit when the queues are empty.")
@click.pass_context
def worker(context: click.Context, queues: str, gpu: str | None, name: str | None, burst: bool) -> None:
    """Run an RQ worker for the retraining and scoring queues; it waits out Redis outages."""
    from fracture_al.worker.outages import OutageTolerantWorker, work_through_outages
    from fracture_al.worker.queues import get_queue, queue_name
    from fracture_al.worker.status import record_last_error

    settings = settings_of(context)
    # Jobs run in forked work-horses that build their own Settings: pass the choices on.
    os.environ.update(settings.child_environment())
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    connection = redis_connection(settings)
    kinds = [kind.strip() for kind in queues.split(",") if kind.strip()]
    unknown = set(kinds) - {"training", "scoring"}
    if unknown:
        raise CliError(f"unknown queue kinds {sorted(unknown)}; use training and/or scoring")
    name = name or f"{socket.gethostname()}.{os.getpid()}"

    def make_worker(attempt: int) -> OutageTolerantWorker:
        return OutageTolerantWorker(
            [get_queue(settings.queue_prefix, kind, connection) for kind in kinds],
            connection=connection,
            name=name if attempt == 0 else f"{name}.{attempt}",
            job_monitoring_interval=settings.worker_job_monitoring_interval,
            maintenance_interval=settings.worker_maintenance_interval,
            # An idle worker wakes from its blocking dequeue every worker_ttl - 15 s; only then does it
            # run the maintenance that finds abandoned jobs, so the two must match.
            worker_ttl=settings.worker_maintenance_interval + 15,
            heartbeat_grace=settings.worker_heartbeat_grace,
            exception_handlers=[record_last_error],
        )

    # Loaded once here, every forked work-horse starts with the jobs and torch imported: importing
    # them in each horse cost every job about 9 s on a 2-core CPU.
    import fracture_al.worker.jobs  # noqa: F401

    console.print(
        f"worker {name} on {', '.join(queue_name(settings.queue_prefix, k) for k in kinds)} (device {settings.device})"
    )
    work_through_outages(make_worker, connection, burst=burst)
