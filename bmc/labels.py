"""The 21 cell classes of the Matek et al. bone marrow data set.

A user's own download may hold any subset of the 21 codes, and a Hub dataset may spell a class
as its code or its full name; everything downstream keys on the three-letter code, so this module
is the single place that knows codes, names and lineages. The order is the one a haematologist
reads a marrow differential in (by lineage, then by maturation), and every table and report
follows it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

#: Lineage groups in the order they appear in a differential count.
LINEAGES: tuple[str, ...] = (
    "granulocytic",
    "erythroid",
    "lymphoid",
    "monocytic",
    "plasma",
    "abnormal/other",
    "artefact",
)


@dataclass(frozen=True)
class CellClass:
    """One class of the data set: Matek code, full name, lineage group."""

    code: str
    name: str
    lineage: str


#: All 21 classes, in haematologists' order (lineage, then maturation within a lineage).
CELL_CLASSES: tuple[CellClass, ...] = (
    CellClass("BLA", "Blast", "granulocytic"),
    CellClass("PMO", "Promyelocyte", "granulocytic"),
    CellClass("MYB", "Myelocyte", "granulocytic"),
    CellClass("MMZ", "Metamyelocyte", "granulocytic"),
    CellClass("NGB", "Band neutrophil", "granulocytic"),
    CellClass("NGS", "Segmented neutrophil", "granulocytic"),
    CellClass("EOS", "Eosinophil", "granulocytic"),
    CellClass("ABE", "Abnormal eosinophil", "granulocytic"),
    CellClass("BAS", "Basophil", "granulocytic"),
    CellClass("PEB", "Proerythroblast", "erythroid"),
    CellClass("EBO", "Erythroblast", "erythroid"),
    CellClass("LYI", "Immature lymphocyte", "lymphoid"),
    CellClass("LYT", "Lymphocyte", "lymphoid"),
    CellClass("HAC", "Hairy cell", "lymphoid"),
    CellClass("MON", "Monocyte", "monocytic"),
    CellClass("PLM", "Plasma cell", "plasma"),
    CellClass("FGC", "Faggot cell", "abnormal/other"),
    CellClass("KSC", "Smudge cell", "abnormal/other"),
    CellClass("OTH", "Other cell", "abnormal/other"),
    CellClass("NIF", "Not identifiable", "abnormal/other"),
    CellClass("ART", "Artefact", "artefact"),
)

#: Rows of a marrow differential count, in the order a haematologist reads one (ICSH 2015).
COUNT_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("blasts and other immature cells", ("BLA", "FGC")),
    ("granulocytic series", ("PMO", "MYB", "MMZ", "NGB", "NGS")),
    ("eosinophils and basophils", ("EOS", "ABE", "BAS")),
    ("monocytes", ("MON",)),
    ("lymphocytes and plasma cells", ("LYI", "LYT", "HAC", "PLM")),
    ("erythroid precursors", ("PEB", "EBO")),
    ("other", ("OTH",)),
    ("not counted in the %", ("KSC", "NIF", "ART")),
)
_GROUP_PARTS: dict[str, tuple[tuple[str, frozenset[str]], ...]] = {
    "eosinophils and basophils": (("eosinophils", frozenset({"EOS", "ABE"})), ("basophils", frozenset({"BAS"}))),
    "lymphocytes and plasma cells": (("lymphocytes", frozenset({"LYI", "LYT", "HAC"})), ("plasma cells", frozenset({"PLM"}))),
}
"""Groups whose title names two kinds of cell: a model that knows only one of them gets only that one's name."""
PLURALS: dict[str, str] = {"KSC": "smudge cells", "NIF": "cells not identifiable", "ART": "artefacts"}
"""How the not-counted classes are named in a sentence."""
NOT_COUNTED: frozenset[str] = frozenset(COUNT_GROUPS[-1][1])
"""Shown in a count but left out of the denominator: not nucleated cells, or cells that cannot be assessed."""
MYELOID_FOR_ME: frozenset[str] = frozenset(COUNT_GROUPS[1][1] + COUNT_GROUPS[2][1])
"""The M of the M:E ratio: the granulocytic series with eosinophils and basophils. Blasts, monocytes, lymphocytes and
plasma cells are on neither side (conventions differ; :func:`me_convention` says this one in words)."""
ERYTHROID_FOR_ME: frozenset[str] = frozenset(COUNT_GROUPS[5][1])


def not_counted_text(codes: Iterable[str]) -> str:
    """The classes of ``codes`` left out of the denominator, in words ("artefacts and cells not identifiable"); only
    classes the model has are named."""
    names = [PLURALS.get(c, full_name(c).lower() + "s") for c in sort_codes(set(codes) & NOT_COUNTED)]
    return " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names) or "none"


