"""Attribution maps that read a vision transformer's attention (ViT/DINOv2 only).

* :func:`attention_rollout` (Abnar & Zuidema 2020): attention flow from the summary (CLS) token to each
  patch through every block, heads averaged. Class-independent: where the model looks, not why.
  DINOv2 without registers parks attention on a few background tokens (Darcet et al. 2024, "Vision
  Transformers Need Registers"); :func:`sink_tokens` finds them — patches that every query attends to
  far more than to the typical patch — and the rollout can route around them.
* :func:`gradient_rollout` (Chefer, Gur & Wolf 2021, "Generic Attention-model Explainability"): each
  block's attention weighted by the gradient of the class logit with respect to it, heads averaged
  over the positive part, accumulated as R ← R + Ā·R. Class-specific and one forward/backward pass.
* :func:`shifted` runs a patch-grid method on the input moved by half a patch down, right and both, and
  averages the four maps back in place: the same evidence at half the patch size (7 px instead of 14). A
  one-value-per-patch map cannot follow a cell's edge; a patch that straddles it lends the background half its
  value. Each of the four maps is the model's own map of a slightly moved picture (a ViT has no translation
  invariance below its patch size), so the average adds no assumption about where the cell is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, cast

import cv2
import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from transformers import PreTrainedModel

SINK_FACTOR = 5.0
"""A patch that receives more than this many times the median patch's attention (averaged over queries,
heads and blocks) is an attention sink."""


def is_vit(model: nn.Module) -> bool:
    return getattr(getattr(model, "config", None), "model_type", "") in ("dinov2", "vit", "deit")


def vit_layers(model: nn.Module) -> nn.ModuleList:
    backbone = getattr(model, cast("PreTrainedModel", model).base_model_prefix)
    return backbone.encoder.layer


@contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """Attention weights are only returned by the eager implementation; switch for one call."""
    model = cast("PreTrainedModel", model)  # a transformers classifier: it has a config and attention implementations
    previous = model.config._attn_implementation
    if previous != "eager":
        model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if previous != "eager":
            model.set_attn_implementation(previous)


def _to_grid(cls_row: torch.Tensor) -> np.ndarray:
    side = int(round(cls_row.numel() ** 0.5))
    return cls_row.detach().reshape(side, side).float().numpy()


def sink_tokens(attentions: tuple[torch.Tensor, ...], factor: float = SINK_FACTOR) -> torch.Tensor:
    """Token mask (T,) of the patches that soak up attention from every query (never the CLS token)."""
    received = torch.stack([a[0].mean(0)[1:].mean(0) for a in attentions]).mean(0)  # per token, from patch queries
    patches = received[1:]
    sinks = patches > factor * patches.median()
    return torch.cat([torch.zeros(1, dtype=torch.bool), sinks])


def attention_rollout(model: nn.Module, x: torch.Tensor, discard_ratio: float = 0.0, skip_sinks: bool = True) -> np.ndarray:
    """Rollout of the head-averaged attention, the residual as an identity; with ``skip_sinks`` the
    attention sinks' columns are zeroed before each row is renormalised, so their share flows to the
    patches the model reads."""
    with eager_attention(model), torch.inference_mode():
        attentions = model(pixel_values=x, output_attentions=True).attentions
    tokens = attentions[0].shape[-1]
    sinks = sink_tokens(attentions) if skip_sinks else torch.zeros(tokens, dtype=torch.bool)
    rollout = torch.eye(tokens)
    for att in attentions:
        a = att[0].mean(0).clone()
        a[:, sinks] = 0
        if discard_ratio:
            flat = a.flatten()
            flat[flat.argsort()[: int(flat.numel() * discard_ratio)]] = 0
        a = a / a.sum(-1, keepdim=True).clamp_min(1e-12) + torch.eye(tokens)
        rollout = (a / a.sum(-1, keepdim=True)) @ rollout
    return _to_grid(rollout[0, 1:])


def gradient_rollout(model: nn.Module, x: torch.Tensor, target: int, last_blocks: int | None = None) -> np.ndarray:
    """Chefer et al.'s rule 6: R = I; for each block R ← R + E_h[(∇A ⊙ A)⁺]·R; the CLS row over the patches.
    ``last_blocks``: accumulate over the last blocks only (the early blocks' attention is mostly local mixing
    that any image gets, whatever the model learnt)."""
    with eager_attention(model), torch.enable_grad():
        out = model(pixel_values=x, output_attentions=True)
        attentions = out.attentions
        grads = torch.autograd.grad(out.logits[0, target], attentions)
    tokens = attentions[0].shape[-1]
    r = torch.eye(tokens)
    first = 0 if last_blocks is None else max(0, len(attentions) - last_blocks)
    for att, grad in zip(attentions[first:], grads[first:]):
        cam = (grad[0] * att[0]).clamp_min(0).mean(0).detach()
        r = r + cam @ r
    return _to_grid(r[0, 1:])


HALF_PATCH_SHIFTS = ((0, 0), (1, 0), (0, 1), (1, 1))
"""Shifts of :func:`shifted`, in half patches (down, right)."""


def shifted(grid_map: Callable[[torch.Tensor], np.ndarray], x: torch.Tensor, patch: int) -> np.ndarray:
    """The average of ``grid_map`` (a g×g map of a 1×C×H×W input) over :data:`HALF_PATCH_SHIFTS`, on a 2g×2g grid.

    Each shift pads the input's top/left edge by reflection and drops as much at the bottom/right, so the model
    sees the same picture moved by half a patch; its map, expanded to pixels and moved back, covers the original
    frame (the few pixels it no longer sees take the nearest value)."""
    half = patch // 2
    size = x.shape[-1]
    total = np.zeros((size, size), np.float32)
    for dy, dx in HALF_PATCH_SHIFTS:
        top, left = dy * half, dx * half
        moved = torch.nn.functional.pad(x, (left, 0, top, 0), mode="reflect")[..., :size, :size] if top or left else x
        grid = grid_map(moved)
        pixels = np.kron(grid, np.ones((patch, patch), np.float32))[:size, :size]
        back = np.pad(pixels[top:, left:], ((0, top), (0, left)), mode="edge")
        total += back
    side = 2 * (-(-size // patch))
    return cv2.resize(total / len(HALF_PATCH_SHIFTS), (side, side), interpolation=cv2.INTER_AREA)
