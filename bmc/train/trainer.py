"""The Trainer bmc trains with and what it optimises: a loss for imbalanced classes from several
laboratories, per-image weights, optional distillation from an earlier model, layer-wise learning
rates, and the per-epoch augmentation draws.

:mod:`bmc.train.run` builds one of these and runs it; the benchmark (``bench/run.py``) times its steps.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedModel, Trainer, TrainerCallback, TrainingArguments

from bmc.calibration import softmax
from bmc.metrics import classification_metrics, scalar_metrics
from bmc.train.augmentation import TrainTransform

log = logging.getLogger(__name__)


@dataclass
class Teacher:
    """An earlier model whose softened predictions a run also learns (learning without forgetting).

    ``columns``: for each of the teacher's classes, its column in the student's logits; ``image_size``: the
    teacher's input side (the student's batch is resized to it, same normalisation)."""

    model: nn.Module
    columns: list[int]
    image_size: int
    weight: float = 0.5
    temperature: float = 2.0

    def loss(self, student_logits: torch.Tensor, pixel_values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """T² · KL(teacher ‖ student over the teacher's classes), summed over the masked images and divided by the
        batch size, so the term weighs each distilled image alike whatever share of the batch they are."""
        if not bool(mask.any()):
            return student_logits.sum() * 0.0
        pixels = pixel_values[mask]
        if pixels.shape[-1] != self.image_size:
            pixels = nn.functional.interpolate(pixels, size=(self.image_size, self.image_size), mode="bilinear", antialias=True)
        self.model.to(pixels.device)
        with torch.no_grad():
            teacher = self.model(pixel_values=pixels).logits.float()
        student = student_logits[mask][:, self.columns]
        return soft_kl_sum(student, teacher, self.temperature) / student_logits.shape[0]


def soft_kl_sum(logits: torch.Tensor, target_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """T² · KL(softmax(target/T) ‖ softmax(logits/T)) summed over the images, the target held fixed: the one
    soft-label term of distillation (:class:`Teacher`) and colour consistency (:func:`colour_consistency_loss`)."""
    t = temperature
    target = nn.functional.log_softmax(target_logits.detach().float() / t, dim=-1)
    kl = nn.functional.kl_div(nn.functional.log_softmax(logits.float() / t, dim=-1), target, log_target=True, reduction="sum")
    return kl * t * t


class CellTrainer(Trainer):
    """``Trainer`` with a loss for imbalanced classes and a faster-learning classification head."""

    def __init__(
        self,
        *args: Any,
        loss_name: str = "weighted_ce",
        focal_gamma: float = 2.0,
        head_lr_multiplier: float = 1.0,
        layer_lr_decay: float = 1.0,
        teacher: Teacher | None = None,
        colour_consistency: float = 0.0,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.teacher = teacher
        self.colour_consistency = colour_consistency
        self.loss_name = loss_name
        self.focal_gamma = focal_gamma
        self.head_lr_multiplier = head_lr_multiplier
        self.layer_lr_decay = layer_lr_decay

    def compute_loss(self, model: nn.Module, inputs: dict, return_outputs: bool = False, num_items_in_batch: Any = None):
        labels = inputs.pop("labels")
        weights = inputs.pop("sample_weight", None)
        distill = inputs.pop("distill", None)
        view = inputs.pop("pixel_values_view", None)
        outputs = model(**inputs)
        loss = cell_loss(outputs.logits, labels, self.loss_name, weights, self.focal_gamma, self.args.label_smoothing_factor)
        if self.teacher is not None and distill is not None and model.training:
            loss = loss + self.teacher.weight * self.teacher.loss(outputs.logits, inputs["pixel_values"], distill.bool())
        if view is not None and self.colour_consistency and model.training:
            loss = loss + self.colour_consistency * colour_consistency_loss(outputs.logits, model(pixel_values=view).logits)
        return (loss, outputs) if return_outputs else loss

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        load_checkpoint_weights(cast(nn.Module, model or self.model), resume_from_checkpoint)  # the Trainer always has a model

    def _load_best_model(self) -> None:
        log.info(
            "loading best checkpoint %s (%s = %s)",
            self.state.best_model_checkpoint,
            self.args.metric_for_best_model,
            self.state.best_metric,
        )
        # transformers calls this only once a best checkpoint is known, on the model it trains
        load_checkpoint_weights(cast(nn.Module, self.model), cast(str, self.state.best_model_checkpoint))

    def create_optimizer(self, model: nn.Module | None = None):
        """AdamW with one learning rate per depth: the new head at ``head_lr_multiplier`` × the base
        rate, transformer block *i* of *L* at base × ``layer_lr_decay`` ** (L - i) (layer-wise decay,
        as in BEiT/DINOv2 fine-tuning). Early blocks hold generic features that a few thousand
        images should barely move; a flat rate either learns slowly or wrecks them."""
        if self.optimizer is None and (self.head_lr_multiplier != 1.0 or self.layer_lr_decay != 1.0):
            model = cast(nn.Module, model or self.model)  # the Trainer always has a model
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


def load_checkpoint_weights(model: nn.Module, checkpoint: str) -> None:
    """Load a checkpoint's weights through ``from_pretrained``, which applies transformers' parameter
    renames. (transformers 5 saves checkpoints under the legacy names and the Trainer's own
    ``load_state_dict`` then silently skips DINOv2's attention weights when it resumes or restores
    the best model.) Loading is strict: a mismatch raises instead of training on half-loaded weights."""
    model = cast(PreTrainedModel, model)  # the Trainer's model: a transformers classifier
    loaded = type(model).from_pretrained(checkpoint, config=model.config, use_safetensors=True, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)


def colour_consistency_loss(logits: torch.Tensor, view_logits: torch.Tensor) -> torch.Tensor:
    """KL(p(image) ‖ p(image in another lab's colours)), batch mean, the image's own prediction held fixed: the
    restyled view is taught to read the cell as the image does, so a lab's colours stop being evidence."""
    return soft_kl_sum(view_logits, logits) / logits.shape[0]


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


def collate(examples: list[dict]) -> dict[str, torch.Tensor]:
    batch = {
        "pixel_values": torch.from_numpy(np.stack([np.asarray(e["pixel_values"], np.float32) for e in examples])),
        "labels": torch.tensor([e["labels"] for e in examples], dtype=torch.long),
    }
    if "weight" in examples[0]:
        batch["sample_weight"] = torch.tensor([e["weight"] for e in examples], dtype=torch.float32)
    if "distill" in examples[0]:
        batch["distill"] = torch.tensor([e["distill"] for e in examples], dtype=torch.bool)
    if "pixel_values_view" in examples[0]:
        batch["pixel_values_view"] = torch.from_numpy(np.stack([np.asarray(e["pixel_values_view"], np.float32) for e in examples]))
    return batch


class AugmentationEpoch(TrainerCallback):
    """Tell the train transform which epoch it is in, so its per-image draws are resumable."""

    def __init__(self, transform: TrainTransform):
        self.transform = transform

    def on_epoch_begin(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        self.transform.epoch = math.floor((state.epoch or 0) + 1e-6)
