"""Frozen batch norms folded into their convolutions compute what they computed unfolded."""

from __future__ import annotations

import copy

import pytest
import torch
from torchvision.ops import FrozenBatchNorm2d

from fracture_al.detection.model import ModelConfig, architecture, build_model
from fracture_al.detection.norm_folding import FoldedFrozenBatchNorm2d, NormFoldedConv2d, fold_frozen_norms


def conv_norm_block(channels: int, groups: int, stride: int) -> torch.nn.Sequential:
    """Conv, frozen norm with statistics far from identity, activation: torchvision's Conv2dNormActivation."""
    torch.manual_seed(0)
    norm = FrozenBatchNorm2d(channels)
    norm.weight.uniform_(0.2, 3.0)
    norm.bias.normal_()
    norm.running_mean.normal_()
    norm.running_var.uniform_(0.01, 4.0)
    conv = torch.nn.Conv2d(channels, channels, 3, stride=stride, padding=1, groups=groups, bias=False)
    return torch.nn.Sequential(conv, norm, torch.nn.ReLU6()).double()


@pytest.mark.parametrize(("groups", "stride"), [(1, 1), (1, 2), (8, 1), (8, 2)])
def test_a_folded_block_has_the_outputs_gradients_and_weights_of_the_unfolded_one(groups: int, stride: int) -> None:
    unfolded = conv_norm_block(8, groups, stride)
    folded = copy.deepcopy(unfolded)
    assert fold_frozen_norms(folded) == 1
    assert isinstance(folded[0], NormFoldedConv2d) and isinstance(folded[1], FoldedFrozenBatchNorm2d)

    x = torch.randn(2, 8, 13, 11, dtype=torch.float64)
    outputs = [block(x) for block in (unfolded, folded)]
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-10, atol=1e-10)
    assert outputs[0].abs().max() > 0.1  # the norm moved the activations: the test can tell

    for output in outputs:
        (output**2).sum().backward()
    torch.testing.assert_close(folded[0].weight.grad, unfolded[0].weight.grad, rtol=1e-10, atol=1e-10)

    unfolded_state, folded_state = unfolded.state_dict(), folded.state_dict()
    assert list(folded_state) == list(unfolded_state)
    for key, value in unfolded_state.items():
        assert torch.equal(folded_state[key], value), key


def test_only_a_bias_free_convolution_directly_before_a_frozen_norm_is_folded() -> None:
    trainable_norm = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 1, bias=False), torch.nn.BatchNorm2d(4))
    with_bias = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 1, bias=True), FrozenBatchNorm2d(4))
    apart = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 1, bias=False), torch.nn.ReLU(), FrozenBatchNorm2d(4))
    for block in (trainable_norm, with_bias, apart):
        assert fold_frozen_norms(block) == 0
        assert not any(isinstance(m, (NormFoldedConv2d, FoldedFrozenBatchNorm2d)) for m in block.modules())


def test_the_detector_is_built_folded_and_loads_weights_saved_unfolded() -> None:
    config = ModelConfig()
    folded = build_model(config).eval()
    norms = [m for m in folded.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert norms and all(type(m) is FoldedFrozenBatchNorm2d for m in norms)
    assert sum(type(m) is NormFoldedConv2d for m in folded.modules()) == len(norms)

    torch.manual_seed(1)
    unfolded = architecture(config.arch).build(config).eval()
    for module in unfolded.modules():  # statistics unlike the identity norm a fresh build has
        if isinstance(module, FrozenBatchNorm2d):
            module.running_var.uniform_(0.5, 2.0)
            module.running_mean.normal_(0.0, 0.1)
    folded.load_state_dict(unfolded.state_dict())

    images = torch.rand(1, 3, 128, 160)
    with torch.no_grad():
        expected, actual = unfolded.backbone(images), folded.backbone(images)
    assert list(actual) == list(expected)
    for level, features in expected.items():
        torch.testing.assert_close(actual[level], features, rtol=1e-4, atol=1e-5)


def test_a_copy_of_a_folded_model_applies_its_own_norms() -> None:
    model = build_model(ModelConfig())
    duplicate = copy.deepcopy(model)
    pairs = [(m, m.folded_norm) for m in duplicate.modules() if isinstance(m, NormFoldedConv2d)]
    assert pairs
    copied_modules = {id(m) for m in duplicate.modules()}
    assert all(id(norm) in copied_modules for _, norm in pairs)
