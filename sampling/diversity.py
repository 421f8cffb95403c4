"""Choosing a batch of X-rays that are uncertain and unlike each other, over backbone embeddings.

Taking the top-k by uncertainty alone fills a batch with near-copies (FracAtlas holds re-exported
copies of the same radiograph, and multiscan views of one limb): annotators then label one case k
times. Both strategies here first keep a pool of the most uncertain candidates, then spread the
batch over embedding space.
"""

from __future__ import annotations

import numpy as np

from fracture_al.sampling.choices import Strategy


def k_center_greedy(embeddings: np.ndarray, k: int, first: int) -> list[int]:
    """Greedy k-center (core-set) selection starting from index ``first``.

    Each step adds the point farthest from everything chosen so far, so an exact duplicate of a
    chosen point (distance 0) is only ever picked when nothing else is left. Sener & Savarese,
    "Active Learning for Convolutional Neural Networks: A Core-Set Approach", ICLR 2018.
    """
    points = np.asarray(embeddings, dtype=np.float64)
    chosen = [first]
    nearest = np.linalg.norm(points - points[first], axis=1)
    while len(chosen) < min(k, len(points)):
        candidate = int(np.argmax(nearest))
        chosen.append(candidate)
        nearest = np.minimum(nearest, np.linalg.norm(points - points[candidate], axis=1))
    return chosen


def select_batch(
    uncertainty: np.ndarray,
    embeddings: np.ndarray | None,
    k: int,
    *,
    strategy: Strategy = "k_center",
    pool_factor: int = 4,
    seed: int = 0,
) -> list[int]:
    """Indices of the ``k`` X-rays to label next, most uncertain first where the strategy allows.

    ``uncertainty``: top-k by score. ``k_center``: k-center greedy over the ``pool_factor * k``
    most uncertain, seeded with the single most uncertain. ``kmeans_pp``: k-means++ seeding over
    the same pool with uncertainty as sample weight (Ash et al., "Deep Batch Active Learning by
    Diverse, Uncertain Gradient Lower Bounds", ICLR 2020, use k-means++ seeding the same way).
    Ties are broken by index, and ``seed`` fixes k-means++, so the same inputs give the same batch.
    """
    uncertainty = np.asarray(uncertainty, dtype=float)
    order = np.lexsort((np.arange(len(uncertainty)), -uncertainty))  # most uncertain first, stable
    if strategy == "uncertainty" or embeddings is None or k >= len(uncertainty):
        return [int(i) for i in order[:k]]
    pool = order[: max(k, pool_factor * k)]
    pool_embeddings = np.asarray(embeddings, dtype=np.float64)[pool]
    if strategy == "k_center":
        picked = k_center_greedy(pool_embeddings, k, first=0)
    elif strategy == "kmeans_pp":
        # Imported when this strategy runs: the backend's workers import the queue's types, never rank.
        from sklearn.cluster import kmeans_plusplus

        _, picked = kmeans_plusplus(
            pool_embeddings, n_clusters=k, sample_weight=uncertainty[pool] + 1e-9, random_state=seed
        )
    else:
        raise ValueError(f"unknown strategy {strategy!r}; choose uncertainty, k_center or kmeans_pp")
    chosen = [int(pool[i]) for i in picked]
    return sorted(chosen, key=lambda index: (-uncertainty[index], index))


def review_order(
    uncertainty: np.ndarray,
    embeddings: np.ndarray | None,
    *,
    top_k: int,
    strategy: Strategy = "k_center",
    seed: int = 0,
) -> list[int]:
    """The whole pool in queue order: the diverse batch of ``top_k`` first, then every other X-ray
    by decreasing uncertainty (ties by index)."""
    uncertainty = np.asarray(uncertainty, dtype=float)
    head = select_batch(uncertainty, embeddings, min(top_k, len(uncertainty)), strategy=strategy, seed=seed)
    chosen = set(head)
    rest = [int(i) for i in np.lexsort((np.arange(len(uncertainty)), -uncertainty)) if int(i) not in chosen]
    return head + rest


def random_order(count: int, seed: int) -> list[int]:
    """The baseline every strategy is measured against: a seeded shuffle."""
    return [int(i) for i in np.random.default_rng(seed).permutation(count)]
