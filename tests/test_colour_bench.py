"""bench/colour.py's Macenko view: stain vectors found and re-stained as Macenko et al. 2009 do."""

from __future__ import annotations

import numpy as np

from bench.colour import macenko, stain_vectors


def two_stain_image(seed: int = 0) -> np.ndarray:
    """A synthetic smear: a blue-purple stain (absorbs red most) and a pink one (absorbs green most), mixed in random
    amounts per pixel, on light glass, through Beer-Lambert."""
    rng = np.random.default_rng(seed)
    nuclear, eosin = np.array([0.65, 0.70, 0.29]), np.array([0.07, 0.99, 0.11])
    amounts = rng.uniform(0, 1.5, size=(64, 64, 2)) * (rng.random((64, 64, 1)) > 0.3)
    density = amounts[..., :1] * nuclear + amounts[..., 1:] * eosin
    return np.clip(255 * np.exp(-density) - 1, 0, 255).astype(np.uint8)


def test_stain_vectors_put_the_nuclear_stain_first() -> None:
    found = stain_vectors(two_stain_image())
    assert found is not None
    vectors, amounts = found
    nuclear, eosin = vectors[:, 0], vectors[:, 1]
    assert nuclear[0] / nuclear[1] > eosin[0] / eosin[1]  # absorbs red against green more
    assert np.allclose(np.linalg.norm(vectors, axis=0), 1.0)
    assert (amounts > 0).all()


def test_restaining_with_its_own_reference_keeps_the_image_and_blank_glass_is_left_alone() -> None:
    image = two_stain_image()
    own = stain_vectors(image)
    assert own is not None
    same = macenko(image, own)
    assert np.abs(same.astype(int) - image.astype(int)).mean() < 3
    other = stain_vectors(two_stain_image(seed=1))
    assert other is not None
    glass = np.full((32, 32, 3), 235, np.uint8)
    assert np.array_equal(macenko(glass, other), glass)  # no stained pixel: nothing to re-stain


def test_surest_view_per_count_needs_no_labels_and_reports_that_views_accuracy() -> None:
    from bench.colour import surest_views

    sets = {
        "bccd": {"plain": {"accuracy": 0.7, "mean_confidence": 0.6}, "reinhard": {"accuracy": 0.5, "mean_confidence": 0.8}},
        "zheng2018-ds2": {"plain": {"accuracy": 0.73, "mean_confidence": 0.9}},  # one view: nothing to choose
    }
    assert surest_views(sets) == {"bccd": {"view": "reinhard", "accuracy": 0.5, "mean_confidence": 0.8}}
