"""The backend against hostile and careless clients: no 5xx for any request, one bad image is one
task's empty result, and a project's Label Studio and token cannot be re-pointed by a caller."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
from backend_requests import CONFIG, IMAGE_FILES, deeply_nested, raw_requests, write_image_files
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from loopback_servers import FileServer, url_of

from fracture_al.backend.app import create_app
from fracture_al.settings import Settings

TOKEN = "0123456789abcdef0123456789abcdef01234567"
OTHER_TOKEN = "fedcba9876543210fedcba9876543210fedcba98"


@pytest.fixture()
def home(trained_home: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "home"
    shutil.copytree(trained_home / "models", copy / "models")
    return copy


@pytest.fixture()
def image_root(tmp_path: Path) -> Path:
    return write_image_files(tmp_path / "images")


def client_for(home: Path, image_root: Path, redis_url: str, queue_prefix: str, **values: object) -> FlaskClient:
    settings = Settings(home=home, device="cpu", local_image_root=image_root, redis_url=redis_url,
                        queue_prefix=queue_prefix, **values)  # fmt: skip
    return create_app(settings).test_client()  # the real webhook sink, on the test's Redis and prefix


# Every request gets an answer that is not a 5xx ------------------------------------------------------
@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("/setup", {"project": "1.1", "hostname": 7}),
        ("/setup", {"project": "1.1", "hostname": "http://[::1"}),
        ("/setup", {"project": "1.1", "access_token": ["x"]}),
        ("/setup", {"project": [1], "schema": CONFIG}),
        ("/webhook", {"action": "ANNOTATION_CREATED"}),
        ("/webhook", {"action": "ANNOTATION_CREATED", "project": "one"}),
        ("/webhook", {"action": "ANNOTATION_CREATED", "project": [1]}),
        ("/webhook", {"action": "ANNOTATION_CREATED", "project": {"id": None}}),
        ("/webhook", {"action": "ANNOTATION_CREATED", "project": float("nan")}),
        ("/webhook", {"action": "START_TRAINING", "project": float("inf")}),
        ("/predict", {"tasks": [], "project": "1.1", "label_config": ["<View/>"]}),
        ("/predict", {"tasks": [], "project": "1.1", "label_config": {"a": 1}}),
        ("/predict", {"tasks": [], "project": {"id": [1]}, "label_config": CONFIG}),
    ],
)
def test_malformed_requests_found_by_the_fault_campaign_get_a_4xx_with_a_reason(
    home: Path, image_root: Path, redis_url: str, queue_prefix: str, route: str, body: dict
) -> None:
    client = client_for(home, image_root, redis_url, queue_prefix)
    reply = client.post(route, data=json.dumps(body), content_type="application/json")
    assert reply.status_code == 400, reply.get_data(as_text=True)
    assert reply.json["error"]


def test_json_nested_too_deeply_is_a_400(home: Path, tmp_path: Path, redis_url: str, queue_prefix: str) -> None:
    client = client_for(home, tmp_path, redis_url, queue_prefix)
    for route in ("/setup", "/predict", "/webhook"):
        reply = client.post(route, data=deeply_nested(100_000), content_type="application/json")
        assert reply.status_code == 400, route


def test_one_poison_image_is_one_empty_result_and_the_other_tasks_are_answered(
    home: Path, image_root: Path, redis_url: str, queue_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    client = client_for(home, image_root, redis_url, queue_prefix)
    poison = ["bomb", "corrupt", "truncated"]
    references = [IMAGE_FILES[name] for name in poison] + ["a\x00b.jpg", "http://[::1", "http://u:secret@h/x.jpg"]
    tasks = [{"id": 1, "data": {"image": IMAGE_FILES["good"]}}]
    tasks += [{"id": 10 + index, "data": {"image": reference}} for index, reference in enumerate(references)]
    tasks += [{"id": 2, "data": {"image": IMAGE_FILES["sixteen_bit"]}}]
    reply = client.post("/predict", json={"tasks": tasks, "project": "1.1", "label_config": CONFIG})
    assert reply.status_code == 200
    results = reply.json["results"]
    assert len(results) == len(tasks)
    assert results[0]["result"] and results[-1]["result"]  # threshold 0: every candidate box is shown
    assert all(result["result"] == [] for result in results[1:-1])
    for index in range(len(references)):
        assert f"task {10 + index}: no prediction" in caplog.text
    assert "decompression bomb" in caplog.text
    assert "secret" not in caplog.text


@pytest.fixture()
def fuzzed_client(home: Path, image_root: Path, redis_url: str, queue_prefix: str) -> FlaskClient:
    return client_for(home, image_root, redis_url, queue_prefix, allowed_image_hosts=["localhost"])


# hypothesis runs every example inside one test call: the client (and its loaded model) is shared.
@hypothesis_settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=raw_requests())
def test_no_request_gets_a_5xx(fuzzed_client: FlaskClient, request) -> None:
    reply = fuzzed_client.post(request.route, data=request.body, content_type=request.content_type)
    assert reply.status_code < 500, (request, reply.get_data(as_text=True))
    if reply.status_code >= 400:
        assert reply.is_json and reply.json["error"]


# A project's Label Studio and token are pinned -------------------------------------------------------
def test_the_configured_key_is_never_sent_to_a_host_a_caller_names(
    home: Path, file_server: FileServer, tmp_path: Path, redis_url: str, queue_prefix: str
) -> None:
    client = client_for(home, tmp_path, redis_url, queue_prefix, label_studio_api_key=TOKEN)
    client.post("/setup", json={"project": "4.1", "schema": CONFIG, "hostname": url_of(file_server)})
    reply = client.post("/predict", json={"tasks": [{"id": 1, "data": {"image": "/data/upload/1/xray.jpg"}}],
                                          "project": "4.1"})  # fmt: skip
    assert reply.status_code == 200
    assert file_server.seen_authorization == [None]  # fetched, but without the configured key


def test_setup_cannot_re_point_a_configured_label_studio_or_replace_its_key(
    home: Path, file_server: FileServer, tmp_path: Path, redis_url: str, queue_prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    caplog.set_level(logging.WARNING)
    client = client_for(home, tmp_path, redis_url, queue_prefix, label_studio_url=url_of(file_server),
                        label_studio_api_key=TOKEN)  # fmt: skip
    reply = client.post("/setup", json={"project": "4.1", "hostname": "http://127.0.0.1:1", "access_token": "True"})
    assert reply.status_code == 200
    task = {"id": 1, "data": {"image": "/data/upload/1/xray.jpg"}}
    assert client.post("/predict", json={"tasks": [task], "project": "4.1", "label_config": CONFIG}).status_code == 200
    assert file_server.seen_authorization == [f"Token {TOKEN}"]
    assert "named another Label Studio" in caplog.text


def test_the_first_setup_pins_a_project_and_later_ones_cannot_move_it(
    home: Path, file_server: FileServer, tmp_path: Path, redis_url: str, queue_prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    caplog.set_level(logging.WARNING)
    client = client_for(home, tmp_path, redis_url, queue_prefix)
    first = {"project": "4.1", "schema": CONFIG, "hostname": url_of(file_server), "access_token": TOKEN}
    assert client.post("/setup", json=first).status_code == 200
    again = {"project": "4.1", "hostname": "http://127.0.0.1:1", "access_token": OTHER_TOKEN}
    assert client.post("/setup", json=again).status_code == 200
    task = {"id": 1, "data": {"image": "/data/upload/1/xray.jpg"}}
    reply = client.post("/predict", json={"tasks": [task], "project": "4.1"})
    assert reply.status_code == 200 and reply.json["results"][0]["model_version"] == "v0001"
    assert file_server.seen_authorization == [f"Token {TOKEN}"]
    assert "asked to change its Label Studio or token" in caplog.text
    assert TOKEN not in caplog.text and OTHER_TOKEN not in caplog.text
