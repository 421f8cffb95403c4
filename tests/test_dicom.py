"""DICOM files written with pydicom: 16-bit, MONOCHROME1, windows, de-identification, corruption."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from builders import write_dicom

from fracture_al.detection.images import ImageLoadError
from fracture_al.integrations.dicom import is_dicom, read_dicom

RAMP = np.tile(np.linspace(0, 4095, 32), (16, 1)).astype(np.uint16)  # dark left, bright right


def test_12_bit_monochrome2_uses_the_full_8_bit_range(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "a.dcm", RAMP)
    assert is_dicom(path)
    pixels = np.asarray(read_dicom(path).image)[..., 0]
    assert pixels.shape == (16, 32)
    assert pixels[0, 0] == 0 and pixels[0, -1] == 255
    assert np.all(np.diff(pixels[0].astype(int)) >= 0)


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    pixels = np.asarray(read_dicom(write_dicom(tmp_path / "m1.dcm", RAMP, "MONOCHROME1")).image)[..., 0]
    assert pixels[0, 0] == 255 and pixels[0, -1] == 0  # low stored values are displayed white


def test_window_is_applied(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "w.dcm", RAMP, WindowCenter=1000, WindowWidth=400)
    pixels = np.asarray(read_dicom(path).image)[..., 0]
    values = RAMP[0]
    # Below the window is black, above it white, and the ramp inside it spans the range.
    assert (pixels[0][values < 790] == 0).all() and (pixels[0][values > 1210] == 255).all()
    assert len(np.unique(pixels[0][(values > 800) & (values < 1200)])) > 1


def test_patient_identity_is_not_copied(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "p.dcm", RAMP)
    metadata = read_dicom(path).metadata
    assert metadata["Modality"] == "DX" and metadata["BodyPartExamined"] == "HAND"
    text = repr(metadata)
    for secret in ("Doe", "MRN-0042", "19700101"):
        assert secret not in text
    assert "Doe^Jane" in repr(read_dicom(path, deidentify=False).metadata)


def test_corrupt_and_non_dicom_files_are_clear_errors(tmp_path: Path) -> None:
    good = write_dicom(tmp_path / "good.dcm", RAMP).read_bytes()
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(good[: len(good) - 600])  # pixel data cut short
    with pytest.raises(ImageLoadError, match=r"truncated\.dcm"):
        read_dicom(truncated)
    text = tmp_path / "notes.dcm"
    text.write_text("not a dicom")
    assert not is_dicom(text)
    with pytest.raises(ImageLoadError, match="not a readable DICOM"):
        read_dicom(text)
