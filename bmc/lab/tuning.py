"""Fine-tuning a DINOv2 model's last blocks on a lab's cells without forgetting what it knew (``bmc adapt``).

A linear head on frozen embeddings cannot serve two laboratories' looks at once: on BCCD it stopped at
81 % of the other cells while marrow macro-F1 fell by 0.02 (docs/experiments.md). Here the last
:attr:`TuningConfig.tuned_blocks` transformer blocks, the final layer norm and the head are trained on

* the lab's labelled cells (cross-entropy, each weighing ``lab_weight``), and
* a replay of the base model's training images, which keep the base model's own softened predictions
  (distillation, weight ``distill_weight``): learning without forgetting, with no label needed.

Everything before the tuned blocks is frozen, so each image passes the frozen part once: its tokens at
the first tuned block are cached (:func:`block_inputs`) and the epochs run on the cache, a few seconds
each on 2 CPU cores. The tuned blocks are written back into the model (:func:`install`), so the adapted
folder is an ordinary ``Dinov2ForImageClassification``. Settings chosen on BCCD (one draw of 20 cells per
class, its other cells) and the Matek *validation* split, never the test split: docs/experiments.md.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image

from bmc.transforms import preprocess


@dataclass(frozen=True)
class TuningConfig:
    """How ``bmc adapt`` fine-tunes the last blocks. The defaults are the chosen recipe; the other values are the
    experiments ``bench/adapt_curve.py --set NAME=VALUE`` repeats (each measured and not adopted:
    docs/experiments.md, "A model for your lab")."""

    tuned_blocks: int = 2
    """Transformer blocks trained (the last ones); the rest of the backbone is frozen."""
    epochs: int = 5
    learning_rate: float = 1e-4
    """AdamW learning rate of the tuned blocks and the layer norm."""
    head_learning_rate: float = 1e-3
    lab_weight: float = 10.0
    """Weight of a lab cell's cross-entropy against a replayed image's distillation term (before ``distill_weight``)."""
    distill_weight: float = 30.0
    """Weight of matching the base model's softened predictions on a replayed image."""
    distill_temperature: float = 2.0
    label_smoothing: float = 0.1
    batch_size: int = 32
    soup: int = 1
    """Fine-tunings (seeds) whose weights are averaged into the adapted model; 1: a single fine-tuning."""
    lab_views: int = 1
    """Orientations of each lab cell trained on (identity, mirror, flip, half turn, then the quarter turns), each
    weighing 1/lab_views of a cell."""
    lora_rank: int = 0
    """0: the tuned blocks are trained whole. Above 0: their weights stay frozen and low-rank updates of this rank
    (LoRA, through the optional ``peft``: ``pip install bmc[lora]``) are learnt on their attention and MLP
    projections, then merged into the weights, so the adapted folder still loads without ``peft``."""
    lora_learning_rate: float = 1e-3
    """AdamW learning rate of the low-rank updates (they start at zero, so they take a larger step)."""


RECIPE = TuningConfig()
"""The chosen settings."""
TUNED_BLOCKS = RECIPE.tuned_blocks
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2")


def supports(model: Any, config: TuningConfig = RECIPE) -> bool:
    """Whether the model is a DINOv2 classifier whose last blocks can be tuned (others get a new head only)."""
    return hasattr(model, "dinov2") and hasattr(model, "classifier") and len(model.dinov2.encoder.layer) >= config.tuned_blocks


def first_tuned(model: Any, config: TuningConfig = RECIPE) -> int:
    return len(model.dinov2.encoder.layer) - config.tuned_blocks


@torch.inference_mode()
def block_inputs(
    model: Any,
    processor: Any,
    images: Sequence[Image.Image],
    use_denoise: bool = False,
    batch_size: int = 32,
    config: TuningConfig = RECIPE,
) -> tuple[torch.Tensor, np.ndarray]:
    """Tokens entering the first tuned block (float16, to halve the cache) and the model's own logits, from
    one forward pass per image."""
    hidden, logits = [], []
    start = first_tuned(model, config)
    for i in range(0, len(images), batch_size):
        pixels = torch.from_numpy(preprocess(list(images[i : i + batch_size]), processor, use_denoise))
        out = model(pixel_values=pixels, output_hidden_states=True)
        hidden.append(out.hidden_states[start].to(torch.float16))
        logits.append(out.logits.float().numpy())
    width = model.config.hidden_size
    if not hidden:
        return torch.zeros((0, 1, width), dtype=torch.float16), np.zeros((0, model.config.num_labels), np.float32)
    return torch.cat(hidden), np.concatenate(logits)


