"""Attribution maps: *why* the model chose a class, overlaid on the cell.

Methods (Captum where Captum has one):

* **Integrated Gradients** (optionally smoothed with NoiseTunnel): pixel-level evidence, summed
  along a straight path from a blank image; the path steps are evaluated in batches
  (``internal_batch_size``) so the default costs one batched forward/backward pass.
* **Grad-CAM**: class-weighted activations of a late layer. For a ViT the patch tokens of a late
  block (:data:`GRADCAM_VIT_LAYER`) are reshaped into their h×w grid; for a ConvNeXt, the last stage.
* **Occlusion**: how much the class score drops when a square of the image is greyed out.
* **Attention rollout** (ViT/DINOv2 only; Abnar & Zuidema 2020): attention flow from the CLS
  token to each patch through all layers. It shows where the model *looks*, for any class.

Every map is returned normalised to [0, 1] at the input image's size, with one sentence on how to
read it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import cv2
import numpy as np
import torch
from captum.attr import IntegratedGradients, LayerGradCam, NoiseTunnel, Occlusion
from PIL import Image
from torch import nn

if TYPE_CHECKING:
    from transformers import PreTrainedModel

from bmc.transforms import preprocess, processor_size

IG_STEPS = 16  # path steps of Integrated Gradients, evaluated as one batch (see bench/results.json for the cost)
GRADCAM_VIT_LAYER = -4
"""The ViT block whose patch tokens Grad-CAM reads. The last block's output feeds only the pooled
head (flat maps); on the 13-class model the block before it gave an empty map (no positive
evidence) for 2–4 of 24 marrow cells, the fourth from the end for 0–1, with the map on the cell
as often or more (24 cells each of Matek images 1–4 and 301–304 of six classes)."""
NO_EVIDENCE = (
    "This method found no positive evidence for the chosen class at the layer it reads, so the map is empty; "
    "try Occlusion, which needs no layer."
)


@dataclass
class Attribution:
    """A normalised heat map (H×W in [0, 1]) for one image and class, and how to read it."""

    method: str
    target: int
    heatmap: np.ndarray
    how_to_read: str


class _Grid(nn.Module):
    """Identity module called on the (N, C, h, w) grid of ViT patch tokens, so that Captum's
    LayerGradCam can hook a conv-like activation inside a transformer."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def is_vit(model: nn.Module) -> bool:
    return getattr(model.config, "model_type", "") in ("dinov2", "vit", "deit")


def _vit_layers(model: nn.Module) -> nn.ModuleList:
    backbone = getattr(model, cast("PreTrainedModel", model).base_model_prefix)
    return backbone.encoder.layer


