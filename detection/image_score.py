"""An X-ray's fracture probability from its detector's box scores.

A detector scores candidate boxes; a radiologist's first question is about the whole X-ray. The
noisy-OR of the box scores, 1 - prod(1 - p_i), is the probability that at least one box is a
fracture were the boxes independent witnesses: the multiple-instance view of an image as a bag of
boxes (Maron & Lozano-Pérez, "A Framework for Multiple-Instance Learning", NIPS 1998; as a bag
probability for detection, Viola, Platt & Zhang, "Multiple Instance Boosting for Object
Detection", NIPS 2005). Several moderate boxes on one X-ray then count for more than one.

Why not the best box alone: of seven rules tried on FracAtlas val with the shipped detector,
noisy-OR ranked X-rays best (image AUROC 0.876 against 0.862 for the best box); on FracAtlas test
it was then ahead of the best box for every one of 21 trained detectors whose test predictions are
kept under ``benchmarks/reported/`` (median +0.028 AUROC, +0.012 to +0.121; the paired 95% interval
excludes 0 for 16 of them; ``benchmarks/reported/image_score_rules.json`` and ``.png``, made by
``benchmarks/image_score_rules.py``). Its Brier score equals the best box's on val (0.157) and is
lower on test (0.142 against 0.147): no less calibrated a probability.

Whether a box is *shown* stays a question of each box's own score against the display threshold.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


def fracture_probability(scores: ArrayLike) -> float:
    """Noisy-OR of an X-ray's box scores (each clipped to [0, 1]); 0 without boxes."""
    p = np.clip(np.asarray(scores, dtype=float).ravel(), 0.0, 1.0)
    # 1 - exp(sum log(1 - p)) keeps many small scores from vanishing in a product of near-ones;
    # a box scored 1 gives log(0) = -inf and so probability 1.
    with np.errstate(divide="ignore"):
        return float(-np.expm1(np.log1p(-p).sum()))
