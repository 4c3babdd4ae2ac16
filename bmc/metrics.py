"""Classification metrics through `evaluate`, with the metric module shipped in this package.

Macro averages are taken over the classes present in the references: a model trained on a
subset of the 21 classes must not be rewarded or punished for classes absent from the test data.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import evaluate
import numpy as np

MODULE_DIR = Path(__file__).parent / "metric_modules" / "cell_classification"
SCALAR_KEYS = (
    "accuracy",
    "balanced_accuracy",
    "macro_precision",
    "macro_recall",
    "macro_f1",
    "weighted_precision",
    "weighted_recall",
    "weighted_f1",
    "top2_accuracy",
    "ece",
)


@lru_cache(maxsize=1)
def _metric() -> evaluate.EvaluationModule:
    """Load the local module once (by path: works with ``HF_HUB_OFFLINE=1``)."""
    return evaluate.load(str(MODULE_DIR))


def classification_metrics(probs: np.ndarray, references: Sequence[int] | np.ndarray, num_classes: int | None = None) -> dict:
    """All card metrics from probabilities: scalars, ``per_class`` and ``confusion_matrix``."""
    probs = np.asarray(probs, dtype=np.float32)
    return _metric().compute(predictions=probs.tolist(), references=[int(r) for r in references], num_classes=num_classes or probs.shape[1])


def scalar_metrics(result: dict) -> dict[str, float]:
    """Just the scalar metrics (what the Trainer logs)."""
    return {k: result[k] for k in SCALAR_KEYS}


def per_class_rows(result: dict, class_names: Sequence[str]) -> list[dict]:
    """One dict per class (name, precision, recall, f1, support) for tables and JSON."""
    pc = result["per_class"]
    return [
        {"label": name, "precision": pc["precision"][i], "recall": pc["recall"][i], "f1": pc["f1"][i], "support": pc["support"][i]}
        for i, name in enumerate(class_names)
    ]


def macro_f1_from_confusion(confusion: np.ndarray) -> np.ndarray:
    """Macro-F1 of one confusion matrix (rows: true class) or a stack of them, over the classes
    present in the references, as :func:`classification_metrics` takes it."""
    c = np.asarray(confusion, dtype=np.float64)
    tp = np.diagonal(c, axis1=-2, axis2=-1)
    support, predicted = c.sum(axis=-1), c.sum(axis=-2)
    denominator = support + predicted
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
    present = support > 0
    return (f1 * present).sum(axis=-1) / present.sum(axis=-1)


def macro_f1_spread(confusion: Sequence[Sequence[int]], n_resamples: int = 2000, seed: int = 0) -> float:
    """Standard deviation of macro-F1 when the evaluated images are resampled with replacement
    (bootstrap). A confusion matrix holds every image's (true, predicted) pair, so no predictions
    need re-running. Two runs whose figures differ by less than about this much on the same
    images cannot be told apart by them."""
    c = np.asarray(confusion, dtype=np.int64)
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(int(c.sum()), c.ravel() / c.sum(), size=n_resamples).reshape(n_resamples, *c.shape)
    return float(macro_f1_from_confusion(draws).std())


def paired_macro_f1_difference(
    labels: Sequence[int], pred_a: Sequence[int], pred_b: Sequence[int], num_classes: int, n_resamples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """Macro-F1 of ``pred_b`` minus that of ``pred_a`` on the same images, with a 95 % bootstrap
    interval from resampling the *images* (each draw scores both runs on the same resample). Hard
    images count against both runs at once, so this interval is narrower than two independent
    spreads (:func:`macro_f1_spread`) and can tell apart runs that those cannot."""
    y, a, b = (np.asarray(v, dtype=np.int64) for v in (labels, pred_a, pred_b))
    k = num_classes

    def f1_difference(idx: np.ndarray) -> np.ndarray:
        """Macro-F1 of b minus a on each row of image indices (one confusion matrix per row and run)."""
        offsets = np.arange(len(idx))[:, None] * k * k
        scores = [
            macro_f1_from_confusion(
                np.bincount((offsets + y[idx] * k + p[idx]).ravel(), minlength=len(idx) * k * k).reshape(len(idx), k, k)
            )
            for p in (a, b)
        ]
        return scores[1] - scores[0]

    draws = f1_difference(np.random.default_rng(seed).integers(0, len(y), size=(n_resamples, len(y))))
    low, high = np.percentile(draws, [2.5, 97.5])
    return float(f1_difference(np.arange(len(y))[None])[0]), float(low), float(high)