class Explainer:
    """Attribution maps for one loaded classifier (``model`` in eval mode, with its processor)."""

    def __init__(self, model: nn.Module, processor: Any, use_denoise: bool = False):
        self.model = model.eval()
        self.processor = processor
        self.use_denoise = use_denoise
        self.size = processor_size(processor)
        self._grid = _Grid()

    def _logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).logits

    def pixels(self, image: Image.Image) -> torch.Tensor:
        return torch.from_numpy(preprocess([image], self.processor, self.use_denoise))

    def explain(self, image: Image.Image, method: str, target: int | None = None, **options: Any) -> Attribution:
        """Dispatch to one method; ``target`` defaults to the predicted class."""
        x = self.pixels(image)
        if target is None:
            with torch.inference_mode():
                target = int(self._logits(x).argmax(-1))
        entry = get_method(method)
        if entry.vit_only and not is_vit(self.model):
            raise ValueError(f"{method} needs a vision transformer; choose one of {', '.join(self.methods())}")
        accepted = {k: v for k, v in options.items() if k in entry.options}  # other methods' options are ignored
        with parameters_frozen(self.model):
            raw = entry.attribute(self, x, target, **accepted)
        heatmap = _to_image_size(raw, image.size)
        return Attribution(method, target, heatmap, entry.how_to_read if heatmap.max() > 0 else NO_EVIDENCE)

    def methods(self) -> tuple[str, ...]:
        """Names of the methods available for this architecture, in the order the app offers them."""
        return tuple(name for name, m in METHODS.items() if is_vit(self.model) or not m.vit_only)

    # ----------------------------------------------------------------- methods

    def integrated_gradients(
        self,
        x: torch.Tensor,
        target: int,
        n_steps: int = IG_STEPS,
        noise_tunnel: bool = False,
        nt_samples: int = 4,
        internal_batch_size: int = IG_STEPS,
    ) -> np.ndarray:
        ig = IntegratedGradients(self._logits)
        baseline = torch.zeros_like(x)  # the normalised mean colour: an empty slide, not black
        if noise_tunnel:
            attr = NoiseTunnel(ig).attribute(
                x,
                nt_type="smoothgrad",
                nt_samples=nt_samples,
                stdevs=0.15,
                target=target,
                baselines=baseline,
                n_steps=n_steps,
                internal_batch_size=internal_batch_size,
                nt_samples_batch_size=1,
            )
        else:
            attr = ig.attribute(x, baselines=baseline, target=target, n_steps=n_steps, internal_batch_size=internal_batch_size)
        heat = attr.detach()[0].abs().sum(0).numpy()
        return cv2.GaussianBlur(heat, (0, 0), sigmaX=max(1.0, self.size / 112))  # IG is speckled: smooth a little

    def grad_cam(self, x: torch.Tensor, target: int) -> np.ndarray:
        if is_vit(self.model):
            with self._vit_grid_hook(layer_index=GRADCAM_VIT_LAYER):
                attr = LayerGradCam(self._logits, self._grid).attribute(x, target=target, relu_attributions=True)
        else:
            attr = LayerGradCam(self._logits, self._last_conv_stage()).attribute(x, target=target, relu_attributions=True)
        return attr.detach()[0, 0].numpy()

    def occlusion(
        self, x: torch.Tensor, target: int, window_fraction: float = 1 / 7, stride_fraction: float = 1 / 10, batch: int = 32
    ) -> np.ndarray:
        win = max(2, int(round(self.size * window_fraction)))
        stride = max(1, int(round(self.size * stride_fraction)))
        attr = Occlusion(self._logits).attribute(
            x, sliding_window_shapes=(3, win, win), strides=(3, stride, stride), target=target, baselines=0.0, perturbations_per_eval=batch
        )
        return np.clip(attr.detach()[0].mean(0).numpy(), 0, None)

    def attention_rollout(self, x: torch.Tensor, target: int | None = None, discard_ratio: float = 0.0) -> np.ndarray:
        if not is_vit(self.model):
            raise ValueError("attention rollout needs a vision transformer (ViT/DINOv2)")
        with _eager_attention(self.model), torch.inference_mode():
            attentions = self.model(pixel_values=x, output_attentions=True).attentions
        tokens = attentions[0].shape[-1]
        rollout = torch.eye(tokens)
        for att in attentions:
            a = att[0].mean(0)  # average heads
            if discard_ratio:
                flat = a.flatten()
                flat[flat.argsort()[: int(flat.numel() * discard_ratio)]] = 0
            a = a + torch.eye(tokens)
            rollout = (a / a.sum(-1, keepdim=True)) @ rollout
        cls_to_patches = rollout[0, 1:]
        side = int(round(cls_to_patches.numel() ** 0.5))
        return cls_to_patches.reshape(side, side).numpy()

    # ----------------------------------------------------------------- helpers

    @contextmanager
    def _vit_grid_hook(self, layer_index: int) -> Iterator[None]:
        """Route the patch tokens leaving one ViT block through ``self._grid`` as an (N, C, h, w) grid."""
        grid_module = self._grid

        def hook(_module: nn.Module, _inputs: Any, output: Any) -> Any:
            hidden = output[0] if isinstance(output, tuple) else output
            cls, patches = hidden[:, :1], hidden[:, 1:]
            n, t, c = patches.shape
            side = int(round(t**0.5))
            grid = grid_module(patches.transpose(1, 2).reshape(n, c, side, side))
            hidden = torch.cat([cls, grid.reshape(n, c, t).transpose(1, 2)], dim=1)
            return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

        layers = _vit_layers(self.model)
        layer = layers[max(layer_index, -len(layers))]  # a shallow model: its first block
        handle = layer.register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    def _last_conv_stage(self) -> nn.Module:
        backbone = getattr(self.model, cast("PreTrainedModel", self.model).base_model_prefix)
        stages = getattr(getattr(backbone, "encoder", backbone), "stages", None)
        if stages is None:
            raise ValueError(f"Grad-CAM does not know where the last convolutional stage of {type(self.model).__name__} is")
        return stages[-1]


