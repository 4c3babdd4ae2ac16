"""Learning from the reviewer: the reviewed cells of a count re-label the cells nobody reviewed.

A model that is 40 % right on another laboratory's cells makes a count that plain review fixes only
cell by cell. Here every review decision also teaches a light head: a multinomial logistic regression
(scikit-learn) on each cell's embedding (the features the model's own head reads, from the same
forward pass, :mod:`bmc.serve.backends`) beside the model's calibrated log-probabilities. Fitted on the
reviewed cells, it re-labels every unreviewed one.

Learning must never make a good count worse. Where the model already knows the cells (marrow like its
training images), a head fitted on a few dozen of the *least confident* cells — the ones a reviewer
checks first — is no better than the model on the confident rest, and replaces good labels with bad
ones. Comparing head
and model on the reviewed cells cannot see this, as those cells are the model's worst. So the head's
labels are adopted only when both hold:

1. on the reviewed cells the head predicts the reviewer better than the model does (cross-validated:
   the head never grades itself on cells it was fitted on); and
2. the model is out of its depth on this count: it flags far more of its cells than of its validation
   images (:func:`looks_unfamiliar`, measured on every cell, whatever was reviewed), or, on the reviewed
   cells, it is right far less often than its calibrated confidence promises.

:func:`relabel` returns the decision and its reason in one line for the reviewer; ``bench/review.py``
measures the rule (docs/performance.md).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import KFold

from bmc.calibration import flagged, softmax

MIN_REVIEWED = 6
"""Fewer reviewed cells than this fit no head: nothing to learn from yet."""
MIN_CLASSES = 2
"""A head needs at least two reviewed classes to tell anything apart."""
CV_FOLDS = 3
"""Folds of the cross-validated comparison of head and model on the reviewed cells (3 keeps a refit under 1 s)."""
HEAD_C = 0.5
"""Inverse L2 strength of the logistic regression: a few dozen cells, hundreds of features."""
MAX_ITER = 100
"""L-BFGS iterations of one fit: enough on these features, and it bounds the refit time."""
EMBEDDING_WEIGHT, LOGIT_WEIGHT = 8.0, 3.0
"""Scales of the standardised embedding and of the model's log-probabilities among the head's features."""
Z_SHIFT = 3.0
"""How many standard errors above its validation share the model's flagged share must be to call a count unfamiliar."""
Z_DEFICIT = 2.0
"""How many standard errors the model's accuracy on the reviewed cells must fall below its calibrated promise."""

SOURCE_MODEL, SOURCE_LEARNT, SOURCE_REVIEWED = "model", "learnt", "reviewed"
SOURCES = (SOURCE_MODEL, SOURCE_LEARNT, SOURCE_REVIEWED)
"""Where a cell's label comes from: the model, the head learnt from this review, or the reviewer."""
LEARNT_WEIGHT = 0.3
"""When ``bmc adapt --learnt`` makes a model for the lab from a reviewed count, a cell whose label was learnt here
(nobody checked it) weighs this much against a reviewed cell's 1, and is never among the cells the model is measured
on (:mod:`bmc.lab.adapt`; chosen by measurement, docs/experiments.md)."""


@dataclass
class Relabelled:
    """The labels of a whole count after learning from its reviewed cells."""

    probs: np.ndarray
    """(n, C) probabilities each label was chosen by (a reviewed cell: one-hot)."""
    source: list[str]
    """Per cell, one of :data:`SOURCES`."""
    learnt: bool
    """Whether the head's labels were adopted."""
    reason: str
    """Why (or why not), in one line for the reviewer."""

    @property
    def labels(self) -> np.ndarray:
        return self.probs.argmax(axis=1)

    @property
    def confidence(self) -> np.ndarray:
        return self.probs.max(axis=1)


def features(logits: np.ndarray, embeddings: np.ndarray, temperature: float) -> np.ndarray:
    """The head's input: the count's embeddings standardised over the count (so another lab's colour shift
    is taken out) beside the model's calibrated log-probabilities (so the head can lean on the model)."""
    emb = np.asarray(embeddings, dtype=np.float64)
    emb = (emb - emb.mean(axis=0)) / (emb.std(axis=0) + 1e-6)
    logp = np.log(softmax(logits, temperature) + 1e-9)
    return np.hstack([EMBEDDING_WEIGHT * emb / np.sqrt(emb.shape[1]), LOGIT_WEIGHT * logp / np.sqrt(logp.shape[1])])


class _Head(LogisticRegression):
    """The logistic head, quiet about its iteration cap: :data:`MAX_ITER` is a deliberate time bound, and a
    ConvergenceWarning per refit would fill the server's log with a warning nobody can act on."""

    def fit(self, x: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None) -> _Head:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return super().fit(x, y, sample_weight)


