"""The Label Studio ML backend: a Flask app factory.

Speaks the protocol Label Studio 1.23 uses (observed against 1.23.2 and covered by the end-to-end tests):
``GET /health`` and ``/``, ``POST /setup``, ``POST /predict``, ``POST /webhook``. It predicts with
the model store's current version and never trains; webhook events go to an :class:`EventSink`,
by default the retrain trigger that queues jobs for the RQ workers.
"""

from __future__ import annotations

import hmac
import logging
import threading
from typing import Any, Protocol

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import BadRequest, HTTPException

from backend.served_model import ServedModel
from detection.shipped_model import open_store
from detection.store import ModelStoreError
from detection.training import choose_device
from fracture_al.settings import Settings
from integrations.image_source import LabelStudioConnection
from integrations.label_config import LabelConfigError
from integrations.task_predictions import TaskPredictor
from worker.triggers import RetrainTrigger

log = logging.getLogger(__name__)


class EventSink(Protocol):
    """Receives the webhook events the backend accepts (the retraining queue, or a recorder)."""

    def __call__(self, event: dict[str, Any]) -> dict[str, Any]: ...


def create_app(settings: Settings | None = None, *, event_sink: EventSink | None = None) -> Flask:
    settings = settings or Settings()
    app = Flask(__name__)
    app.json.sort_keys = False
    served = ServedModel(open_store(settings.models_dir), choose_device(settings.device))
    service = TaskPredictor.from_settings(settings)
    projects = ProjectRegistry(settings)
    if event_sink is None:
        trigger = RetrainTrigger(settings)
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
        return jsonify(status="UP", model_class="FractureFasterRCNN", model_version=served.version)

    @app.post("/setup")
    def setup() -> Response:
        body = _json_object()
        projects.remember(body)
        return jsonify(model_version=_served_version(served))

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
        try:
            predictor = served.predictor()
            predictions = service.predict(tasks, label_config, predictor, projects.connection(project))
        except LabelConfigError as error:
            raise BadRequest(str(error)) from None
        except ModelStoreError as error:
            return _error(503, str(error))
        # A task whose image failed still gets its (empty) result: Label Studio wants one per task.
        return jsonify(results=[p.to_label_studio() for p in predictions], model_version=predictor.version)

    @app.post("/webhook")
    def webhook() -> Response:
        body = _json_object()
        if not isinstance(body.get("action"), str):
            raise BadRequest("webhook body has no 'action'")
        return jsonify(event_sink(body))

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        return _error(error.code or 500, error.description)

    return app


class ProjectRegistry:
    """What ``/setup`` told us about each Label Studio project: its schema and where it lives."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._schemas: dict[str, str] = {}
        self._connections: dict[str, LabelStudioConnection] = {}
        self._lock = threading.Lock()

    def remember(self, body: dict[str, Any]) -> None:
        project = _project_id(body.get("project"))
        hostname, token = body.get("hostname"), body.get("access_token")
        configured = self.settings.label_studio_url
        if configured and hostname and hostname.rstrip("/") != configured.rstrip("/"):
            # Images are only fetched from the Label Studio the operator configured.
            log.warning("project %s: /setup named another Label Studio host; keeping %s", project, configured)
            hostname = configured
        with self._lock:
            if isinstance(body.get("schema"), str):
                self._schemas[project] = body["schema"]
            if hostname:
                self._connections[project] = LabelStudioConnection(hostname, token or self._default_token())

    def schema(self, project: str) -> str | None:
        with self._lock:
            return self._schemas.get(project)

    def connection(self, project: str) -> LabelStudioConnection | None:
        with self._lock:
            known = self._connections.get(project)
        if known is not None:
            return known
        if self.settings.label_studio_url:
            return LabelStudioConnection(self.settings.label_studio_url, self._default_token())
        return None

    def _default_token(self) -> str | None:
        key = self.settings.label_studio_api_key
        return key.get_secret_value() if key else None


def _project_id(project: Any) -> str:
    """Label Studio sends ``"<id>.<created unix time>"`` to /setup and /predict, a dict to webhooks."""
    if isinstance(project, dict):
        project = project.get("id")
    return str(project).split(".", 1)[0] if project is not None else ""


def _json_object() -> dict[str, Any]:
    body = request.get_json(silent=True)
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


def _error(code: int, message: str) -> Response:
    response = jsonify(error=message)
    response.status_code = code
    return response
