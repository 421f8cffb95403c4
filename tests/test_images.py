from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fracture_al.detection.images import ImageLoadError, load_image


def first_sample_image(sample_dir: Path) -> Path:
    return sorted((sample_dir / "images").glob("*.jpg"))[0]


def test_jpeg_x_ray_loads_as_rgb8(sample_dir: Path) -> None:
    path = first_sample_image(sample_dir)
    image = load_image(path)
    assert image.mode == "RGB"
    assert image.size == Image.open(path).size


def test_16_bit_png_uses_its_own_intensity_range(tmp_path: Path) -> None:
    # 12 bits of signal in a 16-bit container, as detectors write them.
    pixels = np.tile(np.linspace(1000, 4095, 64, dtype=np.uint16), (48, 1))
    path = tmp_path / "xray16.png"
    Image.fromarray(pixels).save(path)
    assert Image.open(path).mode.startswith("I")

    image = np.asarray(load_image(path))
    assert image.shape == (48, 64, 3)
    assert image.dtype == np.uint8
    assert image[..., 0].min() == 0 and image[..., 0].max() == 255  # the full 8-bit range is used
    assert np.all(np.diff(image[0, :, 0].astype(int)) >= 0)  # and the ramp stays monotonic


def test_grayscale_becomes_three_channels(tmp_path: Path) -> None:
    path = tmp_path / "gray.png"
    Image.fromarray(np.full((10, 20), 77, dtype=np.uint8)).save(path)
    image = np.asarray(load_image(path))
    assert image.shape == (10, 20, 3)
    assert (image == 77).all()


def test_exif_orientation_is_honoured(tmp_path: Path) -> None:
    stored = Image.new("RGB", (40, 20), "white")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rotated.jpg"
    stored.save(path, exif=exif)
    assert load_image(path).size == (20, 40)


def test_bytes_are_accepted(sample_dir: Path) -> None:
    path = first_sample_image(sample_dir)
    assert load_image(path.read_bytes()).size == Image.open(path).size


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"this is not an image", "not an image"),
        (b"", "not an image"),
    ],
)
def test_garbage_is_refused_clearly(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "broken.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageLoadError, match=message) as raised:
        load_image(path)
    assert "broken.jpg" in str(raised.value)


def test_truncated_jpeg_is_refused(tmp_path: Path, sample_dir: Path) -> None:
    data = first_sample_image(sample_dir).read_bytes()
    path = tmp_path / "truncated.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match="truncated"):
        load_image(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError, match="not found"):
        load_image(tmp_path / "nope.png")


def test_decompression_bomb_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("fracture_al.detection.images.MAX_PIXELS", 100)
    buffer = io.BytesIO()
    Image.new("L", (20, 20)).save(buffer, format="PNG")
    with pytest.raises(ImageLoadError, match="pixel limit"):
        load_image(buffer.getvalue())
