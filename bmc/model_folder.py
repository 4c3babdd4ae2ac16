"""What a saved model folder says about itself, read without the training stack.

The app reads these at start-up; importing :mod:`bmc.train.evaluation` or :mod:`bmc.data` for them would pull in
``datasets`` and ``evaluate`` (about 0.7 s), which the serving path is kept free of (docs/performance.md).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

MODEL_FOLDER_FILES = (
    "model.safetensors",
    "config.json",
    "preprocessor_config.json",
    "README.md",
    "metrics.json",
    "confusion_matrix.png",
    "training_curves.png",
    "split_manifest.csv",
)
"""What every finished bmc model folder holds (and what is published): weights, configs, card, figures, manifest."""


def read_manifest(path: str | Path) -> list[dict[str, str]]:
    """Rows of a split manifest (``split_manifest.csv``: source, label, split, domain)."""
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def single_source_classes(model_dir: str | Path) -> dict[str, list[str]]:
    """Classes that only a secondary training source supplied (code -> those sources), from the model's split
    manifest: e.g. the classes a marrow model learnt from peripheral-blood images only. Empty without a manifest."""
    manifest = Path(model_dir) / "split_manifest.csv"
    if not manifest.is_file():
        return {}
    rows = [r for r in read_manifest(manifest) if r["split"] == "train"]
    primary = rows[0].get("domain", "") if rows else ""
    domains: dict[str, set[str]] = {}
    for row in rows:
        domains.setdefault(row["label"], set()).add(row.get("domain", ""))
    return {code: sorted(ds) for code, ds in domains.items() if primary not in ds}


def unseen_marrow_score(model_dir: str | Path, codes: Sequence[str]) -> tuple[int, int] | None:
    """Of the marrow images of ``codes`` in the card's unseen-type check (``bmc evaluate --unseen``), how many the
    model named right, and how many there were; None when the card has no such check."""
    path = Path(model_dir) / "metrics.json"
    rows = (json.loads(path.read_text()).get("unseen_marrow") or {}).get("rows", []) if path.is_file() else []
    mine = [r for r in rows if r["true"] in codes]
    return (sum(r["predicted"] == r["true"] for r in mine), len(mine)) if mine else None
