import numpy as np
import pytest

from bmc.calibration import calibrate, fit_temperature, review_threshold, softmax


def test_temperature_recovers_the_true_one():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(size=(4000, 5)) * 2
    labels = np.array([rng.choice(5, p=p) for p in softmax(true_logits)])
    overconfident = true_logits * 3  # what an over-confident network reports
    assert fit_temperature(overconfident, labels) == pytest.approx(3.0, rel=0.1)


def test_review_threshold_meets_the_target_accuracy():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2000, 4)) * 3
    labels = np.array([rng.choice(4, p=p) for p in softmax(logits)])
    probs = softmax(logits)
    thr = review_threshold(probs, labels, 0.9)
    above = probs.max(1) >= thr
    assert (probs.argmax(1)[above] == labels[above]).mean() >= 0.9
    assert 0 < above.mean() < 1
    summary = calibrate(logits, labels, 0.9)
    assert summary["validation_accuracy_above_threshold"] >= 0.9


def test_the_threshold_holds_at_the_lower_confidence_bound_not_just_on_average():
    from scipy.stats import binomtest

    rng = np.random.default_rng(2)
    logits = rng.normal(size=(900, 5)) * 3
    labels = np.array([rng.choice(5, p=p) for p in softmax(logits)])
    probs = softmax(logits)
    thr = review_threshold(probs, labels, 0.95)
    above = probs.max(1) >= thr
    right = int((probs.argmax(1)[above] == labels[above]).sum())
    low = binomtest(right, int(above.sum())).proportion_ci(confidence_level=0.90, method="exact").low  # one-sided 95 %
    assert low >= 0.95 - 1e-9
    # the earlier point-estimate rule passes more cells, whose accuracy is 95 % only on average
    order = np.argsort(-probs.max(1))
    running = np.cumsum((probs.argmax(1) == labels)[order]) / np.arange(1, 901)
    assert above.sum() < np.nonzero(running >= 0.95)[0].max() + 1
