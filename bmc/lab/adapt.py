"""A model for your laboratory (``bmc adapt``): a bmc model taught a lab's look from its labelled cells.

For a DINOv2 model (the bundled one and any trained by ``train_hf.py`` from a DINOv2 base) the last blocks
and the head are fine-tuned on the lab's cells while a replay of the base model's training images keeps
the base model's own predictions (:mod:`bmc.lab.tuning`: learning without forgetting). Other
architectures get the last layer only: the linear head on each cell's embedding, refitted from the
model's own head on the lab's cells and the replay with an L2 pull towards the original weights
(:func:`fit_head`). Either way the result is an ordinary model folder (safetensors, ``config.json`` with
labels and calibration, image processor, card) that the app, :class:`Predictor` and
``pipeline("image-classification")`` load with nothing extra. Chosen by measurement (docs/experiments.md,
"A model for your lab").

A class the model lacks is added when the lab's cells hold at least :data:`MIN_NEW_CLASS` of it. The
temperature and review threshold are refitted on the lab's cells by k-fold (each cell scored by a
model that did not see it), and those out-of-fold figures go into the card beside what the adapted
model scores on the base model's test split (what it forgot). From a reviewed count, the cells whose labels the
learning review gave may be added (``--learnt``): trained on at :data:`bmc.count.learning.LEARNT_WEIGHT`, never held
out or measured on, as nobody checked them.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from PIL import Image

from bmc.calibration import calibrate, softmax
from bmc.count.learning import LEARNT_WEIGHT
from bmc.data import scan_folder
from bmc.lab.tuning import LAB_VIEWS, TUNED_BLOCKS, Tail, as_given, block_inputs, install, lab_inputs, supports, tune
from bmc.labels import display_name, wbc_code
from bmc.metrics import classification_metrics
from bmc.model import save_classifier, update_config
from bmc.model_folder import read_manifest
from bmc.serve.predictor import Predictor
from bmc.serve.uploads import iter_images
from bmc.splits import resolve_source
from bmc.train.evaluation import calibration_config

MIN_NEW_CLASS = 5
"""Cells of a class the model lacks needed to add it."""
REPLAY_PER_CLASS = 30
"""Base training images per class replayed beside the lab's cells (from the model's split manifest)."""
PULL = 3e-2
"""L2 strength pulling the new head towards the original one (per weight, on the mean loss)."""
HEAD_LAB_WEIGHT = 3.0
"""With a new head only: how much more a lab cell weighs than a replayed base image in the loss."""
FOLDS = 5
"""Folds of the out-of-fold figures when only the head is refitted (a refit takes a second)."""
TUNING_FOLDS = 2
"""Folds when the last blocks are tuned: each fold is a fine-tuning (about a minute on 2 cores), so two keep
``bmc adapt`` within five minutes; each cell is then scored by a model that saw half the lab's cells."""


@dataclass
class LabCells:
    """A lab's labelled cells: images, their codes, and what was left out and why."""

    images: list[Image.Image] = field(default_factory=list)
    codes: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    learnt: list[bool] = field(default_factory=list)
    """Per cell, whether its label came from the learning review rather than a person."""

    def checked(self) -> np.ndarray:
        """Whether each cell's label was given by a person (the only cells an adapted model is measured on)."""
        return ~np.array(self.learnt, dtype=bool)

    def add_folder(self, folder: Path, learnt: bool) -> None:
        """The cells of a folder of class folders (Matek codes and names, white-cell names), unreadable ones skipped."""
        records, skipped = scan_folder(folder)
        self.skipped += [f"{s.source}: {s.reason}" for s in skipped]
        for path, label in records:
            item = next(iter_images([path]))
            if isinstance(item, tuple):
                self.add(item[1], wbc_code(label), path, learnt)  # Matek codes and names are mapped by scan_folder
            else:
                self.skipped.append(f"{item.source}: {item.reason}")

    def add(self, image: Image.Image, code: str, name: str, learnt: bool) -> None:
        """One more cell (``learnt``: its label is the learning review's, not a person's)."""
        self.images.append(image)
        self.codes.append(code)
        self.names.append(name)
        self.learnt.append(learnt)


