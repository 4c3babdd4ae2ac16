"""The learning review on generated counts: it learns where the model is lost, and leaves a familiar count alone."""

import numpy as np
import pytest

from bmc.calibration import softmax
from bmc.count.differential import Cell, build_report
from bmc.count.learning import SOURCE_LEARNT, SOURCE_MODEL, SOURCE_REVIEWED, looks_unfamiliar, relabel
from bmc.count.report import table, write_all
from bmc.serve.predictor import Prediction


def _count(n=240, classes=3, wrong=True, seed=0):
    """Cells whose embeddings cluster by true class; the model is either systematically wrong and unsure
    (another lab) or right and sure (its own lab)."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, classes, n)
    centres = rng.normal(0, 3, (classes, 16))
    embeddings = centres[truth] + rng.normal(0, 1, (n, 16))
    said = (truth + 1) % classes if wrong else truth
    logits = rng.normal(0, 0.3, (n, classes))
    logits[np.arange(n), said] += 1.0 if wrong else 4.0
    return logits.astype(np.float32), embeddings.astype(np.float32), truth


def _review_least_confident(logits, truth, k, temperature=1.0):
    order = np.argsort(softmax(logits, temperature).max(axis=1))[:k]
    return {int(i): int(truth[i]) for i in order}


def test_a_lost_model_is_corrected_by_what_the_reviewed_cells_teach():
    logits, emb, truth = _count(wrong=True)
    reviewed = _review_least_confident(logits, truth, 24)
    state = relabel(logits, emb, reviewed, threshold=0.8, validation_flagged=0.3)
    assert state.learnt and "learnt" in state.reason
    assert (softmax(logits).argmax(1) == truth).mean() < 0.05  # the model alone gets almost none right
    assert (state.labels == truth).mean() > 0.9
    assert all(state.source[i] == SOURCE_REVIEWED for i in reviewed)
    assert state.source.count(SOURCE_LEARNT) == len(truth) - len(reviewed)


def test_a_familiar_count_keeps_the_models_labels():
    logits, emb, truth = _count(wrong=False)
    logits[:30] = 0.0  # 30 hard cells the model is unsure of, as on its validation images
    reviewed = _review_least_confident(logits, truth, 24)
    state = relabel(logits, emb, reviewed, threshold=0.8, validation_flagged=0.15)
    assert not state.learnt and "not learnt" in state.reason
    unreviewed = [i for i in range(len(truth)) if i not in reviewed]
    assert np.array_equal(state.labels[unreviewed], softmax(logits).argmax(1)[unreviewed])
    assert set(state.source[i] for i in unreviewed) == {SOURCE_MODEL}


@pytest.mark.parametrize(
    "reviewed, why", [({}, "no cell reviewed"), ({0: 1, 1: 2}, "learning starts at 6 cells"), ({i: 0 for i in range(10)}, "of 1 class")]
)
def test_too_little_review_to_learn_from_says_so(reviewed, why):
    logits, emb, _ = _count()
    state = relabel(logits, emb, reviewed, threshold=0.8, validation_flagged=0.3)
    assert not state.learnt and why in state.reason


def test_unfamiliar_means_far_more_flagged_than_on_validation():
    sure = np.tile([0.9, 0.05, 0.05], (100, 1))
    unsure = np.tile([0.5, 0.3, 0.2], (100, 1))
    assert not looks_unfamiliar(sure, 0.8, 0.3) and looks_unfamiliar(unsure, 0.8, 0.3)
    assert not looks_unfamiliar(unsure, 0.8, None)  # a model without the baseline never claims it


def test_the_count_shows_learnt_labels_and_their_sources(tmp_path):
    logits, emb, truth = _count(n=120, wrong=True)
    codes = ["BLA", "LYT", "NGS"]
    probs = softmax(logits)
    cells = [
        Cell(
            f"c{i}.jpg",
            Prediction(
                {c: float(p) for c, p in zip(codes, probs[i])},
                codes[int(probs[i].argmax())],
                float(probs[i].max()),
                bool(probs[i].max() < 0.8),
                logits[i],
                emb[i],
            ),
        )
        for i in range(len(truth))
    ]
    report = build_report(cells, codes, "m", "v", 0.8, validation_flagged=0.3)
    queue = report.review_queue()
    reviewed = report.reviewed({name: codes[truth[int(name[1:-4])]] for name in queue[:20]})
    counts = reviewed.source_counts
    assert counts == {"model": 0, "learnt": 100, "reviewed": 20}
    assert sum(reviewed.label(c) == codes[t] for c, t in zip(cells, truth)) > 0.9 * len(truth)
    assert "100 learnt from this review" in reviewed.headline()
    assert table(reviewed)[-1][-1] == "0 · 100 · 20"
    assert reviewed.review_queue()[-20:] == sorted(queue[:20], key=[c.name for c in cells].index)  # reviewed cells last
    off = build_report(cells, codes, "m", "v", 0.8, validation_flagged=0.3, learn=False).reviewed({queue[0]: "BLA"})
    assert off.source_counts["learnt"] == 0 and "learning is off" in off.learning_note
    rows = (tmp_path / "out").mkdir() or write_all(reviewed, tmp_path / "out")
    text = rows["csv"].read_text()
    assert ",learnt," in text and ",reviewed," in text


def test_the_head_keeps_its_iteration_cap_quiet(monkeypatch):
    """A refit that hits MAX_ITER (deliberately) must not log a ConvergenceWarning per review on the server."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    from bmc.count import learning as adaptation

    monkeypatch.setattr(adaptation, "MAX_ITER", 2)  # a cap these data surely hit
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(300, 40)), rng.integers(0, 5, 300)
    with warnings.catch_warnings(record=True) as plain:
        warnings.simplefilter("always")
        LogisticRegression(C=adaptation.HEAD_C, max_iter=2).fit(x, y)
    assert any(issubclass(w.category, ConvergenceWarning) for w in plain)  # the data does hit the cap
    with warnings.catch_warnings(record=True) as ours:
        warnings.simplefilter("always")
        adaptation._head().fit(x, y)
    assert not any(issubclass(w.category, ConvergenceWarning) for w in ours)
