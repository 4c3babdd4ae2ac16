"""Learning from the reviewer: the cells a reviewer saw correct the model's labels of the cells nobody reviewed.

A model that is 40 % right on another laboratory's cells makes a count that plain review fixes only cell by
cell. Here every review decision also teaches a light correction of the model (:class:`LogitCorrection`), fitted
on the reviewed cells and applied to every unreviewed one. A review must never make a count worse, whoever the
reviewer is, so three rules hold:

1. **Only what the reviewer saw is evidence.** A cell the reviewer opened and confirmed or relabelled says how
   the model fares on cells like it; a correction alone does not (a reviewer who writes down only the wrong
   cells makes the model look 0 % right), and a cell nobody listed is unknown. Cells reviewed but not seen
   (``seen`` of :func:`relabel`) keep their reviewer's label and teach nothing; with no cell seen, learning is
   off and the reason says what turns it on.
2. **The model stays the prior.** The correction adds a per-class bias and a residual read from the cell's
   embedding (the features the model's own head reads, from the same forward pass, :mod:`bmc.serve.backends`)
   to the model's calibrated log-probabilities, and may soften their scale; it is regularised towards no change.
   Only classes a reviewer gave a seen cell get a residual, and no cell moves to a class that no reviewer gave
   unless the model itself put :data:`PRIOR_FLOOR` of probability there: the correction never invents a class.
3. **It is adopted only where the model is out of its depth** and beats the model on the seen cells
   (cross-validated: it never grades itself on cells it was fitted on). Out of its depth: the model flags far
   more of the count than of its validation images (:func:`looks_unfamiliar`, measured on every cell, whatever
   was reviewed), or on the seen cells it is right far less often than its calibrated confidence promises
   (:data:`MIN_DEFICIT`). Even then it re-labels only cells whose model label the reviewer has seen on some cell
   (a reviewer who went through one class's cells teaches nothing about the others), and only where the
   correction is about as sure of its label as the model was of its own (:data:`KEEP_SURE`).

:func:`relabel` returns the decision and its reason in one line for the reviewer; ``bench/review.py``
measures the rules with four simulated reviewers (docs/performance.md).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from sklearn.model_selection import KFold

from bmc.calibration import flagged, softmax

MIN_REVIEWED = 6
"""Fewer seen cells than this fit no correction: nothing to learn from yet."""
MIN_CLASSES = 2
"""A correction needs at least two reviewed classes to tell anything apart."""
CV_FOLDS = 3
"""Folds of the cross-validated comparison of correction and model on the seen cells."""
RESIDUAL_C = 0.5
"""Inverse L2 strength of the residual's weights and biases: a few dozen cells, hundreds of features."""
SCALE_C = 0.5
"""Inverse strength of the pull of the model's log-probability scale towards 1 (the model as it is)."""
MAX_ITER = 100
"""L-BFGS iterations of one fit: enough on these features, and it bounds the refit time."""
EMBEDDING_WEIGHT, LOGIT_WEIGHT = 8.0, 3.0
"""Scales of the standardised embedding and of the model's log-probabilities among the residual's features."""
PRIOR_FLOOR = 0.05
"""Probability the model must give a class for a cell to be moved there when no reviewer gave that class."""
KEEP_SURE = 0.9
"""A learnt label replaces the model's only when the correction is at least this share as sure of it as the model
was of its own label. The seen cells of a reviewer who goes class by class are that class's least sure ones, whose
true classes differ from those of its surest cells; without this rule the correction carried the seen cells' mix
onto the surest cells (BCCD, by-class reviewer: 0.6 point below plain review at 20 % and 30 %). Chosen on one half
of BCCD's crops (seed 33), judged on the other (docs/performance.md)."""
Z_SHIFT = 3.0
"""How many standard errors above its validation share the model's flagged share must be to call a count unfamiliar."""
Z_DEFICIT, MIN_DEFICIT = 3.0, 0.10
"""How far the model's accuracy on the seen cells must fall below its calibrated promise: this many standard errors
and at least this much (a familiar model's least sure cells fall a few points short; another lab's, 15-25). Three
standard errors, as for :data:`Z_SHIFT`, because the gate is asked again after every review: at two, a reviewer who
opened cells at random on the model's own lab once met a sample of 38 that fell short by chance, and the learning
review went 2.4 points below plain review (Matek test split, anchored model, 2026-12-07; docs/performance.md)."""

SOURCE_MODEL, SOURCE_LEARNT, SOURCE_REVIEWED = "model", "learnt", "reviewed"
SOURCES = (SOURCE_MODEL, SOURCE_LEARNT, SOURCE_REVIEWED)
"""Where a cell's label comes from: the model, the correction learnt from this review, or the reviewer."""
LEARNT_WEIGHT = 0.3
"""When ``bmc adapt --learnt`` makes a model for the lab from a reviewed count, a cell whose label was learnt here
(nobody checked it) weighs this much against a reviewed cell's 1, and is never among the cells the model is measured
on (:mod:`bmc.lab.adapt`; chosen by measurement, docs/experiments.md)."""
CORRECTIONS_ONLY = (
    "learning is off: the {k} reviewed cell(s) are corrections only, which say nothing about the cells the model got "
    "right; the corrections stand. To learn from them, list the cells you checked and found right too (a 'reviewed' "
    "column, or a first line '# every cell seen')"
)


