"""Preprocessing, shared by training, evaluation and serving.

Evaluation and serving use the model's own image processor — the very object that
``pipeline("image-classification")`` loads from ``preprocessor_config.json`` — so the figures in
the model card are the figures a pipeline user gets. Train-time augmentation lives in
:mod:`bmc.train.augmentation` (albumentations), which serving never imports.

Optional OpenCV non-local-means denoising is recorded in the model config (``bmc_denoise``) so
that bmc's predictor applies it at inference too. Optional colour canonicalisation (issue 33, :data:`COLOUR_MAPS`:
each image's CIE-Lab mean and spread, or its chromatin and slide colours, mapped onto a stored reference) is recorded
in ``preprocessor_config.json`` (``bmc_lab_mean`` / ``bmc_lab_std`` or ``bmc_lab_dark`` / ``bmc_lab_bright``, which
transformers keeps as processor attributes) and applied by :func:`preprocess` and the training transform alike.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
from PIL import Image
from transformers.models.vit import ViTImageProcessorPil

from bmc.constants import IMAGENET_MEAN, IMAGENET_STD
from bmc.images import open_image


def build_image_processor(
    size: int, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD
) -> ViTImageProcessorPil:
    """Square resize of the whole cell image, rescale to [0, 1], normalise.

    A square resize (not resize-then-centre-crop, as ImageNet processors do) keeps the whole cell:
    Matek crops are centred on the cell and a centre crop can cut a large blast in half.
    """
    return ViTImageProcessorPil(
        do_resize=True,
        size={"height": size, "width": size},
        resample=Image.Resampling.BILINEAR,
        do_rescale=True,
        do_normalize=True,
        image_mean=list(mean),
        image_std=list(std),
    )


def processor_size(processor: Any) -> int:
    """The square input side of a processor, whichever way its size is spelled."""
    size = processor.size
    if "height" in size:
        return int(size["height"])
    crop = getattr(processor, "crop_size", None) or {}
    return int(crop.get("height") or size.get("shortest_edge"))


def denoise(rgb: np.ndarray) -> np.ndarray:
    """OpenCV non-local-means denoising, mild settings that keep granules and chromatin."""
    return cv2.fastNlMeansDenoisingColored(rgb, None, 3, 3, 7, 21)


def lab_statistics(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and spread of an RGB image in OpenCV's 8-bit CIE-Lab."""
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB).reshape(-1, 3).astype(np.float32)
    return lab.mean(axis=0), lab.std(axis=0) + 1e-3


def lab_standardise(rgb: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """The image with its CIE-Lab mean and spread mapped onto ``mean``/``std`` (Reinhard et al. 2001, per image):
    a laboratory's overall stain and brightness replaced, shapes and relative colours kept."""
    own_mean, own_std = lab_statistics(rgb)
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB).astype(np.float32)
    out = (lab - own_mean) / own_std * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
    return cv2.cvtColor(np.clip(out, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)


DARK_PERCENTILE = 3
"""The darkest 3 % of an image's pixels (by Lab lightness) are its stain anchor: nucleus chromatin, which a white
cell shows whether it fills the frame (marrow crops) or a fifth of it (CellaVision crops)."""
BRIGHT_PERCENTILE = 90
"""The lightest 10 % of an image's pixels are its slide anchor: plasma and glass, in every crop."""


def lab_anchors(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean CIE-Lab colour of an image's darkest (:data:`DARK_PERCENTILE`) and lightest
    (:data:`BRIGHT_PERCENTILE`) pixels: two statistics that depend on the stain, not on how much of the frame the
    cell fills (unlike the image's mean and spread)."""
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB).reshape(-1, 3).astype(np.float32)
    lightness = lab[:, 0]
    dark = lab[lightness <= np.percentile(lightness, DARK_PERCENTILE)].mean(axis=0)
    bright = lab[lightness >= np.percentile(lightness, BRIGHT_PERCENTILE)].mean(axis=0)
    return dark, bright


ANCHOR_SCALE_LIMITS = (0.4, 2.5)
"""How far :func:`anchored_standardise` may stretch or shrink a channel: a blank or one-colour image is left
nearly as it is rather than blown up."""


def anchored_standardise(rgb: np.ndarray, dark: np.ndarray, bright: np.ndarray) -> np.ndarray:
    """The image with its chromatin and slide colours (:func:`lab_anchors`) mapped onto ``dark``/``bright``, one
    linear map per Lab channel through the two anchors' midpoint: a lab's stain and contrast replaced, framing-
    independent, and colours between the anchors (granules, cytoplasm) kept in their place relative to both."""
    own_dark, own_bright = lab_anchors(rgb)
    own_span, span = own_bright - own_dark, np.asarray(bright, np.float32) - np.asarray(dark, np.float32)
    usable = (np.abs(own_span) >= 3) & (own_span * span > 0)
    scale = np.clip(np.where(usable, span / np.where(usable, own_span, 1.0), 1.0), *ANCHOR_SCALE_LIMITS)
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB).astype(np.float32)
    mid, own_mid = (np.asarray(dark, np.float32) + np.asarray(bright, np.float32)) / 2, (own_dark + own_bright) / 2
    out = (lab - own_mid) * scale + mid
    return cv2.cvtColor(np.clip(out, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)


LAB_REFERENCE_KEYS = ("bmc_lab_mean", "bmc_lab_std")
"""The processor attributes (and ``preprocessor_config.json`` keys) holding the ``reinhard`` colour reference."""
ANCHOR_REFERENCE_KEYS = ("bmc_lab_dark", "bmc_lab_bright")
"""The processor attributes holding the ``anchored`` colour reference (chromatin and slide colour, Lab)."""
COLOUR_MAPS: dict[str, tuple[tuple[str, str], Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]]] = {
    "reinhard": (LAB_REFERENCE_KEYS, lab_standardise),
    "anchored": (ANCHOR_REFERENCE_KEYS, anchored_standardise),
}
"""Colour canonicalisations by name (``--colour_standardise``): the keys their reference is stored under and the map."""
COLOUR_STATISTICS: dict[str, Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]] = {
    "reinhard": lab_statistics,
    "anchored": lab_anchors,
}
"""Per image, the two statistics each canonicalisation maps; their average over training images is its reference."""


