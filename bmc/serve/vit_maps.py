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


def gradient_rollout(
    model: nn.Module,
    x: torch.Tensor,
    target: int,
    last_blocks: int | None = None,
    skip_sinks: bool = False,
    contrast: bool = False,
    value_norms: bool = False,
) -> np.ndarray:
    """Chefer et al.'s rule 6: R = I; for each block R ← R + E_h[(∇A ⊙ A)⁺]·R; the CLS row over the patches.
    ``last_blocks``: accumulate over the last blocks only (the early blocks' attention is mostly local mixing
    that any image gets, whatever the model learnt). ``skip_sinks``: the attention sinks' columns
    (:func:`sink_tokens`) carry no relevance: what a sink holds is global, not the patch it sits on.
    ``contrast``: the gradient of the class's log-probability instead of its logit, so that evidence every class
    shares (the slide, red cells) cancels and what sets the class apart from the others remains.
    ``value_norms``: each column j of a head's attention also weighted by the norm of token j's value vector in that
    head (over its mean): what a token passes on is its weight times its value (Kobayashi et al. 2020, "Attention
    is not only a weight"), so a token attended to but carrying little moves less relevance."""
    values: list[torch.Tensor] = []
    projections = [value_projection(cast(nn.Module, layer)) for layer in vit_layers(model)] if value_norms else []
    hooks = [p.register_forward_hook(lambda _m, _a, out: values.append(out.detach())) for p, _ in projections]
    try:
        with eager_attention(model), torch.enable_grad():
            out = model(pixel_values=x, output_attentions=True)
            attentions = out.attentions
            score = torch.log_softmax(out.logits[0], -1)[target] if contrast else out.logits[0, target]
            grads = torch.autograd.grad(score, attentions)
    finally:
        for hook in hooks:
            hook.remove()
    tokens = attentions[0].shape[-1]
    sinks = sink_tokens(tuple(a.detach() for a in attentions)) if skip_sinks else torch.zeros(tokens, dtype=torch.bool)
    r = torch.eye(tokens)
    first = 0 if last_blocks is None else max(0, len(attentions) - last_blocks)
    for index in range(first, len(attentions)):
        weighted = (grads[index][0] * attentions[index][0]).clamp_min(0)
        if values:  # heads × tokens, broadcast over each head's rows
            weighted = weighted * head_output_norms(values[index][0], projections[index][1], weighted.shape[0])[:, None, :]
        cam = weighted.mean(0).detach()
        cam[:, sinks] = 0
        r = r + cam @ r
    return _to_grid(r[0, 1:])


def value_projection(layer: nn.Module) -> tuple[nn.Module, torch.Tensor | None]:
    """A block's value projection and its attention output projection's weight (None where the model keeps it
    elsewhere): DINOv2 in transformers ≥ 5 names them ``v_proj`` / ``o_proj``, ViT ``attention.value``."""
    attention = cast(nn.Module, layer.attention)
    if hasattr(attention, "v_proj"):
        return cast(nn.Module, attention.v_proj), cast(nn.Linear, attention.o_proj).weight.detach()
    return cast(nn.Module, attention.attention.value), None  # type: ignore[union-attr]


def head_output_norms(values: torch.Tensor, out_weight: torch.Tensor | None, heads: int) -> torch.Tensor:
    """heads × tokens: the norm of what each token passes on through each head, ‖v_j W_O,h‖ (Kobayashi et al.
    2020), or ‖v_j‖ without the output projection; divided by each head's mean over the tokens."""
    per_head = values.reshape(values.shape[0], heads, -1)  # tokens × heads × head size
    if out_weight is not None:  # each head's slice of the output projection: out × heads × head size
        per_head = torch.einsum("thd,ohd->tho", per_head, out_weight.reshape(out_weight.shape[0], heads, -1))
    norms = per_head.norm(dim=-1).T
    return norms / norms.mean(dim=1, keepdim=True)


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


