"""Loading cell images from wherever a user keeps them, checking them, and splitting them.

Sources: a Hub dataset id, a local folder (a plain imagefolder or the Kaggle layout, where the
class is the *top* folder and images sit in numbered range folders below it — a layout on which
``load_dataset("imagefolder")`` silently returns no labels), or parquet files. Every source becomes
one ``datasets.Dataset`` with the columns ``image`` (an ``Image`` feature), ``label`` (a
``ClassLabel`` over Matek codes), ``source`` (file path or dataset row) and ``domain`` (which
training source — laboratory / data set — the image came from), so splitting, training and
evaluation have a single code path. Several sources can be pooled (:func:`load_sources`): the
domain then travels through the split (stratified by domain × class), the loss weights, the
manifest and the metrics, because a class that only one laboratory supplies is otherwise
learnt as "looks like that laboratory".

The PBC layout (Acevedo et al.) is a loader format of its own: its folders lump finer types
together, so the class comes from the file-name prefix (``SNE_`` segmented, ``BNE_`` band …).

Broken files are a fact of life in lab data: unreadable, truncated, non-image and oversize files
are skipped and listed with the reason, never fatal.
"""

from __future__ import annotations

import csv
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import datasets

from bmc.images import IMAGE_SUFFIXES, ImageError, SkippedFile, open_image
from bmc.labels import sort_codes, to_code


@dataclass
class CellData:
    """All usable images of one or more sources plus the files that were skipped.

    ``id_only_domains`` are the domains whose file numbers are mere ids (PBC), not runs of
    consecutive images from one slide (Matek): they are split at random even in block mode."""

    dataset: datasets.Dataset
    skipped: list[SkippedFile] = field(default_factory=list)
    id_only_domains: set[str] = field(default_factory=set)

    @property
    def codes(self) -> list[str]:
        return list(self.dataset.features["label"].names)


# --------------------------------------------------------------------------- local folders


def scan_folder(root: str | Path, map_names: bool = True) -> tuple[list[tuple[str, str]], list[SkippedFile]]:
    """List ``(path, code)`` for every image below ``root``; the label is the *top-level* folder.

    Works for a flat imagefolder (``root/BLA/x.jpg``) and for the Kaggle layout
    (``root/BLA/0001-1000/BLA_00001.jpg``) alike. Files directly in ``root`` (such as the Kaggle
    download's ``abbreviations.csv``) and hidden files are ignored; other non-image files inside a
    class folder are reported as skipped. Folder names are mapped to Matek codes when they are
    one (code or full name, any case); other names are kept as custom labels.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder not found: {root}")
    if (root / LABELS_CSV).is_file() and (root / "images").is_dir():
        return scan_labels_csv(root)
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    # Kaggle's archive wraps the class folders in one more folder; step into it.
    if len(class_dirs) == 1 and not _has_images(class_dirs[0], direct=True):
        return scan_folder(class_dirs[0], map_names)
    records: list[tuple[str, str]] = []
    skipped: list[SkippedFile] = []
    for class_dir in class_dirs:
        try:
            code = to_code(class_dir.name) if map_names else class_dir.name
        except KeyError:
            code = class_dir.name
        for path in sorted(class_dir.rglob("*")):
            if path.is_dir() or any(part.startswith(".") for part in path.relative_to(root).parts):
                continue
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                skipped.append(SkippedFile(str(path), f"not an image file type ({path.suffix or 'no extension'})"))
                continue
            records.append((str(path), code))
    return records, skipped


#: PBC (Acevedo et al.) file-name prefixes and the Matek code of the same cell type (None: no
#: marrow class, e.g. platelets).
PBC_PREFIX_TO_CODE: dict[str, str | None] = {
    "EO": "EOS",
    "LY": "LYT",
    "MO": "MON",
    "SNE": "NGS",
    "BNE": "NGB",
    "PMY": "PMO",
    "MY": "MYB",
    "MMY": "MMZ",
    "BA": "BAS",
    "ERB": "EBO",
    "PLATELET": None,
}
LABELS_CSV = "labels.csv"
NUMBERED_CLASSES = {"1": "neutrophil", "2": "lymphocyte", "3": "monocyte", "4": "eosinophil", "5": "basophil"}
"""Class numbers of the ``images/`` + ``labels.csv`` layout of Zheng et al. 2018 (white-cell segmentation data)."""


def scan_labels_csv(root: str | Path) -> tuple[list[tuple[str, str]], list[SkippedFile]]:
    """``(path, label)`` for a folder of ``images/`` and a ``labels.csv`` of (image id, class) rows, as Zheng et al.
    2018 publish theirs: the id is the file's stem, with or without leading zeros; the class a name, a Matek code or
    one of :data:`NUMBERED_CLASSES`. Rows whose image is missing are reported as skipped."""
    root = Path(root)
    stems: dict[str, Path] = {}
    for path in sorted((root / "images").iterdir()):
        if path.suffix.lower() in IMAGE_SUFFIXES:
            stems[path.stem] = stems[path.stem.lstrip("0") or "0"] = path
    records: list[tuple[str, str]] = []
    skipped: list[SkippedFile] = []
    with open(root / LABELS_CSV, newline="") as fh:
        for row in list(csv.reader(fh))[1:]:
            if len(row) < 2:
                continue
            image_id, label = row[0].strip(), row[1].strip()
            found = stems.get(image_id) or stems.get(image_id.lstrip("0") or "0")
            if found is None:
                skipped.append(SkippedFile(str(root / "images" / image_id), f"listed in {LABELS_CSV}, no such image"))
                continue
            name = NUMBERED_CLASSES.get(label, label)
            try:
                records.append((str(found), to_code(name)))
            except KeyError:
                records.append((str(found), name))
    return records, skipped


PBC_FOLDERS = {"basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil", "platelet"}
"""The PBC data set's folder names; a folder holding only these is read in the PBC layout."""