def colour_method(processor: Any) -> str | None:
    """Which canonicalisation the processor stores a reference for, or None when the model takes colours as given."""
    for name, (keys, _) in COLOUR_MAPS.items():
        if all(getattr(processor, key, None) is not None for key in keys):
            return name
    return None


def colour_reference(processor: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """The processor's stored colour reference (Lab mean and spread, or chromatin and slide colour), or None."""
    method = colour_method(processor)
    if method is None:
        return None
    first, second = (getattr(processor, key) for key in COLOUR_MAPS[method][0])
    return np.asarray(first, np.float32), np.asarray(second, np.float32)


def set_colour_reference(processor: Any, first: np.ndarray, second: np.ndarray, method: str = "reinhard") -> None:
    """Store a ``method`` colour reference on ``processor`` (saved with it by ``save_pretrained``)."""
    for key, value in zip(COLOUR_MAPS[method][0], (first, second)):
        setattr(processor, key, [round(float(v), 3) for v in value])


def clear_colour_reference(processor: Any) -> dict[str, Any]:
    """Remove every stored colour reference (what a plain ``pipeline()`` sees); returns what was there, to restore."""
    stored = {key: getattr(processor, key, None) for keys, _ in COLOUR_MAPS.values() for key in keys}
    for key in stored:
        setattr(processor, key, None)
    return stored


def canonical_colours(rgb: np.ndarray, processor: Any) -> np.ndarray:
    """``rgb`` with its colours mapped onto the processor's stored reference; unchanged when it has none."""
    method, reference = colour_method(processor), colour_reference(processor)
    if method is None or reference is None:
        return rgb
    return COLOUR_MAPS[method][1](rgb, *reference)


class CanonicalColourProcessor(ViTImageProcessorPil):
    """The model folder's image processor with its colour canonicalisation in front, for ``pipeline()``:

        pipeline("image-classification", model=M, image_processor=CanonicalColourProcessor.from_pretrained(M))

    A plain ``pipeline()`` loads ``ViTImageProcessor`` from the same ``preprocessor_config.json`` and ignores the
    ``bmc_lab_*`` keys (transformers has no processor class of its own for them, and bmc never asks for
    ``trust_remote_code``); it then shows the model colours it was not trained on (the model card says so)."""

    def preprocess(self, images: Any, *args: Any, **kwargs: Any) -> Any:
        if colour_reference(self) is not None:
            many = isinstance(images, (list, tuple))
            rgb = [np.asarray(im.convert("RGB") if isinstance(im, Image.Image) else im) for im in (images if many else [images])]
            images = [Image.fromarray(canonical_colours(im, self)) for im in rgb]
        return super().preprocess(images, *args, **kwargs)


def preprocess(images: list[Image.Image], processor: Any, use_denoise: bool = False) -> np.ndarray:
    """Evaluation/serving preprocessing: exactly the image processor (plus optional denoising and the
    processor's colour canonicalisation, in the order training applies them)."""
    if use_denoise:
        images = [Image.fromarray(denoise(np.asarray(im))) for im in images]
    if colour_reference(processor) is not None:
        images = [Image.fromarray(canonical_colours(np.asarray(im.convert("RGB")), processor)) for im in images]
    return np.asarray(processor(images=images, return_tensors="np")["pixel_values"], dtype=np.float32)


def make_eval_transform(processor: Any, use_denoise: bool = False) -> Callable[[dict], dict]:
    """A ``datasets`` ``set_transform`` function for validation and test: no augmentation."""

    def transform(batch: dict) -> dict:
        images = [open_image(image) for image in batch["image"]]
        return {"pixel_values": list(preprocess(images, processor, use_denoise)), "labels": batch["label"]}

    return transform