def _head() -> Any:
    return _Head(C=HEAD_C, max_iter=MAX_ITER)


def _cv_predictions(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Out-of-fold head predictions for the reviewed cells (a fold missing a class predicts without it)."""
    out = np.empty(len(y), dtype=y.dtype)
    folds = KFold(n_splits=min(CV_FOLDS, len(y)), shuffle=True, random_state=0)
    for train, held in folds.split(x):
        classes = np.unique(y[train])
        if len(classes) < 2:
            out[held] = classes[0]
            continue
        out[held] = _head().fit(x[train], y[train]).predict(x[held])
    return out


def looks_unfamiliar(model_probs: np.ndarray, threshold: float, validation_flagged: float | None) -> bool:
    """Whether the model flags far more of this count than of its validation images (one-sided binomial
    z-test beyond :data:`Z_SHIFT`): the mark of another laboratory's cells, measured on every cell of the
    count, so it does not depend on which cells were reviewed."""
    if validation_flagged is None or not 0 < validation_flagged < 1 or not len(model_probs):
        return False
    share = float(flagged(model_probs.max(axis=1), threshold).mean())
    z = (share - validation_flagged) / np.sqrt(validation_flagged * (1 - validation_flagged) / len(model_probs))
    return bool(z > Z_SHIFT)


def _gate(
    x: np.ndarray, y: np.ndarray, model_probs: np.ndarray, idx: np.ndarray, threshold: float, validation_flagged: float | None
) -> tuple[bool, str]:
    """Whether the head's labels replace the model's (the two conditions in the module docstring), and why."""
    head_acc = float((_cv_predictions(x, y) == y).mean())
    model_acc = float((model_probs[idx].argmax(axis=1) == y).mean())
    on_reviewed = f"on the {len(idx)} reviewed cells the head is {head_acc:.0%} right (cross-validated), the model {model_acc:.0%}"
    if head_acc <= model_acc:
        return False, f"not learnt: {on_reviewed}; the model's labels stand"
    claimed = model_probs[idx].max(axis=1)
    deficit = float(claimed.mean()) - model_acc
    spread = float(np.sqrt((claimed * (1 - claimed)).sum())) / len(idx)
    if looks_unfamiliar(model_probs, threshold, validation_flagged) or deficit > Z_DEFICIT * spread:
        return True, f"learnt from this review: {on_reviewed}, and these cells are unlike the model's training images"
    return False, (
        f"not learnt: {on_reviewed}, but the model is as sure of this count as of its validation images, "
        "where it is right; its labels stand"
    )


def relabel(
    logits: np.ndarray,
    embeddings: np.ndarray,
    reviewed: Mapping[int, int],
    temperature: float = 1.0,
    threshold: float = 0.5,
    validation_flagged: float | None = None,
    learn: bool = True,
) -> Relabelled:
    """Labels for every cell of a count: reviewed cells keep the reviewer's label; the others get the
    head's label where the head is adopted (:func:`_gate`), else the model's.

    ``reviewed`` maps a cell's index to the reviewer's class index (the model's classes); ``threshold`` and
    ``validation_flagged`` are the model's review threshold and the share of validation images it flags."""
    n, n_classes = logits.shape
    model_probs = softmax(logits, temperature)
    probs = model_probs.copy()
    source = [SOURCE_MODEL] * n
    idx = np.fromiter(reviewed.keys(), dtype=int, count=len(reviewed))
    y = np.fromiter(reviewed.values(), dtype=int, count=len(reviewed))
    learnt, reason = False, "no cell reviewed yet: the model's labels stand"
    if learn and len(idx):
        classes = np.unique(y)
        if len(idx) < MIN_REVIEWED or len(classes) < MIN_CLASSES:
            reason = (
                f"{len(idx)} cell(s) of {len(classes)} class(es) reviewed: learning starts at {MIN_REVIEWED} cells of "
                f"{MIN_CLASSES} classes; the model's labels stand"
            )
        else:
            x = features(logits, embeddings, temperature)
            adopt, reason = _gate(x[idx], y, model_probs, idx, threshold, validation_flagged)
            if adopt:
                rest = np.setdiff1d(np.arange(n), idx)
                head = _head().fit(x[idx], y)
                probs[rest] = 0.0
                probs[np.ix_(rest, head.classes_)] = head.predict_proba(x[rest])
                for i in rest:
                    source[i] = SOURCE_LEARNT
                learnt = True
    for i, code in zip(idx, y):
        probs[i] = np.eye(n_classes)[code]
        source[i] = SOURCE_REVIEWED
    return Relabelled(probs, source, learnt, reason)