def me_convention(codes: Iterable[str]) -> str:
    """Which of the model's classes go on each side of the M:E ratio, and which on neither, in one sentence."""
    codes = sort_codes(codes)
    myeloid = [full_name(c) for c in codes if c in MYELOID_FOR_ME]
    erythroid = [full_name(c) for c in codes if c in ERYTHROID_FOR_ME]
    neither = [full_name(c) for c in codes if c not in MYELOID_FOR_ME | ERYTHROID_FOR_ME | NOT_COUNTED]
    return (
        f"M:E ratio = granulocytic cells ({', '.join(myeloid) or 'none'}) : erythroid precursors "
        f"({', '.join(erythroid) or 'none'}); on neither side: {', '.join(neither) or 'none'}."
    )


def count_group(code: str, codes: Iterable[str] | None = None) -> str:
    """The differential-count row group of a code (labels outside the Matek set: ``other``). Given the model's
    ``codes``, a group's title names only the kinds of cell the model has ("lymphocytes", not "lymphocytes and plasma
    cells", for a model without plasma cells)."""
    group = next((name for name, members in COUNT_GROUPS if code in members), "other")
    if codes is None or group not in _GROUP_PARTS:
        return group
    present = set(codes)
    return " and ".join(part for part, members in _GROUP_PARTS[group] if members & present) or group


BY_CODE: dict[str, CellClass] = {c.code: c for c in CELL_CLASSES}
_ORDER: dict[str, int] = {c.code: i for i, c in enumerate(CELL_CLASSES)}
# Spellings seen in the wild: the data set's own abbreviations.csv says "Faggott cell".
_ALIASES: dict[str, str] = {"faggott cell": "FGC"}


def to_code(label: str) -> str:
    """Map a code or full name (any case, surrounding blanks ignored) to its Matek code.

    Raises ``KeyError`` naming the label and the accepted codes when it is not a Matek class, so
    a typo in a folder name is reported rather than silently becoming a new class.
    """
    key = str(label).strip()
    if key.upper() in BY_CODE:
        return key.upper()
    lowered = key.lower()
    for cls in CELL_CLASSES:
        if cls.name.lower() == lowered:
            return cls.code
    if lowered in _ALIASES:
        return _ALIASES[lowered]
    raise KeyError(f"{label!r} is not one of the 21 Matek classes ({', '.join(BY_CODE)})")


WBC_FOLDER_TO_CODE: dict[str, str] = {
    "neutrophil": "NGS",
    "eosinophil": "EOS",
    "lymphocyte": "LYT",
    "monocyte": "MON",
    "basophil": "BAS",
}
"""Folder names of white-cell sets that are not Matek names (BCCD's, Raabin-WBC's); 'neutrophil' is unsplit."""
WBC_ABBREVIATIONS: dict[str, str] = {
    "neut": "neutrophil",
    "eosi": "eosinophil",
    "lymp": "lymphocyte",
    "mono": "monocyte",
    "baso": "basophil",
}
"""Shortened white-cell folder names (the LISC set's)."""


def wbc_code(name: str) -> str:
    """A white-cell class folder's Matek code: its name in any case, singular or plural, or shortened
    (:data:`WBC_ABBREVIATIONS`); any other name comes back as it is (a Matek code, or a class the model lacks)."""
    key = name.strip().lower()
    key = WBC_ABBREVIATIONS.get(key, key)
    if key not in WBC_FOLDER_TO_CODE and key.endswith("s"):
        key = key[:-1]
    return WBC_FOLDER_TO_CODE.get(key, name)


def code_of(label: str, known: Iterable[str]) -> str:
    """The code a reviewer's label means: a code of ``known`` (any case), a Matek code or full name, or a
    display name such as "Myelocyte (MYB)"; a custom label of ``known`` is kept as it is. An unknown label
    is returned stripped, for the caller to refuse with the classes it knows."""
    text, known = label.strip(), list(known)
    if text in known or text.upper() in known:
        return text if text in known else text.upper()
    if text.endswith(")") and "(" in text:  # display_name(): "Full name (CODE)"
        inner = text[text.rindex("(") + 1 : -1].strip().upper()
        if inner in known:
            return inner
    try:
        return to_code(text)
    except KeyError:
        return text


def sort_codes(codes: Iterable[str]) -> list[str]:
    """Codes in haematologists' order; unknown labels (custom data) follow, alphabetically."""
    codes = set(codes)
    known = sorted((c for c in codes if c in _ORDER), key=_ORDER.__getitem__)
    return known + sorted(c for c in codes if c not in _ORDER)


def full_name(code: str) -> str:
    """Human-readable name for a code, or the code itself for a label outside the Matek set."""
    cls = BY_CODE.get(code)
    return cls.name if cls else code


def lineage(code: str) -> str:
    """Lineage group for a code; labels outside the Matek set count as ``abnormal/other``."""
    cls = BY_CODE.get(code)
    return cls.lineage if cls else "abnormal/other"


def display_name(code: str) -> str:
    """``"Blast (BLA)"``: what the app and reports show."""
    name = full_name(code)
    return f"{name} ({code})" if name != code else code


def label_maps(codes: Iterable[str]) -> tuple[dict[int, str], dict[str, int]]:
    """``id2label``/``label2id`` for a model trained on ``codes`` (any subset), in canonical order."""
    ordered = sort_codes(codes)
    id2label = dict(enumerate(ordered))
    return id2label, {c: i for i, c in id2label.items()}
