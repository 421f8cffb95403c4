"""Horizontal-flip test-time augmentation: predict on an X-ray and on its mirror, then fuse.

A left/right mirror is the one augmentation that leaves a radiograph plausible (see
:func:`detection.data.train_transforms`), so a fracture the model really sees should be found in
both views. Fusion follows weighted boxes fusion (Solovyev, Wang and Gabruseva, "Weighted boxes
fusion: ensembling boxes from different object detection models", Image and Vision Computing
107, 2021): boxes of the two views that overlap by IoU >= ``iou_threshold`` form one cluster,
whose box is the score-weighted mean of its members and whose score is the summed score divided
by the number of views. A box seen in one view only keeps half its score, which is what ranks
view-consistent findings above one-off ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.ops import box_iou

FUSION_IOU = 0.55


def detect(model: torch.nn.Module, images: Sequence[torch.Tensor], *, flip_tta: bool) -> list[dict[str, torch.Tensor]]:
    """The model's outputs for ``images`` (CHW tensors), fused over a horizontal flip if asked."""
    outputs = model(list(images))
    if not flip_tta:
        return outputs
    mirrored = model([image.flip(-1) for image in images])
    # Fusion is a loop over a few hundred boxes: on the CPU it takes milliseconds, while on a
    # busy GPU each of its small kernels waits its turn.
    outputs, mirrored = ([{k: v.cpu() for k, v in out.items()} for out in batch] for batch in (outputs, mirrored))
    return [
        fuse_views([output, unflip(other, image.shape[-1])])
        for output, other, image in zip(outputs, mirrored, images, strict=True)
    ]


def unflip(output: dict[str, torch.Tensor], width: int) -> dict[str, torch.Tensor]:
    """Boxes predicted on a mirrored image, mapped back onto the original pixels."""
    boxes = output["boxes"].clone()
    boxes[:, [0, 2]] = width - output["boxes"][:, [2, 0]]
    return {**output, "boxes": boxes}


def fuse_views(
    views: Sequence[dict[str, torch.Tensor]], *, iou_threshold: float = FUSION_IOU
) -> dict[str, torch.Tensor]:
    """Weighted boxes fusion of one image's predictions from several views, per label."""
    boxes = torch.cat([view["boxes"].float() for view in views])
    scores = torch.cat([view["scores"].float() for view in views])
    labels = torch.cat([view["labels"] for view in views])
    fused_boxes, fused_scores, fused_labels = [], [], []
    for label in labels.unique(sorted=True).tolist():
        chosen = labels == label
        cluster_boxes, cluster_scores = _fuse_one_label(boxes[chosen], scores[chosen], iou_threshold, len(views))
        fused_boxes.append(cluster_boxes)
        fused_scores.append(cluster_scores)
        fused_labels.append(torch.full((len(cluster_scores),), label, dtype=labels.dtype, device=labels.device))
    if not fused_boxes:
        return {"boxes": boxes.reshape(0, 4), "scores": scores, "labels": labels}
    scores = torch.cat(fused_scores)
    order = scores.argsort(descending=True)
    return {"boxes": torch.cat(fused_boxes)[order], "scores": scores[order], "labels": torch.cat(fused_labels)[order]}


def _fuse_one_label(
    boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, views: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy clustering in decreasing score order against each cluster's current fused box."""
    order = scores.argsort(descending=True)
    members: list[list[int]] = []
    fused: list[torch.Tensor] = []
    for index in order.tolist():
        if fused:
            overlaps = box_iou(boxes[index : index + 1], torch.stack(fused))[0]
            best = int(overlaps.argmax())
            if overlaps[best] >= iou_threshold:
                members[best].append(index)
                weights = scores[members[best]]
                fused[best] = (boxes[members[best]] * weights[:, None]).sum(0) / weights.sum()
                continue
        members.append([index])
        fused.append(boxes[index])
    cluster_scores = torch.stack([scores[group].sum() / max(views, len(group)) for group in members])
    return torch.stack(fused), cluster_scores
