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

import json
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import numpy as np
import torch
from PIL import Image

from bmc.lab.cells import REPLAY_PER_CLASS, LabCells, read_lab_cells, replay_records
from bmc.lab.fitting import MIN_NEW_CLASS, TUNING_FOLDS, Adaptation, adapt_blocks, adapt_head, lab_classes
from bmc.lab.folder import forgetting, write_adapted
from bmc.lab.tuning import RECIPE, TuningConfig, block_inputs, lab_inputs, supports
from bmc.serve.predictor import Predictor

__all__ = ["MIN_NEW_CLASS", "Adaptation", "LabCells", "adapt_head", "adapt_model", "read_lab_cells"]


def adapt_model(
    model: str,
    cells: Path,
    out_dir: Path,
    images: Sequence[Path] = (),
    replay_per_class: int = REPLAY_PER_CLASS,
    measure_forgetting: bool = True,
    progress: bool = True,
    learnt: Path | bool = False,
    config: TuningConfig = RECIPE,
) -> tuple[Path, dict]:
    """``bmc adapt``: read the lab's cells, pass them and the replay through the base model once, tune its last
    blocks (DINOv2) or refit its head (other models), measure it, and write the adapted model folder.
    ``learnt``: also the cells labelled by the learning review (:func:`read_lab_cells`); ``config``: how the last
    blocks are tuned (:class:`bmc.lab.tuning.TuningConfig`; the default is the chosen recipe)."""
    say = print if progress else (lambda *_a, **_k: None)
    base = Predictor(model, backend="torch")
    lab = read_lab_cells(cells, images, learnt)
    if len(set(lab.codes)) < 2:
        raise ValueError(f"{cells}: the cells hold {len(set(lab.codes))} class; adapting needs at least two")
    lab_classes(base.codes, lab.codes)  # a class the model lacks with too few cells: refused before the passes, not after
    n_learnt = int((~lab.checked()).sum())
    replay = replay_records(Path(model), base.codes, replay_per_class) if Path(model).is_dir() else []
    replay_images = [Image.open(p).convert("RGB") for p, _ in replay]
    if supports(base.model, config):
        say(
            f"{len(lab.images)} lab cells ({n_learnt} of them learnt, {len(lab.skipped)} skipped"
            f"{f'; {config.lab_views} orientations each' if config.lab_views > 1 else ''}) "
            f"and {len(replay)} replayed training images: one pass each ..."
        )
        lab_hidden = lab_inputs(base.model, base.processor, lab.images, base.use_denoise, config)
        replay_hidden, replay_logits = block_inputs(base.model, base.processor, replay_images, base.use_denoise, config=config)
        say(f"fine-tuning the last {config.tuned_blocks} blocks ({TUNING_FOLDS} folds to measure it, then on every cell) ...")
        result = adapt_blocks(
            base.model, base.codes, lab_hidden, lab.codes, replay_hidden, replay_logits, checked=lab.checked(), config=config
        )
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
