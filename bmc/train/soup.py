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
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

WEIGHTS = "model.safetensors"
COPIED = ("config.json", "preprocessor_config.json", "split_manifest.csv", "skipped_files.csv", "training_curves.png")
"""Files of the first member a soup keeps as they are: the architecture, the input processing, the split, and the
training curves (a soup has no training run of its own; the card says its training details are the first member's)."""
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


def write_soup(folders: Sequence[str | Path], weights: Sequence[float], out: str | Path, greedy: list[dict] | None = None) -> Path:
    """Write the soup's model folder (weights, the first member's processing and split, a ``metrics.json`` that
    names the members and drops their figures; ``greedy``: the trials that chose the members). ``out`` must not
    exist or be empty: nothing is overwritten."""
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
        soup={"members": [str(m) for m in members], "weights": [float(w) for w in weights]} | ({"greedy": greedy} if greedy else {}),
        base_model_source=f"weight average (model soup) of {described}; first member's base weights: {metrics['base_model_source']}",
    )
    (target / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str) + "\n")
    return target


def recorded_validation(folder: Path) -> float:
    """A member's validation macro-F1 as its ``metrics.json`` records it (the order a greedy soup tries members in)."""
    return float(json.loads((folder / "metrics.json").read_text())["validation"]["macro_f1"])


def validation_macro_f1(folder: Path, state: dict[str, torch.Tensor]) -> float:
    """Validation macro-F1 of ``folder``'s model with ``state`` as its weights, on ``folder``'s validation split:
    the one figure a greedy soup chooses by (no test set, no other laboratory's images)."""
    from bmc.model import load_classifier
    from bmc.model_folder import FolderSettings, read_manifest
    from bmc.train.evaluation import dataset_from_manifest, evaluate_split

    metrics = json.loads((folder / "metrics.json").read_text())
    rows = [r for r in read_manifest(folder / "split_manifest.csv") if r["split"] == "validation"]
    with tempfile.TemporaryDirectory() as tmp:  # through from_pretrained, which maps older checkpoints' tensor names
        for name in COPIED[:2]:
            shutil.copy2(folder / name, Path(tmp) / name)
        save_file(state, str(Path(tmp) / WEIGHTS), metadata={"format": "pt"})
        model, processor = load_classifier(tmp)
    validation = dataset_from_manifest(rows, metrics["classes"])
    denoise = FolderSettings.from_config(model.config).denoise
    return float(evaluate_split(model, processor, validation, metrics["classes"], 1.0, denoise)["macro_f1"])


Score = Callable[[Path, dict[str, torch.Tensor]], float]


def greedy_members(folders: Sequence[Path], score: Score = validation_macro_f1) -> tuple[list[Path], list[dict]]:
    """The greedy soup's members (Wortsman et al. 2022, "greedy soup"): the members sorted by their recorded
    validation macro-F1, the best kept, and each next one kept only if the uniform average with it scores at least
    as well on validation as the soup without it. Returns the kept members and one record per trial (for the card)."""
    check_members(folders, [1.0 / len(folders)] * len(folders))
    ordered = sorted(folders, key=recorded_validation, reverse=True)
    kept = [ordered[0]]
    best = score(ordered[0], load_file(str(ordered[0] / WEIGHTS)))
    trials = [{"member": str(ordered[0]), "validation_macro_f1": round(best, 4), "kept": True}]
    for candidate in ordered[1:]:
        trial = [*kept, candidate]
        value = score(ordered[0], average_weights(trial, [1.0 / len(trial)] * len(trial)))
        trials.append({"member": str(candidate), "validation_macro_f1": round(value, 4), "kept": value >= best})
        if value >= best:
            kept, best = trial, value
    return kept, trials
