"""Does a map show what the model uses? Perturbation checks on the ViT's patch grid.

A map is read as a ranking of the model's 14-px input patches (:func:`patch_scores`). Removing a patch
means replacing it by an in-distribution fill rather than a grey or black square (which the model never
saw and which would test its reaction to the square, not to the missing cell): the removed pixels are
imputed from the kept ones around them by normalised convolution at growing scales, then lightly
noised, in the spirit of ROAD's noisy linear imputation (Rong et al. 2022) at the cost of a few blurs
(:func:`impute`). With that fill:

* :func:`deletion_insertion` removes the most relevant patches first (deletion) or restores them first
  into an all-removed image (insertion); the area between the two probability curves (:func:`abpc`)
  is high when the map ranks the patches the model needs first.
* :func:`patch_drops` removes one patch at a time: the drop in the class logit per patch, the reference
  the single-patch correlation compares a map with (and the Occlusion map itself); :func:`first_order_drops`
  estimates it from one gradient (measured against it in docs/explanations.md, not offered in the app).
* :func:`evidence` is the one extra batched forward the app shows beside every map: the class
  probability with the map's top 10 % of the image removed, with a random 10 % removed, and a short
  deletion curve.

:func:`centre_vs_border` is a coarser check for single-cell crops: the map's mean on the centre against the border.

Used by :mod:`bmc.serve.explain` (Occlusion), the app and ``bench/attribution.py`` alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from PIL import Image

PATCH = 14
"""Side of a ViT-S/14 patch in input pixels: the unit of every perturbation here."""
EVIDENCE_FRACTION = 0.1
CURVE_FRACTIONS = (0.0, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0)
"""Shares of the patches removed along a deletion/insertion curve (the ends are the image and the full fill)."""
NOISE = 0.05
"""Standard deviation of the noise added to imputed pixels (normalised units): hides the fill's smoothness."""
BATCH = 48

Logits = Callable[[torch.Tensor], torch.Tensor]