def is_pbc_layout(root: str | Path) -> bool:
    """True for a folder in the PBC layout: class folders named as in the PBC download whose
    images carry PBC's type prefixes (other white-cell sets, BCCD say, use the same folder names)."""
    folders = [p for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith(".")]
    if not folders or not {p.name.lower() for p in folders} <= PBC_FOLDERS:
        return False
    files = [f for folder in folders for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES]
    prefixes = {f.stem.split("_")[0].upper() for f in files}
    return bool(files) and prefixes <= set(PBC_PREFIX_TO_CODE) | PBC_UNSPLIT_PREFIXES


PBC_UNSPLIT_PREFIXES = {"IG", "NEUTROPHIL"}
"""PBC prefixes that name no single cell type (unspecified immature granulocytes, neutrophils)."""


def scan_pbc(root: str | Path) -> tuple[list[tuple[str, str]], list[SkippedFile]]:
    """List ``(path, code)`` for a PBC-layout folder; the class comes from the file-name prefix.

    Platelets (no marrow cell class) and files whose prefix names no finer type (PBC's unspecified
    ``IG_`` immature granulocytes and ``NEUTROPHIL_`` files) are skipped with the reason."""
    records, skipped = [], []
    for path, _ in scan_folder(root, map_names=False)[0]:
        prefix = Path(path).stem.split("_")[0].upper()
        if prefix not in PBC_PREFIX_TO_CODE:
            skipped.append(SkippedFile(path, f"PBC prefix {prefix!r} names no single cell type"))
        elif (code := PBC_PREFIX_TO_CODE[prefix]) is None:
            skipped.append(SkippedFile(path, f"PBC {prefix.lower()}: not a marrow cell class"))
        else:
            records.append((path, code))
    return records, skipped


def _has_images(folder: Path, direct: bool) -> bool:
    files = folder.iterdir() if direct else folder.rglob("*")
    return any(p.suffix.lower() in IMAGE_SUFFIXES for p in files if p.is_file())


def check_files(records: Sequence[tuple[str, str]]) -> tuple[list[tuple[str, str]], list[SkippedFile]]:
    """Keep the records whose file decodes as an image; list the others with the reason."""
    good, bad = [], []
    for path, code in records:
        try:
            open_image(path, name=path)
        except ImageError as exc:
            bad.append(SkippedFile(path, str(exc).removeprefix(f"{path}: ")))
        else:
            good.append((path, code))
    return good, bad


def _features(codes: Sequence[str]) -> datasets.Features:
    return datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.ClassLabel(names=list(codes)),
            "source": datasets.Value("string"),
            "domain": datasets.Value("string"),
        }
    )


