"""What a saved model folder says about itself, read without the training stack.

The app reads these at start-up; importing :mod:`bmc.train.evaluation` or :mod:`bmc.data` for them would pull in
``datasets`` and ``evaluate`` (about 0.7 s), which the serving path is kept free of (docs/performance.md).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


@dataclass(frozen=True)
class FolderSettings:
    """bmc's own keys in a model folder's ``config.json``, read and written here only: the calibration (temperature,
    review threshold, the validation share it flags) and the preprocessing serving must repeat (denoising).
    ``pipeline()`` ignores them; :class:`bmc.serve.predictor.Predictor` applies them."""

    temperature: float = 1.0
    review_threshold: float = 0.5
    validation_flagged: float | None = None
    """Share of validation images the threshold flags: the baseline a count is compared with."""
    denoise: bool = False
    adapted_from: str | None = None
    """The model folder ``bmc adapt`` started from, if any."""

    KEYS = {
        "temperature": "bmc_temperature",
        "review_threshold": "bmc_review_threshold",
        "validation_flagged": "bmc_validation_flagged",
        "denoise": "bmc_denoise",
        "adapted_from": "bmc_adapted_from",
    }

    @classmethod
    def from_config(cls, config: Any) -> FolderSettings:
        """From a loaded ``PretrainedConfig`` (or anything with the keys as attributes); missing keys take the defaults."""
        share = getattr(config, cls.KEYS["validation_flagged"], None)
        return cls(
            temperature=float(getattr(config, cls.KEYS["temperature"], 1.0) or 1.0),
            review_threshold=float(getattr(config, cls.KEYS["review_threshold"], 0.5) or 0.5),
            validation_flagged=None if share is None else float(share),
            denoise=bool(getattr(config, cls.KEYS["denoise"], False)),
            adapted_from=getattr(config, cls.KEYS["adapted_from"], None),
        )

    @classmethod
    def from_calibration(cls, calib: Mapping[str, float], denoise: bool = False, adapted_from: str | None = None) -> FolderSettings:
        """From :func:`bmc.calibration.calibrate`'s result."""
        flagged = 1.0 - calib["validation_coverage"]
        return cls(float(calib["temperature"]), float(calib["review_threshold"]), flagged, denoise, adapted_from)

    def config_keys(self) -> dict[str, Any]:
        """The ``config.json`` keys and values to write (``adapted_from`` only when set)."""
        values = {self.KEYS[name]: getattr(self, name) for name in self.KEYS}
        return {k: v for k, v in values.items() if v is not None or k != self.KEYS["adapted_from"]}


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
