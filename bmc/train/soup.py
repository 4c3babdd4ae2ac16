"""A weight average of fine-tuned models (``bmc soup``): one model between two recipes, at no training cost.

Two runs fine-tuned one after the other from the same weights lie in one basin of the loss, and the average of
their weights is a model of its own ("model soups", Wortsman et al., ICML 2022; WiSE-FT, Wortsman et al., CVPR
2022: interpolating a fine-tuned model towards its starting point keeps its in-distribution accuracy and recovers
robustness under distribution shift). Issue 33's two anchored-colour runs trade the training labs against the
unseen ones; their average is a candidate between them.

A soup is only meaningful between models of the same architecture, classes, input processing (size, colour
reference) and split: the soup inherits the first member's split manifest, so a member trained on another split
would leak validation or test images into its figures. Each is checked; a mismatch is refused by name. The soup's
calibration and every figure are measured afresh on the folder written (:func:`bmc.train.folder.evaluate_model_dir`
with ``recalibrate``); nothing is copied from a member but the split and the training record it names.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

WEIGHTS = "model.safetensors"
COPIED = ("config.json", "preprocessor_config.json", "split_manifest.csv", "skipped_files.csv")
"""Files of the first member a soup keeps as they are: the architecture, the input processing, the split."""
MUST_MATCH = ("preprocessor_config.json", "split_manifest.csv")
"""Files every member must have byte for byte like the first (same input processing, same split)."""
STALE = ("validation", "test", "external", "unseen_marrow", "targets", "validation_macro_f1_by_epoch")
"""Figures of the first member that do not describe the soup: dropped, then measured again on the soup (its
``calibration`` entry is kept only for its target accuracy: the temperature and threshold are refitted)."""


class SoupError(ValueError):
    """Members that cannot be averaged (a missing folder, another architecture, class list, processing or split)."""


def check_members(folders: Sequence[Path], weights: Sequence[float]) -> None:
    """Refuse, by name, what would make the average meaningless or its figures leak (see the module docstring)."""
    if len(folders) < 2:
        raise SoupError("a soup needs at least two model folders")
    if len(weights) != len(folders) or min(weights) < 0 or abs(sum(weights) - 1.0) > 1e-6:
        raise SoupError(f"--weights {list(weights)}: give one non-negative weight per model, summing to 1")
    for folder in folders:
        for name in (WEIGHTS, "metrics.json", *COPIED[:3]):
            if not (folder / name).is_file():
                raise SoupError(f"{folder}: not a trained bmc model folder ({name} not found)")
    first = folders[0]
    first_config = json.loads((first / "config.json").read_text())
    for folder in folders[1:]:
        config = json.loads((folder / "config.json").read_text())
        for key in ("model_type", "hidden_size", "num_hidden_layers", "patch_size", "id2label"):
            if config.get(key) != first_config.get(key):
                raise SoupError(f"{folder}: {key} differs from {first} ({config.get(key)} vs {first_config.get(key)})")
        for name in MUST_MATCH:
            if (folder / name).read_bytes() != (first / name).read_bytes():
                raise SoupError(f"{folder}: {name} differs from {first}'s; only models of the same processing and split can be averaged")


def average_weights(folders: Sequence[Path], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """The weighted average of the members' tensors, computed in float32 and stored in the first member's dtype."""
    states = [load_file(str(folder / WEIGHTS)) for folder in folders]
    keys = set(states[0])
    for folder, state in zip(folders[1:], states[1:]):
        if set(state) != keys:
            raise SoupError(f"{folder}: its tensors are not those of {folders[0]}")
    out = {}
    for key, first in states[0].items():
        if not first.is_floating_point():  # e.g. an index buffer: the same in every member
            out[key] = first
            continue
        total = sum(float(w) * state[key].float() for w, state in zip(weights, states))
        out[key] = torch.as_tensor(total).to(first.dtype).contiguous()
    return out


def write_soup(folders: Sequence[str | Path], weights: Sequence[float], out: str | Path) -> Path:
    """Write the soup's model folder (weights, the first member's processing and split, a ``metrics.json`` that
    names the members and drops their figures). ``out`` must not exist or be empty: nothing is overwritten."""
    members = [Path(f) for f in folders]
    check_members(members, weights)
    target = Path(out)
    if target.exists() and any(target.iterdir()):
        raise SoupError(f"{target}: exists and is not empty; choose a new folder")
    state = average_weights(members, weights)
    target.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        if (members[0] / name).is_file():
            shutil.copy2(members[0] / name, target / name)
    save_file(state, str(target / WEIGHTS), metadata={"format": "pt"})
    metrics = json.loads((members[0] / "metrics.json").read_text())
    for key in STALE:
        metrics.pop(key, None)
    described = ", ".join(f"{w:g} × {json.loads((m / 'metrics.json').read_text())['model_name']}" for m, w in zip(members, weights))
    metrics.update(
        model_name=target.name,
        soup={"members": [str(m) for m in members], "weights": [float(w) for w in weights]},
        base_model_source=f"weight average (model soup) of {described}; first member's base weights: {metrics['base_model_source']}",
    )
    (target / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str) + "\n")
    return target
