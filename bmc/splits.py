"""Splitting cells into train / validation / test, and the files that record a split.

``block`` mode keeps whole runs of consecutive image numbers together (numbers run per slide in the Matek data,
so neighbours share a slide and a split must not cut through one); ``random`` mode is stratified too. Every
split is by source × class and deterministic from ``--split_seed``; ``split_manifest.csv`` records it.
"""

from __future__ import annotations

import csv
import random
import re
from collections import defaultdict
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path

import datasets

from bmc.constants import REPO_ROOT
from bmc.images import SkippedFile
from bmc.model_folder import read_manifest

SPLITS = ("train", "validation", "test")

_NUMBER = re.compile(r"(\d+)(?!.*\d)")


def image_number(source: str) -> int | None:
    """The running number in a file name such as ``BLA_00042.jpg`` (the last digit group)."""
    match = _NUMBER.search(Path(source).stem)
    return int(match.group(1)) if match else None


def assign_splits(
    sources: Sequence[str],
    labels: Sequence[int | str],
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    mode: str = "block",
    block_size: int = 50,
    seed: int = 42,
    domains: Sequence[str] | None = None,
    id_only_domains: Collection[str] = (),
) -> list[str]:
    """Deterministic split stratified by domain × class: ``train``/``validation``/``test`` per item.

    ``mode="random"`` shuffles each stratum's items; ``mode="block"`` first groups them into
    blocks of ``block_size`` consecutive image numbers (``BLA_00001``–``BLA_00050``…), which in
    the Matek data come from the same slide, and assigns whole blocks, so that near duplicates
    never straddle train and test. Domains in ``id_only_domains`` (file numbers that are only
    ids, as in PBC) are split at random in either mode. Each stratum draws from its own seed
    (``seed``, domain, label), so a stratum's split does not change when other sources or
    classes are added to the run: a Matek-only and a Matek + PBC run share the Matek test split.
    """
    if mode not in ("block", "random"):
        raise ValueError(f"split mode must be 'block' or 'random', not {mode!r}")
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ValueError("validation and test fractions must be in [0, 1) and sum to less than 1")
    domains = list(domains) if domains is not None else [""] * len(sources)
    strata: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, (domain, label) in enumerate(zip(domains, labels)):
        strata[(domain, str(label))].append(i)
    result = ["train"] * len(sources)
    for (domain, label), members in sorted(strata.items()):
        rng = random.Random(f"{seed}|{domain}|{label}")
        items = sorted(members, key=lambda i: (image_number(sources[i]) or 0, sources[i]))
        if mode == "block" and domain not in id_only_domains:
            groups: dict[object, list[int]] = defaultdict(list)
            for i in items:
                number = image_number(sources[i])
                # numbering starts at 1 (BLA_00001): block 0 is 1..block_size
                groups[max(number - 1, 0) // block_size if number is not None else sources[i]].append(i)
            units = [groups[k] for k in sorted(groups, key=str)]
        else:
            units = [[i] for i in items]
        rng.shuffle(units)
        n = len(units)
        n_test = _share(n, test_fraction)
        n_val = _share(n - n_test, val_fraction / (1 - test_fraction)) if n - n_test > 1 else 0
        for k, unit in enumerate(units):
            split = "test" if k < n_test else "validation" if k < n_test + n_val else "train"
            for i in unit:
                result[i] = split
    return result


def _share(n: int, fraction: float) -> int:
    """How many of ``n`` units go to a held-out split: at least one when asked for, never all."""
    if fraction <= 0 or n < 2:
        return 0
    return min(n - 1, max(1, round(n * fraction)))


def split_cells(data: datasets.Dataset, splits: Sequence[str]) -> datasets.DatasetDict:
    """Turn a per-item split list into a ``DatasetDict`` (empty splits are left out)."""
    out = {}
    for name in SPLITS:
        idx = [i for i, s in enumerate(splits) if s == name]
        if idx:
            out[name] = data.select(idx)
    return datasets.DatasetDict(out)


def write_manifest(path: str | Path, rows: Iterable[dict[str, str]]) -> None:
    """Save which file (of which domain) went to which split, so a split can be audited and reproduced."""
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["source", "label", "split", "domain"], extrasaction="ignore", restval="")
        writer.writeheader()
        writer.writerows(rows)


def resolve_source(source: str) -> Path:
    """A manifest's image path: as written (relative to where training ran, normally the repository root),
    else relative to the repository root, so tools run from another folder find the same files."""
    path = Path(source)
    if path.is_absolute() or path.exists():
        return path
    return REPO_ROOT / path


def read_resolved_manifest(path: str | Path) -> list[dict[str, str]]:
    """A split manifest's rows with each image path resolved (:func:`resolve_source`), for tools run from anywhere."""
    return [{**row, "source": str(resolve_source(row["source"]))} for row in read_manifest(path)]


def write_skipped(path: str | Path, skipped: Sequence[SkippedFile]) -> None:
    """List skipped files and reasons next to the model, for the user to fix or remove."""
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["source", "reason"])
        writer.writerows((s.source, s.reason) for s in skipped)
