"""Constants shared by the library, the app, the CLI and the benchmark (one place each, as timm keeps them)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
BUNDLED_MODEL_NAME = "bmc-dinov2s-matek-pbc13"
DEFAULT_MODEL = os.environ.get("BMC_MODEL") or str(REPO_ROOT / "models" / BUNDLED_MODEL_NAME)
"""The model the app, ``bmc count`` and the benchmark use unless told otherwise (``BMC_MODEL`` overrides)."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
"""Normalisation of the DINOv2 and ConvNeXt base models (and of any base that ships no processor)."""

SESSION_TTL_S = 3600
"""How long the app keeps a visitor's count, review and files after the last use (seconds): the one time limit of
every per-session state, cache and download folder."""

ROBUSTNESS_AUGMENTATIONS = ("zoom_out", "stain", "blur")
"""The train-time changes aimed at other laboratories' images, each switchable (``--augment``) so that
each can be measured on its own: scale (zoom-out), stain (``HEStain`` + hue/saturation jitter) and
camera quality (blur/downscale). Rotation, flips, crop and brightness/contrast are always on."""
OPTIONAL_AUGMENTATIONS = ("camera", "colour", "colour_mild", "colour_half", "zoom_in", "grey")
"""Train-time changes a run may add (``--augment``) that the default recipe leaves out: ``camera``, a low-end camera's
look (strong blur or defocus, heavy downscaling, JPEG artefacts, sensor noise; measured and not adopted,
docs/experiments.md), and ``colour``, each image's Lab mean and spread moved to a random laboratory's
(:func:`bmc.train.augmentation.lab_restyle`), so the model reads shape rather than a lab's stain (issue 33);
``colour_mild`` and ``colour_half`` restyle fewer images (:data:`bmc.train.augmentation.RESTYLE_P`), so more of them keep the canonical
colours the model meets at inference; ``zoom_in``, a centred magnification of up to 1.4× (another lab's crops of the same
microscope frame a cell more tightly; :func:`bmc.train.augmentation.zoom_in`); ``grey``, a fifth of the images in grey
(:data:`bmc.train.augmentation.GREY_P`): with no colour at all, only shape and texture tell the class."""

TEST_SETS = ("pbc-external", "bccd")
"""The external test sets of ``../shared/data`` (other laboratories' images): reported, never used to
choose a run. A training source a run did not train on (``pbc-train`` for a marrow-only run) may be."""

DISCLAIMER = (
    "Research use only. Not a medical device and not for diagnosis: every count must be reviewed by a "
    "qualified haematologist. The model knows only the classes listed; other cell types receive one of "
    "these labels, and cells flagged 'uncertain' need manual review."
)
"""What the app and the reports say before any count or label: a research tool, not a diagnosis."""
