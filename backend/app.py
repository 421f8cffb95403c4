"""The Label Studio ML backend: a Flask app factory.

Speaks the protocol Label Studio 1.23 uses (observed against 1.23.2 and covered by the end-to-end tests):
``GET /health`` and ``/``, ``POST /setup``, ``POST /predict``, ``POST /webhook``. It predicts with
the model store's current version of each task the labelling config asks for (boxes, masks, the
X-ray's call; backend/pre_annotations.py) and never trains; webhook events go to an :class:`EventSink`,
by default the retrain trigger that queues jobs for the RQ workers.
"""

from __future__ import annotations

import hmac
import logging
import re
import threading
from typing import Any, Protocol

from flask import Flask, Response, jsonify, request
from redis import Redis
from werkzeug.exceptions import BadRequest, HTTPException

from fracture_al.backend.pre_annotations import PreAnnotator
from fracture_al.backend.served_model import ServedModel
from fracture_al.detection.devices import choose_device
from fracture_al.detection.shipped_model import open_store
from fracture_al.detection.store import DETECTION, ModelStoreError
from fracture_al.integrations.image_source import (
    ImageFetchError,
    ImageSource,
    LabelStudioConnection,
    checked_url,
    redact_url,
)
from fracture_al.integrations.label_config import LabelConfigError
from fracture_al.integrations.mask_predictions import MaskTaskPredictor
from fracture_al.integrations.task_predictions import TaskPredictor
from fracture_al.settings import Settings
from fracture_al.worker.connection import connect
from fracture_al.worker.queues import QueueConfig
from fracture_al.worker.scored_cache import ScoredPredictions
from fracture_al.worker.triggers import WEBHOOK_REDIS_TIMEOUT_SECONDS, MalformedEvent, RetrainTrigger

log = logging.getLogger(__name__)

_PROJECT_ID = re.compile(r"[0-9]{1,18}")
_TOKEN = re.compile(r"[A-Za-z0-9._-]{1,4096}")


class EventSink(Protocol):
    """Receives the webhook events the backend accepts (the retraining queue, or a recorder)."""

    def __call__(self, event: dict[str, Any]) -> dict[str, Any]: ...


def create_app(settings: Settings | None = None, *, event_sink: EventSink | None = None) -> Flask:
    settings = settings or Settings()
    app = Flask(__name__)
    app.json.sort_keys = False
    store, device = open_store(settings.models_dir), choose_device(settings.device)
    served = {task: ServedModel(store, device, task) for task in (DETECTION, "segmentation", "classification")}

    # Tasks the workers already scored for the served version are answered from their results;
    # that needs the deployment's shared Redis (REDIS_URL, which `fracture-al up` passes on).
    def redis() -> Redis:  # with short timeouts: a hung Redis must not hold a request
        return connect(settings.redis_url, settings.redis_file, timeout=WEBHOOK_REDIS_TIMEOUT_SECONDS)

    scored = ScoredPredictions(redis, settings.queue_prefix) if settings.redis_url else None
    images = ImageSource(**settings.image_fetching)
    annotator = PreAnnotator(served, TaskPredictor.create(images, **settings.task_predicting, cache=scored),
                             MaskTaskPredictor(images, settings.predict_batch_size))  # fmt: skip
    api_key = settings.label_studio_api_key.get_secret_value() if settings.label_studio_api_key else None
    projects = ProjectRegistry(settings.label_studio_url, api_key)
    # Predictions may wait on slow image hosts and on the model; one thread is always kept for the
    # rest (Label Studio marks a backend whose /health does not answer as down).
    prediction_slots = threading.BoundedSemaphore(max(1, settings.backend_threads - 1))
    if event_sink is None:
        trigger = RetrainTrigger(QueueConfig(**settings.queueing), settings.home / "spool" / "webhooks", redis)
        trigger.start_flushing()
        event_sink = trigger

    @app.before_request
    def require_basic_auth() -> Response | None:
        if settings.backend_basic_auth_user is None:
            return None
        given = request.authorization
        password = (
            settings.backend_basic_auth_password.get_secret_value() if settings.backend_basic_auth_password else ""
        )
        if (
            given is None
            or given.type != "basic"
            or not hmac.compare_digest(given.username or "", settings.backend_basic_auth_user)
            or not hmac.compare_digest(given.password or "", password)
        ):
            response = jsonify(error="authentication required")
            response.status_code = 401
            response.headers["WWW-Authenticate"] = 'Basic realm="fracture-al"'
            return response
        return None

    @app.get("/")
    @app.get("/health")
    def health() -> Response:
        return jsonify(status="UP", model_class="FractureFasterRCNN", model_version=served[DETECTION].version)

    @app.post("/setup")
    def setup() -> Response:
        body = _json_object()
        project = _project_id(body.get("project"))
        schema, hostname, token = _setup_fields(body)
        projects.remember(project, schema=schema, hostname=hostname, token=token)
        schema = projects.schema(project)
        try:
            return jsonify(model_version=annotator.version(schema) if schema else _served_version(served[DETECTION]))
        except LabelConfigError:  # said at /predict, with the reason; connecting the backend still works
            return jsonify(model_version=_served_version(served[DETECTION]))
        except ModelStoreError as error:
            return _error(503, str(error))

    @app.post("/predict")
    def predict() -> Response:
        body = _json_object()
        tasks = body.get("tasks")
        if not isinstance(tasks, list) or not all(
            isinstance(t, dict) and isinstance(t.get("data"), dict) for t in tasks
        ):
            raise BadRequest("'tasks' must be a list of task objects, each with a 'data' object")
        project = _project_id(body.get("project"))
        label_config = body.get("label_config") or projects.schema(project)
        if not label_config:
            raise BadRequest("no 'label_config' in the request and none known from /setup for this project")
        if not isinstance(label_config, str):
            raise BadRequest("'label_config' must be a string")
        if not prediction_slots.acquire(blocking=False):
            return _too_busy()
        try:
            predictions, version = annotator.predict(tasks, label_config, projects.connection(project))
        except LabelConfigError as error:
            raise BadRequest(str(error)) from None
        except ModelStoreError as error:
            return _error(503, str(error))
        finally:
            prediction_slots.release()
        # A task whose image failed still gets its (empty) result: Label Studio wants one per task.
        return jsonify(results=[p.to_label_studio() for p in predictions], model_version=version)

    @app.post("/webhook")
    def webhook() -> Response:
        body = _json_object()
        if not isinstance(body.get("action"), str):
            raise BadRequest("webhook body has no 'action'")
        try:
            return jsonify(event_sink(body))
        except MalformedEvent as error:
            raise BadRequest(str(error)) from None

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        return _error(error.code or 500, error.description)

    return app


