"""Importers on real files: Roboflow-layout exports (COCO and YOLO) built from the sample, DICOM
written with pydicom, corrupt files; tasks in a real Label Studio; the Roboflow download path
against a stand-in for Roboflow's cloud API (the real one cannot be reached here)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from builders import (
    boxes_by_file,
    ramp_16_bit,
    roboflow_coco_export,
    roboflow_yolo_export,
    sample_coco,
    write_dicom,
)
from flask import Flask, Response, jsonify, request
from label_studio_sdk import LabelStudio
from PIL import Image
from werkzeug.serving import make_server

from fracture_al.integrations.label_config import FRACTURE_LABEL_CONFIG
from fracture_al.integrations.label_studio_server import LabelStudioServer
from fracture_al.integrations.regions import percent_to_box


def run_cli(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "FRACTURE_AL_HOME": str(home), **env}
    return subprocess.run([sys.executable, "-m", "fracture_al", *args], env=environment, capture_output=True,
                          text=True, timeout=300)  # fmt: skip


def names_by_sha256(folder: Path) -> dict[str, str]:
    """Content hash -> file name, of every file under ``folder`` (how imported images are known)."""
    return {hashlib.sha256(path.read_bytes()).hexdigest(): path.name for path in folder.rglob("*") if path.is_file()}


def dataset_boxes(dataset: Path, split: str, source: Path) -> dict[str, list[list[float]]]:
    """source file name -> boxes, of one split of a dataset imported from ``source``."""
    content = json.loads((dataset / f"{split}.json").read_text())
    by_stored_name = boxes_by_file(content)
    name_of = names_by_sha256(source)
    source_of = {image["file_name"]: name_of[image["sha256"]] for image in content["images"]}
    return {source_of[name]: boxes for name, boxes in by_stored_name.items()}


def expected_boxes(sample_dir: Path, split: str) -> dict[str, list[list[float]]]:
    return boxes_by_file(sample_coco(sample_dir, split))


def assert_boxes_close(found: dict, expected: dict, tolerance: float) -> None:
    assert found.keys() == expected.keys()
    for name, boxes in expected.items():
        assert len(found[name]) == len(boxes), name
        assert np.allclose(found[name], boxes, atol=tolerance), name


def test_roboflow_coco_export_with_a_corrupt_file_then_reimport(sample_dir: Path, tmp_path: Path) -> None:
    export = roboflow_coco_export(sample_dir, tmp_path / "export")
    train = json.loads((export / "train" / "_annotations.coco.json").read_text())
    broken = train["images"][0]["file_name"]
    (export / "train" / broken).write_bytes((export / "train" / broken).read_bytes()[:500])

    result = run_cli(tmp_path / "home", "import", "roboflow-export", str(export), "--dataset", "wrists")
    assert result.returncode == 0, result.stderr
    assert broken in result.stderr and "corrupt or truncated" in result.stderr
    dataset = tmp_path / "home" / "datasets" / "wrists"
    expected_train = {k: v for k, v in expected_boxes(sample_dir, "train").items() if k != broken}
    assert_boxes_close(dataset_boxes(dataset, "train", export), expected_train, 1e-6)
    assert_boxes_close(dataset_boxes(dataset, "val", export), expected_boxes(sample_dir, "val"), 1e-6)  # "valid"
    categories = json.loads((dataset / "train.json").read_text())["categories"]
    assert [c["name"] for c in categories] == ["fracture"]  # Roboflow's dataset category is gone

    again = run_cli(tmp_path / "home", "import", "roboflow-export", str(export), "--dataset", "wrists")
    assert "0 added" in again.stdout
    assert len(json.loads((dataset / "train.json").read_text())["images"]) == len(expected_train)

    trained = run_cli(tmp_path / "home", "--device", "cpu", "train", "--data", str(dataset), "--epochs", "1",
                      "--min-size", "128", "--max-size", "192", "--no-promote")  # fmt: skip
    assert trained.returncode == 0, trained.stderr  # the trainer reads what the importer wrote


def test_roboflow_yolo_export_boxes_match_the_source(sample_dir: Path, tmp_path: Path) -> None:
    export = roboflow_yolo_export(sample_dir, tmp_path / "export")
    result = run_cli(tmp_path / "home", "import", "roboflow-export", str(export), "--dataset", "yolo")
    assert result.returncode == 0, result.stderr
    dataset = tmp_path / "home" / "datasets" / "yolo"
    for split in ("train", "val", "test"):  # 6 decimals of a fraction of ~400-2000 px: within 0.01 px
        assert_boxes_close(dataset_boxes(dataset, split, export), expected_boxes(sample_dir, split), 0.01)


def test_a_roboflow_export_with_four_names_for_the_fracture_imports_as_one_class(
    sample_dir: Path, tmp_path: Path
) -> None:
    """Real Roboflow fracture sets mark the fracture site as angle, fracture, line and messed_up_angle."""
    export = roboflow_coco_export(sample_dir, tmp_path / "export")
    names = ["angle", "fracture", "line", "messed_up_angle"]
    for split in ("train", "valid", "test"):
        path = export / split / "_annotations.coco.json"
        content = json.loads(path.read_text())
        content["categories"] = [{"id": index + 1, "name": name} for index, name in enumerate(names)]
        for index, annotation in enumerate(content["annotations"]):
            annotation["category_id"] = 1 + index % len(names)
        path.write_text(json.dumps(content))
    home = tmp_path / "home"

    as_is = run_cli(home, "import", "roboflow-export", str(export), "--dataset", "as-is")
    assert as_is.returncode == 0, as_is.stderr
    refused = run_cli(home, "--device", "cpu", "train", "--data", str(home / "datasets" / "as-is"),
                      "--warm-start", "shipped", "--epochs", "1")  # fmt: skip
    assert refused.returncode != 0
    assert "--map-classes angle,line,messed_up_angle=fracture" in refused.stderr  # says how to fix it

    mapped = run_cli(home, "import", "roboflow-export", str(export), "--dataset", "mapped",
                     "--map-classes", "angle,line,messed_up_angle=fracture", "--keep-source-paths")  # fmt: skip
    assert mapped.returncode == 0, mapped.stderr
    for split in ("train", "val", "test"):
        content = json.loads((home / "datasets" / "mapped" / f"{split}.json").read_text())
        assert [c["name"] for c in content["categories"]] == ["fracture"]
        assert len(content["annotations"]) == len(sample_coco(sample_dir, split)["annotations"])
        assert all(Path(image["source"]).is_file() for image in content["images"])  # asked for
    single = run_cli(home, "import", "roboflow-export", str(export), "--dataset", "single",
                     "--single-class", "fracture")  # fmt: skip
    assert single.returncode == 0, single.stderr
    categories = json.loads((home / "datasets" / "single" / "train.json").read_text())["categories"]
    assert [c["name"] for c in categories] == ["fracture"]
    wrong = run_cli(home, "import", "roboflow-export", str(export), "--map-classes", "angle")
    assert wrong.returncode != 0 and "a,b,c=target" in wrong.stderr


def test_dicom_folder_becomes_de_identified_8_bit_pngs_kept_apart_from_training(tmp_path: Path) -> None:
    folder = tmp_path / "pacs"
    folder.mkdir()
    write_dicom(folder / "DOE_JANE_1", ramp_16_bit(), photometric="MONOCHROME1")  # no extension, as PACS exports
    write_dicom(folder / "b.dcm", ramp_16_bit())
    (folder / "c.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"garbage")
    result = run_cli(tmp_path / "home", "import", "folder", str(folder), "--dataset", "pacs")
    assert result.returncode == 0, result.stderr
    assert "c.dcm" in result.stderr
    dataset = tmp_path / "home" / "datasets" / "pacs"
    assert not (dataset / "train.json").exists()  # unlabelled X-rays are not negatives
    stored = (dataset / "unlabelled.json").read_text()
    assert "DOE_JANE" not in stored  # the file name named the patient: only the content hash is kept
    name_of = names_by_sha256(folder)
    images = {name_of[i["sha256"]]: i for i in json.loads(stored)["images"]}
    assert sorted(images) == ["DOE_JANE_1", "b.dcm"]
    inverted = np.asarray(Image.open(dataset / "images" / images["DOE_JANE_1"]["file_name"]))
    plain = np.asarray(Image.open(dataset / "images" / images["b.dcm"]["file_name"]))
    assert inverted.dtype == np.uint8 and inverted.shape[:2] == (48, 64)
    assert plain[0, 0, 0] == 0 and plain[0, -1, 0] == 255
    assert inverted[0, 0, 0] == 255 and inverted[0, -1, 0] == 0  # MONOCHROME1: low values shown white
    stored = json.dumps(images)
    assert "Doe" not in stored and "MRN-0042" not in stored and "19700101" not in stored
    assert images["b.dcm"]["metadata"]["BodyPartExamined"] == "HAND"


@pytest.mark.slow
def test_tasks_in_label_studio_with_boxes_preloaded_once(
    label_studio: LabelStudioServer, sample_dir: Path, tmp_path: Path
) -> None:
    export = roboflow_coco_export(sample_dir, tmp_path / "export")
    client = LabelStudio(base_url=label_studio.url, api_key=label_studio.token)
    annotated = client.projects.create(title="imported annotations", label_config=FRACTURE_LABEL_CONFIG)
    predicted = client.projects.create(title="imported predictions", label_config=FRACTURE_LABEL_CONFIG)
    served_env = {"LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.token,
                  "FRACTURE_AL_LABEL_STUDIO_FILES_ROOT": str(label_studio.local_files_root)}  # fmt: skip
    dataset_args = ("--dataset", "import-test")
    # A dataset outside the folder this Label Studio serves files from gets a clear refusal.
    outside = run_cli(tmp_path / "elsewhere", "import", "roboflow-export", str(export), *dataset_args, "--project",
                      str(annotated.id), **served_env)  # fmt: skip
    assert outside.returncode == 1 and "LOCAL_FILES_DOCUMENT_ROOT" in outside.stderr
    home = label_studio.local_files_root / "import-home"

    first = run_cli(home, "import", "roboflow-export", str(export), *dataset_args, "--project", str(annotated.id),
                    **served_env)  # fmt: skip
    assert first.returncode == 0, first.stderr
    total = sum(len(sample_coco(sample_dir, split)["images"]) for split in ("train", "val", "test"))
    assert f"{total} tasks created" in first.stdout
    again = run_cli(home, "import", "roboflow-export", str(export), *dataset_args, "--project", str(annotated.id),
                    **served_env)  # fmt: skip
    assert "0 tasks created" in again.stdout and f"{total} already there" in again.stdout

    expected = {}
    for split in ("train", "val", "test"):
        expected.update(expected_boxes(sample_dir, split))
    sources = names_by_sha256(export)
    tasks = list(client.tasks.list(project=annotated.id, fields="all"))
    assert len(tasks) == total
    for task in tasks:
        name = sources[task.data["source_sha256"]]
        assert name not in json.dumps(task.data)  # file names stay out of Label Studio
        (annotation,) = task.annotations
        boxes = sorted(
            percent_to_box(r["value"], r["original_width"], r["original_height"]) for r in annotation["result"]
        )
        assert np.allclose(boxes, expected[name], atol=0.01) if expected[name] else boxes == []
        image = client.tasks.get(id=task.id).data["image"]
        reply = client._client_wrapper.httpx_client.httpx_client.get(
            f"{label_studio.url}{image}", headers={"Authorization": f"Token {label_studio.token}"}
        )
        assert reply.status_code == 200 and reply.content[:2] == b"\xff\xd8"  # Label Studio serves the JPEG

    as_predictions = run_cli(home, "import", "roboflow-export", str(export), *dataset_args, "--project",
                             str(predicted.id), "--boxes-as", "predictions", **served_env)  # fmt: skip
    assert as_predictions.returncode == 0, as_predictions.stderr
    predictions = client.predictions.list(project=predicted.id)
    positives = sum(1 for boxes in expected.values() if boxes)
    assert len(predictions) == positives and {p.model_version for p in predictions} == {"imported"}
    assert not any(task.annotations for task in client.tasks.list(project=predicted.id, fields="all"))


def roboflow_stand_in(export_zip: bytes, image_count: int) -> Flask:
    """The few endpoints of Roboflow's API that the roboflow SDK calls to download a version."""
    app = Flask("roboflow-stand-in")
    key = "stand-in-key"

    @app.before_request
    def check_key():
        if request.path != "/download.zip" and request.args.get("api_key") != key:
            return Response("invalid api key", status=401)
        return None

    @app.post("/")
    def validate_key():
        return jsonify({"workspace": "hospital"})

    @app.get("/<workspace>")
    def workspace(workspace: str):
        return jsonify({"workspace": {"name": workspace, "url": workspace, "projects": [], "members": []}})

    @app.get("/<workspace>/<project>")
    def project(workspace: str, project: str):
        info = {"annotation": "fracture", "classes": {"fracture": 1}, "colors": {}, "created": 0,
                "id": f"{workspace}/{project}", "images": image_count, "name": project, "public": False,
                "splits": {}, "type": "object-detection", "unannotated": 0, "updated": 0}  # fmt: skip
        version = {"id": f"{workspace}/{project}/3", "augmentation": {}, "created": 0, "images": image_count,
                   "preprocessing": {}, "splits": {}, "exports": ["coco"]}  # fmt: skip
        return jsonify({"project": info, "versions": [version]})

    @app.get("/<workspace>/<project>/<int:version>")
    def version(workspace: str, project: str, version: int):
        return jsonify({"version": {"generating": False, "progress": 1.0, "images": image_count}})

    @app.get("/<workspace>/<project>/<int:version>/<export_format>")
    def export(workspace: str, project: str, version: int, export_format: str):
        return jsonify({"export": {"link": f"{request.host_url}download.zip"}})

    @app.get("/download.zip")
    def download():
        return Response(export_zip, mimetype="application/zip", headers={"Content-Length": str(len(export_zip))})

    return app