@dataclass
class Relabelled:
    """The labels of a whole count after learning from its reviewed cells."""

    probs: np.ndarray
    """(n, C) probabilities each label was chosen by (a reviewed cell: one-hot)."""
    source: list[str]
    """Per cell, one of :data:`SOURCES`."""
    learnt: bool
    """Whether the learnt labels were adopted."""
    reason: str
    """Why (or why not), in one line for the reviewer."""

    @property
    def labels(self) -> np.ndarray:
        return self.probs.argmax(axis=1)

    @property
    def confidence(self) -> np.ndarray:
        return self.probs.max(axis=1)


def features(logp: np.ndarray, embeddings: np.ndarray) -> np.ndarray:
    """The residual's input: the count's embeddings standardised over the count (so another lab's colour shift
    is taken out) beside the model's log-probabilities (so a residual can say "the model's B is often an A"),
    each scaled so the regularisation does not depend on their dimension."""
    emb = np.asarray(embeddings, dtype=np.float64)
    emb = (emb - emb.mean(axis=0)) / (emb.std(axis=0) + 1e-6)
    return np.hstack([EMBEDDING_WEIGHT * emb / np.sqrt(emb.shape[1]), LOGIT_WEIGHT * logp / np.sqrt(logp.shape[1])])


@dataclass
class LogitCorrection:
    """``scale · log p_model + [x W + b]`` on the reviewed classes: the model's calibrated log-probabilities
    corrected by what the seen cells teach (residual zero, scale one: the model unchanged)."""

    classes: np.ndarray
    """Model class indices that get a residual (those a reviewer gave a seen cell)."""
    weights: np.ndarray
    bias: np.ndarray
    scale: float

    def logits(self, logp: np.ndarray, x: np.ndarray) -> np.ndarray:
        z = self.scale * logp
        z[:, self.classes] += x @ self.weights.T + self.bias
        return z

    def probs(self, logp: np.ndarray, x: np.ndarray, model_probs: np.ndarray) -> np.ndarray:
        """Corrected probabilities over the classes a cell may take: a reviewed class, or one the model gave
        at least :data:`PRIOR_FLOOR` (never a class invented for the cell)."""
        allowed = model_probs >= PRIOR_FLOOR
        allowed[:, self.classes] = True
        z = np.where(allowed, self.logits(logp, x), -np.inf)
        return softmax(z)

    @classmethod
    def fit(cls, logp: np.ndarray, x: np.ndarray, y: np.ndarray) -> LogitCorrection:
        """Maximum likelihood on the seen cells (``y``: model class indices), L2-regularised towards no change."""
        classes = np.unique(y)
        r, d = len(classes), x.shape[1]
        onehot = np.zeros_like(logp)
        onehot[np.arange(len(y)), y] = 1.0

        def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
            w, b, s = theta[: r * d].reshape(r, d), theta[r * d : r * d + r], theta[-1]
            z = s * logp
            z[:, classes] += x @ w.T + b
            z -= z.max(axis=1, keepdims=True)
            lse = np.log(np.exp(z).sum(axis=1, keepdims=True))
            g = np.exp(z - lse) - onehot
            value = -float((onehot * (z - lse)).sum())
            value += (float((w**2).sum()) + float((b**2).sum())) / (2 * RESIDUAL_C) + (s - 1) ** 2 / (2 * SCALE_C)
            grad_w = g[:, classes].T @ x + w / RESIDUAL_C
            grad_b = g[:, classes].sum(axis=0) + b / RESIDUAL_C
            grad_s = float((g * logp).sum()) + (s - 1) / SCALE_C
            return value, np.concatenate([grad_w.ravel(), grad_b, [grad_s]])

        theta0 = np.zeros(r * d + r + 1)
        theta0[-1] = 1.0
        theta = minimize(loss, theta0, jac=True, method="L-BFGS-B", options={"maxiter": MAX_ITER}).x
        return cls(classes, theta[: r * d].reshape(r, d), theta[r * d : r * d + r], float(theta[-1]))