class ProjectRegistry:
    """What ``/setup`` told us about each Label Studio project: its schema and where it lives.

    Where a project's images come from, and with which token, is pinned: by configuration
    (``LABEL_STUDIO_URL`` and ``LABEL_STUDIO_API_KEY``) when given, else by the project's first
    ``/setup``. Any client can call ``/setup``, so later calls cannot re-point a project or replace
    its token (they are logged and ignored; restarting the backend is the operator's way to change
    them), and the configured key is only ever sent to the configured Label Studio.
    """

    def __init__(self, label_studio_url: str | None, api_key: str | None):
        self.label_studio_url = label_studio_url
        self.api_key = api_key
        self._schemas: dict[str, str] = {}
        self._connections: dict[str, LabelStudioConnection] = {}
        self._lock = threading.Lock()

    def remember(self, project: str, *, schema: str | None, hostname: str | None, token: str | None) -> None:
        with self._lock:
            if schema is not None:
                self._schemas[project] = schema
            pinned = self._connections.get(project)
            if self.label_studio_url is not None:
                if hostname and _origin_or_none(hostname) != _origin_or_none(self.label_studio_url):
                    log.warning("project %s: /setup named another Label Studio (%s); images still come from %s",
                                project, redact_url(hostname), self.label_studio_url)  # fmt: skip
                hostname = self.label_studio_url
                if self.api_key is not None:
                    return  # the configured key is the token; /setup cannot replace it
            if not hostname:
                return
            if pinned is None:
                self._connections[project] = LabelStudioConnection(hostname, token)
                log.info("project %s: images come from %s", project, redact_url(hostname))
            elif pinned.origin != LabelStudioConnection(hostname).origin or (token and token != pinned.token):
                log.warning(
                    "project %s: /setup asked to change its Label Studio or token; kept %s "
                    "(restart the backend, or set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY, to change them)",
                    project, redact_url(pinned.url),
                )  # fmt: skip

    def schema(self, project: str) -> str | None:
        with self._lock:
            return self._schemas.get(project)

    def connection(self, project: str) -> LabelStudioConnection | None:
        if self.label_studio_url is not None and self.api_key is not None:
            return LabelStudioConnection(self.label_studio_url, self.api_key)
        with self._lock:
            pinned = self._connections.get(project)
        if pinned is None and self.label_studio_url is not None:
            return LabelStudioConnection(self.label_studio_url)
        return pinned


def _origin_or_none(url: str):
    try:
        return LabelStudioConnection(url).origin
    except ImageFetchError:
        return None


def _setup_fields(body: dict[str, Any]) -> tuple[str | None, str | None, str | None]:
    """``schema``, ``hostname`` and ``access_token`` of a /setup body, each a string or absent."""
    fields = []
    for name in ("schema", "hostname", "access_token"):
        value = body.get(name)
        if value is not None and not isinstance(value, str):
            raise BadRequest(f"'{name}' must be a string")
        fields.append(value or None)
    schema, hostname, token = fields
    if hostname is not None:
        try:
            checked_url(hostname)
        except ImageFetchError as error:
            raise BadRequest(f"'hostname': {error}") from None
    if token is not None and not _TOKEN.fullmatch(token):
        raise BadRequest("'access_token' must be a Label Studio API token (letters, digits, '-', '_' and '.')")
    return schema, hostname, token


def _project_id(project: Any) -> str:
    """Label Studio sends ``"<id>.<created unix time>"`` to /setup and /predict, a dict to webhooks."""
    if isinstance(project, dict):
        project = project.get("id")
    if project is None:
        return ""
    if isinstance(project, bool) or not isinstance(project, int | str):
        raise BadRequest("'project' must be a Label Studio project id")
    key = str(project).split(".", 1)[0]
    if not _PROJECT_ID.fullmatch(key):
        raise BadRequest("'project' must be a Label Studio project id")
    return key


def _json_object() -> dict[str, Any]:
    try:
        body = request.get_json(silent=True)
    except RecursionError:
        raise BadRequest("request body is nested too deeply") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


def _served_version(served: ServedModel) -> str:
    version = served.version
    if version is None:
        raise _ServiceUnavailable("no model has been published yet: run `fracture-al train` first")
    return version


class _ServiceUnavailable(HTTPException):
    code = 503


def _too_busy() -> Response:
    response = _error(429, "every prediction slot is busy; retry shortly")
    response.headers["Retry-After"] = "5"
    return response


def _error(code: int, message: str) -> Response:
    response = jsonify(error=message)
    response.status_code = code
    return response
