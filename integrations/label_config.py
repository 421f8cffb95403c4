"""What a Label Studio labelling config asks of a box detector, read with the SDK's LabelInterface."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

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
        interface = LabelInterface(label_config)
        from_name, to_name, value_key = interface.get_first_tag_occurence("RectangleLabels", "Image")
    except ValueError as error:
        raise LabelConfigError(f"labelling config has no RectangleLabels control on an Image ({error})") from error
    except Exception as error:  # lxml and the SDK raise many types for malformed XML
        raise LabelConfigError(f"labelling config cannot be parsed ({error})") from error
    control = interface.get_control(from_name)

    label_of_class: dict[str, str] = {}
    for label, tag in (control.labels_attrs or {}).items():
        predicted = tag.attr.get("predicted_values")
        sources = [value.strip() for value in predicted.split(",")] if predicted else [label]
        for class_name in class_names:
            if class_name.lower() in {source.lower() for source in sources}:
                label_of_class.setdefault(class_name, label)
    unmapped = set(class_names) - set(label_of_class)
    if unmapped:
        log.warning("model classes %s match no label of control %r", sorted(unmapped), from_name)

    threshold = control.attr.get("model_score_threshold")
    try:
        score_threshold = float(threshold) if threshold is not None else None
    except ValueError:
        raise LabelConfigError(f"model_score_threshold={threshold!r} is not a number") from None
    return RectangleTarget(from_name, to_name, value_key, label_of_class, score_threshold)


# The labelling config `fracture-al up` gives new projects: boxes for fractures on one X-ray.
FRACTURE_LABEL_CONFIG = """<View>
  <Image name="image" value="$image" zoom="true" zoomControl="true" brightnessControl="true" contrastControl="true"/>
  <RectangleLabels name="label" toName="image">
    <Label value="Fracture" background="#e53935" predicted_values="fracture"/>
  </RectangleLabels>
</View>"""
