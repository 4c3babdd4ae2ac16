"""An `evaluate` metric module for cell classification, shipped inside bmc.

`evaluate.load("accuracy")` downloads its module from the Hugging Face Hub, which is unreachable
offline; this local module is loaded by path instead and computes everything the model card
reports from one call: accuracy, balanced accuracy, macro and weighted precision/recall/F1,
per-class precision/recall/F1/support, the confusion matrix, top-2 accuracy and expected
calibration error. It takes class *probabilities* (not argmax predictions) so that top-2 accuracy
and calibration can be computed.
"""

import warnings

import datasets
import evaluate
import numpy as np
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, precision_recall_fscore_support

_DESCRIPTION = "Multi-class cell classification metrics from class probabilities."
_KWARGS_DESCRIPTION = """
Args:
    predictions: list of probability vectors (one per image, summing to 1).
    references: list of true class indices.
    num_classes: number of classes (so that absent classes still get a row), default: vector length.
    n_bins: bins for the expected calibration error (default 15).
Returns:
    dict with accuracy, balanced_accuracy, macro_/weighted_ precision/recall/f1, top2_accuracy, ece,
    per_class (dict of lists: precision, recall, f1, support) and confusion_matrix (list of rows,
    true class by predicted class).
"""


def expected_calibration_error(probs: np.ndarray, refs: np.ndarray, n_bins: int = 15) -> float:
    """Weighted mean |accuracy - confidence| over equal-width confidence bins (Guo et al. 2017)."""
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == refs).astype(float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = (conf > lo) & (conf <= hi)
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - conf[in_bin].mean())
    return float(ece)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class CellClassification(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("float32")), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, num_classes=None, n_bins=15):
        probs = np.asarray(predictions, dtype=np.float64)
        refs = np.asarray(references, dtype=np.int64)
        k = int(num_classes or probs.shape[1])
        classes = list(range(k))
        preds = probs.argmax(axis=1)
        p, r, f, s = precision_recall_fscore_support(refs, preds, labels=classes, zero_division=0)
        with warnings.catch_warnings():
            # a model may predict classes the references lack (13 classes on an 8-class set): expected, not news
            warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
            balanced = float(balanced_accuracy_score(refs, preds))
        present = s > 0
        weights = s / s.sum()
        top2 = np.argsort(-probs, axis=1)[:, :2]
        return {
            "accuracy": float((preds == refs).mean()),
            "balanced_accuracy": balanced,
            "macro_precision": float(p[present].mean()),
            "macro_recall": float(r[present].mean()),
            "macro_f1": float(f[present].mean()),
            "weighted_precision": float((p * weights).sum()),
            "weighted_recall": float((r * weights).sum()),
            "weighted_f1": float((f * weights).sum()),
            "top2_accuracy": float((top2 == refs[:, None]).any(axis=1).mean()),
            "ece": expected_calibration_error(probs, refs, n_bins),
            "per_class": {"precision": p.tolist(), "recall": r.tolist(), "f1": f.tolist(), "support": s.astype(int).tolist()},
            "confusion_matrix": confusion_matrix(refs, preds, labels=classes).tolist(),
        }
