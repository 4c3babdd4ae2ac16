import numpy as np
import pytest

from bmc.calibration import softmax
from bmc.metrics import classification_metrics


def test_metrics_match_hand_computed_values():
    # 4 images, 3 classes. argmax predictions: 0, 1, 0, 2; truth: 0, 1, 1, 2.
    probs = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8]])
    r = classification_metrics(probs, [0, 1, 1, 2])
    assert r["accuracy"] == pytest.approx(3 / 4)
    # recall: class0 1/1, class1 1/2, class2 1/1 -> balanced = (1 + .5 + 1) / 3
    assert r["balanced_accuracy"] == pytest.approx(2.5 / 3)
    # precision: class0 1/2, class1 1/1, class2 1/1
    assert r["per_class"]["precision"] == pytest.approx([0.5, 1.0, 1.0])
    # F1: 2/3, 2/3, 1
    assert r["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    assert r["weighted_f1"] == pytest.approx((2 / 3 * 1 + 2 / 3 * 2 + 1 * 1) / 4)
    assert r["confusion_matrix"] == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    assert r["per_class"]["support"] == [1, 2, 1]
    # the third image's truth (1) is its second choice
    assert r["top2_accuracy"] == pytest.approx(1.0)
    # ECE with 15 bins: bins hold {0.6: wrong}, {0.7: right}, {0.8: right}, {0.9: right}
    expected = (abs(0 - 0.6) + abs(1 - 0.7) + abs(1 - 0.8) + abs(1 - 0.9)) / 4
    assert r["ece"] == pytest.approx(expected, abs=1e-6)


def test_macro_average_ignores_classes_absent_from_the_references():
    probs = np.array([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1]])
    r = classification_metrics(probs, [0, 1], num_classes=3)
    assert r["macro_f1"] == pytest.approx(1.0)
    assert len(r["confusion_matrix"]) == 3


def test_softmax_temperature_flattens():
    logits = np.array([[2.0, 0.0]])
    assert softmax(logits, 2.0)[0, 0] < softmax(logits, 1.0)[0, 0]
    assert softmax(logits).sum() == pytest.approx(1.0)


def test_macro_f1_from_confusion_matches_the_metric_module_and_its_spread_shrinks_with_more_images():
    from bmc.metrics import classification_metrics, macro_f1_from_confusion, macro_f1_spread

    rng = np.random.default_rng(0)
    refs = rng.integers(0, 4, 300)
    refs[refs == 3] = 2  # class 3 absent from the references: left out of the macro average
    preds = np.where(rng.random(300) < 0.7, refs, rng.integers(0, 4, 300))
    result = classification_metrics(np.eye(4)[preds], refs, 4)
    assert macro_f1_from_confusion(np.asarray(result["confusion_matrix"])) == pytest.approx(result["macro_f1"])
    small = macro_f1_spread(result["confusion_matrix"])
    large = macro_f1_spread(np.asarray(result["confusion_matrix"]) * 16)  # same rates, 16x the images: spread / 4
    assert 0.01 < small < 0.06 and large == pytest.approx(small / 4, rel=0.2)
    assert macro_f1_spread([[50, 0], [0, 50]]) == 0.0  # all right in every resample


def test_a_paired_difference_tells_apart_runs_that_differ_on_a_few_images_only():
    from bmc.metrics import macro_f1_spread, paired_macro_f1_difference

    rng = np.random.default_rng(1)
    y = rng.integers(0, 5, 900)
    a = np.where(rng.random(900) < 0.8, y, rng.integers(0, 5, 900))
    b = np.where(rng.random(900) < 0.1, y, a)  # b corrects about a tenth of a's images, changes nothing else
    assert paired_macro_f1_difference(y, a, a, 5) == (0.0, 0.0, 0.0)
    diff, low, high = paired_macro_f1_difference(y, a, b, 5)
    assert 0 < low < diff < high
    # the two runs' independent spreads would not separate them
    spread = macro_f1_spread(np.bincount(y * 5 + a, minlength=25).reshape(5, 5))
    assert diff < 2 * spread
    assert paired_macro_f1_difference(y, b, a, 5)[0] == -diff
