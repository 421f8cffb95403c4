"""False-accept and false-reject rates of the retrain gate (worker/gate.py) on simulated model pairs.

Each trial draws a validation set of N X-rays (half with one fracture) and the detections of a
served model and a candidate on it, then asks the gate. Detections come from one generative model:
a fractured X-ray is found with probability sigmoid(logit(hit rate) + hardness), where the X-ray's
hardness ~ N(0, 1) is shared by both models (as real models share hard cases, which is what the
paired bootstrap exploits); a found fracture gets a box scored ~ Beta(5, 2); every X-ray gets
Poisson(false-alarm rate) false boxes scored ~ Uniform(0.05, 0.9). Scenarios:

    copy        the candidate is the served model itself                 -> must be refused
    equal       same hit and false-alarm rates, its own errors           -> accepting is a false accept
    worse       hit rate 0.45 instead of 0.60                            -> accepting is a false accept
    better      hit rate 0.75, false alarms 0.6 instead of 0.8           -> refusing is a false reject
    much_better hit rate 0.90, false alarms 0.4                          -> refusing is a false reject

    python -m benchmarks.gate_error_rates --trials 100 --sizes 20 40 80 160 \\
        --out benchmarks/reported/gate_error_rates.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from fracture_al.detection.evaluation import ImageMatches
from fracture_al.worker.gate import GateRule, quality_gate

SERVED = {"hit_rate": 0.60, "false_alarms": 0.8}
SCENARIOS = {
    "copy": None,
    "equal": SERVED,
    "worse": {"hit_rate": 0.45, "false_alarms": 0.8},
    "better": {"hit_rate": 0.75, "false_alarms": 0.6},
    "much_better": {"hit_rate": 0.90, "false_alarms": 0.4},
}
SHOULD_PASS = {"copy": False, "equal": False, "worse": False, "better": True, "much_better": True}


def draw_model(rng: np.random.Generator, hardness: np.ndarray, fractured: np.ndarray, hit_rate: float,
               false_alarms: float) -> list[ImageMatches]:  # fmt: skip
    found = rng.random(len(hardness)) < 1 / (1 + np.exp(-(np.log(hit_rate / (1 - hit_rate)) + hardness)))
    images = []
    for index, (is_fractured, is_found) in enumerate(zip(fractured, found, strict=True)):
        hits = [rng.beta(5, 2)] if is_fractured and is_found else []
        misses = rng.uniform(0.05, 0.9, size=rng.poisson(false_alarms)).tolist()
        scores = np.array([*hits, *misses])
        matched = np.array([True] * len(hits) + [False] * len(misses), dtype=bool)
        order = np.argsort(-scores, kind="mergesort")
        images.append(ImageMatches(index, int(is_fractured), scores[order], matched[order]))
    return images


def trial(rng: np.random.Generator, size: int, scenario: str, rule: GateRule) -> bool:
    hardness = rng.normal(size=size)
    fractured = np.arange(size) % 2 == 0
    served = draw_model(rng, hardness, fractured, **SERVED)
    parameters = SCENARIOS[scenario]
    candidate = served if parameters is None else draw_model(rng, hardness, fractured, **parameters)
    return quality_gate(candidate, served, rule).passed


def wilson(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion (Wilson, JASA 22, 1927)."""
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * np.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return max(0.0, centre - half), min(1.0, centre + half)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--sizes", type=int, nargs="+", default=[20, 40, 80, 160])
    parser.add_argument("--resamples", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gate_error_rates.json"))
    args = parser.parse_args()

    rule = GateRule(min_images=1, min_fractures=1, resamples=args.resamples)  # size limits aside: the rule
    rng = np.random.default_rng(args.seed)
    rows, started = [], time.monotonic()
    for size in args.sizes:
        for scenario in SCENARIOS:
            accepted = sum(trial(rng, size, scenario, rule) for _ in range(args.trials))
            low, high = wilson(accepted, args.trials)
            error = accepted if not SHOULD_PASS[scenario] else args.trials - accepted
            rows.append({"validation_images": size, "scenario": scenario, "should_pass": SHOULD_PASS[scenario],
                         "accept_rate": accepted / args.trials, "accept_rate_95": [low, high],
                         "error_rate": error / args.trials, "trials": args.trials})  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    result = {"rule": rule.__dict__ | {"min_images": "as configured", "min_fractures": "as configured"},
              "served_model": SERVED, "scenarios": SCENARIOS, "rows": rows,
              "seconds": time.monotonic() - started}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print("| validation X-rays | " + " | ".join(SCENARIOS) + " |")
    print("|---|" + "---|" * len(SCENARIOS))
    for size in args.sizes:
        cells = [f"{row['accept_rate']:.0%} [{row['accept_rate_95'][0]:.0%}, {row['accept_rate_95'][1]:.0%}]"
                 for row in rows if row["validation_images"] == size]  # fmt: skip
        print(f"| {size} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