def orientations(image: Image.Image, n: int) -> list[Image.Image]:
    """The first ``n`` of a cell's 8 orientations (flips and quarter turns), the picture itself first."""
    t = Image.Transpose
    turns = [t.FLIP_LEFT_RIGHT, t.FLIP_TOP_BOTTOM, t.ROTATE_180, t.ROTATE_90, t.ROTATE_270, t.TRANSPOSE, t.TRANSVERSE]
    return [image, *(image.transpose(op) for op in turns[: n - 1])][:n]


def lab_inputs(
    model: Any, processor: Any, images: Sequence[Image.Image], use_denoise: bool = False, config: TuningConfig = RECIPE
) -> torch.Tensor:
    """Tokens entering the first tuned block for each lab cell in ``config.lab_views`` orientations: shape
    (cells, views, tokens, width); view 0 is the cell as given."""
    v = config.lab_views
    views = [o for image in images for o in orientations(image, v)]
    hidden, _ = block_inputs(model, processor, views, use_denoise, config=config)
    return hidden.reshape(len(images), v, *hidden.shape[1:])


def as_given(lab_hidden: torch.Tensor) -> torch.Tensor:
    """The tokens of the cells as given (view 0) from :func:`lab_inputs`' output; plain tokens pass through."""
    return lab_hidden[:, 0] if lab_hidden.dim() == 4 else lab_hidden


class Tail(torch.nn.Module):
    """Copies of the model's tuned blocks, final layer norm and head (``n_classes`` rows: new classes start at
    zero), computing the logits from the cached block inputs exactly as ``Dinov2ForImageClassification`` does."""

    def __init__(self, model: Any, n_classes: int, config: TuningConfig = RECIPE):
        super().__init__()
        self.blocks = torch.nn.ModuleList(copy.deepcopy(model.dinov2.encoder.layer[first_tuned(model, config) :]))
        self.norm = copy.deepcopy(model.dinov2.layernorm)
        old = model.classifier
        self.head = torch.nn.Linear(old.in_features, n_classes)
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.bias.zero_()
            self.head.weight[: old.out_features] = old.weight
            self.head.bias[: old.out_features] = old.bias

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            out = block(hidden)
            hidden = out[0] if isinstance(out, tuple) else out
        tokens = self.norm(hidden)
        return self.head(torch.cat([tokens[:, 0], tokens[:, 1:].mean(dim=1)], dim=1))

    @torch.inference_mode()
    def logits(self, hidden: torch.Tensor, batch_size: int = 64) -> np.ndarray:
        self.eval()
        out = [self(hidden[i : i + batch_size].float()) for i in range(0, len(hidden), batch_size)]
        return torch.cat(out).numpy() if out else np.zeros((0, self.head.out_features), np.float32)


def tune(
    model: Any,
    n_classes: int,
    lab_hidden: torch.Tensor,
    lab_y: np.ndarray,
    replay_hidden: torch.Tensor,
    replay_logits: np.ndarray,
    seed: int = 0,
    lab_weights: np.ndarray | None = None,
    config: TuningConfig = RECIPE,
) -> Tail:
    """A :class:`Tail` trained on the lab's cells (labels) and the replay (the base model's logits) as ``config``
    says; with ``config.soup`` > 1, the average of that many fine-tunings' weights.
    ``lab_hidden`` is (cells, tokens, width), or (cells, views, tokens, width) from :func:`lab_inputs`, each view
    then weighing 1/views of a cell. ``lab_weights`` scales each lab cell's weight (default 1: a reviewed cell)."""
    views = 1
    scale = np.ones(len(lab_y)) if lab_weights is None else np.asarray(lab_weights, dtype=np.float64)
    if lab_hidden.dim() == 4:
        views = lab_hidden.shape[1]
        lab_hidden, lab_y, scale = lab_hidden.flatten(0, 1), np.repeat(np.asarray(lab_y), views), np.repeat(scale, views)
    x = torch.cat([lab_hidden, replay_hidden]) if len(replay_hidden) else lab_hidden  # no replay: a model folder without its manifest
    y = torch.cat([torch.as_tensor(lab_y, dtype=torch.long), torch.zeros(len(replay_hidden), dtype=torch.long)])
    is_lab = torch.arange(len(x)) < len(lab_hidden)
    weight = torch.cat([torch.as_tensor(scale * config.lab_weight / views, dtype=torch.float32), torch.ones(len(replay_hidden))])
    # the base model's logits on replayed images; a class it lacks gets none of their probability
    soft = torch.full((len(replay_hidden), n_classes), -1e4)
    soft[:, : replay_logits.shape[1]] = torch.as_tensor(replay_logits)
    soft = torch.cat([torch.zeros((len(lab_hidden), n_classes)), soft])
    target = torch.softmax(soft / config.distill_temperature, dim=1)
    data = _Prepared(x, y, is_lab, weight, target)
    tails = [_train(model, n_classes, data, seed + 1000 * k, config) for k in range(config.soup)]
    if len(tails) > 1:  # all start from the same weights, so their average is a model too ("model soup")
        states = [t.state_dict() for t in tails]
        tails[0].load_state_dict({name: sum(s[name] for s in states) / len(states) for name in states[0]})
    return tails[0]


