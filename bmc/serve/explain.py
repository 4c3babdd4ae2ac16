"""Attribution maps: *why* the model chose a class, overlaid on the cell.

Methods (Captum where Captum has one; faithfulness of each measured by ``bench/attribution.py``, see
docs/explanations.md):

* **Gradient-weighted rollout** (ViT only; Chefer et al. 2021): attention weighted by its gradient for the
  class, accumulated through the top half of the blocks (:mod:`bmc.serve.vit_maps`), averaged over four half-patch
  shifts of the input (7-px detail). Four forward/backward passes.
* **Grad-CAM**: class-weighted activations of a late layer. For a ViT the patch tokens of one block
  (:data:`GRADCAM_VIT_LAYER`) are reshaped into their h×w grid; for a ConvNeXt, the last stage.
* **Integrated Gradients** (optionally smoothed with NoiseTunnel): pixel-level evidence summed along a
  straight path from a heavily blurred copy of the cell (an in-distribution "no detail" image, not a
  flat colour the model never saw); the path steps run in one batch.
* **Occlusion**: how much the class logit drops when one 14-px patch of the model's input grid is removed
  and filled from its surroundings (:func:`bmc.serve.faithfulness.patch_drops`).
* **Attention rollout** (ViT only; Abnar & Zuidema 2020): attention flow from the CLS token to each patch,
  routed around DINOv2's attention-sink tokens. Where the model *looks*, for any class.

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
from captum.attr import IntegratedGradients, LayerGradCam, NoiseTunnel
from PIL import Image
from torch import nn

if TYPE_CHECKING:
    from transformers import PreTrainedModel

from bmc.images import slide_colour
from bmc.model_folder import FolderSettings
from bmc.serve import faithfulness, vit_maps
from bmc.serve.vit_maps import is_vit, vit_layers
from bmc.transforms import preprocess, processor_size

ROLLOUT_BLOCKS = 6
"""Gradient-weighted rollout accumulates over the last 6 of the 12 blocks: over all 12, the lower blocks' attention
(the image's layout, whatever the model learnt) carried the map, and on PBC's validation cells it stayed correlated
with the map of a model whose top half was randomised (Spearman 0.33; over the last 6: 0.02)."""
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


class Explainer:
    """Attribution maps for one loaded classifier (``model`` in eval mode, with its processor)."""

    def __init__(self, model: nn.Module, processor: Any, use_denoise: bool = False):
        self.model = model.eval()
        self.processor = processor
        self.use_denoise = use_denoise
        self.size = processor_size(processor)
        self.temperature = FolderSettings.from_config(getattr(model, "config", None)).temperature
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
        heatmap = _to_image_size(self.raw_map(x, method, target, **options), image.size)
        return Attribution(method, target, heatmap, get_method(method).how_to_read if heatmap.max() > 0 else NO_EVIDENCE)

    def raw_map(self, x: torch.Tensor, method: str, target: int, **options: Any) -> np.ndarray:
        """One method's map for the preprocessed input ``x`` (1×C×H×W), at the method's own resolution."""
        entry = get_method(method)
        if entry.vit_only and not is_vit(self.model):
            raise ValueError(f"{method} needs a vision transformer; choose one of {', '.join(self.methods())}")
        accepted = {k: v for k, v in options.items() if k in entry.options}  # other methods' options are ignored
        with parameters_frozen(self.model):
            return entry.attribute(self, x, target, **accepted)

    def evidence(self, image: Image.Image, attribution: Attribution, seed: int = 0) -> faithfulness.Evidence:
        """What removing the image regions this map marks does to the class probability (one batched pass)."""
        x = self.pixels(image)[0].numpy()
        return faithfulness.evidence(self._logits, x, attribution.target, attribution.heatmap, temperature=self.temperature, seed=seed)

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
        baseline: str = "blur",
    ) -> np.ndarray:
        ig = IntegratedGradients(self._logits)
        # "blur": the cell without its detail, in distribution, unlike the flat mean colour ("zero", kept to compare);
        # "slide": an empty slide (the border's colour), so pixels of plain background carry no attribution at all
        if baseline not in IG_BASELINES:
            raise ValueError(f"unknown Integrated Gradients baseline {baseline!r}; choose one of {', '.join(IG_BASELINES)}")
        start = IG_BASELINES[baseline](x)
        if noise_tunnel:
            attr = NoiseTunnel(ig).attribute(
                x,
                nt_type="smoothgrad",
                nt_samples=nt_samples,
                stdevs=0.15,
                target=target,
                baselines=start,
                n_steps=n_steps,
                internal_batch_size=internal_batch_size,
                nt_samples_batch_size=1,
            )
        else:
            attr = ig.attribute(x, baselines=start, target=target, n_steps=n_steps, internal_batch_size=internal_batch_size)
        heat = attr.detach()[0].sum(0).numpy()  # signed: evidence for the class, not any change
        return cv2.GaussianBlur(heat, (0, 0), sigmaX=max(1.0, self.size / 112))  # IG is speckled: smooth a little

    def grad_cam(self, x: torch.Tensor, target: int, layer: int | None = None) -> np.ndarray:
        if is_vit(self.model):
            with self._vit_grid_hook(layer_index=GRADCAM_VIT_LAYER if layer is None else layer):
                attr = LayerGradCam(self._logits, self._grid).attribute(x, target=target, relu_attributions=True)
        else:
            attr = LayerGradCam(self._logits, self._last_conv_stage()).attribute(x, target=target, relu_attributions=True)
        return attr.detach()[0, 0].numpy()

    def occlusion(self, x: torch.Tensor, target: int, first_order: bool = False, **estimate: Any) -> np.ndarray:
        """The measured drop of the class logit per removed patch (one pass per patch), positive part. ``first_order``:
        its one-pass estimate instead (:func:`bmc.serve.faithfulness.first_order_drops`, ``estimate`` its options);
        measured, not offered in the app (docs/explanations.md)."""
        if first_order:
            return faithfulness.first_order_drops(self._logits, x, target, **estimate)
        return np.clip(faithfulness.patch_drops(self._logits, x[0].numpy(), target), 0, None)

    def attention_rollout(
        self, x: torch.Tensor, target: int | None = None, discard_ratio: float = 0.0, skip_sinks: bool = True
    ) -> np.ndarray:
        if not is_vit(self.model):
            raise ValueError("attention rollout needs a vision transformer (ViT/DINOv2)")
        return vit_maps.attention_rollout(self.model, x, discard_ratio, skip_sinks)

    def gradient_rollout(
        self,
        x: torch.Tensor,
        target: int,
        last_blocks: int | None = ROLLOUT_BLOCKS,
        half_patch: bool = True,
        skip_sinks: bool = False,
        contrast: bool = False,
        slide_reference: bool = True,
        value_norms: bool = False,
    ) -> np.ndarray:
        """Chefer et al.'s rollout (:func:`bmc.serve.vit_maps.gradient_rollout`) over the last ``last_blocks`` blocks
        (None: all); ``half_patch``: averaged over half-patch shifts of the input (:func:`bmc.serve.vit_maps.shifted`),
        7-px detail for four passes. ``slide_reference``: minus the same map of an empty slide (:func:`empty_slide`,
        one more pass), so the map's zero is what the rollout gives where there is no cell (the default since
        2026-12-07: more of the map on the cell at the same faithfulness). The defaults were chosen on validation
        cells (docs/explanations.md)."""

        def one(pixels: torch.Tensor) -> np.ndarray:
            moved = pixels.clone().requires_grad_(True)
            return vit_maps.gradient_rollout(self.model, moved, target, last_blocks, skip_sinks, contrast, value_norms)

        heat = vit_maps.shifted(one, x, faithfulness.PATCH) if half_patch else one(x)
        if slide_reference:
            grid = one(empty_slide(x))  # a flat image looks the same shifted: one pass stands for all four
            heat = heat - (vit_maps.shifted(lambda _moved: grid, x, faithfulness.PATCH) if half_patch else grid)
        return heat

    def conservative_lrp(self, x: torch.Tensor, target: int, level: str = "tokens", half_patch: bool = True) -> np.ndarray:
        """Relevance under conservative propagation (:func:`bmc.serve.vit_maps.lrp_relevance`), positive part;
        ``half_patch`` as in :meth:`gradient_rollout`."""
        if not is_vit(self.model):
            raise ValueError("conservative LRP needs a vision transformer (ViT/DINOv2)")

        def one(pixels: torch.Tensor) -> np.ndarray:
            return np.clip(vit_maps.lrp_relevance(self.model, pixels, target, level), 0, None)

        return vit_maps.shifted(one, x, faithfulness.PATCH) if half_patch else one(x)

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

        layers = vit_layers(self.model)
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
            "Gradient-weighted rollout",
            Explainer.gradient_rollout,
            "Warm regions are where the attention that raised the chosen class's score flows from, through the top "
            "half of the blocks (attention weighted by its gradient), above what an empty slide gets; averaged over four "
            "half-patch shifts, 7-px detail.",
            vit_only=True,
            options=("last_blocks", "half_patch", "skip_sinks", "contrast", "slide_reference", "value_norms"),
        ),
        Method(
            "Conservative LRP",
            Explainer.conservative_lrp,
            "Warm regions hold the relevance for the chosen class's score, propagated back through the transformer "
            "with attention, normalisation and activation gates held fixed so that it is conserved (CP-LRP); "
            "averaged over four half-patch shifts, 7-px detail.",
            vit_only=True,
            options=("level", "half_patch"),
        ),
        Method(
            "Grad-CAM",
            Explainer.grad_cam,
            "Warm regions are the parts of the cell whose late-layer features raised the score of the chosen class; "
            "coarse (one value per image patch).",
            options=("layer",),
        ),
        Method(
            "Integrated Gradients",
            Explainer.integrated_gradients,
            "Bright pixels are those whose colour most raised the chosen class's score compared with a blurred copy "
            "of the cell; fine-grained but speckled.",
            options=("noise_tunnel", "n_steps", "baseline"),
        ),
        Method(
            "Occlusion",
            Explainer.occlusion,
            "Warm patches are those whose removal (filled in from their surroundings) lowers the chosen class's score "
            "the most: the evidence the model cannot do without. One pass per 14-px patch: slow.",
            options=("first_order", "samples", "noise"),
        ),
        Method(
            "Attention rollout",
            Explainer.attention_rollout,
            "Warm patches are where the transformer's attention flows from its summary token, whatever the class: "
            "where the model looks, not why.",
            vit_only=True,
            class_independent=True,
            options=("discard_ratio", "skip_sinks"),
        ),
    )
}
"""The one table of attribution methods: the app, the benchmark and the tests read it (name → entry)."""
DEFAULT_METHOD = "Gradient-weighted rollout"
"""The app's first choice: the method that passes the randomisation check, beats the centre prior on
faithfulness and takes under a second (docs/explanations.md); a non-ViT model falls back to Grad-CAM."""


def default_method(explainer: Explainer) -> str:
    """:data:`DEFAULT_METHOD` where the model offers it, else the first method it offers."""
    methods = explainer.methods()
    return DEFAULT_METHOD if DEFAULT_METHOD in methods else methods[0]


def blurred(x: torch.Tensor, patch: int = faithfulness.PATCH) -> torch.Tensor:
    """The input with its detail blurred away (sigma of one patch): colours and layout kept, morphology gone."""
    img = x[0].permute(1, 2, 0).numpy()
    return torch.from_numpy(cv2.GaussianBlur(img, (0, 0), float(patch)).transpose(2, 0, 1).copy())[None]


def empty_slide(x: torch.Tensor) -> torch.Tensor:
    """The input as an empty slide: every pixel the median colour of the image's border (the glass and plasma around
    a centred cell). As an Integrated Gradients baseline, a pixel that looks like the slide differs from it by
    nothing and so gets no attribution: the map's zero is "no cell here", not "black"."""
    colour = torch.as_tensor(slide_colour(x[0].detach().permute(1, 2, 0).numpy()), dtype=x.dtype)
    return colour[None, :, None, None].expand_as(x).clone()


IG_BASELINES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "blur": lambda x: blurred(x),
    "slide": empty_slide,
    "zero": torch.zeros_like,
}
"""Integrated Gradients' starting images by name (``baseline=``)."""


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
