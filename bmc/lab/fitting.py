"""Fitting ``bmc adapt``'s change and measuring it by k-fold on the lab's cells a person checked.

Two routes: a DINOv2 model's last blocks fine-tuned (:func:`adapt_blocks`, :mod:`bmc.lab.tuning`), or, for other
architectures, the linear head refitted on embeddings with an L2 pull towards the original (:func:`adapt_head`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from bmc.calibration import calibrate, softmax
from bmc.count.learning import LEARNT_WEIGHT
from bmc.lab.tuning import RECIPE, Tail, TuningConfig, as_given, tune
from bmc.metrics import classification_metrics

MIN_NEW_CLASS = 5
"""Cells of a class the model lacks needed to add it."""
PULL = 3e-2
"""L2 strength pulling the new head towards the original one (per weight, on the mean loss)."""
HEAD_LAB_WEIGHT = 3.0
"""With a new head only: how much more a lab cell weighs than a replayed base image in the loss."""
FOLDS = 5
"""Folds of the out-of-fold figures when only the head is refitted (a refit takes a second)."""
TUNING_FOLDS = 2
"""Folds when the last blocks are tuned: each fold is a fine-tuning (about a minute on 2 cores), so two keep
``bmc adapt`` within five minutes; each cell is then scored by a model that saw half the lab's cells."""


def fit_head(
    weight: np.ndarray, bias: np.ndarray, x: np.ndarray, y: np.ndarray, sample_weight: np.ndarray, pull: float = PULL
) -> tuple[np.ndarray, np.ndarray]:
    """A linear head fitted on embeddings ``x`` (weighted cross-entropy, L-BFGS) starting from and pulled
    towards ``weight``/``bias`` (rows of new classes start at zero)."""
    w0, b0 = torch.tensor(weight, dtype=torch.float64), torch.tensor(bias, dtype=torch.float64)
    w, b = w0.clone().requires_grad_(True), b0.clone().requires_grad_(True)
    xt, yt = torch.tensor(x, dtype=torch.float64), torch.tensor(y)
    sw = torch.tensor(sample_weight / sample_weight.sum(), dtype=torch.float64)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = (torch.nn.functional.cross_entropy(xt @ w.T + b, yt, reduction="none") * sw).sum()
        loss = loss + pull * (((w - w0) ** 2).sum() + ((b - b0) ** 2).sum())
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().numpy(), b.detach().numpy()


@dataclass
class Adaptation:
    """What ``bmc adapt`` learnt and measured: a new head (``weight``, ``bias``) or tuned last blocks (``tail``)."""

    codes: list[str]
    calibration: dict
    lab_figures: dict
    lab_counts: dict[str, int]
    added: list[str]
    n_replay: int
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None
    tail: Tail | None = None
    n_learnt: int = 0
    """Of the lab cells, how many had learnt labels (trained on at :data:`LEARNT_WEIGHT`, not measured on)."""

    @property
    def method(self) -> str:
        """In words, for the card and the summary."""
        if self.tail is not None:
            return f"the last {len(self.tail.blocks)} transformer blocks and the head fine-tuned"
        return "the last layer (head) refitted"


def lab_classes(model_codes: Sequence[str], lab_codes: Sequence[str]) -> tuple[list[str], list[str], dict[str, int]]:
    """The adapted model's classes (the model's, then the lab's new ones with enough cells), the added ones,
    and the lab's count per class; a new class with too few cells is refused with the counts."""
    counts = {c: list(lab_codes).count(c) for c in dict.fromkeys(lab_codes)}
    added = [c for c, n in counts.items() if c not in model_codes and n >= MIN_NEW_CLASS]
    unknown = {c: n for c, n in counts.items() if c not in model_codes and c not in added}
    if unknown:
        raise ValueError(
            f"the cells hold classes this model lacks with fewer than {MIN_NEW_CLASS} cells each "
            f"({', '.join(f'{c}: {n}' for c, n in unknown.items())}): add more of them, or leave them out"
        )
    return [*model_codes, *added], added, counts


def _out_of_fold(
    checked: np.ndarray, n_classes: int, folds: int, seed: int, fit_and_score: Callable[[np.ndarray, np.ndarray], np.ndarray]
) -> np.ndarray:
    """Out-of-fold logits of the cells a person checked (``checked``: per lab cell): ``fit_and_score(kept,
    held)`` adapts on the ``kept`` lab cells (every learnt cell among them: never held out, as its label is
    nobody's word) and returns the logits of the ``held`` ones. Rows follow the checked cells' order."""
    mine = np.flatnonzero(checked)
    oof = np.zeros((len(mine), n_classes))
    order = np.random.default_rng(seed).permutation(len(mine))
    k = max(2, min(folds, len(mine)))
    for f in range(k):
        held = np.sort(order[f::k])
        oof[held] = fit_and_score(np.setdiff1d(np.arange(len(checked)), mine[held]), mine[held])
    return oof


