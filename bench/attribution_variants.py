"""Method specs of ``bench/attribution.py``: a registry name of :mod:`bmc.serve.explain`, optionally with a variant
after ``@`` (``Grad-CAM@-6``, ``Occlusion@first-order,8``), parsed into that method's options, so that every
variant measured in docs/explanations.md can be measured again by its name."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from bmc.serve.explain import DEFAULT_METHOD, Explainer

SLOW = ("Occlusion", "Integrated Gradients")
"""Methods of 50-150 passes a map, measured on the first ``--n-slow`` cells only."""


def method_options(spec: str) -> tuple[str, dict[str, Any]]:
    """``Grad-CAM@-6`` → Grad-CAM at block -6; ``Gradient-weighted rollout@6`` → over the last 6 blocks;
    ``…@12,14px`` → all 12 blocks, one value per 14-px patch (the default until 2026-12-07); ``…@contrast`` (the
    class's log-probability), ``…@skip-sinks`` (no relevance through DINOv2's attention sinks),
    ``…@slide-reference`` (minus an empty slide's map, as the default since 2026-12-07), ``…@no-slide-reference``
    (the default before it), ``…@value-norms`` (weighted by the value vectors' norms); ``Conservative LRP@pixels``
    (the pixels' relevance), ``…@14px``; ``Attention rollout@keep-sinks``; ``Integrated Gradients@zero``, ``…@slide``
    (an empty-slide start), ``…@slide,8`` (8 steps); ``Occlusion@first-order`` (its one-pass estimate),
    ``…@first-order,8`` (8 noisy copies), ``…,rollout``, ``…,rank``."""
    name, _, variant = spec.partition("@")
    if not variant:
        return name, {}
    if name == "Grad-CAM":
        return name, {"layer": int(variant)}
    if name == "Gradient-weighted rollout":  # @12 (blocks), @14px (no half-patch shifts), @half-patch, or e.g. @12,14px
        parts = variant.split(",")
        options: dict[str, Any] = {"half_patch": "14px" not in parts, "skip_sinks": "skip-sinks" in parts}
        # any variant names the empty-slide reference if it wants it (the plain name, the default, has it)
        options["contrast"], options["slide_reference"] = "contrast" in parts, "slide-reference" in parts
        if "value-norms" in parts:
            options["value_norms"] = True
        named = ("14px", "half-patch", "skip-sinks", "contrast", "slide-reference", "no-slide-reference", "value-norms")
        depth = [p for p in parts if p not in named]
        return name, options | ({"last_blocks": int(depth[0])} if depth else {})
    if name == "Conservative LRP":  # @pixels (relevance of the pixels, not of the first block's tokens), @14px
        parts = variant.split(",")
        return name, {"half_patch": "14px" not in parts, "level": "pixels" if "pixels" in parts else "tokens"}
    if name == "Occlusion" and variant.startswith("first-order"):  # its one-pass estimate: @first-order[,8][,rollout|rank]
        parts = variant.split(",")[1:]
        if all(p.isdigit() or p in ("rollout", "rank") for p in parts):
            estimate: dict[str, Any] = {"first_order": True}
            for part in parts:
                estimate[("weighted", "samples")[part.isdigit()]] = int(part) if part.isdigit() else part
            return name, estimate
    if name == "Attention rollout" and variant == "keep-sinks":
        return name, {"skip_sinks": False}
    if name == "Integrated Gradients":  # @zero or @slide (the starting image), optionally with steps: @slide,8
        parts = variant.split(",")
        if parts[0] in ("zero", "slide", "blur") and all(p.isdigit() for p in parts[1:]):
            return name, {"baseline": parts[0]} | ({"n_steps": int(parts[1]), "internal_batch_size": int(parts[1])} if parts[1:] else {})
    raise SystemExit(f"error: unknown variant {spec!r}")


def is_slow(spec: str) -> bool:
    """A method of :data:`SLOW` (its one-pass estimates, ``Occlusion@first-order…``, are not)."""
    name, _, variant = spec.partition("@")
    return name in SLOW and not variant.startswith("first-order")


def variant_map(ex: Explainer, x: Any, target: int, spec: str) -> np.ndarray:
    """The raw map a spec names; ``Occlusion@first-order,…,rollout|rank`` combines the estimate with the default
    rollout's map (:func:`combined`), the combinations measured in docs/explanations.md and kept out of the app."""
    name, options = method_options(spec)
    weighted = options.pop("weighted", None)
    heat = ex.raw_map(x, name, target, **options)
    return combined(heat, ex.raw_map(x, DEFAULT_METHOD, target), weighted) if weighted else heat


def combined(drops: np.ndarray, where: np.ndarray, how: str) -> np.ndarray:
    """A g×g patch map with a finer map of the same frame (``where``, e.g. the rollout's 2g×2g): ``"rollout"``
    multiplies their positive parts, ``"rank"`` averages their ranks (each in [0, 1]); at ``where``'s resolution."""
    fine = cv2.resize(drops.astype(np.float32), where.shape[::-1], interpolation=cv2.INTER_NEAREST)
    if how == "rollout":
        return np.clip(where, 0, None) * np.clip(fine, 0, None)
    if how == "rank":
        return (_ranks(where) + _ranks(fine)) / 2
    raise ValueError(f"unknown combination {how!r}; choose rollout or rank")


def _ranks(values: np.ndarray) -> np.ndarray:
    """Each value's rank in [0, 1] (0 the lowest), same shape."""
    ranks = np.empty(values.size, np.float32)
    ranks[np.argsort(values, axis=None, kind="stable")] = np.arange(values.size) / max(1, values.size - 1)
    return ranks.reshape(values.shape)
