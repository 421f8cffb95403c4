"""Average the weights of detectors from one training lineage into one detector (a uniform soup:
Wortsman et al., "Model soups", ICML 2022). Over the ends of warm restarts, as the shipped model's
training stages are, it is stochastic weight averaging with a cyclic schedule (Izmailov et al.,
"Averaging Weights Leads to Wider Optima and Better Generalization", UAI 2018).

Only detectors of the same architecture and settings average; the shipped model's batch norms are
frozen, so averaging needs no pass over the data to refresh their statistics. Is the soup of the
shipped model's stages better than its last stage? (Stages come out of git history.)

    git show 070e4e4:detection/shipped/fracture_detector.pt > /tmp/stage1.pt   # and ac89b8a, 1d0246b
    python -m benchmarks.weight_soup --out /tmp/soup123.pt /tmp/stage1.pt /tmp/stage2.pt /tmp/stage3.pt
    python -m benchmarks.compare_detectors --a detection/shipped/fracture_detector.pt --b /tmp/soup123.pt

(benchmarks/reported/shipped_model_stage_soups.json: no soup was ahead on val, so none is shipped.)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def weight_soup(files: list[Path]) -> dict:
    """The saved detector whose every floating-point weight is the mean of ``files``' (in float32,
    stored in the first file's precision); other tensors (counters) are the first file's."""
    saved = [torch.load(path, map_location="cpu", weights_only=True) for path in files]
    first = saved[0]
    for path, other in zip(files[1:], saved[1:], strict=True):
        if other["model_config"] != first["model_config"] or other["model"].keys() != first["model"].keys():
            raise SystemExit(f"{path} is not the same detector as {files[0]}: only one lineage's weights average")
    averaged = {
        name: torch.stack([s["model"][name].float() for s in saved]).mean(0).to(tensor.dtype)
        if tensor.is_floating_point() else tensor
        for name, tensor in first["model"].items()
    }  # fmt: skip
    return {**first, "model": averaged}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", type=Path, nargs="+", help="Saved detectors of one architecture and settings.")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if len(args.files) < 2:
        parser.error("a soup needs at least two detectors")
    torch.save(weight_soup(args.files), args.out)
    print(f"{args.out}: the mean of {len(args.files)} detectors")


if __name__ == "__main__":
    main()
