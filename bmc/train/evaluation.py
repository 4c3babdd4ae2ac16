"""Evaluating saved weights on every set a model card reports.

The training run and ``python -m bmc evaluate`` share these functions, so a figure in a card
comes from the same code whether it was measured at the end of training or added later (a new
external set, say). External sets are other laboratories' images that are never trained on or
used to choose a model; each is read in its own layout:

* PBC (Acevedo et al.): class from the file-name prefix (:func:`bmc.data.load_pbc_external`);
* a white-cell imagefolder such as BCCD (``Neutrophil/``, ``Eosinophil/`` …): class from the
  folder name. Such sets do not split neutrophils into band and segmented, so a neutrophil
  counts as right when it is called either (the band probability is added to the segmented one).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from bmc.calibration import calibrate, flagged, softmax
from bmc.data import check_files, domain_name, from_records, is_pbc_layout, load_pbc_external, scan_folder
from bmc.figures import plot_confusion_matrix
from bmc.images import IMAGE_SUFFIXES, open_image
from bmc.labels import sort_codes, wbc_code
from bmc.metrics import classification_metrics, per_class_rows
from bmc.model import update_config
from bmc.model_folder import FolderSettings
from bmc.serve.predictor import dataset_logits, predict_logits

UNSPLIT_NEUTROPHIL = {"NGB": "NGS"}
"""For sets whose neutrophils are not split into band/segmented: a band call counts as segmented."""


def counts_right(predicted: Sequence[str], truth: Sequence[str], equivalents: dict[str, str] | None) -> np.ndarray:
    """Per cell, whether a predicted code is right, a class its set's labels do not tell apart counting as its
    equivalent (a band call for a BCCD neutrophil: :data:`UNSPLIT_NEUTROPHIL`)."""
    eq = equivalents or {}
    return np.array([eq.get(p, p) == t for p, t in zip(predicted, truth)], dtype=bool)


def metrics_from_logits(
    logits: np.ndarray,
    labels: np.ndarray,
    codes: Sequence[str],
    temperature: float,
    equivalents: dict[str, str] | None = None,
    threshold: float | None = None,
) -> dict:
    """Card metrics for one set; ``equivalents`` ({predicted: counted as}) merges classes the set's
    labels do not tell apart, by adding the first class's probability to the second's. With the
    review ``threshold``, also how many cells would be flagged and how often the others are right."""
    probs = softmax(logits, temperature)
    for alias, target in (equivalents or {}).items():
        if alias in codes and target in codes:
            a, t = list(codes).index(alias), list(codes).index(target)
            probs[:, t] += probs[:, a]
            probs[:, a] = 0.0
    result = classification_metrics(probs, labels, num_classes=len(codes))
    result["per_class_rows"] = per_class_rows(result, list(codes))
    result["n_images"] = int(len(labels))
    present = [row["f1"] for row in result["per_class_rows"] if row["support"]]
    result["worst_class_f1"] = float(min(present)) if present else None
    """The weakest class the set holds: a macro average can hide one class the model gets badly wrong."""
    if threshold is not None and len(labels):
        result["review"] = review_stats(probs, np.asarray(labels), threshold)
    return result


VALIDATION_PREDICTIONS = "validation_predictions.csv"
"""Each validation image's true and predicted class, beside the model: two runs on the same split can then be
compared image by image (:func:`bmc.metrics.paired_macro_f1_difference`), not only by their totals."""


def write_predictions(
    path: str | Path, sources: Sequence[str], labels: Sequence[int] | np.ndarray, probs: np.ndarray, codes: Sequence[str]
) -> None:
    """One row per image: file, true class, predicted class and its calibrated confidence."""
    with open(path, "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["source", "label", "predicted", "confidence"])
        for source, label, p in zip(sources, labels, probs):
            out.writerow([source, codes[int(label)], codes[int(p.argmax())], f"{float(p.max()):.4f}"])


def read_predictions(path: str | Path) -> dict[str, tuple[str, str]]:
    """{file: (true class, predicted class)} from a :func:`write_predictions` file."""
    with open(path, newline="") as fh:
        return {row["source"]: (row["label"], row["predicted"]) for row in csv.DictReader(fh)}


def review_stats(probs: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    """Share of cells flagged (calibrated confidence below ``threshold``) and accuracy of the unflagged ones."""
    conf, correct = probs.max(axis=1), probs.argmax(axis=1) == labels
    kept = ~flagged(conf, threshold)
    return {
        "threshold": float(threshold),
        "flagged_share": float(1 - kept.mean()),
        "unflagged_accuracy": float(correct[kept].mean()) if kept.any() else float("nan"),
        "n_unflagged": int(kept.sum()),
    }


def by_domain(
    logits: np.ndarray, labels: np.ndarray, domains: Sequence[str], codes: Sequence[str], temperature: float, threshold: float | None = None
) -> dict:
    """The metrics of each domain on its own (empty when a split holds only one domain)."""
    names = sorted(set(domains))
    if len(names) < 2:
        return {}
    out = {}
    for name in names:
        mask = np.asarray([d == name for d in domains])
        out[name] = metrics_from_logits(logits[mask], labels[mask], codes, temperature, threshold=threshold)
    return out


def evaluate_split(
    model: Any, processor: Any, dataset: Any, codes: Sequence[str], temperature: float, use_denoise: bool, threshold: float | None = None
) -> dict:
    """A held-out split: pooled metrics plus, when it mixes sources, ``by_domain``."""
    logits, labels = dataset_logits(model, processor, dataset, use_denoise=use_denoise)
    result = metrics_from_logits(logits, labels, codes, temperature, threshold=threshold)
    per_domain = by_domain(logits, labels, dataset["domain"], codes, temperature, threshold)
    if per_domain:
        result["by_domain"] = per_domain
    return result


def load_wbc_external(root: str | Path, codes: Sequence[str]) -> tuple[Any, dict[str, int]]:
    """A white-cell imagefolder (BCCD layout): the images whose class the model knows, and per class
    how many were left out because it does not."""
    records, skipped = scan_folder(root)  # Matek codes and names are mapped there; other names are kept
    keep: list[tuple[str, str]] = []
    excluded: dict[str, int] = {}
    for path, label in records:
        code = wbc_code(label)
        if code in codes:
            keep.append((path, code))
        else:
            excluded[code] = excluded.get(code, 0) + 1
    keep, bad = check_files(keep)
    if bad or skipped:
        excluded["unreadable"] = len(bad) + len(skipped)
    return from_records(keep, codes, domain_name(root)), excluded


def load_labelled(root: str | Path, codes: Sequence[str]) -> tuple[Any, dict[str, int], dict[str, str] | None]:
    """A labelled folder in its own layout (PBC prefixes, or class folders named by Matek code or by white-cell
    name): the images of classes the model knows, the count left out per class, and the class equivalents its
    labels imply (:data:`UNSPLIT_NEUTROPHIL` when its neutrophils are not split into band and segmented)."""
    if is_pbc_layout(root):
        ds, excluded = load_pbc_external(root, codes)
        return ds, excluded, None
    ds, excluded = load_wbc_external(root, codes)
    names = ds.features["label"].names
    has_band = "NGB" in names and names.index("NGB") in set(ds["label"])
    return ds, excluded, None if has_band else UNSPLIT_NEUTROPHIL


def evaluate_external(
    model: Any,
    processor: Any,
    root: str | Path,
    codes: Sequence[str],
    temperature: float,
    use_denoise: bool,
    shared_codes: Sequence[str] | None = None,
    threshold: float | None = None,
) -> dict | None:
    """One external set, read in its own layout; None when it holds no class the model knows.

    ``shared_codes``: the classes the primary (marrow) source also supplies; their images get a
    figure of their own (``shared``), the fair comparison with a model that knows only those."""
    ds, excluded, equivalents = load_labelled(root, codes)
    if not len(ds):
        return None
    pbc = is_pbc_layout(root)
    logits, labels = dataset_logits(model, processor, ds, use_denoise=use_denoise)
    result = metrics_from_logits(logits, labels, codes, temperature, equivalents, threshold)
    result.update(
        excluded=excluded,
        source=str(root),
        layout="PBC (class from file prefix)" if pbc else "class folders",
        neutrophils_unsplit=equivalents is not None,
    )
    if shared_codes and pbc:  # the PBC set holds the classes a marrow-only model lacks; others hold few
        keep = np.isin(labels, [list(codes).index(c) for c in shared_codes if c in codes])
        if keep.any() and not keep.all():
            result["shared"] = metrics_from_logits(logits[keep], labels[keep], codes, temperature, equivalents, threshold)
            result["shared"]["classes"] = [c for c in codes if c in shared_codes]
    return result


def evaluate_unseen_marrow(
    model: Any, processor: Any, root: str | Path, codes: Sequence[str], temperature: float, threshold: float, use_denoise: bool
) -> dict:
    """Single marrow images of types the training marrow data lacks (``<CODE>_nnnnn.jpg``): what the
    model calls each one, for classes it learnt only from other sources and for ones it never saw."""
    records = [(str(p), p.stem.split("_")[0].upper()) for p in sorted(Path(root).glob("*")) if p.suffix.lower() in IMAGE_SUFFIXES]
    records, _ = check_files(records)
    images = [open_image(p) for p, _ in records]

    probs = softmax(predict_logits(model, processor, images, use_denoise=use_denoise), temperature) if images else np.zeros((0, len(codes)))
    rows = []
    for (path, truth), p in zip(records, probs):
        top = int(p.argmax())
        rows.append(
            {
                "file": Path(path).name,
                "true": truth,
                "known_class": truth in codes,
                "predicted": codes[top],
                "confidence": round(float(p[top]), 3),
                "flagged": bool(flagged(p[top], threshold)),
            }
        )
    known = [r for r in rows if r["known_class"]]
    return {
        "source": str(root),
        "rows": rows,
        "n_known": len(known),
        "n_known_correct": sum(r["predicted"] == r["true"] for r in known),
        "n_unknown": len(rows) - len(known),
        "n_unknown_flagged": sum(r["flagged"] for r in rows if not r["known_class"]),
    }


def shared_classes(manifest: list[dict]) -> list[str]:
    """Classes that more than one training domain supplies (with one domain: none)."""
    domains: dict[str, set[str]] = {}
    for row in manifest:
        if row["split"] == "train":
            domains.setdefault(row["label"], set()).add(row.get("domain", ""))
    return sort_codes(code for code, ds in domains.items() if len(ds) > 1)


def evaluate_more(
    results: dict, model: Any, processor: Any, external_dirs: Sequence[str], unseen_dir: str | None, use_denoise: bool
) -> tuple[dict[str, dict], dict | None]:
    """The external sets (by folder name) and the unseen-type marrow images, for a model whose
    ``results`` already hold its classes, calibration and shared classes."""
    codes, calib = results["classes"], results["calibration"]
    external = {}
    for folder in external_dirs:
        result = evaluate_external(
            model, processor, folder, codes, calib["temperature"], use_denoise, results.get("shared_classes"), calib["review_threshold"]
        )
        if result is not None:
            external[domain_name(folder)] = result
    unseen = (
        evaluate_unseen_marrow(model, processor, unseen_dir, codes, calib["temperature"], calib["review_threshold"], use_denoise)
        if unseen_dir
        else None
    )
    return external, unseen


def calibrate_on_validation(
    model_dir: Path, model: Any, processor: Any, validation: Any, codes: Sequence[str], target_accuracy: float, denoise: bool
) -> tuple[dict, dict]:
    """Fit temperature and review threshold on a validation set, store them in ``model_dir``'s config.json, write
    its per-image predictions beside the model, and return the calibration and the validation figures (per
    source too): the one calibration step of training and of ``bmc evaluate --recalibrate``."""

    logits, labels = dataset_logits(model, processor, validation, use_denoise=denoise)
    calib = calibrate(logits, labels, target_accuracy)
    update_config(model_dir, **FolderSettings.from_calibration(calib, denoise).config_keys())
    t, thr = calib["temperature"], calib["review_threshold"]
    figures = metrics_from_logits(logits, labels, codes, t, threshold=thr)
    per_domain = by_domain(logits, labels, validation["domain"], codes, t, thr)
    if per_domain:
        figures["by_domain"] = per_domain
    write_predictions(Path(model_dir) / VALIDATION_PREDICTIONS, validation["source"], labels, softmax(logits, t), codes)
    return calib, figures


def confusion_figure(set_name: str) -> str:
    """File name of an external set's confusion matrix beside the model."""
    return f"confusion_matrix_{set_name}.png"


