"""The one settings object: environment variables (``FRACTURE_AL_*`` and a few standard names
such as ``REDIS_URL``) overridden by CLI flags.

Modules below ``detection/``, ``sampling/`` and friends never read the environment themselves;
the CLI, the backend factory and the worker entry points build a :class:`Settings` and pass the
values they need down as arguments.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from fracture_al.sampling.choices import Aggregation, Strategy, Uncertainty

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

    # Where the Label Studio in use serves local files from (its LOCAL_FILES_DOCUMENT_ROOT); imported
    # datasets must lie under it. Default: the datasets folder, which is what `fracture-al up` serves.
    label_studio_files_root: Path | None = None
    roboflow_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("FRACTURE_AL_ROBOFLOW_API_KEY", "ROBOFLOW_API_KEY")
    )

    # FiftyOne inspection: embeddings closer than this (cosine distance) mark near-duplicate X-rays.
    inspect_duplicate_threshold: float = 0.02

    # The Label Studio ML backend.
    backend_host: str = "127.0.0.1"
    backend_port: int = 9090
    backend_workers: int = 1
    backend_threads: int = 4
    backend_basic_auth_user: str | None = None
    backend_basic_auth_password: SecretStr | None = None
    # Image URLs the backend may fetch besides the Label Studio it was set up with.
    allowed_image_hosts: list[str] = Field(default_factory=list)
    # Plain file paths in tasks are served only from under this folder.
    local_image_root: Path | None = None
    image_fetch_timeout: float = 15.0
    max_image_bytes: int = 50 * 1024 * 1024
    image_cache_bytes: int = 64 * 1024 * 1024
    # Boxes below this score are not shown to annotators, unless the labelling config's
    # `model_score_threshold` attribute says otherwise. None: each model version's own threshold,
    # calibrated on its validation X-rays (detection.evaluation.operating_threshold), else 0.5.
    predict_score_threshold: float | None = None
    predict_batch_size: int = 8

    # Retraining on RQ workers. Queue names, job ids and our own Redis keys all start with
    # `queue_prefix`, so several deployments (or test runs) can share one Redis.
    queue_prefix: str = "fracture-al"
    retrain_min_new_annotations: int = 10
    retrain_epochs: int = 4
    retrain_batch_size: int = 4
    retrain_time_budget_minutes: float | None = None
    # A warm-started retrain on at most this many training X-rays fine-tunes with the few-label
    # recipe (a quarter of the learning rate, `retrain_few_label_iterations` updates whatever the
    # size, weight EMA; detection/recipes.py): it beat plain fine-tuning at 50 and 100 labels and
    # lost at 200 (benchmarks/reported/few_label_cpu/). Larger sets, and cold starts, train
    # `retrain_epochs` epochs at the full rate; 0 always trains so.
    retrain_few_label_up_to: int = Field(default=100, ge=0)
    retrain_few_label_iterations: int = Field(default=400, ge=1)
    retrain_job_timeout_seconds: int = 6 * 3600
    job_retries: int = 2
    # A fixed validation set (a data folder with val.json and images/); without it, the project's
    # tasks whose data has `split: val` are, and labelled tasks without a split are assigned one
    # once: `validation_share` of them go to validation (see worker/validation.py).
    validation_data: Path | None = None
    validation_share: float = 0.2
    # The quality gate (worker/gate.py): the validation set it needs, and what "better" means.
    gate_min_validation_images: int = 20
    gate_min_validation_fractures: int = 10
    gate_min_delta: float = 0.01
    gate_confidence: float = 0.9
    gate_sensitivity_margin: float = 0.05
    scoring_chunk_size: int = 32
    # The review queue (see sampling/queue.py): how unlabelled X-rays are ranked after each scoring.
    score_with_tta: bool = True
    # Hard-negative priority, ranked alone, is the default because it was the best measured: +0.070
    # target mAP@50 over random at 120 labels (t 95% +0.012 to +0.129, 3 seeds), ahead of entropy +
    # k-center (+0.051), TTA (+0.044), entropy (+0.035) and CALD (+0.021) in the body-part
    # domain-shift benchmark (benchmarks/reported/active_learning_gpu/).
    queue_uncertainty: Uncertainty = "hard_negative"
    queue_aggregation: Aggregation = "max"
    queue_strategy: Strategy = "uncertainty"
    queue_batch_size: int = 20  # how many X-rays at the top are spread over embedding space
    # The share of every batch drawn at random from the unlabelled pool (sampling/control_arm.py):
    # the control `fracture-al report` compares the queue with. 0 turns the measure off.
    queue_random_share: float = Field(default=0.1, ge=0.0, le=1.0)
    # A worker's heartbeat while a job runs, and how often workers look for jobs whose worker died
    # (its heartbeat expired: RQ retries them) and take over a dead worker's scheduler lock.
    worker_job_monitoring_interval: int = 10
    worker_maintenance_interval: int = 30
    # How long a running job's heartbeat outlives its period: once it lapses the job counts as
    # abandoned and is retried. RQ's own 60 s; keep it above the longest Redis outage a running job
    # should ride out (its heartbeats cannot reach Redis meanwhile).
    worker_heartbeat_grace: int = Field(default=60, ge=1)

    @property
    def redis_file(self) -> Path:
        """The embedded Redis's database file, used when no REDIS_URL is given."""
        return self.home / "redis" / "fracture-al.rdb"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"

    @property
    def reports_dir(self) -> Path:
        """Where `fracture-al report` and each retrain leave a project's queue report and plots."""
        return self.home / "reports"

    @property
    def datasets_dir(self) -> Path:
        return self.home / "datasets"

    @property
    def files_root(self) -> Path:
        return self.label_studio_files_root or self.datasets_dir

    @property
    def image_fetching(self) -> dict[str, Any]:
        """What the backend and workers may fetch: ``ImageSource(**settings.image_fetching)``."""
        return {"allowed_hosts": self.allowed_image_hosts, "local_root": self.local_image_root,
                "timeout": self.image_fetch_timeout, "max_bytes": self.max_image_bytes,
                "cache_bytes": self.image_cache_bytes}  # fmt: skip

    @property
    def task_predicting(self) -> dict[str, Any]:
        """How tasks are predicted: ``TaskPredictor.create(source, **settings.task_predicting)``."""
        return {"default_threshold": self.predict_score_threshold, "batch_size": self.predict_batch_size,
                "with_tta": self.score_with_tta}  # fmt: skip

    @property
    def queueing(self) -> dict[str, Any]:
        """The queues' choices: ``QueueConfig(**settings.queueing)`` (worker/queues.py)."""
        return {"prefix": self.queue_prefix, "retries": self.job_retries,
                "retrain_min_new_annotations": self.retrain_min_new_annotations,
                "retrain_job_timeout_seconds": self.retrain_job_timeout_seconds}  # fmt: skip

    def queue_ranking(self, task: str = "detection", **overrides: Any) -> dict[str, Any]:
        """How the review queue of a ``task`` model's scores is ranked (sampling/queue.py's options),
        with any given override. A segmenter's scores hold one uncertainty, its masks'."""
        uncertainty = "mask" if task == "segmentation" else self.queue_uncertainty
        options = {"uncertainty": uncertainty, "aggregation": self.queue_aggregation,
                   "strategy": self.queue_strategy, "batch_size": self.queue_batch_size,
                   "random_share": self.queue_random_share, "seed": self.seed}  # fmt: skip
        return {**options, **{key: value for key, value in overrides.items() if value is not None}}

    def child_environment(self, **extra: str) -> dict[str, str]:
        """The environment of a child process that builds its own Settings (gunicorn's workers, RQ
        workers and their work-horses, the processes `up` starts): this one's, plus the choices
        made here, flags included."""
        chosen = {"FRACTURE_AL_HOME": str(self.home), "FRACTURE_AL_DEVICE": self.device,
                  "FRACTURE_AL_QUEUE_PREFIX": self.queue_prefix,
                  "FRACTURE_AL_BACKEND_THREADS": str(self.backend_threads)}  # fmt: skip
        if self.redis_url:
            chosen["REDIS_URL"] = self.redis_url
        return {**os.environ, **chosen, **extra}

    def with_overrides(self, **overrides: Any) -> Settings:
        """A copy with the CLI flags that were actually given (``None`` means not given)."""
        given = {key: value for key, value in overrides.items() if value is not None}
        return self.model_copy(update=given) if given else self
