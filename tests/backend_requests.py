"""Hostile and careless requests to the ML backend, as hypothesis strategies: shared by the
property-based tests and the long fuzz run (``scripts/fuzz_backend.py``)."""

from __future__ import annotations

import io
import json
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from hypothesis import strategies as st
from PIL import Image

CONFIG = """<View><Image name="image" value="$image"/>
<RectangleLabels name="label" toName="image" model_score_threshold="0"><Label value="fracture"/></RectangleLabels>
</View>"""
ROUTES = ("/setup", "/predict", "/webhook", "/health", "/")
ACTIONS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED", "START_TRAINING", "PROJECT_UPDATED")


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels: a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00")) + chunk(b"IEND", b"")


# Images a careless or hostile project may hold, by what they are (file names under the image root).
IMAGE_FILES = {"good": "good.jpg", "sixteen_bit": "sixteen-bit.png", "bomb": "bomb.png", "corrupt": "corrupt.jpg",
               "truncated": "truncated.jpg"}  # fmt: skip


def write_image_files(folder: Path) -> Path:
    """Write :data:`IMAGE_FILES` into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).convert("RGB").save(folder / "good.jpg")
    Image.fromarray(rng.integers(0, 4095, (64, 64)).astype(np.uint16)).save(folder / "sixteen-bit.png")
    (folder / "bomb.png").write_bytes(png_claiming(20_000, 20_000))
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buffer, format="JPEG")
    (folder / "truncated.jpg").write_bytes(buffer.getvalue()[:200])
    return folder


TRICKY_REFERENCES = [
    "/data/upload/1/x.jpg", "/data/local-files/?d=../../etc/passwd", "../../etc/passwd", "/etc/passwd",
    "file:///etc/passwd", "http://[::1", "http://[::1]:99999/x", "a\x00b.jpg", "http://127.0.0.1:1/x.jpg",
    "http://user:secret@127.0.0.1:1/x.jpg", "http://127.0.0.1:1\\@localhost/x.jpg", "javascript:alert(1)",
    "data:image/png;base64,AAAA", "\\\\server\\share\\x.jpg", "", " ", "http://", "http:///x", "//evil/x.jpg",
    "http://localhost%00.example/x", "https://xn--/x", "http://\u0130/x", "~/x.jpg", ".", "/",
]  # fmt: skip

json_scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)


def image_references() -> st.SearchStrategy:
    return st.sampled_from(TRICKY_REFERENCES + sorted(IMAGE_FILES.values())) | st.text(max_size=40) | json_values


def projects() -> st.SearchStrategy:
    return (
        st.sampled_from(["1.1", "1", 1, "01.5", "1.x", "-1", "\uff11", "9" * 40, {"id": 1}, {"id": None}, {"id": "1"}])
        | json_values
    )


def predict_bodies() -> st.SearchStrategy:
    task = st.fixed_dictionaries(
        {"id": json_scalars, "data": st.fixed_dictionaries({"image": image_references()}) | json_values}
    )
    return st.fixed_dictionaries(
        {"tasks": st.lists(task, max_size=3) | json_values},
        optional={"project": projects(), "label_config": st.just(CONFIG) | json_values, "params": json_values},
    )


def setup_bodies() -> st.SearchStrategy:
    hosts = st.sampled_from(["http://127.0.0.1:1", "http://[::1", "http://a\\@b", "ftp://x", ""]) | json_values
    tokens = st.sampled_from(["0" * 40, "True", "a b", "x\r\nHost: evil"]) | json_values
    return st.fixed_dictionaries(
        {},
        optional={"project": projects(), "schema": st.just(CONFIG) | json_values, "hostname": hosts,
                  "access_token": tokens, "extra_params": json_values},
    )  # fmt: skip


def webhook_bodies() -> st.SearchStrategy:
    actions = st.sampled_from(ACTIONS) | json_values
    return st.fixed_dictionaries({}, optional={"action": actions, "project": projects(), "annotation": json_values})


def deeply_nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@dataclass(frozen=True)
class RawRequest:
    route: str
    body: bytes
    content_type: str


def raw_requests() -> st.SearchStrategy:
    """Whole requests: a route, a body (JSON of the right shape, any JSON, or any bytes), a type."""

    def encoded(value: object) -> bytes:
        return json.dumps(value).encode()  # NaN and Infinity stay in, as careless clients send them

    shaped = st.one_of(
        st.tuples(st.just("/predict"), predict_bodies().map(encoded)),
        st.tuples(st.just("/setup"), setup_bodies().map(encoded)),
        st.tuples(st.just("/webhook"), webhook_bodies().map(encoded)),
    )
    unshaped = st.tuples(
        st.sampled_from(ROUTES),
        json_values.map(encoded)
        | st.binary(max_size=64)
        | st.sampled_from([deeply_nested(1000), deeply_nested(100_000), "{", '{"a": NaN}', "\ud800"]).map(
            lambda text: text.encode("utf-8", "surrogatepass")
        ),
    )
    content_types = st.sampled_from(["application/json", "application/json; charset=latin-1", "text/plain", ""])
    return st.builds(lambda pair, kind: RawRequest(pair[0], pair[1], kind), shaped | unshaped, content_types)
