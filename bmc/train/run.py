"""A training run with the Hugging Face ``Trainer``, start to finish.

``train_hf.py`` parses arguments (:mod:`bmc.train.arguments`) and calls :func:`run`: load and split the data
(:mod:`bmc.train.dataset`), build the model and the :class:`~bmc.train.trainer.CellTrainer`, train with early
stopping on macro-F1, calibrate on the validation split, measure the *saved* model on the test split and the
external sets, and write the model folder (:mod:`bmc.train.folder`).
"""

from __future__ import annotations

import errno
import logging
import os
import tempfile
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from transformers import AutoImageProcessor, EarlyStoppingCallback, TrainerCallback, TrainingArguments, set_seed

from bmc import labels
from bmc.images import open_image
from bmc.model import class_codes, load_classifier, load_for_training, save_classifier
from bmc.train import evaluation
from bmc.train.arguments import DataArguments, ExportArguments, ModelArguments
from bmc.train.augmentation import TrainTransform
from bmc.train.dataset import check_no_held_out_leak, distill_mask, prepare_data
from bmc.train.folder import base_hub_id, base_source, write_model_folder
from bmc.train.mixstyle import attach_mixstyle
from bmc.train.trainer import AugmentationEpoch, CellTrainer, Teacher, collate, compute_metrics, sample_weights
from bmc.transforms import (
    COLOUR_STATISTICS,
    build_image_processor,
    colour_reference,
    make_eval_transform,
    processor_size,
    set_colour_reference,
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel

log = logging.getLogger(__name__)


def use_all_cores_when_alone() -> None:
    """``accelerate launch`` sets ``OMP_NUM_THREADS=1`` for every process, which on a CPU-only
    single-process run halves (2 cores) or worse the speed. With one process, use every core."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1 and torch.get_num_threads() == 1 and (os.cpu_count() or 1) > 1:
        torch.set_num_threads(os.cpu_count() or 1)


def run(
    data_args: DataArguments, model_args: ModelArguments, training_args: TrainingArguments, export_args: ExportArguments | None = None
) -> dict:
    """The whole training run; returns the metrics written to ``metrics.json``.

    Four steps: load and split the data (refusing a split that leaks the base model's held-out
    images), train, export the weights and measure the *saved* model, write the model folder."""
    use_all_cores_when_alone()
    export_args = export_args or ExportArguments()
    output_dir = cast(str, training_args.output_dir)  # TrainingArguments.__post_init__ sets a default
    export_dir = Path(export_args.export_dir or output_dir)
    if model_args.distill_from and not (Path(model_args.distill_from) / "config.json").is_file():
        raise ValueError(f"--distill_from {model_args.distill_from}: not a model folder (no config.json)")  # before any data
    dsd, skipped, manifest = prepare_data(data_args, training_args.seed)
    check_no_held_out_leak(model_args.model_name_or_path, manifest)
    codes = dsd["train"].features["label"].names
    log.info("classes: %s; split sizes: %s; skipped files: %d", codes, {k: len(v) for k, v in dsd.items()}, len(skipped))

    trainer, processor = build_trainer(dsd, codes, model_args, training_args, manifest)
    checkpoint = resolve_checkpoint(training_args.resume_from_checkpoint, output_dir)
    # A resumed run continues the early-stopping count where it stopped (transformers resets it by default).
    training_args.restore_callback_states_from_checkpoint = True
    train_result = trainer.train(resume_from_checkpoint=checkpoint)
    if not trainer.is_world_process_zero():
        return {}

    export_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".bmc-export-", dir=export_dir.parent))
    model = cast("PreTrainedModel", trainer.model)  # build_trainer gave it a transformers classifier
    save_classifier(model.eval(), processor, staging, fp16=export_args.fp16_weights)
    results = {
        "model_name": export_args.model_name or export_dir.name,
        "hub_model_id": training_args.hub_model_id,
        "code_url": export_args.code_url,
        "classes": codes,
        "base_model": model_args.model_name_or_path,
        "base_model_source": base_source(model_args.model_name_or_path),
        "base_model_hub_id": base_hub_id(model_args.model_name_or_path),
        "data": asdict(data_args),
        "model_args": asdict(model_args),
        "training": {
            k: getattr(training_args, k)
            for k in (
                "learning_rate",
                "num_train_epochs",
                "per_device_train_batch_size",
                "weight_decay",
                "warmup_steps",
                "lr_scheduler_type",
                "label_smoothing_factor",
                "seed",
                "gradient_accumulation_steps",
            )
        },
        "split_sizes": {k: len(v) for k, v in dsd.items()},
        "split_counts": {k: dict(Counter(codes[i] for i in v["label"])) for k, v in dsd.items()},
        "skipped_files": len(skipped),
        "epochs_trained": trainer.state.epoch,
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "train_runtime_s": train_result.metrics.get("train_runtime"),
        # what a comparison between runs may look at, epoch by epoch (the log itself stays in the checkpoints)
        "validation_macro_f1_by_epoch": [round(h["eval_macro_f1"], 4) for h in trainer.state.log_history if "eval_macro_f1" in h],
        "shared_classes": evaluation.shared_classes(manifest),
    }
    results.update(calibrate_and_evaluate(staging, dsd, data_args, model_args, codes, results["shared_classes"]))
    write_model_folder(staging, export_dir, results, manifest, skipped, trainer.state.log_history)
    return results


def build_trainer(
    dsd: Any, codes: list[str], model_args: ModelArguments, training_args: TrainingArguments, manifest: list[dict] | None = None
) -> tuple[CellTrainer, Any]:
    """The model (new head seeded), its processor, the augmented and weighted training set, the teacher
    (``--distill_from``; its held-out images checked against ``manifest``), and the Trainer."""
    id2label, label2id = labels.label_maps(codes)
    set_seed(training_args.seed)  # a new head is initialised here, before the Trainer seeds anything
    model = load_for_training(
        model_args.model_name_or_path,
        id2label,
        label2id,
        model_args.ignore_mismatched_sizes,
        model_args.drop_path_rate,
        model_args.allow_pickle_weights,
        model_args.model_revision,
    )
    if model_args.mixstyle_blocks:
        attach_mixstyle(model, list(model_args.mixstyle_blocks), model_args.mixstyle_p)
        log.info("MixStyle after blocks %s (p %.2f), training only", model_args.mixstyle_blocks, model_args.mixstyle_p)
    base_processor = _base_processor(model_args.model_name_or_path, model_args.model_revision)
    processor = build_image_processor(model_args.image_size, tuple(base_processor.image_mean), tuple(base_processor.image_std))
    if model_args.colour_standardise != "none":
        method = model_args.colour_standardise
        set_colour_reference(processor, *training_colour_reference(dsd["train"], method), method=method)
        log.info("colour reference (%s): %s", method, colour_reference(processor))
    train_transform = TrainTransform(
        processor, model_args.denoise, training_args.seed, tuple(model_args.augment), colour_view=model_args.colour_consistency > 0
    )
    weights = sample_weights(dsd["train"]["label"], dsd["train"]["domain"], model_args.balance, model_args.domain_weighting)
    train_ds = dsd["train"].add_column("weight", weights)
    teacher = None
    if model_args.distill_from:
        teacher = load_teacher(model_args, codes, tuple(base_processor.image_mean), tuple(base_processor.image_std), manifest or [])
        mask = distill_mask(model_args.distill_from, train_ds["source"], [codes[i] for i in train_ds["label"]])
        if not any(mask):
            raise ValueError(f"--distill_from {model_args.distill_from}: it trained on none of this run's training images")
        log.info("distilling %s on %d of %d training images", model_args.distill_from, sum(mask), len(mask))
        train_ds = train_ds.add_column("distill", mask)
    train_ds = train_ds.with_transform(train_transform)
    val_ds = dsd["validation"].with_transform(make_eval_transform(processor, model_args.denoise))

    training_args.remove_unused_columns = False
    # transformers defaults the selection metric to the loss; bmc selects by macro-F1 unless told otherwise.
    if training_args.metric_for_best_model in (None, "loss", "eval_loss"):
        training_args.metric_for_best_model, training_args.greater_is_better = "macro_f1", True
    callbacks: list[TrainerCallback] = [AugmentationEpoch(train_transform)]
    if model_args.early_stopping_patience and training_args.load_best_model_at_end:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=model_args.early_stopping_patience))
    trainer = CellTrainer(
        model=model,
        args=training_args,
        train_dataset=train_ds,
        eval_dataset=val_ds,
        processing_class=processor,
        data_collator=collate,
        compute_metrics=compute_metrics,
        callbacks=callbacks,
        loss_name=model_args.loss,
        focal_gamma=model_args.focal_gamma,
        head_lr_multiplier=model_args.head_lr_multiplier,
        layer_lr_decay=model_args.layer_lr_decay,
        teacher=teacher,
        colour_consistency=model_args.colour_consistency,
    )
    return trainer, processor


def load_teacher(model_args: ModelArguments, codes: list[str], mean: tuple, std: tuple, manifest: list[dict]) -> Teacher:
    """The ``--distill_from`` model, checked: its classes are among the run's, its normalisation is the run's, and
    none of the run's validation or test images was one of its training images (which would leak into the figures)."""
    folder = str(model_args.distill_from)
    check_no_held_out_leak(folder, manifest)
    model, processor = load_classifier(folder)
    theirs = class_codes(model)
    missing = sorted(set(theirs) - set(codes))
    if missing:
        raise ValueError(f"--distill_from {folder}: its classes {', '.join(missing)} are not among this run's")
    if tuple(processor.image_mean) != mean or tuple(processor.image_std) != std:
        raise ValueError(f"--distill_from {folder}: normalised unlike this run's base model; distil from a model of the same base")
    for param in model.parameters():
        param.requires_grad_(False)
    return Teacher(
        model.eval(),
        [codes.index(c) for c in theirs],
        processor_size(processor),
        model_args.distill_weight,
        model_args.distill_temperature,
    )


def calibrate_and_evaluate(
    folder: Path, dsd: Any, data_args: DataArguments, model_args: ModelArguments, codes: list[str], shared: list[str]
) -> dict[str, Any]:
    """Load the weights as saved in ``folder`` (float16 on disk), fit the calibration on the validation
    split (stored in its config.json), then measure validation, test, external sets and unseen types."""
    model, processor = load_classifier(str(folder))
    calib, validation = evaluation.calibrate_on_validation(
        folder, model, processor, dsd["validation"], codes, model_args.review_target_accuracy, model_args.denoise
    )
    t, thr = calib["temperature"], calib["review_threshold"]
    out: dict[str, Any] = {"calibration": calib, "n_parameters": int(sum(p.numel() for p in model.parameters()))}
    out["validation"] = validation
    if "test" in dsd:
        out["test"] = evaluation.evaluate_split(model, processor, dsd["test"], codes, t, model_args.denoise, thr)
    external, unseen = evaluation.evaluate_more(
        {"classes": codes, "calibration": calib, "shared_classes": shared},
        model,
        processor,
        data_args.external_dir or [],
        data_args.unseen_dir,
        model_args.denoise,
    )
    if external:
        out["external"] = external
    if unseen:
        out["unseen_marrow"] = unseen
    return out


def resolve_checkpoint(resume: str | bool | None, output_dir: str) -> str | None:
    """The checkpoint to resume from: a given folder (checked), or with ``True`` the newest
    *complete* ``checkpoint-N`` in ``output_dir`` (a run killed while saving leaves one without
    ``trainer_state.json``, which the Trainer would otherwise pick and fail on)."""
    if resume in (None, False, "", "False", "false"):
        return None
    if resume in (True, "True", "true"):
        done = [
            p for p in Path(output_dir).glob("checkpoint-*") if (p / "trainer_state.json").is_file() and p.name.split("-")[-1].isdigit()
        ]
        if not done:
            raise FileNotFoundError(f"--resume_from_checkpoint: no complete checkpoint in {output_dir}")
        return str(max(done, key=lambda p: int(p.name.split("-")[-1])))
    path = Path(str(resume))
    if not (path / "trainer_state.json").is_file():
        raise FileNotFoundError(f"--resume_from_checkpoint {path}: not a complete checkpoint folder (no trainer_state.json)")
    return str(path)


def describe_write_error(exc: OSError) -> str | None:
    """A plain message for the write failures a user can fix (disk full, permissions), else None."""
    path = f" {exc.filename}" if getattr(exc, "filename", None) else ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return (
            f"the disk is full{' while writing' + path if path else ''}. Free some space and rerun with "
            "--resume_from_checkpoint True: the checkpoints written so far are kept."
        )
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"no permission to write{path}. Choose an --output_dir (and --export_dir) you can write to."
    return None


COLOUR_REFERENCE_IMAGES = 300
"""Training images of the first source (the marrow set) whose average Lab statistics become the colour reference."""


def training_colour_reference(
    train: Any, method: str = "reinhard", n: int = COLOUR_REFERENCE_IMAGES, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Average per-image statistics of ``method`` (:data:`bmc.transforms.COLOUR_STATISTICS`: Lab mean and spread,
    or chromatin and slide colour) over ``n`` training images of the first domain (the marrow set): the reference
    every image's colours are mapped onto with ``--colour_standardise``."""
    domains = list(train["domain"])
    first = [i for i, d in enumerate(domains) if d == domains[0]]
    picked = np.random.default_rng(seed).choice(len(first), min(n, len(first)), replace=False)
    statistics = COLOUR_STATISTICS[method]
    stats = [statistics(np.asarray(open_image(train[int(first[i])]["image"]))) for i in picked]
    return np.mean([m for m, _ in stats], axis=0), np.mean([s for _, s in stats], axis=0)


def _base_processor(name_or_path: str, revision: str | None = None) -> Any:
    """The base model's processor, for its normalisation statistics (ImageNet if it has none)."""
    try:
        return AutoImageProcessor.from_pretrained(name_or_path, revision=revision or "main")
    except (OSError, ValueError):
        return build_image_processor(224)