def _constant_softmax_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **_: object,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager attention whose softmax weights are held constant for the backward pass (CP-LRP's attention rule)."""
    scores = torch.matmul(query, key.transpose(2, 3)) * (scaling if scaling is not None else query.size(-1) ** -0.5)
    if attention_mask is not None:
        scores = scores + attention_mask
    weights = torch.softmax(scores, dim=-1).detach()
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


def _layer_norm_constant_scale(norm: nn.LayerNorm) -> Callable[[torch.Tensor], torch.Tensor]:
    def forward(x: torch.Tensor) -> torch.Tensor:
        centred = x - x.mean(-1, keepdim=True)
        scale = (centred.pow(2).mean(-1, keepdim=True) + norm.eps).sqrt().detach()
        return centred / scale * norm.weight + norm.bias

    return forward


def _identity_rule(activation: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    def forward(x: torch.Tensor) -> torch.Tensor:
        y = activation(x)
        ratio = torch.where(x.abs() > 1e-6, y / x.where(x.abs() > 1e-6, torch.ones_like(x)), torch.full_like(x, 0.5))
        return x * ratio.detach()

    return forward


@contextmanager
def conservative_propagation(model: nn.Module) -> Iterator[None]:
    """Make gradient × input a relevance that is conserved through the transformer (CP-LRP, Ali et al. 2022,
    "XAI for Transformers: Better Explanations through Conservative Propagation"; with AttnLRP's identity rule
    for the MLP's activation, Achtibat et al. 2024): the attention weights, LayerNorm's scale and the GELU's
    gate are held constant in the backward pass, so relevance flows only through the values, the linear maps
    and the residual paths, as LRP's rules say it should."""
    from transformers import AttentionInterface

    AttentionInterface.register("bmc_constant_softmax", _constant_softmax_attention)
    hf = cast("PreTrainedModel", model)
    previous = hf.config._attn_implementation
    patched: list[nn.Module] = []
    for module in list(model.modules()):
        if isinstance(module, nn.LayerNorm):
            setattr(module, "forward", _layer_norm_constant_scale(module))  # noqa: B010 (an instance attribute, undone below)
            patched.append(module)
        elif isinstance(getattr(module, "activation_fn", None), nn.Module):
            activation = cast(nn.Module, module.activation_fn)
            setattr(activation, "forward", _identity_rule(activation.forward))  # noqa: B010
            patched.append(activation)
    hf.set_attn_implementation("bmc_constant_softmax")
    try:
        yield
    finally:
        hf.set_attn_implementation(previous)
        for module in patched:
            del module.forward  # the instance attribute: the class's forward is back


def lrp_relevance(model: nn.Module, x: torch.Tensor, target: int, level: str = "tokens") -> np.ndarray:
    """Relevance of each patch for the ``target`` logit under :func:`conservative_propagation`: gradient × input
    of the first block's input tokens (``level="tokens"``) or of the pixels (``"pixels"``), summed per patch."""
    captured: dict[str, torch.Tensor] = {}

    def keep_input(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        args[0].retain_grad()
        captured["tokens"] = args[0]

    handle = vit_layers(model)[0].register_forward_pre_hook(keep_input)
    try:
        with conservative_propagation(model), torch.enable_grad():
            pixels = x.clone().requires_grad_(True)
            logit = model(pixel_values=pixels).logits[0, target]
            logit.backward()
    finally:
        handle.remove()
    tokens = captured["tokens"]
    if pixels.grad is None or tokens.grad is None:
        raise RuntimeError("conservative LRP: no gradient reached the input (is the model frozen?)")
    if level == "pixels":
        rel = (pixels.grad * pixels)[0].sum(0).detach()
        patch = cast("PreTrainedModel", model).config.patch_size
        side = rel.shape[-1] // patch
        return rel[: side * patch, : side * patch].reshape(side, patch, side, patch).sum((1, 3)).numpy()
    return _to_grid((tokens.grad * tokens)[0].sum(-1)[1:])
