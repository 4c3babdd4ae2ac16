"""bench/adapt_curve.py: which cells each adaptation learns from, so its figures are on cells it never saw."""

import numpy as np

from bench.adapt_curve import draws


def test_k_per_class_takes_all_of_a_smaller_class_and_seeds_repeat():
    codes = np.array(["NGS"] * 30 + ["EOS"] * 12 + ["BAS"] * 3)
    runs = draws(codes, [5, 20], 2, folds=0)
    assert [(k, seed) for k, seed, _ in runs] == [(5, 0), (5, 1), (20, 0), (20, 1)]
    for k, _, picked in runs:
        assert len(set(picked)) == len(picked)
        assert {c: int((codes[picked] == c).sum()) for c in ("NGS", "EOS", "BAS")} == {"NGS": min(k, 30), "EOS": min(k, 12), "BAS": 3}
    assert np.array_equal(runs[0][2], draws(codes, [5], 1, folds=0)[0][2])  # seed 0 draws the same cells every time


def test_folds_hold_out_every_cell_once_with_each_class_in_every_fold():
    codes = np.array(["NGS"] * 30 + ["EOS"] * 12 + ["BAS"] * 3)
    runs = draws(codes, [5], 5, folds=3)
    assert [(k, seed) for k, seed, _ in runs] == [("all", 0), ("all", 1), ("all", 2)]
    held = np.concatenate([np.setdiff1d(np.arange(len(codes)), picked) for _, _, picked in runs])
    assert sorted(held) == list(range(len(codes)))
    for _, _, picked in runs:
        assert set(codes[picked]) == {"NGS", "EOS", "BAS"}


def test_a_simulated_review_checks_the_asked_number_of_cells_and_learns_the_rest():
    from types import SimpleNamespace

    from bench.adapt_curve import reviewed_count

    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, 80)
    embeddings = rng.normal(size=(80, 8)) + 3 * np.eye(3)[truth] @ rng.normal(size=(3, 8))  # a lab whose classes separate
    logits = rng.normal(size=(80, 3))  # a model that knows nothing of its cells: it flags most of them
    predictor = SimpleNamespace(temperature=1.0, threshold=0.9, validation_flagged=0.1)
    labels, source = reviewed_count(logits, embeddings, truth, predictor, 16)
    reviewed = np.array([s == "reviewed" for s in source])
    assert reviewed.sum() == 16 and (labels[reviewed] == truth[reviewed]).all()
    assert set(np.array(source)[~reviewed]) == {"learnt"}  # the gate adopted the head for this unfamiliar count
    assert (labels[~reviewed] == truth[~reviewed]).mean() > 0.8


def test_settings_are_a_tuning_config_not_module_globals():
    import pytest

    from bench.adapt_curve import tuning_config
    from bmc.lab import tuning

    config, settings = tuning_config(["DISTILL_WEIGHT=10", "epochs=3"])
    assert (config.distill_weight, config.epochs, settings) == (10.0, 3, {"distill_weight": 10.0, "epochs": 3})
    assert tuning.RECIPE.distill_weight == 30.0 and tuning.RECIPE.epochs == 5  # the recipe itself is untouched
    with pytest.raises(ValueError, match="no setting SOUPS"):
        tuning_config(["SOUPS=3"])
