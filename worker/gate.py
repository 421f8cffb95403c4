"""The quality gate a retrained candidate must pass before it is served."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    reason: str
    metric: str
    candidate: float | None
    current: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def quality_gate(
    candidate: dict[str, Any] | None, current: dict[str, Any] | None, *, metric: str, min_delta: float
) -> GateDecision:
    """Publish only if ``candidate[metric]`` beats ``current[metric]`` by at least ``min_delta``.

    Both are measured on the same validation set, now: the set grows as annotators work, so the
    current version's metrics from its own training day are not comparable.
    """
    new = (candidate or {}).get(metric)
    old = (current or {}).get(metric) if current is not None else None
    if candidate is None:
        return GateDecision(True, "no validation set: published without a gate", metric, None, old)
    if current is None:
        return GateDecision(True, "first model: nothing to compare with", metric, new, None)
    if new is None:
        return GateDecision(False, f"candidate has no {metric} on the validation set", metric, new, old)
    if old is None or new >= old + min_delta:
        return GateDecision(
            True, f"{metric} {new:.4f} vs current {old if old is not None else 'n/a'}", metric, new, old
        )
    return GateDecision(False, f"{metric} {new:.4f} is below current {old:.4f} + {min_delta}", metric, new, old)
