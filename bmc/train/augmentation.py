"""Train-time augmentation (albumentations on OpenCV), before the same normalisation as serving:

* rotation by ±20° and 90° turns, horizontal/vertical flips: a cell on a slide has no orientation;
* zoom-out onto the image's own background colour (:func:`zoom_out`): Matek crops show the cell
  filling most of the frame, PBC and BCCD crops a third of it; a model that has only seen large
  cells reads small ones as other types;
* random resized crop (zoom in), brightness/contrast, blur and downscaling: focus, illumination
  and camera quality vary;
* stain: albumentations' ``HEStain`` (colour deconvolution into two stains, each stain's amount
  scaled and shifted — a maintained implementation instead of hand-written colour maths; the
  May-Grünwald-Giemsa dyes, azure/methylene blue and eosin, split into a blue-purple and a pink
  stain as H&E does) plus hue/saturation jitter: stain differs between labs, the main domain shift.

Zoom-out, stain and blur/downscale are the changes aimed at other labs' images; each can be left
out (``--augment``, :data:`bmc.constants.ROBUSTNESS_AUGMENTATIONS`) to measure what it does. ``camera``
(:data:`bmc.constants.OPTIONAL_AUGMENTATIONS`, off unless named) adds a low-end camera's look: BCCD's cells
come from a 640×480 JPEG camera, blurred and noisy beside either training lab's images.

``colour`` (optional; ``colour_mild``: fewer images) moves each image's CIE-Lab mean and spread to a random target drawn over a range
that spans both training laboratories and beyond (:func:`lab_restyle`, Reinhard et al. 2001 with a random
reference): a lab's overall stain and illumination become noise the model must ignore. ``grey`` (optional) takes
the colour out of a fifth of the images, so that shape and texture must carry the class.

Each image's random draws are seeded from the run's seed, the epoch and the file, so a resumed
run sees exactly the images the uninterrupted run saw.
"""

from __future__ import annotations

import zlib
from typing import Any

import albumentations
import cv2
import numpy as np

from bmc.constants import ROBUSTNESS_AUGMENTATIONS
from bmc.images import open_image, slide_colour
from bmc.transforms import canonical_colours, denoise, lab_standardise, processor_size

ZOOM_OUT_P = 0.5
ZOOM_OUT_MIN_SCALE = 0.45
"""Half the training images are shrunk to 45–100 % of their side on a background canvas: the
cell of a PBC crop spans about a third of the frame, a Matek cell most of it."""


def zoom_out(rgb: np.ndarray, rng: np.random.Generator, p: float = ZOOM_OUT_P, min_scale: float = ZOOM_OUT_MIN_SCALE) -> np.ndarray:
    """With probability ``p``, place the image at a random position on a larger canvas filled
    with the median colour of its own border (the slide background around the cell), so the cell
    covers ``min_scale``–1 of the side. A constant border colour, unlike mirroring, adds no
    mirrored copies of the cell or its neighbours."""
    if rng.random() >= p:
        return rgb
    scale = rng.uniform(min_scale, 1.0)
    h, w = rgb.shape[:2]
    big_h, big_w = round(h / scale), round(w / scale)
    fill = [float(v) for v in slide_colour(rgb)]
    top, left = int(rng.integers(0, big_h - h + 1)), int(rng.integers(0, big_w - w + 1))
    return cv2.copyMakeBorder(rgb, top, big_h - h - top, left, big_w - w - left, cv2.BORDER_CONSTANT, value=fill)


ZOOM_IN_P = 0.4
ZOOM_IN_MIN_SIDE = 0.72
"""With ``zoom_in``, 40 % of the training images are cut to a centred square of 72–100 % of their side (the cell
shown up to 1.4× larger). Crops of one microscope differ in frame size (PBC's CellaVision crops are 360 px, other
CellaVision exports 300 px), so a lab's cells can fill more of the frame than the training labs' do. Off unless
named: measured on 2026-12-07, it did not change zheng2018-ds2's lymphocytes read as monocytes (docs/experiments.md)."""


