"""Masks and calls as Label Studio regions, and the labelling configs that ask for them."""

from __future__ import annotations

import numpy as np
import pytest

from fracture_al.integrations.label_config import LabelConfigError, choice_target, mask_targets
from fracture_al.integrations.mask_regions import (
    annotation_mask,
    brush_region,
    brush_to_mask,
    choice_region,
    polygon_regions,
    polygon_to_mask,
)

CONFIG = """<View>
  <Image name="xray" value="$picture"/>
  <BrushLabels name="mask" toName="xray"><Label value="Fracture"/><Label value="Cast"/></BrushLabels>
  <PolygonLabels name="outline" toName="xray"><Label value="Break" predicted_values="fracture"/></PolygonLabels>
  <Choices name="call" toName="xray"><Choice value="Fracture"/><Choice value="Normal"/></Choices>
  <RectangleLabels name="box" toName="xray"><Label value="Fracture"/></RectangleLabels>
</View>"""


def built_mask() -> np.ndarray:
    """Two regions on a 40 x 30 X-ray: an L-shape and a block touching the right border."""
    mask = np.zeros((30, 40), dtype=bool)
    mask[5:20, 4:8] = True
    mask[16:20, 4:15] = True
    mask[2:9, 33:40] = True
    return mask


def test_configs_name_their_mask_and_choice_controls() -> None:
    targets = mask_targets(CONFIG)
    assert [(t.kind, t.from_name, t.to_name, t.value_key, t.label) for t in targets] == [
        ("brush", "mask", "xray", "picture", "Fracture"),
        ("polygon", "outline", "xray", "picture", "Break"),
    ]
    call = choice_target(CONFIG)
    assert (call.from_name, call.fracture, call.healthy) == ("call", "Fracture", "Normal")
    boxes_only = "<View><Image name='i' value='$image'/><RectangleLabels name='b' toName='i'>" \
                 "<Label value='Fracture'/></RectangleLabels></View>"  # fmt: skip
    assert mask_targets(boxes_only) == () and choice_target(boxes_only) is None
    with pytest.raises(LabelConfigError, match="cannot be parsed"):
        mask_targets("<View><Image")


def test_a_brush_region_round_trips_the_mask_pixel_for_pixel() -> None:
    [target, _] = mask_targets(CONFIG)
    mask = built_mask()
    region = brush_region(mask, target, 0.87)
    assert region["type"] == "brushlabels" and region["value"]["brushlabels"] == ["Fracture"]
    assert (region["original_width"], region["original_height"]) == (40, 30) and region["score"] == 0.87
    assert (brush_to_mask(region["value"], 40, 30) == mask).all()


def test_polygon_regions_round_trip_the_mask_pixel_for_pixel() -> None:
    [_, target] = mask_targets(CONFIG)
    mask = built_mask()
    regions = polygon_regions(mask, target, 0.6, tolerance=0.0)
    assert len(regions) == 2 and all(r["value"]["polygonlabels"] == ["Break"] for r in regions)
    points = [p for r in regions for p in r["value"]["points"]]
    assert all(0.0 <= x <= 100.0 and 0.0 <= y <= 100.0 for x, y in points)
    union = np.logical_or.reduce([polygon_to_mask(r["value"], 40, 30) for r in regions])
    assert (union == mask).all()


def test_the_call_goes_to_the_fracture_or_the_healthy_choice() -> None:
    target = choice_target(CONFIG)
    assert choice_region(0.8, target, 0.5, 40, 30)["value"] == {"choices": ["Fracture"]}
    assert choice_region(0.2, target, 0.5, 40, 30)["value"] == {"choices": ["Normal"]}
    only_fracture = choice_target(CONFIG.replace('<Choice value="Normal"/>', ""))
    assert choice_region(0.2, only_fracture, 0.5, 40, 30) is None


def test_an_annotation_s_brush_strokes_and_outlines_make_one_mask() -> None:
    brush, outline = mask_targets(CONFIG)
    stroke, drawn = np.zeros((30, 40), dtype=bool), np.zeros((30, 40), dtype=bool)
    stroke[5:20, 4:8] = True
    drawn[2:9, 30:38] = True
    result = [brush_region(stroke, brush, 1.0), *polygon_regions(drawn, outline, 1.0, tolerance=0.0)]
    other = brush_region(np.ones((30, 40), dtype=bool), brush, 1.0)
    other["value"]["brushlabels"] = ["Cast"]  # another label of the same control: not a fracture
    annotation = {"result": [*result, other, {"type": "choices", "value": {"choices": ["Fracture"]}}]}
    assert (annotation_mask(annotation, [brush, outline], 40, 30) == (stroke | drawn)).all()
    assert not annotation_mask({"result": []}, [brush, outline], 40, 30).any()
