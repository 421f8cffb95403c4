"""The command group, its settings, and what every area of the CLI shares."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from fracture_al.settings import Settings

# Lines are never broken: the paths and commands printed are there to be copied (tables still fit the terminal).
console = Console(soft_wrap=True)
errors = Console(stderr=True, soft_wrap=True)


class CliError(click.ClickException):
    def show(self, file: Any = None) -> None:
        errors.print(f"[bold red]error:[/] {self.format_message()}")


@click.group()
@click.option("--home", type=click.Path(path_type=Path), help="Data folder (FRACTURE_AL_HOME).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), help="Compute device (FRACTURE_AL_DEVICE).")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.pass_context
def main(context: click.Context, home: Path | None, device: str | None, verbose: bool) -> None:
    """Active learning for fracture detection on X-rays."""
    # Everything written under the home (X-rays, labels, spooled events, credentials, models) and
    # by the services started from here is for this user only: files 0600, folders 0700.
    os.umask(0o077)
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    context.obj = Settings().with_overrides(home=home, device=device)


def settings_of(context: click.Context) -> Settings:
    return context.find_object(Settings)


def model_store(settings: Settings):
    from fracture_al.detection.shipped_model import open_store

    return open_store(settings.models_dir)


def resolve_version(settings: Settings, name: str | None, task: str = "detection"):
    """A model version by name (the task's current one for ``None``), or a CliError naming what exists."""
    from fracture_al.detection.store import ModelStoreError

    try:
        return model_store(settings).resolve(name, task)
    except ModelStoreError as error:
        raise CliError(str(error)) from error


def redis_connection(settings: Settings):
    from redis.exceptions import ConnectionError as RedisConnectionError

    from fracture_al.worker.connection import connect

    connection = connect(settings.redis_url, settings.redis_file)
    try:
        connection.ping()
    except RedisConnectionError as error:
        raise CliError(f"Redis at {settings.redis_url or settings.redis_file} is unreachable ({error})") from error
    return connection


def label_studio_client(settings: Settings):
    from fracture_al.integrations.label_studio import LabelStudioUnavailableError, connect

    if not settings.label_studio_url or settings.label_studio_api_key is None:
        raise CliError("set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY to reach Label Studio")
    try:
        return connect(settings.label_studio_url, settings.label_studio_api_key.get_secret_value())
    except LabelStudioUnavailableError as error:
        raise CliError(str(error)) from error


def fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def label_studio_connection(settings: Settings):
    """Where the configured Label Studio serves task images, and the token they are fetched with."""
    from fracture_al.integrations.image_source import LabelStudioConnection

    if not settings.label_studio_url or settings.label_studio_api_key is None:
        raise CliError("set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY to reach Label Studio")
    return LabelStudioConnection(settings.label_studio_url, settings.label_studio_api_key.get_secret_value())
