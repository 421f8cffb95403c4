"""Bootstrap intervals over X-rays for detection metrics, single and paired.

The unit resampled is the X-ray (Efron and Tibshirani, "An Introduction to the Bootstrap", 1993,
ch. 13 percentile intervals): a fracture data set's images are the independent draws, its boxes
are not. The paired form resamples the same X-rays for two models, so what the interval measures
is the difference the models make on one set, not the luck of the set.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import numpy as np

Item = TypeVar("Item")
Statistic = Callable[[Sequence[Any]], float | None]
DEFAULT_RESAMPLES = 1000


@dataclass(frozen=True)
class Interval:
    value: float | None
    low: float | None
    high: float | None
    level: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PairedDifference:
    """``b - a`` on the same X-rays: its value, percentile interval and the share of resamples
    where ``b`` did better."""

    value: float | None
    low: float | None
    high: float | None
    level: float
    probability_better: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resample_indices(count: int, resamples: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, count, size=(resamples, count))


def _percentiles(values: list[float], level: float) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return float(low), float(high)


def bootstrap_interval(
    items: Sequence[Item], statistic: Statistic, *, resamples: int = DEFAULT_RESAMPLES, level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """``statistic(items)`` with its percentile interval (resamples where it is undefined are dropped)."""
    value = statistic(items)
    rows = resample_indices(len(items), resamples, seed) if items else []
    draws = [statistic([items[i] for i in row]) for row in rows]
    low, high = _percentiles([d for d in draws if d is not None], level)
    return Interval(value, low, high, level)


def paired_difference(
    a: Sequence[Item], b: Sequence[Item], statistic: Statistic, *, resamples: int = DEFAULT_RESAMPLES,
    level: float = 0.95, seed: int = 0, statistic_b: Statistic | None = None,
) -> PairedDifference:
    """``statistic_b(b) - statistic(a)`` (``statistic_b`` defaults to ``statistic``), where ``a[i]``
    and ``b[i]`` are one X-ray under two models (e.g. each at its own display threshold)."""
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} and {len(b)}")
    statistic_b = statistic_b or statistic
    value_a, value_b = statistic(a), statistic_b(b)
    value = None if value_a is None or value_b is None else value_b - value_a
    differences = []
    for row in resample_indices(len(a), resamples, seed) if len(a) else []:
        draw_a, draw_b = statistic([a[i] for i in row]), statistic_b([b[i] for i in row])
        if draw_a is not None and draw_b is not None:
            differences.append(draw_b - draw_a)
    low, high = _percentiles(differences, level)
    better = float(np.mean(np.asarray(differences) > 0)) if differences else None
    return PairedDifference(value, low, high, level, better)