def read_lab_cells(cells: Path, images: Sequence[Path] = (), learnt: Path | bool = False) -> LabCells:
    """The labelled cells of a lab: a folder of class folders, or a reviewed ``predictions.csv`` of
    ``bmc count`` or the app (its reviewed rows) with ``images`` the inputs that count was made of.

    ``learnt`` adds cells whose labels the learning review gave (:mod:`bmc.count.learning`): ``True`` with a
    predictions.csv takes its rows whose ``label_source`` is ``learnt``; a folder of class folders (the app's
    download) is read as such cells."""
    if learnt is True and cells.is_dir():
        raise ValueError(f"{cells} is a folder: give --learnt the folder of learnt cells (class folders), or adapt from a predictions.csv")
    if cells.is_dir():
        out = LabCells()
        out.add_folder(cells, learnt=False)
    else:
        out = _read_reviewed_count(cells, images, learnt is True)
    if isinstance(learnt, Path):
        out.add_folder(learnt, learnt=True)
    if any(out.learnt) and not out.checked().any():
        raise ValueError("no reviewed cell among them: a model for your lab is measured on cells a person checked; review some first")
    return out


def _read_reviewed_count(cells: Path, images: Sequence[Path], learnt: bool) -> LabCells:
    """The reviewed (and, with ``learnt``, the learnt) rows of a predictions.csv, read from ``images``."""
    with open(cells, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or not {"file", "reviewed", "reviewed_label"} <= set(rows[0]):
        raise ValueError(
            f"{cells}: not a folder of class folders nor a predictions.csv of bmc count or the app (columns file, reviewed, reviewed_label)"
        )
    wanted = {r["file"]: r["reviewed_label"] for r in rows if r["reviewed"] == "yes"}
    if not wanted:
        raise ValueError(f"{cells}: no reviewed cell in it (column reviewed = yes): review some cells first")
    if learnt and "label_source" not in rows[0]:
        raise ValueError(f"{cells}: no label_source column, so no learnt labels to add: it is from an older bmc; count again")
    learnt_rows = (
        {r["file"]: r["reviewed_label"] for r in rows if r["reviewed"] != "yes" and r.get("label_source") == "learnt"} if learnt else {}
    )
    if not images:
        raise ValueError(f"{cells}: give --images, the files or archives that count was made of, to read the reviewed cells")
    out = LabCells()
    for item in iter_images(list(images)):
        if isinstance(item, tuple) and (item[0] in wanted or item[0] in learnt_rows):
            out.add(item[1], wanted.get(item[0]) or learnt_rows[item[0]], item[0], item[0] not in wanted)
    missing = sorted(set(wanted) - set(out.names))
    out.skipped += [f"{name}: reviewed in {cells.name} but not found in --images" for name in missing]
    if not out.checked().any():
        raise ValueError(f"none of the {len(wanted)} reviewed cells of {cells} is in --images")
    return out


def replay_records(model_dir: Path, codes: Sequence[str], per_class: int = REPLAY_PER_CLASS, seed: int = 0) -> list[tuple[str, str]]:
    """Up to ``per_class`` training images per class of the base model (its split manifest), when on disk."""
    manifest = Path(model_dir) / "split_manifest.csv"
    if not manifest.is_file():
        return []
    rows = [r for r in read_manifest(manifest) if r["split"] == "train" and r["label"] in codes and resolve_source(r["source"]).is_file()]
    rng = random.Random(seed)
    out = []
    for code in codes:
        mine = [r for r in rows if r["label"] == code]
        out += [(str(resolve_source(r["source"])), code) for r in rng.sample(mine, min(per_class, len(mine)))]
    return out


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
            return f"the last {TUNED_BLOCKS} transformer blocks and the head fine-tuned"
        return "the last layer (head) refitted"


def _lab_classes(model_codes: Sequence[str], lab_codes: Sequence[str]) -> tuple[list[str], list[str], dict[str, int]]:
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
    codes, added, counts = _lab_classes(model_codes, lab_codes)
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
) -> Adaptation:
    """Fine-tune the last blocks on lab cells + replay (:func:`bmc.lab.tuning.tune`); calibrate and measure on
    the lab cells a person checked by k-fold (each held-out cell scored as given). Inputs are the cached tokens of
    :func:`bmc.lab.tuning.lab_inputs` (the lab's cells in several orientations) and
    :func:`bmc.lab.tuning.block_inputs` (the replay); ``checked`` as in :func:`adapt_head`."""
    codes, added, counts = _lab_classes(model_codes, lab_codes)
    ly = np.array([codes.index(c) for c in lab_codes])
    checked = np.ones(len(ly), dtype=bool) if checked is None else checked
    weights = _weights(checked)

    def fit_and_score(kept: np.ndarray, held: np.ndarray) -> np.ndarray:
        tail = tune(model, len(codes), lab_hidden[kept], ly[kept], replay_hidden, replay_logits, seed, lab_weights=weights[kept])
        return tail.logits(as_given(lab_hidden[held]))

    calib, figures = _measured(_out_of_fold(checked, len(codes), folds, seed, fit_and_score), ly[checked], len(codes))
    tail = tune(model, len(codes), lab_hidden, ly, replay_hidden, replay_logits, seed, lab_weights=weights)
    return Adaptation(codes, calib, figures, counts, added, len(replay_hidden), tail=tail, n_learnt=int((~checked).sum()))


