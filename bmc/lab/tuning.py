"""Fine-tuning a DINOv2 model's last blocks on a lab's cells without forgetting what it knew (``bmc adapt``).

A linear head on frozen embeddings cannot serve two laboratories' looks at once: on BCCD it stopped at
81 % of the other cells while marrow macro-F1 fell by 0.02 (docs/experiments.md). Here the last
:data:`TUNED_BLOCKS` transformer blocks, the final layer norm and the head are trained on

* the lab's labelled cells (cross-entropy, each weighing :data:`LAB_WEIGHT`), and
* a replay of the base model's training images, which keep the base model's own softened predictions
  (distillation, weight :data:`DISTILL_WEIGHT`): learning without forgetting, with no label needed.

Everything before the tuned blocks is frozen, so each image passes the frozen part once: its tokens at
the first tuned block are cached (:func:`block_inputs`) and the epochs run on the cache, a few seconds
each on 2 CPU cores. The tuned blocks are written back into the model (:func:`install`), so the adapted
folder is an ordinary ``Dinov2ForImageClassification``. Settings chosen on BCCD (one draw of 20 cells per
class, its other cells) and the Matek *validation* split, never the test split: docs/experiments.md.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image

from bmc.transforms import preprocess

TUNED_BLOCKS = 2
"""Transformer blocks trained (the last ones); the rest of the backbone is frozen."""
EPOCHS = 5
LEARNING_RATE = 1e-4
"""AdamW learning rate of the tuned blocks and the layer norm."""
HEAD_LEARNING_RATE = 1e-3
LAB_WEIGHT = 10.0
"""Weight of a lab cell's cross-entropy against a replayed image's distillation term (before :data:`DISTILL_WEIGHT`)."""
DISTILL_WEIGHT = 30.0
"""Weight of matching the base model's softened predictions on a replayed image."""
DISTILL_TEMPERATURE = 2.0
LABEL_SMOOTHING = 0.1
BATCH_SIZE = 32
SOUP = 1
"""Fine-tunings (seeds) whose weights are averaged into the adapted model; 1: a single fine-tuning. 3 did not pay
on validation (BCCD's other cells 83.4 % against 83.0 %, Matek macro-F1 0.789 against 0.794, at three times the
time: docs/experiments.md); kept as a setting for ``bench/adapt_curve.py --set``."""
LAB_VIEWS = 1
"""Orientations of each lab cell trained on (identity, mirror, flip, half turn, then the quarter turns), each weighing
1/LAB_VIEWS of a cell. A cell on a slide has no up or left, but 4 views did not pay on validation: BCCD's other
cells 85.3 % against 83.0 % (3 epochs), with more forgotten on marrow (macro-F1 0.784 against 0.794), and less
than one view with 5 epochs (docs/experiments.md); kept as a setting for ``bench/adapt_curve.py --set``."""
LORA_RANK = 0
"""0: the tuned blocks are trained whole. Above 0: their weights stay frozen and low-rank updates of this rank
(LoRA, through ``peft``) are learnt on their attention and MLP projections, then merged into the weights, so the
adapted folder is still a plain model that loads without ``peft``. Rank 8 on 4 blocks did not pay on validation over 5
draws (BCCD's other cells 82.2 % against 81.8 %, Matek macro-F1 0.792 against 0.790) at twice the time of a
fine-tuning (docs/experiments.md); kept as a setting for ``bench/adapt_curve.py --set``."""
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2")
LORA_LEARNING_RATE = 1e-3
"""AdamW learning rate of the low-rank updates (they start at zero, so they take a larger step than whole weights)."""


def supports(model: Any) -> bool:
    """Whether the model is a DINOv2 classifier whose last blocks can be tuned (others get a new head only)."""
    return hasattr(model, "dinov2") and hasattr(model, "classifier") and len(model.dinov2.encoder.layer) >= TUNED_BLOCKS


def first_tuned(model: Any) -> int:
    return len(model.dinov2.encoder.layer) - TUNED_BLOCKS


@torch.inference_mode()
def block_inputs(
    model: Any, processor: Any, images: Sequence[Image.Image], use_denoise: bool = False, batch_size: int = 32
) -> tuple[torch.Tensor, np.ndarray]:
    """Tokens entering the first tuned block (float16, to halve the cache) and the model's own logits, from
    one forward pass per image."""
    hidden, logits = [], []
    start = first_tuned(model)
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
    model: Any, processor: Any, images: Sequence[Image.Image], use_denoise: bool = False, views: int | None = None
) -> torch.Tensor:
    """Tokens entering the first tuned block for each lab cell in ``views`` orientations (default
    :data:`LAB_VIEWS`): shape (cells, views, tokens, width); view 0 is the cell as given."""
    v = LAB_VIEWS if views is None else views
    hidden, _ = block_inputs(model, processor, [o for image in images for o in orientations(image, v)], use_denoise)
    return hidden.reshape(len(images), v, *hidden.shape[1:])