def grid_side(size: int, patch: int = PATCH) -> int:
    """Patches along one side of a ``size``-pixel input (a partial last patch counts)."""
    return max(1, -(-size // patch))


def patch_scores(heatmap: np.ndarray, size: int, patch: int = PATCH) -> np.ndarray:
    """A map of any resolution as one score per input patch (g×g): the sum of the map over the patch,
    after resizing it to the model's ``size``×``size`` input."""
    heat = cv2.resize(np.asarray(heatmap, dtype=np.float32), (size, size), interpolation=cv2.INTER_AREA)
    g = grid_side(size, patch)
    padded = np.zeros((g * patch, g * patch), np.float32)
    padded[:size, :size] = heat
    return padded.reshape(g, patch, g, patch).sum(axis=(1, 3))


def patch_mask(patches: Sequence[int] | np.ndarray, size: int, patch: int = PATCH) -> np.ndarray:
    """Pixel mask (size×size, True = removed) of the patches with these flat indices on the g×g grid."""
    g = grid_side(size, patch)
    grid = np.zeros(g * g, bool)
    grid[np.asarray(patches, dtype=int)] = True
    return np.kron(grid.reshape(g, g), np.ones((patch, patch), bool)).astype(bool)[:size, :size]


def impute(x: np.ndarray, removed: np.ndarray, rng: np.random.Generator | None = None, noise: float = NOISE) -> np.ndarray:
    """``x`` (C×H×W, normalised) with the ``removed`` pixels (H×W bool) filled from the kept pixels around
    them: normalised convolution at sigmas 2, 4, … until every pixel is reached (the colour of the nearest
    kept surroundings, as a smear of the slide would have), the mean colour where nothing is kept, plus
    light noise so the fill's smoothness does not mark where patches were removed."""
    out = x.copy()
    todo = removed.copy()
    if not todo.any():
        return out
    keep = (~removed).astype(np.float32)
    if keep.sum() == 0:
        out[:, todo] = x.reshape(x.shape[0], -1).mean(1)[:, None]
    else:
        values = np.stack([c * keep for c in x])
        sigma = 2.0
        while todo.any() and sigma <= 4 * max(x.shape[1:]):
            weight = cv2.GaussianBlur(keep, (0, 0), sigma)
            reached = todo & (weight > 0.05)
            if reached.any():
                for c in range(x.shape[0]):
                    out[c][reached] = cv2.GaussianBlur(values[c], (0, 0), sigma)[reached] / weight[reached]
                todo &= ~reached
            sigma *= 2
        if todo.any():
            out[:, todo] = (values.reshape(x.shape[0], -1).sum(1) / keep.sum())[:, None]
    if noise and rng is not None:
        out[:, removed] += rng.normal(0, noise, (x.shape[0], int(removed.sum()))).astype(np.float32)
    return out


def _forward(logits: Logits, images: Sequence[np.ndarray], batch: int = BATCH) -> np.ndarray:
    rows = []
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            rows.append(logits(torch.from_numpy(np.stack(images[i : i + batch]))).float().numpy())
    return np.concatenate(rows)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits / temperature
    z = np.exp(z - z.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def ranked(scores: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Flat patch indices, most relevant first; ties (a flat map) broken at random, never by position."""
    flat = np.asarray(scores, dtype=np.float64).ravel()
    return np.lexsort((rng.random(flat.size), -flat))


def curve_images(
    x: np.ndarray, order: np.ndarray, fractions: Sequence[float], rng: np.random.Generator, insertion: bool
) -> list[np.ndarray]:
    """The perturbed inputs of one deletion (or insertion) curve, one per fraction of patches removed (restored)."""
    size, n = x.shape[-1], order.size
    images = []
    for f in fractions:
        k = int(round(f * n))
        chosen = order[:k]
        removed = ~patch_mask(chosen, size) if insertion else patch_mask(chosen, size)
        images.append(impute(x, removed, rng))
    return images


def deletion_insertion(
    logits: Logits,
    x: np.ndarray,
    target: int,
    scores: np.ndarray,
    fractions: Sequence[float] = CURVE_FRACTIONS,
    seed: int = 0,
    temperature: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """P(target) along the deletion curve (most relevant patches removed first) and the insertion curve (most
    relevant restored first into an all-removed image), at ``fractions`` of the patches; one batched pass.
    ``x`` is one normalised input (C×H×W)."""
    rng = np.random.default_rng(seed)
    order = ranked(scores, rng)
    images = curve_images(x, order, fractions, rng, False) + curve_images(x, order, fractions, rng, True)
    probs = softmax(_forward(logits, images), temperature)[:, target]
    return probs[: len(fractions)], probs[len(fractions) :]


def abpc(deletion: np.ndarray, insertion: np.ndarray, fractions: Sequence[float] = CURVE_FRACTIONS) -> float:
    """Area between the insertion and the deletion curve over the share of patches (trapezoids): in [-1, 1],
    higher when the map's first patches are the ones the class probability rests on."""
    gap = np.asarray(insertion, np.float64) - np.asarray(deletion, np.float64)
    f = np.asarray(fractions, np.float64)
    return float(np.sum((gap[1:] + gap[:-1]) / 2 * np.diff(f)))


def patch_drops(logits: Logits, x: np.ndarray, target: int, seed: int = 0, batch: int = BATCH) -> np.ndarray:
    """Drop of the target logit when each patch alone is removed (imputed): g×g, positive where the patch
    supported the class. ``x`` is one normalised input (C×H×W)."""
    rng = np.random.default_rng(seed)
    size = x.shape[-1]
    g = grid_side(size)
    images = [x] + [impute(x, patch_mask([j], size), rng) for j in range(g * g)]
    out = _forward(logits, images, batch)[:, target]
    return (out[0] - out[1:]).reshape(g, g)


def removal_fill(x: np.ndarray, patch: int = PATCH) -> np.ndarray:
    """``x`` (C×H×W) with every patch replaced by the fill it gets when it alone is removed (:func:`impute`,
    without noise): what :func:`patch_drops` puts in each patch's place, for all patches at once. Patches are
    filled in four interleaved groups (every other patch in each direction), so each is imputed from its own
    neighbours, as when removed alone; four imputations, no model pass."""
    size = x.shape[-1]
    g = grid_side(size, patch)
    rows, cols = np.divmod(np.arange(g * g), g)
    out = x.copy()
    for dr in (0, 1):
        for dc in (0, 1):
            group = np.flatnonzero((rows % 2 == dr) & (cols % 2 == dc))
            removed = patch_mask(group, size, patch)
            out[:, removed] = impute(x, removed, None, 0.0)[:, removed]
    return out


def first_order_drops(logits: Logits, x: torch.Tensor, target: int, samples: int = 1, noise: float = 0.1) -> np.ndarray:
    """:func:`patch_drops` estimated in one pass (g×g, signed): for each patch, the gradient of the target logit
    times the change that removing the patch makes (``x`` minus :func:`removal_fill`), summed over the patch — the
    first-order Taylor estimate of the drop, exact for a logit linear in the pixels. ``samples`` > 1 averages the
    gradient over noisy copies of ``x`` (1×C×H×W; SmoothGrad, one batch)."""
    fill = torch.from_numpy(removal_fill(x[0].detach().numpy()))[None]
    batch = x.detach().repeat(samples, 1, 1, 1)
    if samples > 1:
        batch = batch + noise * torch.randn(batch.shape, generator=torch.Generator().manual_seed(0))
    batch.requires_grad_(True)
    grad = torch.autograd.grad(logits(batch)[:, target].sum(), batch)[0].mean(0, keepdim=True)
    return patch_scores((grad * (x.detach() - fill))[0].sum(0).numpy(), x.shape[-1])


def centre_vs_border(heatmap: np.ndarray, centre_fraction: float = 0.5) -> tuple[float, float]:
    """Mean attribution inside the central square (``centre_fraction`` of each side) and outside it:
    a sanity measure for single-cell crops, where the evidence should sit on the centred cell."""
    h, w = heatmap.shape
    mh, mw = int(h * (1 - centre_fraction) / 2), int(w * (1 - centre_fraction) / 2)
    mask = np.zeros_like(heatmap, dtype=bool)
    mask[mh : h - mh, mw : w - mw] = True
    return float(heatmap[mask].mean()), float(heatmap[~mask].mean())


@dataclass
class Evidence:
    """What removing the image regions a map marks does to the class probability (calibrated)."""

    fraction: float
    p_full: float
    p_removed: float
    p_random: float
    curve_fractions: tuple[float, ...]
    curve: tuple[float, ...]

    def line(self, class_name: str) -> str:
        """One sentence for a person: the map's top share removed against a random share removed."""
        pct = f"{self.fraction:.0%}"
        return (
            f"Removing the {pct} of the image this map marks lowers P({class_name}) from {self.p_full:.2f} to "
            f"{self.p_removed:.2f}; removing a random {pct} lowers it to {self.p_random:.2f}."
        )


def evidence(
    logits: Logits,
    x: np.ndarray,
    target: int,
    heatmap: np.ndarray,
    fraction: float = EVIDENCE_FRACTION,
    fractions: Sequence[float] = CURVE_FRACTIONS[:-1],
    temperature: float = 1.0,
    seed: int = 0,
) -> Evidence:
    """One batched forward: the image, the map's top ``fraction`` of patches removed, a random ``fraction``
    removed, and the deletion curve of the map at ``fractions``."""
    rng = np.random.default_rng(seed)
    size = x.shape[-1]
    order = ranked(patch_scores(heatmap, size), rng)
    k = max(1, int(round(fraction * order.size)))
    images = [x, impute(x, patch_mask(order[:k], size), rng), impute(x, patch_mask(rng.permutation(order.size)[:k], size), rng)]
    images += curve_images(x, order, fractions, rng, False)
    p = softmax(_forward(logits, images), temperature)[:, target]
    return Evidence(fraction, float(p[0]), float(p[1]), float(p[2]), tuple(float(f) for f in fractions), tuple(float(v) for v in p[3:]))


def curve_image(ev: Evidence, class_name: str, width: int = 360, height: int = 220) -> Image.Image:
    """A small figure of the deletion curve: P(class) as the map's most relevant patches are removed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(width / 100, height / 100), dpi=100)
    ax.plot([100 * f for f in ev.curve_fractions], ev.curve, marker="o", label="map's top patches removed")
    ax.scatter([100 * ev.fraction], [ev.p_random], color="grey", zorder=3, label=f"random {ev.fraction:.0%} removed")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("% of the image removed (most marked first)")
    ax.set_ylabel(f"P({class_name})")
    ax.legend(fontsize=7, loc="upper right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())  # type: ignore[attr-defined]
    plt.close(fig)
    return Image.fromarray(rgba[..., :3].copy())
