"""The learnt single-cell check, as serving applies it: does a picture show one cell, or several (a tile, a field)?

The stain guard of :mod:`bmc.locate.finder` counts separate nuclei and must never refuse a real single cell, so it
lets most pictures of several marrow cells through: in a Matek-style picture the nuclei of neighbouring cells
run together. The classifier itself sees the difference: its embedding of a picture of one centred cell is unlike its
embedding of a sheet of several. A logistic regression on that embedding, from the same forward pass as the
classification, is fitted by ``bmc guard MODEL`` (:mod:`bmc.train.guard`) and stored beside the weights
(:data:`GUARD_FILE`, safetensors). It belongs to those weights: a folder whose weights changed (``bmc adapt``)
has none until ``bmc guard`` is run on it, and the app then relies on the stain guard alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

GUARD_FILE = "single_cell_guard.safetensors"
THRESHOLD = 0.5
"""Lowest probability of "several cells" above which a picture is not classified; the fitting raises it above every
held-out single cell's (docs/performance.md)."""


@dataclass
class LearntGuard:
    """Standardisation and logistic weights of the check, and the weights' version it was fitted for."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float
    version: str
    threshold: float = THRESHOLD

    def several(self, embeddings: np.ndarray) -> np.ndarray:
        """Per picture, the probability that it shows several cells."""
        z = (np.asarray(embeddings, dtype=np.float64) - self.mean) / self.scale @ self.coef + self.intercept
        return 1.0 / (1.0 + np.exp(-z))

    def refuses(self, embeddings: np.ndarray) -> np.ndarray:
        return self.several(embeddings) > self.threshold

    def save(self, model_dir: str | Path, figures: dict[str, float]) -> Path:
        path = Path(model_dir) / GUARD_FILE
        tensors = {"mean": self.mean, "scale": self.scale, "coef": self.coef, "intercept": np.array([self.intercept])}
        meta = {"version": self.version, "threshold": str(self.threshold), **{k: f"{v:.4f}" for k, v in figures.items()}}
        save_file({k: np.asarray(v, dtype=np.float64) for k, v in tensors.items()}, str(path), metadata=meta)
        return path


def load_guard(model_dir: str | Path, version: str) -> LearntGuard | None:
    """The check stored in a model folder, or None when there is none or it was fitted for other weights."""
    path = Path(model_dir) / GUARD_FILE
    if not path.is_file():
        return None
    with safe_open(str(path), framework="numpy") as fh:
        meta = fh.metadata() or {}
        if meta.get("version") != version:
            return None
        t = {name: fh.get_tensor(name) for name in fh.keys()}
    return LearntGuard(t["mean"], t["scale"], t["coef"], float(t["intercept"][0]), version, float(meta.get("threshold", THRESHOLD)))
