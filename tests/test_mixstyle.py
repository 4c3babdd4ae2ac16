"""MixStyle (bmc.train.mixstyle): mixes feature statistics in training only, never at evaluation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bmc.train.mixstyle import attach_mixstyle, mix_statistics


def test_mix_statistics_moves_each_image_towards_a_partners_statistics() -> None:
    torch.manual_seed(0)
    tokens = torch.cat([torch.randn(1, 17, 8) * 0.5 + 3.0, torch.randn(1, 17, 8) * 2.0 - 1.0])
    mixed = mix_statistics(tokens, alpha=1e6)  # mix weight 0.5: halfway between the two images' statistics
    means = mixed[:, 1:].mean(dim=1).mean(dim=1)
    assert torch.allclose(means[0], means[1], atol=0.05)  # both now share the average of the two means (1.0)
    assert means[0].item() == pytest.approx(1.0, abs=0.1)
    single = torch.randn(1, 5, 4)
    assert torch.equal(mix_statistics(single), single)  # one image: nobody to mix with


def test_attached_mixstyle_acts_in_training_only(tiny_model_dir: Path) -> None:
    from bmc.model import load_classifier

    model, _ = load_classifier(str(tiny_model_dir))
    x = torch.randn(4, 3, 56, 56)
    model.eval()
    before = model(pixel_values=x).logits
    handles = attach_mixstyle(model, [0], p=1.0)
    assert torch.equal(model(pixel_values=x).logits, before)  # evaluation and serving: the model as it is
    model.train()
    assert not torch.allclose(model(pixel_values=x).logits, before)
    for handle in handles:
        handle.remove()
    model.eval()
    assert torch.equal(model(pixel_values=x).logits, before)
    with pytest.raises(ValueError, match="blocks 0-1"):
        attach_mixstyle(model, [5])


def test_mixstyle_arguments_are_checked(tmp_path: Path) -> None:
    from bmc.train.arguments import ModelArguments

    with pytest.raises(ValueError, match="--mixstyle_p 1.5"):
        ModelArguments(model_name_or_path=str(tmp_path), mixstyle_p=1.5)
