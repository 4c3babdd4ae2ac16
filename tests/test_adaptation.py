"""The learning review on generated counts: it learns where the model is lost, leaves a familiar count alone, learns only
from the cells a reviewer saw, never invents a class, and its last review can be undone."""

import numpy as np
import pytest

from bmc.calibration import softmax
from bmc.count.differential import Cell, build_report
from bmc.count.learning import (
    PRIOR_FLOOR,
    SOURCE_LEARNT,
    SOURCE_MODEL,
    SOURCE_REVIEWED,
    LogitCorrection,
    looks_unfamiliar,
    relabel,
)
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
    cells = _cells(logits, emb, codes)
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


def _cells(logits, emb, codes, threshold=0.8):
    probs = softmax(logits)
    return [
        Cell(
            f"c{i}.jpg",
            Prediction(
                {c: float(p) for c, p in zip(codes, probs[i])},
                codes[int(probs[i].argmax())],
                float(probs[i].max()),
                bool(probs[i].max() < threshold),
                logits[i],
                emb[i],
            ),
        )
        for i in range(len(logits))
    ]


def _mostly_right(n=200, seed=1):
    """Another lab's count the model gets mostly right: 85 % right, the wrong cells as sure as the right ones, and
    many cells unsure (so the count looks unfamiliar: the old gate's first condition holds)."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 3, n)
    emb = rng.normal(0, 0.3, (3, 16))[truth] + rng.normal(0, 1, (n, 16))  # the cells look much alike
    said = np.where(rng.random(n) < 0.85, truth, (truth + 1) % 3)
    logits = rng.normal(0, 0.3, (n, 3))
    logits[np.arange(n), said] += 1.2
    return logits.astype(np.float32), emb.astype(np.float32), truth


@pytest.mark.parametrize("how", ["file", "app"])
def test_a_corrections_only_review_never_lowers_the_right_labels(how):
    """Issue 31's failure: a reviewer who corrects the wrong cells and skips the right ones made the old review
    re-label the right cells nobody reviewed (38/40 right became 16/40). From a file without seen markers
    (corrections only) or in the app, passing over the cells it opened, the corrections stand and nothing else moves."""
    logits, emb, truth = _mostly_right()
    codes = ["BLA", "LYT", "NGS"]
    report = build_report(_cells(logits, emb, codes), codes, "m", "v", 0.8, validation_flagged=0.05)
    model_right = sum(c.prediction.top_code == codes[t] for c, t in zip(report.cells, truth))
    queue = report.review_queue()[:60]  # the least sure 30 %: the wrong ones among them are corrected
    wrong = [n for n in queue if report.cell(n).prediction.top_code != codes[truth[int(n[1:-4])]]]
    assert 5 <= len(wrong) < len(queue)
    if how == "file":
        reviewed = report.reviewed({n: codes[truth[int(n[1:-4])]] for n in wrong}, seen=False)
        assert "corrections only" in reviewed.learning_note and "reviewed' column" in reviewed.learning_note
    else:
        for name in wrong:  # the app offers the queue's head; this reviewer opens only the wrong cells
            reviewed = report.reviewed({name: codes[truth[int(name[1:-4])]]})
            report = reviewed.offering(reviewed.review_queue()[0])
        assert "learning paused" in reviewed.learning_note
    after = sum(reviewed.label(c) == codes[t] for c, t in zip(reviewed.cells, truth))
    assert after == model_right + len(wrong) and reviewed.source_counts["learnt"] == 0


def test_only_the_cells_seen_teach():
    logits, emb, truth = _count(wrong=True)
    reviewed = _review_least_confident(logits, truth, 30)
    seen = list(reviewed)[:4]  # 4 seen: below MIN_REVIEWED, so nothing is learnt whatever the 26 corrections say
    state = relabel(logits, emb, reviewed, threshold=0.8, validation_flagged=0.3, seen=seen)
    assert not state.learnt and "4 cell(s)" in state.reason and "seen" in state.reason
    assert all(state.source[i] == SOURCE_REVIEWED for i in reviewed)
    state = relabel(logits, emb, reviewed, threshold=0.8, validation_flagged=0.3, seen=())
    assert not state.learnt and "corrections only" in state.reason


def test_the_correction_never_invents_a_class():
    """No cell moves to a class no reviewer gave unless the model put PRIOR_FLOOR there; unchanged, it is the model."""
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (50, 4))
    model = softmax(logits)
    logp, x = np.log(model), rng.normal(size=(50, 8))
    same = LogitCorrection(np.array([0, 1]), np.zeros((2, 8)), np.zeros(2), 1.0)
    assert np.allclose(same.probs(logp, x, model).argmax(1), model.argmax(1))  # the model stays the prior
    down = LogitCorrection(np.array([0, 1]), np.zeros((2, 8)), np.array([-60.0, -60.0]), 1.0)  # reviewed classes pushed away
    labels = down.probs(logp, x, model).argmax(1)
    assert all(c in (0, 1) or model[i, c] >= PRIOR_FLOOR for i, c in enumerate(labels))

    logits, emb, truth = _count(n=240, classes=4, wrong=True)
    reviewed = {i: t for i, t in _review_least_confident(logits, truth, 40).items() if t != 3}  # class 3 never reviewed
    state = relabel(logits, emb, reviewed, threshold=0.8, validation_flagged=0.3)
    model = softmax(logits)
    assert state.learnt
    moved = [i for i in range(len(truth)) if state.source[i] == SOURCE_LEARNT and state.labels[i] == 3]
    assert all(model[i, 3] >= PRIOR_FLOOR for i in moved)


def test_the_last_review_is_counted_and_undone():
    logits, emb, truth = _count(n=120, wrong=True)
    codes = ["BLA", "LYT", "NGS"]
    report = build_report(_cells(logits, emb, codes), codes, "m", "v", 0.8, validation_flagged=0.3)
    assert report.last_review_changes is None and report.undo() is None
    queue = report.review_queue()
    before = report.reviewed({n: codes[truth[int(n[1:-4])]] for n in queue[:19]})
    after = before.reviewed({queue[19]: codes[truth[int(queue[19][1:-4])]]})
    mine, learnt = after.last_review_changes
    relabelled = sum(after.label(c) != before.label(c) for c in after.cells)
    assert mine + learnt == relabelled and f"The last review changed {relabelled} label(s)" in after.sources_text
    undone = after.undo()
    assert undone.corrections == before.corrections and undone.learnt == before.learnt and undone.undo() is None


def test_a_cell_passed_over_pauses_learning_until_it_is_decided():
    logits, emb, truth = _count(n=120, wrong=True)
    codes = ["BLA", "LYT", "NGS"]
    report = build_report(_cells(logits, emb, codes), codes, "m", "v", 0.8, validation_flagged=0.3)
    queue = report.review_queue()
    truth_of = {n: codes[truth[int(n[1:-4])]] for n in queue}
    report = report.reviewed({n: truth_of[n] for n in queue[:20]}).offering(queue[20])
    assert report.learnt
    skipped = report.reviewed({queue[21]: truth_of[queue[21]]})  # the offered cell left for another
    assert skipped.passed_over == {queue[20]} and not skipped.learnt and queue[20] in skipped.learning_note
    resumed = skipped.reviewed({queue[20]: truth_of[queue[20]]})
    assert not resumed.passed_over and resumed.learnt


def test_a_learnt_label_replaces_a_surer_model_label_only_when_as_sure(monkeypatch):
    """A by-class reviewer sees a class's least sure cells, mostly of another class: what they teach must not
    carry over onto that class's sure cells unless the correction is about as sure as the model was."""
    import bmc.count.learning as learning

    rng = np.random.default_rng(0)
    truth = np.r_[np.where(rng.random(40) < 0.9, 1, 0), np.zeros(40, int), np.full(40, 2)]
    logits = np.zeros((120, 3), np.float32)
    logits[:40, 0] = 0.4 + rng.normal(0, 0.1, 40)  # the least sure cells the model calls 0: mostly 1 in truth
    logits[40:80, 0] = 2.2 + rng.normal(0, 0.1, 40)  # its sure cells called 0: all 0 in truth
    logits[80:, 2] = 3.0
    embeddings = rng.normal(0, 1, (120, 8)).astype(np.float32)
    reviewed = {i: int(truth[i]) for i in range(40)}  # the reviewer went through class 0's least sure cells
    model = softmax(logits)

    def changed(state):
        return [i for i in range(120) if state.source[i] == SOURCE_LEARNT and state.labels[i] != model[i].argmax()]

    state = relabel(logits, embeddings, reviewed)
    assert state.learnt
    for i in changed(state):
        assert state.confidence[i] >= learning.KEEP_SURE * model[i].max()
    monkeypatch.setattr(learning, "KEEP_SURE", 0.0)
    unguarded = relabel(logits, embeddings, reviewed)
    assert len(changed(unguarded)) > len(changed(state))  # without the rule more sure cells are moved
    right = lambda s: int((s.labels[40:80] == 0).sum())  # noqa: E731
    assert right(state) > right(unguarded)
