"""A laboratory's labelled cells for ``bmc adapt``: class folders or a reviewed count, and the base model's replay."""

from __future__ import annotations

import csv
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from bmc.data import scan_folder
from bmc.labels import wbc_code
from bmc.model_folder import read_manifest
from bmc.serve.uploads import iter_images
from bmc.splits import resolve_source

REPLAY_PER_CLASS = 30
"""Base training images per class replayed beside the lab's cells (from the model's split manifest)."""


@dataclass
class LabCells:
    """A lab's labelled cells: images, their codes, and what was left out and why."""

    images: list[Image.Image] = field(default_factory=list)
    codes: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    learnt: list[bool] = field(default_factory=list)
    """Per cell, whether its label came from the learning review rather than a person."""

    def checked(self) -> np.ndarray:
        """Whether each cell's label was given by a person (the only cells an adapted model is measured on)."""
        return ~np.array(self.learnt, dtype=bool)

    def add_folder(self, folder: Path, learnt: bool) -> None:
        """The cells of a folder of class folders (Matek codes and names, white-cell names), unreadable ones skipped."""
        records, skipped = scan_folder(folder)
        self.skipped += [f"{s.source}: {s.reason}" for s in skipped]
        for path, label in records:
            item = next(iter_images([path]))
            if isinstance(item, tuple):
                self.add(item[1], wbc_code(label), path, learnt)  # Matek codes and names are mapped by scan_folder
            else:
                self.skipped.append(f"{item.source}: {item.reason}")

    def add(self, image: Image.Image, code: str, name: str, learnt: bool) -> None:
        """One more cell (``learnt``: its label is the learning review's, not a person's)."""
        self.images.append(image)
        self.codes.append(code)
        self.names.append(name)
        self.learnt.append(learnt)


def read_lab_cells(cells: Path, images: Sequence[Path] = (), learnt: Path | bool = False) -> LabCells:
    """The labelled cells of a lab: a folder of class folders, or a reviewed ``predictions.csv`` of
    ``bmc count`` or the app (its reviewed rows) with ``images`` the inputs that count was made of.

    ``learnt`` adds cells whose labels the learning review gave (:mod:`bmc.count.learning`): ``True`` with a
    predictions.csv takes its rows whose ``label_source`` is ``learnt``; a folder of class folders (the app's
    download) is read as such cells."""
    if learnt is True and cells.is_dir():
        raise ValueError(f"{cells} is a folder: give --learnt the folder of learnt cells (class folders), or adapt from a predictions.csv")
    if cells.is_dir():
        out = LabCells()
        out.add_folder(cells, learnt=False)
    else:
        out = _read_reviewed_count(cells, images, learnt is True)
    if isinstance(learnt, Path):
        out.add_folder(learnt, learnt=True)
    if any(out.learnt) and not out.checked().any():
        raise ValueError("no reviewed cell among them: a model for your lab is measured on cells a person checked; review some first")
    return out


def _read_reviewed_count(cells: Path, images: Sequence[Path], learnt: bool) -> LabCells:
    """The reviewed (and, with ``learnt``, the learnt) rows of a predictions.csv, read from ``images``."""
    with open(cells, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or not {"file", "reviewed", "reviewed_label"} <= set(rows[0]):
        raise ValueError(
            f"{cells}: not a folder of class folders nor a predictions.csv of bmc count or the app (columns file, reviewed, reviewed_label)"
        )
    wanted = {r["file"]: r["reviewed_label"] for r in rows if r["reviewed"] == "yes"}
    if not wanted:
        raise ValueError(f"{cells}: no reviewed cell in it (column reviewed = yes): review some cells first")
    if learnt and "label_source" not in rows[0]:
        raise ValueError(f"{cells}: no label_source column, so no learnt labels to add: it is from an older bmc; count again")
    learnt_rows = (
        {r["file"]: r["reviewed_label"] for r in rows if r["reviewed"] != "yes" and r.get("label_source") == "learnt"} if learnt else {}
    )
    if not images:
        raise ValueError(f"{cells}: give --images, the files or archives that count was made of, to read the reviewed cells")
    out = LabCells()
    for item in iter_images(list(images)):
        if isinstance(item, tuple) and (item[0] in wanted or item[0] in learnt_rows):
            out.add(item[1], wanted.get(item[0]) or learnt_rows[item[0]], item[0], item[0] not in wanted)
    missing = sorted(set(wanted) - set(out.names))
    out.skipped += [f"{name}: reviewed in {cells.name} but not found in --images" for name in missing]
    if not out.checked().any():
        raise ValueError(f"none of the {len(wanted)} reviewed cells of {cells} is in --images")
    return out


def replay_records(model_dir: Path, codes: Sequence[str], per_class: int = REPLAY_PER_CLASS, seed: int = 0) -> list[tuple[str, str]]:
    """Up to ``per_class`` training images per class of the base model (its split manifest), when on disk."""
    manifest = Path(model_dir) / "split_manifest.csv"
    if not manifest.is_file():
        return []
    rows = [r for r in read_manifest(manifest) if r["split"] == "train" and r["label"] in codes and resolve_source(r["source"]).is_file()]
    rng = random.Random(seed)
    out = []
    for code in codes:
        mine = [r for r in rows if r["label"] == code]
        out += [(str(resolve_source(r["source"])), code) for r in rng.sample(mine, min(per_class, len(mine)))]
    return out
