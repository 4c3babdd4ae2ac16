"""MixStyle for a ViT (Zhou et al., "Domain Generalization with MixStyle", ICLR 2021), training only.

A laboratory's stain and camera show up in a network's early features as per-channel statistics (mean and spread),
while the cell's shape is in how the features vary across the image. MixStyle swaps part of those statistics between
images of a batch during training: after each chosen block, every image's patch-token features are standardised per
channel and re-scaled with a mix of its own and a random other image's mean and spread (mix weight from Beta(0.1,
0.1)). The batches mix both training laboratories, so many partners are of the other lab: the channel-statistics
swap between sources that issue 33 names, done on the features rather than on the pixels (where a linear colour swap
is undone by the colour canonicalisation before the model sees it).

Forward hooks that act only while the model is in training mode: evaluation, export and serving see the model as
it is, and the saved weights are an ordinary model's (nothing to load at inference, no change to ``pipeline()``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

MIXSTYLE_P = 0.5
"""Share of training batches mixed at each chosen block (the paper's 0.5)."""
MIXSTYLE_ALPHA = 0.1
"""Beta(α, α) of the mix weight: most mixes lean on one image's statistics (the paper's 0.1)."""


def mix_statistics(tokens: torch.Tensor, alpha: float = MIXSTYLE_ALPHA, eps: float = 1e-6) -> torch.Tensor:
    """``tokens`` (batch, tokens, channels), the first token the class token: every image's tokens standardised by
    its patch tokens' per-channel mean and spread, then scaled by a mix of its own and a random partner's. The
    statistics are held fixed in the backward pass, as in the paper."""
    batch = tokens.shape[0]
    if batch < 2:
        return tokens
    patches = tokens[:, 1:]
    mean = patches.mean(dim=1, keepdim=True).detach()
    std = (patches.var(dim=1, keepdim=True) + eps).sqrt().detach()
    weight = torch.distributions.Beta(alpha, alpha).sample((batch, 1, 1)).to(tokens.device, tokens.dtype)
    partner = torch.randperm(batch, device=tokens.device)
    mixed_mean = weight * mean + (1 - weight) * mean[partner]
    mixed_std = weight * std + (1 - weight) * std[partner]
    return (tokens - mean) / std * mixed_std + mixed_mean


def encoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The transformer blocks of a bmc classifier (DINOv2 or ViT from transformers)."""
    for name in ("dinov2", "vit"):
        backbone = getattr(model, name, None)
        if backbone is not None:
            return backbone.encoder.layer
    raise ValueError(f"MixStyle: {type(model).__name__} has no ViT encoder blocks (DINOv2 or ViT models only)")


def attach_mixstyle(model: nn.Module, blocks: list[int], p: float = MIXSTYLE_P) -> list[Any]:
    """Hook MixStyle onto the outputs of ``blocks`` (0-based indices); returns the hook handles (``.remove()``)."""
    layers = encoder_blocks(model)
    bad = [b for b in blocks if not 0 <= b < len(layers)]
    if bad:
        raise ValueError(f"--mixstyle_blocks {bad}: the model has blocks 0-{len(layers) - 1}")

    def hook(module: nn.Module, _inputs: Any, output: Any) -> Any:
        if not module.training or torch.rand(()) >= p:
            return None
        if isinstance(output, tuple):
            return (mix_statistics(output[0]), *output[1:])
        return mix_statistics(output)

    return [layers[b].register_forward_hook(hook) for b in blocks]
