"""A random control arm inside the review queue, so every project can measure whether the queue
works on its own X-rays.

In each batch of ``batch_size`` places at the head of the queue, a share of the places goes to
X-rays drawn uniformly at random from the whole unlabelled pool; the other places follow the
queue's order. Annotators see one list; each task records which arm put it there, so that what
labelling each arm's X-rays taught (how often the model was wrong on them) can be compared.

Mixing two rankers' items into one list that users cannot tell apart is how rankers are compared
on live traffic (interleaved evaluation: Chapelle et al., "Large-scale validation and analysis of
interleaved search evaluation", ACM TOIS 2012); the second ranker here is the uniform sampler,
the baseline an active-learning method has to beat ("Deep Active Learning: A Reality Check",
arXiv 2403.14800). The random arm's X-rays are those annotators would have labelled without the
queue, on the same days, by the same people.
"""

from __future__ import annotations

import numpy as np

QUEUE_ARM = "queue"
RANDOM_ARM = "random"


def random_arm_places(length: int, share: float, batch_size: int, rng: np.random.Generator) -> list[int]:
    """The places (0-based) in a queue of ``length`` that go to the random arm:
    ``round(share * batch_size)`` at random places of every full batch, and the same share of the
    last, shorter one."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"the random arm's share must lie in [0, 1], not {share}")
    if batch_size < 1:
        raise ValueError(f"the batch size must be at least 1, not {batch_size}")
    places = []
    for start in range(0, length, batch_size):
        size = min(batch_size, length - start)
        count = round(share * size)
        places.extend(start + int(place) for place in sorted(rng.choice(size, size=count, replace=False)))
    return places


def interleave_random_arm(
    order: list[int], share: float, batch_size: int, seed: int
) -> list[tuple[int, str]]:
    """``order`` (items in queue order) with the random arm interleaved: ``(item, arm)`` per place.

    The random arm's items are a uniform sample of all of ``order``, drawn before the queue's own
    places are filled, so their choice owes nothing to the model's scores; the queue's places take
    the remaining items in the queue's order. The same arguments always give the same result."""
    rng = np.random.default_rng(seed)
    places = random_arm_places(len(order), share, batch_size, rng)
    drawn = [order[int(index)] for index in rng.choice(len(order), size=len(places), replace=False)]
    random_at = dict(zip(places, drawn, strict=True))
    chosen = set(drawn)
    queued = iter(item for item in order if item not in chosen)
    return [(random_at[place], RANDOM_ARM) if place in random_at else (next(queued), QUEUE_ARM)
            for place in range(len(order))]  # fmt: skip