def as_given(lab_hidden: torch.Tensor) -> torch.Tensor:
    """The tokens of the cells as given (view 0) from :func:`lab_inputs`' output; plain tokens pass through."""
    return lab_hidden[:, 0] if lab_hidden.dim() == 4 else lab_hidden


class Tail(torch.nn.Module):
    """Copies of the model's tuned blocks, final layer norm and head (``n_classes`` rows: new classes start at
    zero), computing the logits from the cached block inputs exactly as ``Dinov2ForImageClassification`` does."""

    def __init__(self, model: Any, n_classes: int):
        super().__init__()
        self.blocks = torch.nn.ModuleList(copy.deepcopy(model.dinov2.encoder.layer[first_tuned(model) :]))
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
    epochs: int | None = None,
    lab_weights: np.ndarray | None = None,
) -> Tail:
    """A :class:`Tail` trained on the lab's cells (labels) and the replay (the base model's logits) for
    ``epochs`` (default :data:`EPOCHS`); with :data:`SOUP` > 1, the average of that many fine-tunings' weights.
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
    weight = torch.cat([torch.as_tensor(scale * LAB_WEIGHT / views, dtype=torch.float32), torch.ones(len(replay_hidden))])
    # the base model's logits on replayed images; a class it lacks gets none of their probability
    soft = torch.full((len(replay_hidden), n_classes), -1e4)
    soft[:, : replay_logits.shape[1]] = torch.as_tensor(replay_logits)
    soft = torch.cat([torch.zeros((len(lab_hidden), n_classes)), soft])
    target = torch.softmax(soft / DISTILL_TEMPERATURE, dim=1)
    data = _Prepared(x, y, is_lab, weight, target)
    steps = EPOCHS if epochs is None else epochs
    tails = [_train(model, n_classes, data, seed + 1000 * k, steps) for k in range(SOUP)]
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


def _train(model: Any, n_classes: int, data: _Prepared, seed: int, epochs: int) -> Tail:
    """One fine-tuning of :func:`tune`: a fresh :class:`Tail` trained on ``data``."""
    torch.manual_seed(seed)
    tail = Tail(model, n_classes)
    x, y, is_lab, weight, target = data
    groups = [
        {"params": list(tail.norm.parameters()), "lr": LEARNING_RATE},
        {"params": list(tail.head.parameters()), "lr": HEAD_LEARNING_RATE},
    ]
    if LORA_RANK:
        groups.append({"params": _add_lora(tail), "lr": LORA_LEARNING_RATE})
    else:
        groups.append({"params": list(tail.blocks.parameters()), "lr": LEARNING_RATE})
    optimiser = torch.optim.AdamW(groups, weight_decay=0.0)
    order = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        tail.train()
        for batch in torch.randperm(len(x), generator=order).split(BATCH_SIZE):
            out = tail(x[batch].float())
            ce = torch.nn.functional.cross_entropy(out, y[batch], reduction="none", label_smoothing=LABEL_SMOOTHING)
            log_student = torch.log_softmax(out / DISTILL_TEMPERATURE, dim=1)
            kl = torch.nn.functional.kl_div(log_student, target[batch], reduction="none").sum(dim=1) * DISTILL_TEMPERATURE**2
            per_image = torch.where(is_lab[batch], ce, DISTILL_WEIGHT * kl)
            loss = (per_image * weight[batch]).sum() / weight[batch].sum()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    if LORA_RANK:
        _merge_lora(tail)
    return tail.eval()


def _add_lora(tail: Tail) -> list[torch.nn.Parameter]:
    """Freeze the tail's blocks and add LoRA updates to their projections; returns the updates' parameters."""
    from peft import LoraConfig, inject_adapter_in_model

    for p in tail.blocks.parameters():
        p.requires_grad_(False)
    config = LoraConfig(r=LORA_RANK, lora_alpha=LORA_RANK, target_modules=list(LORA_TARGETS), lora_dropout=0.0)
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
    start = first_tuned(model)
    for i, block in enumerate(tail.blocks):
        model.dinov2.encoder.layer[start + i].load_state_dict(block.state_dict())
    model.dinov2.layernorm.load_state_dict(tail.norm.state_dict())
    model.classifier = copy.deepcopy(tail.head)
    return model
