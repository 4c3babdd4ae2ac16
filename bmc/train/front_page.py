"""The README's table of the bundled model's figures per source, written from its ``metrics.json``.

    python -m bmc.train.front_page README.md     # rewrite the table between the markers

The table is generated, not typed: ``tests/test_docs.py`` fails when the README and the model folder's measured
figures part ways (after a retrain or ``bmc evaluate``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bmc.constants import DEFAULT_MODEL

TABLE_START = "<!-- results table: python -m bmc.train.front_page README.md -->"
TABLE_END = "<!-- end of results table -->"
SET_NAMES = {
    "bone-marrow-cells": "Matek bone marrow, held-out test split",
    "pbc-train": "PBC peripheral blood, held-out test split",
    "pbc-external": "PBC external test set (`pbc-external`, never trained on)",
    "bccd": "BCCD white cells, a third lab (external)",
    "zheng2018-ds2": "Zheng 2018 white cells, a fourth lab (external)",
}


def _row(name: str, result: dict) -> str:
    review = result.get("review") or {}
    n = result.get("n_images") or review.get("n_images") or 0
    flagged = f"{review['flagged_share']:.0%}" if "flagged_share" in review else "—"
    unflagged = f"{review['unflagged_accuracy']:.0%}" if review.get("unflagged_accuracy") is not None else "—"
    return f"| {SET_NAMES.get(name, name)} | {n} | {result['accuracy']:.1%} | {result['macro_f1']:.3f} | {flagged} | {unflagged} |"


def results_table(metrics: dict) -> str:
    """Markdown: one row per training source's test split, then each external set, as measured."""
    rows = [
        "| data | images | accuracy | macro-F1 | flagged for review | right among the unflagged |",
        "|---|---|---|---|---|---|",
    ]
    for domain, result in (metrics.get("test", {}).get("by_domain") or {}).items():
        rows.append(_row(domain, result))
    for name, result in (metrics.get("external") or {}).items():
        rows.append(_row(name, result))
    return "\n".join(rows)


def update_readme(readme: Path, model_dir: Path = Path(DEFAULT_MODEL)) -> bool:
    """Rewrite the table between :data:`TABLE_START` and :data:`TABLE_END`; True when the file changed."""
    text = readme.read_text()
    if TABLE_START not in text or TABLE_END not in text:
        raise ValueError(f"{readme}: no results-table markers ({TABLE_START} ... {TABLE_END})")
    table = results_table(json.loads((model_dir / "metrics.json").read_text()))
    head, rest = text.split(TABLE_START, 1)
    new = f"{head}{TABLE_START}\n{table}\n{TABLE_END}{rest.split(TABLE_END, 1)[1]}"
    readme.write_text(new)
    return new != text


if __name__ == "__main__":
    print("updated" if update_readme(Path(sys.argv[1] if len(sys.argv) > 1 else "README.md")) else "unchanged")
