"""The one settings object: environment variables (``FRACTURE_AL_*`` and a few standard names
such as ``REDIS_URL``) overridden by CLI flags.

Modules below ``detection/``, ``sampling/`` and friends never read the environment themselves;
the CLI, the backend factory and the worker entry points build a :class:`Settings` and pass the
values they need down as arguments.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

SAMPLE_DIR = Path(__file__).parent / "sample"

DeviceChoice = Literal["auto", "cpu", "cuda"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FRACTURE_AL_", extra="ignore")

    home: Path = Field(
        default=Path.home() / ".fracture-al",
        description="Root for the model store, training runs and caches.",
    )
    device: DeviceChoice = "auto"
    seed: int = 0

    # Pretrained weights: where local checkpoint files are looked for, and whether torchvision
    # may download them when they are not found (off by default: hospital networks rarely allow it).
    weights_dirs: list[Path] = Field(default_factory=list)
    allow_weight_download: bool = False

    # Outside systems (later stages of the loop read these).
    redis_url: str | None = Field(default=None, validation_alias=AliasChoices("FRACTURE_AL_REDIS_URL", "REDIS_URL"))
    label_studio_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("FRACTURE_AL_LABEL_STUDIO_URL", "LABEL_STUDIO_URL"),
    )
    label_studio_api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("FRACTURE_AL_LABEL_STUDIO_API_KEY", "LABEL_STUDIO_API_KEY"),
    )

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"

    def with_overrides(self, **overrides: Any) -> Settings:
        """A copy with the CLI flags that were actually given (``None`` means not given)."""
        given = {key: value for key, value in overrides.items() if value is not None}
        return self.model_copy(update=given) if given else self
