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


def test_the_folder_settings_round_trip_through_config_json(tmp_path):
    import json
    from types import SimpleNamespace

    from bmc.model import update_config
    from bmc.model_folder import FolderSettings

    (tmp_path / "config.json").write_text("{}")
    calib = {"temperature": 1.7, "review_threshold": 0.62, "validation_coverage": 0.6}
    update_config(tmp_path, **FolderSettings.from_calibration(calib, denoise=True).config_keys())
    written = json.loads((tmp_path / "config.json").read_text())
    assert written == {"bmc_temperature": 1.7, "bmc_review_threshold": 0.62, "bmc_validation_flagged": 0.4, "bmc_denoise": True}
    read = FolderSettings.from_config(SimpleNamespace(**written))
    assert (read.temperature, read.review_threshold, read.denoise, read.adapted_from) == (1.7, 0.62, True, None)
    assert abs(read.validation_flagged - 0.4) < 1e-12
    assert FolderSettings.from_config(SimpleNamespace()) == FolderSettings()  # a plain transformers folder: the defaults
