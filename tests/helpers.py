"""Paths to the real data in ../shared/data and small helpers the tests import (fixtures are in conftest.py)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from bmc.constants import BUNDLED_MODEL_NAME

ROOT = Path(__file__).resolve().parent.parent
SHARED = (ROOT.parent / "shared" / "data").resolve()
MATEK = SHARED / "bone-marrow-cells"
PBC = SHARED / "pbc-external"
PBC_TRAIN = SHARED / "pbc-train"
BCCD = SHARED / "external-wbc" / "bccd"
UNSEEN = SHARED / "unseen-classes"
BUNDLED = ROOT / "models" / BUNDLED_MODEL_NAME


def matek_images(code: str, n: int) -> list[Path]:
    """The first ``n`` real images of a class (sorted: the same files on every machine)."""
    return sorted((MATEK / "bone_marrow_cell_dataset" / code).rglob("*.jpg"))[:n]


def image_bytes(fmt: str = "JPEG", size: tuple[int, int] = (64, 64), mode: str = "RGB", **save: object) -> bytes:
    """A small generated image in any format/mode, for input-handling tests."""
    rng = np.random.default_rng(0)
    if mode in ("I;16",):
        img = Image.fromarray(rng.integers(0, 65535, size[::-1], dtype=np.uint16))
    else:
        img = Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, fmt, **save)
    return buf.getvalue()
