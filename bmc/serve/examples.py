"""The example cells the app offers to click: shipped files named ``<CODE>_<source>_<n>.jpg`` (``examples/``).

A Space is a clone with nothing beside it, so the examples ship with the repository; their file names carry the
true class and the source, which the gallery shows under each thumbnail so a click can be checked by eye.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bmc.images import IMAGE_SUFFIXES
from bmc.labels import display_name, sort_codes

SOURCES = {"matek": "marrow", "pbc": "blood"}
"""The source part of an example's file name → the tissue it comes from."""


@dataclass(frozen=True)
class Example:
    """One example cell: its file, its true class and a caption that says it."""

    path: Path
    code: str
    caption: str


def example_cells(
    folder: Path, known: Sequence[str], secondary_only: Mapping[str, Sequence[str]] | None = None
) -> tuple[list[Example], str]:
    """The example cells in ``folder``: the types the model knows first, in haematologists' order, then the
    unfamiliar ones; each captioned with its true class and tissue; and a gallery label that says which are which."""
    files = sorted(p for p in Path(folder).glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    code = {p: p.name.split("_")[0].upper() for p in files}
    order = {c: i for i, c in enumerate(sort_codes(code.values()))}
    files.sort(key=lambda p: (code[p] not in known, order[code[p]], p.name))
    examples = []
    for p in files:
        source = SOURCES.get(p.name.split("_")[1].lower() if "_" in p.name else "", "")
        caption = f"true: {display_name(code[p])}" + (f", {source}" if source else "")
        if code[p] not in known:
            caption += " · a type this model never saw"
        elif code[p] in (secondary_only or {}):
            caption += " · learnt from blood only"
        examples.append(Example(p, code[p], caption))
    unknown = [c for c in sort_codes({e.code for e in examples}) if c not in known]
    label = "Example cells with their true class (Matek marrow; BAS from peripheral blood): click one to classify it"
    if unknown:
        n = sum(e.code in unknown for e in examples)
        label += f"; the last {n} are types this model never saw ({', '.join(unknown)})"
    return examples, label