def write_adapted(base: Predictor, result: Adaptation, out_dir: Path, forgot: dict, source: str) -> Path:
    """The adapted model folder: the base model with the tuned blocks or new head, its calibration, and a card."""
    model = base.model
    if result.tail is not None:
        install(model, result.tail)
    elif result.weight is not None and result.bias is not None:
        head = torch.nn.Linear(result.weight.shape[1], len(result.codes))
        with torch.no_grad():
            head.weight.copy_(torch.tensor(result.weight, dtype=torch.float32))
            head.bias.copy_(torch.tensor(result.bias, dtype=torch.float32))
        model.classifier = head
    id2label = dict(enumerate(result.codes))  # the head's row order, new classes last (label_maps would re-sort them)
    label2id = {c: i for i, c in id2label.items()}
    model.config.id2label, model.config.label2id, model.config.num_labels = id2label, label2id, len(result.codes)
    save_classifier(model, base.processor, out_dir)
    update_config(out_dir, **calibration_config(result.calibration), bmc_denoise=base.use_denoise, bmc_adapted_from=str(base.name))
    summary = {
        "adapted_from": str(base.name),
        "adapted_from_version": base.version,
        "cells": source,
        "lab_counts": result.lab_counts,
        "learnt_cells": result.n_learnt,
        "added_classes": result.added,
        "method": result.method,
        "replay_images": result.n_replay,
        "calibration": result.calibration,
        "lab_out_of_fold": _short(result.lab_figures),
        "base_test": forgot,
    }
    (out_dir / "adaptation.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    (out_dir / "README.md").write_text(card(summary, result.codes))
    return out_dir


def _short(m: dict) -> dict:
    return {k: m[k] for k in ("accuracy", "macro_f1", "n")}


def _learnt_note(n_learnt: int) -> str:
    if not n_learnt:
        return ""
    return (
        f" {n_learnt} of them were labelled by the learning review of a count, not by a person: each weighed "
        f"{LEARNT_WEIGHT} of a reviewed cell in training, and none is among the cells measured below. A review takes the "
        "least sure cells first, so the reviewed cells measured below are the count's hardest: the figures understate "
        "the model on the lab's typical cells."
    )


def card(summary: dict, codes: Sequence[str]) -> str:
    """The adapted model's card: from what, on which cells, how it does on them and what it forgot."""
    lab = summary["lab_out_of_fold"]
    counts = ", ".join(f"{display_name(c)} {n}" for c, n in summary["lab_counts"].items())
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: image-classification",
        "tags: [image-classification, hematology, research-only, bmc-adapted]",
        "---",
        "",
        f"# Adapted from `{summary['adapted_from']}`",
        "",
        "> **Research tool, not a diagnosis.** Every label must be reviewed by a qualified haematologist.",
        "",
        f"Made by `bmc adapt` from {sum(summary['lab_counts'].values())} labelled cells of one laboratory "
        f"(`{summary['cells']}`): {counts}.{_learnt_note(summary.get('learnt_cells', 0))} What changed: {summary['method']}, with "
        f"{summary['replay_images']} of the base model's training images replayed so that it keeps what it knew; the rest "
        f"of the backbone is the base model's (version `{summary['adapted_from_version']}`).",
        f"Classes added: {', '.join(summary['added_classes']) or 'none'}. Classes: {', '.join(codes)}.",
        "",
        "| measured on | images | accuracy | macro-F1 |",
        "|---|---|---|---|",
        f"| this lab's cells, out of fold ({len(summary['lab_counts'])} classes; each cell scored by a model adapted without it) | "
        f"{lab.get('n', '—')} | {lab['accuracy']:.1%} | {lab['macro_f1']:.3f} |",
    ]
    for name, fig in summary["base_test"].items():
        lines.append(
            f"| base model's test split, {name}: before → after adaptation (what it forgot) | {fig['n']} | "
            f"{fig['accuracy_before']:.1%} → {fig['accuracy_after']:.1%} | {fig['macro_f1_before']:.3f} → {fig['macro_f1_after']:.3f} |"
        )
    calib = summary["calibration"]
    lines += [
        "",
        f"Calibration on this lab's cells (k-fold): temperature {calib['temperature']:.3f}; cells below "
        f"{calib['review_threshold']:.3f} calibrated confidence are flagged for review, which flags "
        f"{1 - calib['validation_coverage']:.0%} of them. With few cells per class these figures are rough: "
        "keep reviewing, and adapt again with more cells.",
        "",
    ]
    return "\n".join(lines) + "\n"