def _cv_predictions(logp: np.ndarray, x: np.ndarray, model_probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Out-of-fold corrected labels of the seen cells (a fold with one class left keeps the model's labels)."""
    out = model_probs.argmax(axis=1)
    folds = KFold(n_splits=min(CV_FOLDS, len(y)), shuffle=True, random_state=0)
    for train, held in folds.split(x):
        if len(np.unique(y[train])) < MIN_CLASSES:
            continue
        fitted = LogitCorrection.fit(logp[train], x[train], y[train])
        out[held] = fitted.probs(logp[held], x[held], model_probs[held]).argmax(axis=1)
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
    logp: np.ndarray, x: np.ndarray, y: np.ndarray, model_probs: np.ndarray, threshold: float, validation_flagged: float | None
) -> tuple[bool, str]:
    """Whether the learnt labels replace the model's (rule 3 of the module docstring), and why; the arrays are
    of the seen cells, except ``model_probs``, which is of the whole count."""
    idx_probs = softmax(logp)
    head_acc = float((_cv_predictions(logp, x, idx_probs, y) == y).mean())
    model_acc = float((idx_probs.argmax(axis=1) == y).mean())
    on_seen = f"on the {len(y)} cells seen the learnt labels are {head_acc:.0%} right (cross-validated), the model's {model_acc:.0%}"
    if head_acc <= model_acc:
        return False, f"not learnt: {on_seen}; the model's labels stand"
    claimed = idx_probs.max(axis=1)
    deficit = float(claimed.mean()) - model_acc
    spread = float(np.sqrt((claimed * (1 - claimed)).sum())) / len(y)
    if looks_unfamiliar(model_probs, threshold, validation_flagged) or deficit > max(Z_DEFICIT * spread, MIN_DEFICIT):
        return True, f"learnt from this review: {on_seen}, and these cells are unlike the model's training images"
    return False, (
        f"not learnt: {on_seen}, but the model is as sure of this count as of its validation images, where it is right; its labels stand"
    )


def _evidence(reviewed: Mapping[int, int], seen: Collection[int] | None) -> tuple[np.ndarray, np.ndarray, str | None]:
    """The seen cells' indices and classes, and why they are too few to learn from (None when enough)."""
    idx = np.fromiter((i for i in reviewed if seen is None or i in seen), dtype=int)
    y = np.fromiter((reviewed[i] for i in idx), dtype=int, count=len(idx))
    if not reviewed:
        return idx, y, "no cell reviewed yet: the model's labels stand"
    if not len(idx):
        return idx, y, CORRECTIONS_ONLY.format(k=len(reviewed))
    n_classes = len(np.unique(y))
    if len(idx) < MIN_REVIEWED or n_classes < MIN_CLASSES:
        return (
            idx,
            y,
            (
                f"{len(idx)} cell(s) of {n_classes} class(es) seen: learning starts at {MIN_REVIEWED} cells of "
                f"{MIN_CLASSES} classes; the model's labels stand"
            ),
        )
    return idx, y, None


def relabel(
    logits: np.ndarray,
    embeddings: np.ndarray,
    reviewed: Mapping[int, int],
    temperature: float = 1.0,
    threshold: float = 0.5,
    validation_flagged: float | None = None,
    learn: bool = True,
    seen: Collection[int] | None = None,
) -> Relabelled:
    """Labels for every cell of a count: reviewed cells keep the reviewer's label; the others get the
    corrected label where the correction is adopted (:func:`_gate`), else the model's.

    ``reviewed`` maps a cell's index to the reviewer's class index (the model's classes); ``seen``, the reviewed
    cells that are evidence (None: all of them; rule 1 of the module docstring); ``threshold`` and
    ``validation_flagged`` are the model's review threshold and the share of validation images it flags."""
    n, n_classes = logits.shape
    model_probs = softmax(logits, temperature)
    probs = model_probs.copy()
    source = [SOURCE_MODEL] * n
    idx, y, reason = _evidence(reviewed, seen)
    learnt = False
    if learn and reason is None:
        logp = np.log(model_probs + 1e-12)
        x = features(logp, embeddings)
        adopt, reason = _gate(logp[idx], x[idx], y, model_probs, threshold, validation_flagged)
        if adopt:
            said = model_probs.argmax(axis=1)
            covered = np.isin(said, said[idx])  # the model's label on cells like those seen: the only ones evidence reaches
            covered[np.fromiter(reviewed, dtype=int, count=len(reviewed))] = False
            rest = np.nonzero(covered)[0]
            correction = LogitCorrection.fit(logp[idx], x[idx], y)
            corrected = correction.probs(logp[rest], x[rest], model_probs[rest])
            moved = corrected.argmax(axis=1) != said[rest]
            unsure = moved & (corrected.max(axis=1) < KEEP_SURE * model_probs[rest].max(axis=1))
            rest, corrected = rest[~unsure], corrected[~unsure]  # the model's surer label stands
            probs[rest] = corrected
            for i in rest:
                source[i] = SOURCE_LEARNT
            learnt = True
            if kept := int((~np.isin(said, said[idx])).sum()):
                reason += f"; {kept} cells keep the model's labels: the reviewer has seen no cell it gave their label"
            if surer := int(unsure.sum()):
                reason += f"; {surer} cells keep the model's labels: the learnt one was less sure than the model's"
    elif not learn:
        reason = "learning is off: the model's labels stand"
    for cell, code in reviewed.items():
        probs[cell] = np.eye(n_classes)[code]
        source[cell] = SOURCE_REVIEWED
    return Relabelled(probs, source, learnt, reason or "")
