"""What a Label Studio labelling config asks of a box detector, read with the SDK's LabelInterface."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from label_studio_sdk.label_interface import LabelInterface

log = logging.getLogger(__name__)


class LabelConfigError(ValueError):
    """The labelling config has no RectangleLabels on an Image, or cannot be parsed."""


@dataclass(frozen=True)
class RectangleTarget:
    """Where the detector's boxes go: ``from_name`` labels ``to_name``, whose image URL sits in the
    task's ``data[value_key]``."""

    from_name: str
    to_name: str
    value_key: str
    label_of_class: dict[str, str]  # model class name -> the config's label value
    score_threshold: float | None  # the control's `model_score_threshold`, if set


@lru_cache(maxsize=32)
def rectangle_target(label_config: str, class_names: Sequence[str]) -> RectangleTarget:
    """The first RectangleLabels control on an Image, with the model's classes mapped onto its labels.

    A label takes the model classes listed in its ``predicted_values`` attribute (comma-separated),
    else the class whose name equals its value (case-insensitive). Unmapped classes are dropped.
    """
    try:
        interface = _interface(label_config)
        from_name, to_name, value_key = interface.get_first_tag_occurence("RectangleLabels", "Image")
    except LabelConfigError:
        raise
    except ValueError as error:
        raise LabelConfigError(f"labelling config has no RectangleLabels control on an Image ({error})") from error
    except Exception as error:  # lxml and the SDK raise many types for malformed XML
        raise LabelConfigError(f"labelling config cannot be parsed ({error})") from error
    control = interface.get_control(from_name)
    label_of_class = labels_of_classes(control, class_names)
    threshold = control.attr.get("model_score_threshold")
    try:
        score_threshold = float(threshold) if threshold is not None else None
    except ValueError:
        raise LabelConfigError(f"model_score_threshold={threshold!r} is not a number") from None
    return RectangleTarget(from_name, to_name, value_key, label_of_class, score_threshold)


def labels_of_classes(control, class_names: Sequence[str], *, warn: bool = True) -> dict[str, str]:
    """Model class -> the control's label (or choice) value: a label takes the classes listed in its
    ``predicted_values`` attribute (comma-separated), else the class whose name equals its value
    (case-insensitive). Unmapped classes are dropped."""
    label_of_class: dict[str, str] = {}
    for label, tag in (control.labels_attrs or {}).items():
        predicted = tag.attr.get("predicted_values")
        sources = [value.strip() for value in predicted.split(",")] if predicted else [label]
        for class_name in class_names:
            if class_name.lower() in {source.lower() for source in sources}:
                label_of_class.setdefault(class_name, label)
    unmapped = set(class_names) - set(label_of_class)
    if unmapped and warn:
        log.warning("model classes %s match no label of control %r", sorted(unmapped), control.name)
    return label_of_class


FRACTURE = "fracture"
# What a Choices control's "no fracture" option may be called (or list in `predicted_values`).
HEALTHY_NAMES = ("no_fracture", "no fracture", "healthy", "normal")
MASK_CONTROLS = {"BrushLabels": "brush", "PolygonLabels": "polygon"}


@dataclass(frozen=True)
class MaskTarget:
    """Where a segmenter's fracture mask goes: a BrushLabels (RLE) or PolygonLabels control."""

    kind: str  # "brush" or "polygon"
    from_name: str
    to_name: str
    value_key: str
    label: str  # the control's label for fractures


@dataclass(frozen=True)
class ChoiceTarget:
    """Where the X-ray's fracture / no fracture call goes: a Choices control on the image."""

    from_name: str
    to_name: str
    value_key: str
    fracture: str
    healthy: str | None


def _interface(label_config: str) -> LabelInterface:
    # Imported when a config is first read, not with this module: the SDK's package brings its
    # whole HTTP client stack, which code that only scores X-rays (task_predictions' measures, the
    # benchmarks on a GPU machine) has no use for.
    from label_studio_sdk.label_interface import LabelInterface

    try:
        return LabelInterface(label_config)
    except Exception as error:  # lxml and the SDK raise many types for malformed XML
        raise LabelConfigError(f"labelling config cannot be parsed ({error})") from error


def _image_controls(interface: LabelInterface, tag: str):
    """``(control, image name, data key)`` for every control of this tag that labels an Image."""
    for control in interface.controls:
        if control.tag != tag:
            continue
        for name in control.to_name or []:
            try:
                image = interface.get_object(name)
            except Exception:  # the SDK raises a bare exception for an unknown name
                continue
            if image.tag == "Image":
                yield control, name, image.value_name
                break


@lru_cache(maxsize=32)
def has_rectangles(label_config: str) -> bool:
    """Whether the config has a RectangleLabels control on an Image (what rectangle_target reads)."""
    return any(True for _ in _image_controls(_interface(label_config), "RectangleLabels"))


@lru_cache(maxsize=32)
def mask_targets(label_config: str) -> tuple[MaskTarget, ...]:
    """Every BrushLabels and PolygonLabels control on an Image that has a label for fractures."""
    interface = _interface(label_config)
    targets = []
    for tag, kind in MASK_CONTROLS.items():
        for control, image, key in _image_controls(interface, tag):
            label = labels_of_classes(control, (FRACTURE,)).get(FRACTURE)
            if label is not None:
                targets.append(MaskTarget(kind, control.name, image, key, label))
    return tuple(targets)


@lru_cache(maxsize=32)
def choice_target(label_config: str) -> ChoiceTarget | None:
    """The first Choices control on an Image with a choice for fractures, if any."""
    interface = _interface(label_config)
    for control, image, key in _image_controls(interface, "Choices"):
        fracture = labels_of_classes(control, (FRACTURE,)).get(FRACTURE)
        if fracture is not None:
            healthy = next(iter(labels_of_classes(control, HEALTHY_NAMES, warn=False).values()), None)
            return ChoiceTarget(control.name, image, key, fracture, healthy)
    return None


# The labelling config `fracture-al up` gives new projects: boxes for fractures on one X-ray.
FRACTURE_LABEL_CONFIG = """<View>
  <Image name="image" value="$image" zoom="true" zoomControl="true" brightnessControl="true" contrastControl="true"/>
  <RectangleLabels name="label" toName="image">
    <Label value="Fracture" background="#e53935" predicted_values="fracture"/>
  </RectangleLabels>
</View>"""