def forgetting(base: Predictor, result: Adaptation, model_dir: Path) -> dict:
    """Accuracy and macro-F1 on the base model's test split per source, before and after adapting (call it
    before :func:`write_adapted`, which changes ``base.model``)."""
    manifest = Path(model_dir) / "split_manifest.csv"
    rows = (
        [r for r in read_manifest(manifest) if r["split"] == "test" and resolve_source(r["source"]).is_file()] if manifest.is_file() else []
    )
    out: dict[str, Any] = {}
    for domain in dict.fromkeys(r.get("domain", "") for r in rows):
        mine = [r for r in rows if r.get("domain", "") == domain and r["label"] in base.codes]
        images = [Image.open(resolve_source(r["source"])).convert("RGB") for r in mine]
        truth = np.array([base.codes.index(r["label"]) for r in mine])
        if result.tail is not None:
            hidden, logits = block_inputs(base.model, base.processor, images, base.use_denoise)
            after = result.tail.logits(hidden)
        else:
            logits, emb = base.forward(images)
            after = emb @ np.asarray(result.weight).T + np.asarray(result.bias)
        before_m = classification_metrics(
            softmax(np.hstack([logits, np.full((len(logits), len(result.added)), -1e9)])), truth, num_classes=len(result.codes)
        )
        after_m = classification_metrics(softmax(after), truth, num_classes=len(result.codes))
        out[domain] = {
            "n": len(mine),
            "accuracy_before": before_m["accuracy"],
            "accuracy_after": after_m["accuracy"],
            "macro_f1_before": before_m["macro_f1"],
            "macro_f1_after": after_m["macro_f1"],
        }
    return out


def adapt_model(
    model: str,
    cells: Path,
    out_dir: Path,
    images: Sequence[Path] = (),
    replay_per_class: int = REPLAY_PER_CLASS,
    measure_forgetting: bool = True,
    progress: bool = True,
    learnt: Path | bool = False,
) -> tuple[Path, dict]:
    """``bmc adapt``: read the lab's cells, pass them and the replay through the base model once, tune its last
    blocks (DINOv2) or refit its head (other models), measure it, and write the adapted model folder.
    ``learnt``: also the cells labelled by the learning review (:func:`read_lab_cells`)."""
    say = print if progress else (lambda *_a, **_k: None)
    base = Predictor(model, backend="torch")
    lab = read_lab_cells(cells, images, learnt)
    if len(set(lab.codes)) < 2:
        raise ValueError(f"{cells}: the cells hold {len(set(lab.codes))} class; adapting needs at least two")
    _lab_classes(base.codes, lab.codes)  # a class the model lacks with too few cells: refused before the passes, not after
    n_learnt = int((~lab.checked()).sum())
    replay = replay_records(Path(model), base.codes, replay_per_class) if Path(model).is_dir() else []
    replay_images = [Image.open(p).convert("RGB") for p, _ in replay]
    if supports(base.model):
        say(
            f"{len(lab.images)} lab cells ({n_learnt} of them learnt, {len(lab.skipped)} skipped"
            f"{f'; {LAB_VIEWS} orientations each' if LAB_VIEWS > 1 else ''}) "
            f"and {len(replay)} replayed training images: one pass each ..."
        )
        lab_hidden = lab_inputs(base.model, base.processor, lab.images, base.use_denoise)
        replay_hidden, replay_logits = block_inputs(base.model, base.processor, replay_images, base.use_denoise)
        say(f"fine-tuning the last {TUNED_BLOCKS} blocks ({TUNING_FOLDS} folds to measure it, then on every cell) ...")
        result = adapt_blocks(base.model, base.codes, lab_hidden, lab.codes, replay_hidden, replay_logits, checked=lab.checked())
    else:
        say(
            f"{len(lab.images)} lab cells ({n_learnt} of them learnt, {len(lab.skipped)} skipped); "
            f"embedding them and {len(replay)} replayed images ..."
        )
        _, lab_x = base.forward(lab.images)
        replay_x = base.forward(replay_images)[1] if replay else np.zeros((0, lab_x.shape[1]))
        head = cast(torch.nn.Linear, base.model.classifier)
        result = adapt_head(
            base.codes,
            head.weight.detach().numpy(),
            head.bias.detach().numpy(),
            lab_x,
            lab.codes,
            replay_x,
            [c for _, c in replay],
            checked=lab.checked(),
        )
    if measure_forgetting and Path(model).is_dir():
        say("measuring what it forgot on the base model's test split ...")
    forgot = forgetting(base, result, Path(model)) if measure_forgetting and Path(model).is_dir() else {}
    out = write_adapted(base, result, Path(out_dir), forgot, str(cells))
    return out, json.loads((out / "adaptation.json").read_text())