class _Prepared(NamedTuple):
    """What every fine-tuning of :func:`tune` trains on: lab cells then replayed images, made once."""

    x: torch.Tensor
    y: torch.Tensor
    is_lab: torch.Tensor
    weight: torch.Tensor
    target: torch.Tensor
    """The base model's softened predictions on the replayed images (distillation targets)."""


def _train(model: Any, n_classes: int, data: _Prepared, seed: int, config: TuningConfig) -> Tail:
    """One fine-tuning of :func:`tune`: a fresh :class:`Tail` trained on ``data``."""
    torch.manual_seed(seed)
    tail = Tail(model, n_classes, config)
    x, y, is_lab, weight, target = data
    groups = [
        {"params": list(tail.norm.parameters()), "lr": config.learning_rate},
        {"params": list(tail.head.parameters()), "lr": config.head_learning_rate},
    ]
    if config.lora_rank:
        groups.append({"params": _add_lora(tail, config.lora_rank), "lr": config.lora_learning_rate})
    else:
        groups.append({"params": list(tail.blocks.parameters()), "lr": config.learning_rate})
    optimiser = torch.optim.AdamW(groups, weight_decay=0.0)
    order = torch.Generator().manual_seed(seed)
    temperature = config.distill_temperature
    for _ in range(config.epochs):
        tail.train()
        for batch in torch.randperm(len(x), generator=order).split(config.batch_size):
            out = tail(x[batch].float())
            ce = torch.nn.functional.cross_entropy(out, y[batch], reduction="none", label_smoothing=config.label_smoothing)
            log_student = torch.log_softmax(out / temperature, dim=1)
            kl = torch.nn.functional.kl_div(log_student, target[batch], reduction="none").sum(dim=1) * temperature**2
            per_image = torch.where(is_lab[batch], ce, config.distill_weight * kl)
            loss = (per_image * weight[batch]).sum() / weight[batch].sum()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    if config.lora_rank:
        _merge_lora(tail)
    return tail.eval()


def _add_lora(tail: Tail, rank: int) -> list[torch.nn.Parameter]:
    """Freeze the tail's blocks and add LoRA updates of ``rank`` to their projections; returns the updates' parameters."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError as exc:
        raise ValueError("lora_rank > 0 needs the optional peft package: pip install 'bmc[lora]'") from exc

    for p in tail.blocks.parameters():
        p.requires_grad_(False)
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=list(LORA_TARGETS), lora_dropout=0.0)
    inject_adapter_in_model(config, tail.blocks)  # in place: the projections become LoRA layers
    return [p for name, p in tail.blocks.named_parameters() if "lora_" in name]


def _merge_lora(tail: Tail) -> None:
    """Fold each LoRA update into its projection's weight and put the plain layer back (no ``peft`` at load)."""
    for name, module in list(tail.blocks.named_modules()):
        if hasattr(module, "base_layer") and hasattr(module, "merge"):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            setattr(tail.blocks.get_submodule(parent_name), child, module.base_layer)


def install(model: Any, tail: Tail) -> Any:
    """The model with the tail's blocks, layer norm and head in place of its own (labels are set by the caller)."""
    start = len(model.dinov2.encoder.layer) - len(tail.blocks)
    for i, block in enumerate(tail.blocks):
        model.dinov2.encoder.layer[start + i].load_state_dict(block.state_dict())
    model.dinov2.layernorm.load_state_dict(tail.norm.state_dict())
    model.classifier = copy.deepcopy(tail.head)
    return model