def test_roboflow_download_through_the_sdk(sample_dir: Path, tmp_path: Path) -> None:
    export = roboflow_coco_export(sample_dir, tmp_path / "export")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in export.rglob("*"):
            archive.write(path, path.relative_to(export).as_posix())
    count = sum(len(sample_coco(sample_dir, split)["images"]) for split in ("train", "val", "test"))
    server = make_server("127.0.0.1", 0, roboflow_stand_in(buffer.getvalue(), count), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    api = f"http://127.0.0.1:{server.server_port}"
    try:
        no_key = run_cli(tmp_path / "home", "import", "roboflow", "hospital/wrists/3", API_URL=api,
                         ROBOFLOW_API_KEY="")  # fmt: skip
        assert no_key.returncode == 1 and "ROBOFLOW_API_KEY" in no_key.stderr
        wrong = run_cli(tmp_path / "home", "import", "roboflow", "hospital/wrists/3", API_URL=api,
                        ROBOFLOW_API_KEY="wrong-key")  # fmt: skip
        assert wrong.returncode == 1 and "Roboflow download of hospital/wrists/3 failed" in wrong.stderr
        result = run_cli(tmp_path / "home", "import", "roboflow", "hospital/wrists/3", API_URL=api,
                         ROBOFLOW_API_KEY="stand-in-key")  # fmt: skip
    finally:
        server.shutdown()
    assert result.returncode == 0, result.stderr
    dataset = tmp_path / "home" / "datasets" / "wrists-v3"
    assert_boxes_close(dataset_boxes(dataset, "train", export), expected_boxes(sample_dir, "train"), 1e-6)
    assert f"{count} added" in result.stdout
