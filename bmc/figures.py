"""Figures for the model card: confusion matrix and training curves (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_confusion_matrix(matrix: Sequence[Sequence[int]], class_names: Sequence[str], path: Path, title: str) -> Path:
    """Row-normalised confusion matrix with counts, true class on the rows."""
    cm = np.asarray(matrix, dtype=float)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * n, 0.8 + 0.7 * n))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(n):
        for j in range(n):
            if cm[i, j]:
                ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", color="white" if norm[i, j] > 0.5 else "black", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_training_curves(log_history: list[dict], path: Path) -> Path:
    """Training/validation loss, validation accuracy and macro-F1 per epoch from ``trainer.state.log_history``."""
    train = [(h["epoch"], h["loss"]) for h in log_history if "loss" in h and "epoch" in h]
    evals = [h for h in log_history if "eval_loss" in h]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    if train:
        ax1.plot(*zip(*train), label="train loss", alpha=0.8)
    if evals:
        ax1.plot([h["epoch"] for h in evals], [h["eval_loss"] for h in evals], "o-", label="validation loss")
        ax2.plot([h["epoch"] for h in evals], [h.get("eval_accuracy") for h in evals], "o-", label="validation accuracy")
        ax2.plot([h["epoch"] for h in evals], [h.get("eval_macro_f1") for h in evals], "s-", label="validation macro-F1")
    ax1.set_xlabel("epoch")
    ax1.set_title("loss")
    ax1.legend()
    ax2.set_xlabel("epoch")
    ax2.set_title("validation")
    ax2.set_ylim(0, 1)
    ax2.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
