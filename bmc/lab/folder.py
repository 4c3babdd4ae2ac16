"""The adapted model folder: what the adapted model forgot of the base model's test split, its weights and its card."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from bmc.calibration import softmax
from bmc.count.learning import LEARNT_WEIGHT
from bmc.lab.fitting import Adaptation
from bmc.lab.tuning import TuningConfig, block_inputs, install
from bmc.labels import display_name
from bmc.metrics import classification_metrics
from bmc.model import save_classifier, update_config
from bmc.model_folder import FolderSettings, read_manifest
from bmc.serve.predictor import Predictor
from bmc.splits import resolve_source


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
    settings = FolderSettings.from_calibration(result.calibration, base.use_denoise, str(base.name))
    update_config(out_dir, **settings.config_keys())
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
            tuned = TuningConfig(tuned_blocks=len(result.tail.blocks))
            hidden, logits = block_inputs(base.model, base.processor, images, base.use_denoise, config=tuned)
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