def from_records(records: Sequence[tuple[str, str]], codes: Sequence[str] | None = None, domain: str = "") -> datasets.Dataset:
    """A ``datasets.Dataset`` over image paths (decoded lazily), labels as a ``ClassLabel``."""
    codes = list(codes) if codes is not None else sort_codes({c for _, c in records})
    index = {c: i for i, c in enumerate(codes)}
    unknown = sorted({c for _, c in records} - set(index))
    if unknown:
        raise ValueError(f"labels {unknown} are not among the model's classes {codes}")
    return datasets.Dataset.from_dict(
        {
            "image": [p for p, _ in records],
            "label": [index[c] for _, c in records],
            "source": [p for p, _ in records],
            "domain": [domain] * len(records),
        },
        features=_features(codes),
    )


MATEK_KAGGLE_WRAPPER = "bone_marrow_cell_dataset"
"""The folder inside the Kaggle download of the Matek data (``<download>/bone_marrow_cell_dataset/BLA/…``)."""


def domain_name(root: str | Path) -> str:
    """The name a local folder goes by as a training source: its own folder name, except that a
    Kaggle download of the Matek data (recognised by its wrapper folder) is ``bone-marrow-cells``
    whatever the user called the folder, so that cards cite it."""
    root = Path(root).resolve()
    if (root / MATEK_KAGGLE_WRAPPER).is_dir() or root.name == MATEK_KAGGLE_WRAPPER:
        return "bone-marrow-cells"
    return root.name


def load_folder(root: str | Path, codes: Sequence[str] | None = None) -> CellData:
    """Load a local folder (imagefolder, Kaggle or PBC layout), skipping broken files."""
    pbc = is_pbc_layout(root) if Path(root).is_dir() else False
    records, skipped = scan_pbc(root) if pbc else scan_folder(root)
    records, bad = check_files(records)
    if not records:
        raise ValueError(
            f"no readable images in class folders under {root}: expected {root}/<CLASS>/<image> "
            "(a folder per class, named by Matek code or cell type)"
        )
    domain = domain_name(root)
    return CellData(from_records(records, codes, domain), skipped + bad, {domain} if pbc else set())


def load_sources(sources: Sequence[str], image_column: str = "image", label_column: str = "label", revision: str | None = None) -> CellData:
    """Pool several training sources into one data set over the union of their classes.

    Each keeps its ``domain`` (two sources with the same folder name are told apart by number), so
    the split, the loss weights and the metrics can treat every (domain, class) on its own."""
    parts = [load_cells(s, image_column, label_column, revision) for s in sources]
    if len(parts) == 1:
        return parts[0]
    codes = sort_codes({c for part in parts for c in part.codes})
    seen: Counter[str] = Counter()
    datasets_, skipped, id_only = [], [], set()
    for part in parts:
        domain = part.dataset[0]["domain"] if len(part.dataset) else ""
        seen[domain] += 1
        renamed = domain if seen[domain] == 1 else f"{domain}-{seen[domain]}"
        ds = part.dataset.cast(_features(codes)) if part.codes == codes else _relabel(part.dataset, codes)
        if renamed != domain:
            ds = ds.map(lambda _, renamed=renamed: {"domain": renamed})
        datasets_.append(ds)
        skipped += part.skipped
        id_only |= {renamed} if domain in part.id_only_domains else set()
    return CellData(datasets.concatenate_datasets(datasets_), skipped, id_only)


def _relabel(ds: datasets.Dataset, codes: Sequence[str]) -> datasets.Dataset:
    """The same rows with labels re-indexed into a larger class list."""
    old = ds.features["label"].names
    index = {c: i for i, c in enumerate(codes)}
    plain = ds.cast_column("label", datasets.Value("int64"))
    plain = plain.map(lambda row: {"label": index[old[row["label"]]]})
    return plain.cast(_features(codes))


# --------------------------------------------------------------------------- Hub and parquet


