"""Fitting the single-cell check (``bmc guard MODEL``) that :mod:`bmc.serve.guard` applies.

Fitted on the model's own *training* images (one cell each) against sheets of 2-9 of them (:func:`tiles`), measured on
its validation split, and stored beside the weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bmc.serve.guard import THRESHOLD, LearntGuard

FIT_IMAGES = 400
"""Single-cell training images, and as many sheets of them, the check is fitted on."""
C = 0.1
"""Inverse L2 strength: 800 pictures, 768 features."""
TILE_SIDES = (100, 125, 160, 200, 250)
"""Side each cell is pasted at in a sheet: the check must not depend on the sheet's scale."""
MIN_CELLS, MAX_CELLS = 2, 9


def sheet(paths: Sequence[str | Path], k: int, side: int, rng: np.random.Generator) -> Image.Image:
    """``k`` randomly chosen single-cell images, each resized to ``side`` px, pasted in a near-square grid on the
    first one's corner colour: the picture of several cells a user may upload by mistake."""
    cols = int(np.ceil(np.sqrt(k)))
    rows = int(np.ceil(k / cols))
    cells = [Image.open(paths[i]).convert("RGB").resize((side, side)) for i in rng.choice(len(paths), k)]
    out = Image.new("RGB", (side * cols, side * rows), tuple(int(v) for v in np.asarray(cells[0])[0, 0]))
    for i, cell in enumerate(cells):
        out.paste(cell, (side * (i % cols), side * (i // cols)))
    return out


def tiles(paths: Sequence[str | Path], n: int, rng: np.random.Generator) -> list[Image.Image]:
    """``n`` sheets (:func:`sheet`) of 2-9 cells each, each cell at one of :data:`TILE_SIDES`."""
    out = []
    for _ in range(n):
        k = int(rng.integers(MIN_CELLS, MAX_CELLS + 1))
        out.append(sheet(paths, k, int(rng.choice(TILE_SIDES)), rng))
    return out


def fit_guard(predictor: Any, train: Sequence[str], held_out: Sequence[str], seed: int = 0) -> tuple[LearntGuard, dict[str, float]]:
    """Fit the check on :data:`FIT_IMAGES` of ``train`` (single cells) and as many sheets of them; set its threshold
    above every ``held_out`` single cell's probability (at least :data:`THRESHOLD`), and measure how many sheets of
    held-out cells it then catches."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    picked = [train[i] for i in rng.choice(len(train), min(FIT_IMAGES, len(train)), replace=False)]
    singles = predictor.forward([Image.open(p).convert("RGB") for p in picked])[1]
    sheets = predictor.forward(tiles(train, len(picked), rng))[1]
    x = np.vstack([singles, sheets]).astype(np.float64)
    y = np.r_[np.zeros(len(singles)), np.ones(len(sheets))]
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    head = LogisticRegression(C=C, max_iter=2000).fit((x - mean) / scale, y)
    guard = LearntGuard(mean, scale, head.coef_[0], float(head.intercept_[0]), predictor.version)
    held_singles = predictor.forward([Image.open(p).convert("RGB") for p in held_out])[1]
    held_sheets = predictor.forward(tiles(held_out, max(1, len(held_out) // 4), rng))[1]
    # no held-out single cell refused: a real cell lost costs more than a sheet let through
    guard.threshold = max(THRESHOLD, float(np.ceil(guard.several(held_singles).max() * 100) / 100))
    figures = {
        "threshold": guard.threshold,
        "held_out_single_cells": float(len(held_singles)),
        "held_out_single_cells_refused": float(guard.refuses(held_singles).mean()),
        "held_out_sheets": float(len(held_sheets)),
        "held_out_sheets_caught": float(guard.refuses(held_sheets).mean()),
    }
    return guard, figures


def guard_model_folder(model_dir: str | Path) -> tuple[Path, dict[str, float]]:
    """``bmc guard``: fit the check on the folder's training split, measure it on its validation split, and
    store it in the folder."""
    from bmc.serve.predictor import Predictor
    from bmc.splits import read_resolved_manifest

    manifest = Path(model_dir) / "split_manifest.csv"
    if not manifest.is_file():
        raise ValueError(f"{model_dir}: no split_manifest.csv, so no training images to fit the check on")
    rows = [r for r in read_resolved_manifest(manifest) if Path(r["source"]).is_file()]
    train = [r["source"] for r in rows if r["split"] == "train"]
    held_out = [r["source"] for r in rows if r["split"] == "validation"]
    if len(train) < 2 * MAX_CELLS or not held_out:
        raise ValueError(f"{model_dir}: {len(train)} training and {len(held_out)} validation images found; the check needs both")
    predictor = Predictor(str(model_dir), backend="torch")
    guard, figures = fit_guard(predictor, train, held_out)
    return guard.save(model_dir, figures), figures