@dataclass(frozen=True)
class Method:
    """One attribution method: what computes it, how to read its map, and what it needs."""

    name: str
    attribute: Callable[..., np.ndarray]
    """``attribute(explainer, pixel_values, target, **options)`` → raw map (any resolution)."""
    how_to_read: str
    vit_only: bool = False
    class_independent: bool = False
    """The map is the same whichever class is asked for (it shows where the model looks)."""
    options: tuple[str, ...] = ()


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "Grad-CAM",
            Explainer.grad_cam,
            "Warm regions are the parts of the cell whose late-layer features raised the score of the chosen class; "
            "coarse (one value per image patch).",
        ),
        Method(
            "Integrated Gradients",
            Explainer.integrated_gradients,
            "Bright pixels are those whose colour most increased the chosen class's score compared with a blank image; "
            "fine-grained but speckled.",
            options=("noise_tunnel", "n_steps"),
        ),
        Method(
            "Occlusion",
            Explainer.occlusion,
            "Warm regions are where covering the image with a grey square lowers the chosen class's score the most: "
            "the evidence the model cannot do without.",
            options=("window_fraction", "stride_fraction"),
        ),
        Method(
            "Attention rollout",
            Explainer.attention_rollout,
            "Warm patches are where the transformer's attention flows from its summary token, whatever the class: "
            "where the model looks, not why.",
            vit_only=True,
            class_independent=True,
            options=("discard_ratio",),
        ),
    )
}
"""The one table of attribution methods: the app, the benchmark and the tests read it (name → entry)."""


def get_method(name: str) -> Method:
    """The registry entry of a method, or a ValueError listing the known ones."""
    if name not in METHODS:
        raise ValueError(f"unknown attribution method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]


@contextmanager
def parameters_frozen(model: nn.Module) -> Iterator[None]:
    """Attribution needs gradients with respect to the input or one layer, never the weights:
    freezing the weights skips their gradients and roughly halves the cost of a backward pass."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


@contextmanager
def _eager_attention(model: nn.Module) -> Iterator[None]:
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


def _to_image_size(heat: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    heat = np.nan_to_num(np.asarray(heat, dtype=np.float32))
    heat = cv2.resize(heat, size, interpolation=cv2.INTER_CUBIC if min(heat.shape) < 32 else cv2.INTER_LINEAR)
    heat = np.clip(heat, 0, None)
    peak = float(heat.max())
    return heat / peak if peak > 0 else heat


def overlay(image: Image.Image, heatmap: np.ndarray, opacity: float = 0.5) -> Image.Image:
    """Blend a [0, 1] heat map (OpenCV JET colormap) over the cell image."""
    rgb = np.asarray(image.convert("RGB"))
    colour = cv2.applyColorMap((np.clip(heatmap, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)
    colour = cv2.cvtColor(colour, cv2.COLOR_BGR2RGB)
    blended = cv2.addWeighted(rgb, 1 - float(opacity), colour, float(opacity), 0)
    return Image.fromarray(blended)


def centre_vs_border(heatmap: np.ndarray, centre_fraction: float = 0.5) -> tuple[float, float]:
    """Mean attribution inside the central square (``centre_fraction`` of each side) and outside it:
    a sanity measure for single-cell crops, where the evidence should sit on the centred cell."""
    h, w = heatmap.shape
    mh, mw = int(h * (1 - centre_fraction) / 2), int(w * (1 - centre_fraction) / 2)
    mask = np.zeros_like(heatmap, dtype=bool)
    mask[mh : h - mh, mw : w - mw] = True
    return float(heatmap[mask].mean()), float(heatmap[~mask].mean())