def load_hub_or_parquet(
    name_or_files: str | Sequence[str],
    image_column: str = "image",
    label_column: str = "label",
    split: str | None = None,
    revision: str | None = None,
) -> CellData:
    """Load a Hub dataset id (needs network) or parquet file(s) and normalise it to our columns.

    ``revision`` pins a Hub dataset to a branch, tag or commit (a commit sha makes a run repeatable).

    Labels may be a ``ClassLabel`` or strings, spelled as Matek codes or full names. All the
    source's splits are pooled unless ``split`` is given: bmc makes its own stratified split.
    """
    if isinstance(name_or_files, str) and not name_or_files.endswith(".parquet"):
        raw = datasets.load_dataset(name_or_files, split=split, revision=revision or "main")
        origin = name_or_files
    else:
        files = [name_or_files] if isinstance(name_or_files, str) else list(name_or_files)
        raw = datasets.load_dataset("parquet", data_files=files, split=split)  # nosec B615 # local files, not the Hub
        origin = Path(files[0]).parent.name or "parquet"
    if isinstance(raw, datasets.DatasetDict):
        raw = datasets.concatenate_datasets([raw[k].cast(raw[next(iter(raw))].features) for k in raw])
    for column in (image_column, label_column):
        if column not in raw.column_names:
            raise ValueError(f"column {column!r} not in the dataset (columns: {raw.column_names})")
    label_feature = raw.features[label_column]
    raw_labels = raw[label_column]
    if isinstance(label_feature, datasets.ClassLabel):
        raw_labels = [label_feature.names[i] for i in raw_labels]
    codes_per_row = []
    for value in raw_labels:
        try:
            codes_per_row.append(to_code(value))
        except KeyError:
            codes_per_row.append(str(value))
    images = raw.cast_column(image_column, datasets.Image(decode=False))[image_column]
    keep_images, keep_codes, sources, skipped = [], [], [], []
    for i, (img, code) in enumerate(zip(images, codes_per_row)):
        source = img.get("path") or f"{origin}[{i}]"
        try:
            open_image(img["bytes"] if img.get("bytes") else img["path"], name=source)
        except ImageError as exc:
            skipped.append(SkippedFile(source, str(exc).removeprefix(f"{source}: ")))
            continue
        keep_images.append(img)
        keep_codes.append(code)
        sources.append(source)
    codes = sort_codes(set(keep_codes))
    index = {c: i for i, c in enumerate(codes)}
    ds = datasets.Dataset.from_dict(
        {"image": keep_images, "label": [index[c] for c in keep_codes], "source": sources, "domain": [origin] * len(sources)},
        features=_features(codes),
    )
    return CellData(ds, skipped)


def load_cells(source: str, image_column: str = "image", label_column: str = "label", revision: str | None = None) -> CellData:
    """Dispatch on what ``source`` is: a local folder, parquet file(s), or a Hub dataset id."""
    path = Path(source)
    if path.is_dir() and any(path.glob("*.parquet")):
        return load_hub_or_parquet(sorted(str(p) for p in path.glob("*.parquet")), image_column, label_column)
    if path.is_dir():
        return load_folder(path)
    if path.suffix == ".parquet":
        if not path.is_file():
            raise FileNotFoundError(f"parquet file not found: {source}")
        return load_hub_or_parquet(str(path), image_column, label_column)
    if source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise FileNotFoundError(f"data folder not found: {source} (a Hub dataset id looks like 'owner/name')")
    return load_hub_or_parquet(source, image_column, label_column, revision=revision)


# --------------------------------------------------------------------------- external validation


def load_pbc_external(root: str | Path, codes: Sequence[str]) -> tuple[datasets.Dataset, dict[str, int]]:
    """The PBC peripheral-blood images whose cell type is one of ``codes``.

    Returns the dataset and, per Matek code or ``unmapped``, how many images were left out
    because the model lacks that class (or the file names no single marrow cell type)."""
    records, skipped = scan_pbc(root)
    keep: list[tuple[str, str]] = []
    excluded: defaultdict[str, int] = defaultdict(int)
    for path, code in records:
        if code in codes:
            keep.append((path, code))
        else:
            excluded[code] += 1
    excluded["unmapped"] += sum(1 for s in skipped if s.reason.startswith("PBC"))
    keep, bad = check_files(keep)
    excluded["unreadable"] += len(bad) + sum(1 for s in skipped if not s.reason.startswith("PBC"))
    return from_records(keep, codes, domain_name(root)), dict(excluded)