def zoom_in(rgb: np.ndarray, rng: np.random.Generator, p: float = ZOOM_IN_P, min_side: float = ZOOM_IN_MIN_SIDE) -> np.ndarray:
    """With probability ``p``, keep a square of ``min_side``–1 of the shorter side, centred within a few pixels
    (the cell sits at the centre of a single-cell crop), so the cell fills more of the frame after the resize.
    The counterpart of :func:`zoom_out`; unlike the random resized crop it never moves the cell off-centre."""
    if rng.random() >= p:
        return rgb
    h, w = rgb.shape[:2]
    side = max(8, round(min(h, w) * rng.uniform(min_side, 1.0)))
    slack_y, slack_x = (h - side) // 2, (w - side) // 2
    top = slack_y + int(rng.integers(-(slack_y // 4), slack_y // 4 + 1))
    left = slack_x + int(rng.integers(-(slack_x // 4), slack_x // 4 + 1))
    return rgb[top : top + side, left : left + side]


LAB_TARGET_MEAN = ((105.0, 220.0), (128.0, 165.0), (88.0, 145.0))
LAB_TARGET_STD = ((25.0, 65.0), (5.0, 24.0), (8.0, 30.0))
"""Ranges (OpenCV 8-bit Lab: L, a, b) of the random targets of :func:`lab_restyle`. Drawn around the two
training labs' per-image statistics (Matek: mean 143/150/99, spread 51/17/21; PBC: 201/139/135, 42/10/15),
widened on each side so that no lab's look is the edge of what the model has seen."""
LAB_RESTYLE_P = 0.7
RESTYLE_P = {"colour": LAB_RESTYLE_P, "colour_half": 0.5, "colour_mild": 0.3}
"""Share of training images :func:`lab_restyle` gives a random lab's colours, by ``--augment`` name: ``colour``
restyles most images; ``colour_half`` half; ``colour_mild`` fewer, so that most images keep the canonical colours (``--colour_standardise``)
the model meets at inference while it still learns that a lab's overall colour is not the class."""


GREY_P = 0.2
"""With ``grey``, a fifth of the training images lose their colour (luminance kept, three channels): the nucleus's
shape, the chromatin's texture and the cytoplasm's extent must carry the class on their own. Most images keep their
colour, so eosinophil and basophil granules still count."""


def lab_restyle(rgb: np.ndarray, rng: np.random.Generator, p: float = LAB_RESTYLE_P) -> np.ndarray:
    """With probability ``p``, give the image a random laboratory's colours: standardise each CIE-Lab
    channel (per-image mean and spread) and map it onto a target mean and spread drawn from
    :data:`LAB_TARGET_MEAN` / :data:`LAB_TARGET_STD`. Shapes, textures and relative colours stay; the
    lab's overall stain and brightness change."""
    if rng.random() >= p:
        return rgb
    target_mean = np.array([rng.uniform(lo, hi) for lo, hi in LAB_TARGET_MEAN], np.float32)
    target_std = np.array([rng.uniform(lo, hi) for lo, hi in LAB_TARGET_STD], np.float32)
    return lab_standardise(rgb, target_mean, target_std)


def train_augmentation(size: int, seed: int | None = None, robust: tuple[str, ...] = ROBUSTNESS_AUGMENTATIONS) -> albumentations.Compose:
    """The train-time augmentation, ending at ``size``×``size`` uint8 RGB (normalisation follows).
    ``robust`` names the :data:`ROBUSTNESS_AUGMENTATIONS` to include ("zoom_out" is applied by
    :class:`TrainTransform`, before this); ``seed`` makes the random draws repeatable (tests)."""
    steps: list[albumentations.BasicTransform] = [
        albumentations.RandomRotate90(p=1.0),
        albumentations.Rotate(limit=20, border_mode=cv2.BORDER_REFLECT_101, p=0.7),
        albumentations.HorizontalFlip(p=0.5),
        albumentations.VerticalFlip(p=0.5),
        albumentations.RandomResizedCrop(size=(size, size), scale=(0.65, 1.0), ratio=(0.85, 1.18), interpolation=cv2.INTER_AREA, p=1.0),
    ]
    if "stain" in robust:
        steps.append(albumentations.HEStain(method="random_preset", p=0.5))
    steps.append(albumentations.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.15, p=0.7))
    if "stain" in robust:
        steps.append(albumentations.HueSaturationValue(hue_shift_limit=12, sat_shift_limit=25, val_shift_limit=10, p=0.7))
    if "blur" in robust:
        steps.append(
            albumentations.OneOf([albumentations.GaussianBlur(blur_limit=(3, 5)), albumentations.Downscale(scale_range=(0.5, 0.9))], p=0.2)
        )
    if "grey" in robust:
        steps.append(albumentations.ToGray(num_output_channels=3, p=GREY_P))
    if "camera" in robust:
        steps += [
            albumentations.OneOf(
                [
                    albumentations.GaussianBlur(blur_limit=(3, 7)),
                    albumentations.Defocus(radius=(1, 3)),
                    albumentations.Downscale(scale_range=(0.3, 0.7)),
                ],
                p=0.5,
            ),
            albumentations.ImageCompression(quality_range=(30, 85), p=0.4),
            albumentations.GaussNoise(std_range=(0.02, 0.08), p=0.3),
        ]
    return albumentations.Compose(steps, seed=seed)


def _normalise(rgb: np.ndarray, processor: Any) -> np.ndarray:
    arr: np.ndarray = rgb.astype(np.float32) * float(processor.rescale_factor)
    arr = (arr - np.asarray(processor.image_mean, np.float32)) / np.asarray(processor.image_std, np.float32)
    return arr.transpose(2, 0, 1)


class TrainTransform:
    """A ``datasets`` ``set_transform`` function: decode, augment, normalise, to ``pixel_values``.

    Each image's augmentation is drawn from its own seed, made of the run's ``seed``, the current
    ``epoch`` (set by :class:`bmc.train.trainer.AugmentationEpoch`) and the image's ``source``. The draws
    therefore do not depend on the order or the process in which images are loaded: a run resumed
    from a checkpoint sees exactly the augmented images the uninterrupted run saw.
    """

    def __init__(
        self,
        processor: Any,
        use_denoise: bool = False,
        seed: int = 0,
        robust: tuple[str, ...] = ROBUSTNESS_AUGMENTATIONS,
        colour_view: bool = False,
    ):
        """``colour_view``: also return ``pixel_values_view``, each image in a random lab's colours with the same
        crop, zoom and geometry (for the colour-consistency term, ``--colour_consistency``)."""
        self.processor = processor
        self.colour_view = colour_view
        self.use_denoise = use_denoise
        self.seed = seed
        self.epoch = 0
        self.zoom_out = "zoom_out" in robust
        self.zoom_in = "zoom_in" in robust
        self.restyle_p = max((p for name, p in RESTYLE_P.items() if name in robust), default=0.0)
        self.augment = train_augmentation(processor_size(processor), seed, robust)

    def sample_seed(self, source: str) -> int:
        return zlib.crc32(f"{self.seed}:{self.epoch}:{source}".encode())

    def rescale(self, rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The cell's size in the frame: zoom-in (``zoom_in``) and zoom-out (``zoom_out``), each by its own draw."""
        if self.zoom_in:
            rgb = zoom_in(rgb, rng)
        return zoom_out(rgb, rng) if self.zoom_out else rgb

    def __call__(self, batch: dict) -> dict:
        pixels, views = [], []
        sources = batch.get("source") or [str(i) for i in range(len(batch["image"]))]
        for image, source in zip(batch["image"], sources):
            rgb = np.asarray(open_image(image))
            if self.use_denoise:
                rgb = denoise(rgb)
            rgb = canonical_colours(rgb, self.processor)  # as serving does, before any augmentation
            seed = self.sample_seed(source)
            rng = np.random.default_rng(seed)
            view = lab_restyle(rgb, np.random.default_rng(seed + 1), 1.0) if self.colour_view else None
            if self.restyle_p:
                rgb = lab_restyle(rgb, rng, self.restyle_p)
            if self.zoom_in or self.zoom_out:
                state = rng.bit_generator.state
                rgb = self.rescale(rgb, rng)
                if view is not None:  # the same zoom: a generator in the same state draws the same numbers
                    twin = np.random.default_rng()
                    twin.bit_generator.state = state
                    view = self.rescale(view, twin)
            self.augment.set_random_seed(seed)
            pixels.append(_normalise(self.augment(image=rgb)["image"], self.processor))
            if view is not None:
                self.augment.set_random_seed(seed)
                views.append(_normalise(self.augment(image=view)["image"], self.processor))
        out = {"pixel_values": pixels, "labels": batch["label"]}
        if views:
            out["pixel_values_view"] = views
        for extra in ("weight", "distill"):  # per-image loss weight and distillation mask (bmc.train.trainer.collate)
            if extra in batch:
                out[extra] = batch[extra]
        return out