def _measured(oof: np.ndarray, ly: np.ndarray, n_classes: int) -> tuple[dict, dict]:
    calib = calibrate(oof, ly)
    figures = classification_metrics(softmax(oof, calib["temperature"]), ly, num_classes=n_classes)
    figures["n"] = len(ly)
    return calib, figures


def _weights(checked: np.ndarray) -> np.ndarray:
    """Per lab cell, its weight: 1 for a cell a person checked, :data:`LEARNT_WEIGHT` for a learnt label."""
    return np.where(checked, 1.0, LEARNT_WEIGHT)


def adapt_head(
    model_codes: list[str],
    weight: np.ndarray,
    bias: np.ndarray,
    lab_x: np.ndarray,
    lab_codes: Sequence[str],
    replay_x: np.ndarray,
    replay_codes: Sequence[str],
    folds: int = FOLDS,
    seed: int = 0,
    pull: float = PULL,
    lab_weight: float = HEAD_LAB_WEIGHT,
    checked: np.ndarray | None = None,
) -> Adaptation:
    """Refit the head on lab cells + replay; calibrate and measure it on the lab cells by k-fold. ``pull`` and
    ``lab_weight``: see :data:`PULL` and :data:`HEAD_LAB_WEIGHT` (``bench/adapt_curve.py`` compares settings);
    ``checked``: per lab cell, whether a person gave its label (default: all; see :meth:`LabCells.checked`)."""
    codes, added, counts = lab_classes(model_codes, lab_codes)
    checked = np.ones(len(lab_codes), dtype=bool) if checked is None else checked
    w = np.vstack([weight, np.zeros((len(added), weight.shape[1]))])
    b = np.concatenate([bias, np.zeros(len(added))])
    ly = np.array([codes.index(c) for c in lab_codes])
    ry = np.array([codes.index(c) for c in replay_codes], dtype=int)
    x = np.vstack([lab_x, replay_x]) if len(replay_x) else lab_x
    y = np.concatenate([ly, ry])
    sw = np.concatenate([lab_weight * _weights(checked), np.ones(len(ry))])

    def fit_and_score(kept: np.ndarray, held: np.ndarray) -> np.ndarray:
        keep = np.concatenate([kept, np.arange(len(ly), len(y))])
        fw, fb = fit_head(w, b, x[keep], y[keep], sw[keep], pull)
        return lab_x[held] @ fw.T + fb

    calib, figures = _measured(_out_of_fold(checked, len(codes), folds, seed, fit_and_score), ly[checked], len(codes))
    final_w, final_b = fit_head(w, b, x, y, sw, pull)
    return Adaptation(codes, calib, figures, counts, added, len(ry), weight=final_w, bias=final_b, n_learnt=int((~checked).sum()))


def adapt_blocks(
    model: Any,
    model_codes: list[str],
    lab_hidden: torch.Tensor,
    lab_codes: Sequence[str],
    replay_hidden: torch.Tensor,
    replay_logits: np.ndarray,
    folds: int = TUNING_FOLDS,
    seed: int = 0,
    checked: np.ndarray | None = None,
    config: TuningConfig = RECIPE,
) -> Adaptation:
    """Fine-tune the last blocks on lab cells + replay (:func:`bmc.lab.tuning.tune`); calibrate and measure on
    the lab cells a person checked by k-fold (each held-out cell scored as given). Inputs are the cached tokens of
    :func:`bmc.lab.tuning.lab_inputs` (the lab's cells in several orientations) and
    :func:`bmc.lab.tuning.block_inputs` (the replay); ``checked`` as in :func:`adapt_head`."""
    codes, added, counts = lab_classes(model_codes, lab_codes)
    ly = np.array([codes.index(c) for c in lab_codes])
    checked = np.ones(len(ly), dtype=bool) if checked is None else checked
    weights = _weights(checked)

    def fit_and_score(kept: np.ndarray, held: np.ndarray) -> np.ndarray:
        tail = tune(
            model, len(codes), lab_hidden[kept], ly[kept], replay_hidden, replay_logits, seed, lab_weights=weights[kept], config=config
        )
        return tail.logits(as_given(lab_hidden[held]))

    calib, figures = _measured(_out_of_fold(checked, len(codes), folds, seed, fit_and_score), ly[checked], len(codes))
    tail = tune(model, len(codes), lab_hidden, ly, replay_hidden, replay_logits, seed, lab_weights=weights, config=config)
    return Adaptation(codes, calib, figures, counts, added, len(replay_hidden), tail=tail, n_learnt=int((~checked).sum()))
