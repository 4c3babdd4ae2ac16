"""Preprocessing, shared by training, evaluation and serving.

Evaluation and serving use the model's own image processor — the very object that
``pipeline("image-classification")`` loads from ``preprocessor_config.json`` — so the figures in
the model card are the figures a pipeline user gets. Train-time augmentation lives in
:mod:`bmc.train.augmentation` (albumentations), which serving never imports.

Optional OpenCV non-local-means denoising is recorded in the model config (``bmc_denoise``) so
that bmc's predictor applies it at inference too. Optional colour canonicalisation (issue 33: each image's
CIE-Lab mean and spread mapped onto a stored reference) is recorded in ``preprocessor_config.json``
(``bmc_lab_mean`` / ``bmc_lab_std``, which transformers keeps as processor attributes) and applied by
:func:`preprocess` and the training transform alike.
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


LAB_REFERENCE_KEYS = ("bmc_lab_mean", "bmc_lab_std")
"""The processor attributes (and ``preprocessor_config.json`` keys) holding the colour reference."""


def colour_reference(processor: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """The processor's stored CIE-Lab reference (mean, spread), or None when the model takes colours as given."""
    mean, std = (getattr(processor, key, None) for key in LAB_REFERENCE_KEYS)
    if mean is None or std is None:
        return None
    return np.asarray(mean, np.float32), np.asarray(std, np.float32)


def set_colour_reference(processor: Any, mean: np.ndarray, std: np.ndarray) -> None:
    """Store a colour reference on ``processor`` (saved with it by ``save_pretrained``)."""
    for key, value in zip(LAB_REFERENCE_KEYS, (mean, std)):
        setattr(processor, key, [round(float(v), 3) for v in value])


def canonical_colours(rgb: np.ndarray, processor: Any) -> np.ndarray:
    """``rgb`` with its Lab statistics mapped onto the processor's reference; unchanged when it has none."""
    reference = colour_reference(processor)
    return rgb if reference is None else lab_standardise(rgb, *reference)


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