def plot_external(external: dict[str, dict], codes: Sequence[str], folder: Path) -> None:
    """One confusion-matrix figure per external set, for the card (the rows of classes the set lacks stay empty)."""
    for name, result in external.items():
        plot_confusion_matrix(
            result["confusion_matrix"], list(codes), folder / confusion_figure(name), f"external set {name} ({result['n_images']} images)"
        )


def dataset_from_manifest(rows: Sequence[dict], codes: Sequence[str]) -> Any:
    """A data set of manifest rows (their files, labels and sources)."""
    parts = []
    for domain in dict.fromkeys(r.get("domain", "") for r in rows):
        mine = [(r["source"], r["label"]) for r in rows if r.get("domain", "") == domain]
        parts.append(from_records(mine, codes, domain))
    return datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0] if parts else from_records([], codes)


_COMPARE = {">=": float.__ge__, ">": float.__gt__, "<=": float.__le__, "<": float.__lt__}


def check_targets(metrics: dict, targets: Sequence[dict]) -> list[dict]:
    """Each target (``what``, a dotted ``path`` into metrics.json, a ``goal`` such as ``">= 0.86"``)
    with the measured value and whether it is met; a figure the metrics lack is reported as missing."""
    out = []
    for target in targets:
        op, bound = target["goal"].split()
        value: Any = metrics
        for key in target["path"].split("."):
            value = value.get(key) if isinstance(value, dict) else None
        met = None if value is None else _COMPARE[op](float(value), float(bound))
        out.append({**target, "value": None if value is None else float(value), "met": met})
    return out


def training_sources(metrics: dict) -> list[str]:
    """The names of the folders a model was trained on (``metrics["data"]["train_dir"]``, one or several)."""
    dirs = (metrics.get("data") or {}).get("train_dir") or []
    return [domain_name(d) for d in ([dirs] if isinstance(dirs, str) else dirs)]


def external_results(metrics: dict) -> dict[str, dict]:
    """``metrics["external"]`` as {set name: result}; older metrics.json files hold one PBC result."""
    ext = metrics.get("external") or {}
    if "accuracy" in ext:  # written before several external sets were supported
        return {Path(ext.get("source", "pbc-external")).name: ext}
    return ext
