"""Classification metrics through `evaluate`, with the metric module shipped in this package.

Macro averages are taken over the classes present in the references: a model trained on a
subset of the 21 classes must not be rewarded or punished for classes absent from the test data.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Sequence

import evaluate
import numpy as np

MODULE_DIR = Path(__file__).parent / "metric_modules" / "cell_classification"
SCALAR_KEYS = (
    "accuracy", "balanced_accuracy", "macro_precision", "macro_recall", "macro_f1",
    "weighted_precision", "weighted_recall", "weighted_f1", "top2_accuracy", "ece",
)


@lru_cache(maxsize=1)
def _metric() -> evaluate.EvaluationModule:
    """Load the local module once (by path: works with ``HF_HUB_OFFLINE=1``)."""
    return evaluate.load(str(MODULE_DIR))


def classification_metrics(probs: np.ndarray, references: Sequence[int], num_classes: int | None = None) -> dict:
    """All card metrics from probabilities: scalars, ``per_class`` and ``confusion_matrix``."""
    probs = np.asarray(probs, dtype=np.float32)
    return _metric().compute(
        predictions=probs.tolist(), references=[int(r) for r in references], num_classes=num_classes or probs.shape[1]
    )


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
