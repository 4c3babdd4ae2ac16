"""Loading cell images from wherever a user keeps them, checking them, and splitting them.

Sources: a Hub dataset id, a local folder (a plain imagefolder or the Kaggle layout, where the
class is the *top* folder and images sit in numbered range folders below it — a layout on which
``load_dataset("imagefolder")`` silently returns no labels), or parquet files. Every source becomes
one ``datasets.Dataset`` with the columns ``image`` (an ``Image`` feature), ``label`` (a
``ClassLabel`` over Matek codes) and ``source`` (file path or dataset row), so splitting, training
and evaluation have a single code path.

Broken files are a fact of life in lab data: unreadable, truncated, non-image and oversize files
are skipped and listed with the reason, never fatal.
"""

from __future__ import annotations

import csv
import io
import random
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import datasets
from PIL import Image, ImageOps, UnidentifiedImageError

from bmc import labels as L

MAX_FILE_BYTES = 10 * 1024 * 1024
"""Uploads and training files above this are refused: a single-cell crop is a few tens of kB."""
MAX_PIXELS = 40_000_000
"""Refuse images larger than this *before* decoding them (decompression-bomb guard)."""
MIN_SIDE = 16
"""A cell image smaller than this on either side carries no usable morphology."""
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"}
SPLITS = ("train", "validation", "test")


class ImageError(ValueError):
    """An input that is not a usable cell image; the message names the problem for the user."""


@dataclass
class SkippedFile:
    """A file left out of a data set, with the reason a person can act on."""

    source: str
    reason: str


@dataclass
class CellData:
    """All usable images of a source plus the files that were skipped."""

    dataset: datasets.Dataset
    skipped: list[SkippedFile] = field(default_factory=list)

    @property
    def codes(self) -> list[str]:
        return list(self.dataset.features["label"].names)


def open_image(data: str | Path | bytes | Image.Image, name: str = "image") -> Image.Image:
    """Decode one image to 8-bit RGB, or raise :class:`ImageError` saying what is wrong with it.

    Used for training files and uploads alike so both get the same checks: size on disk, header,
    pixel count (checked before the pixels are decoded), truncation, tiny images; 16-bit, CMYK,
    palette, greyscale and transparent images are converted rather than refused (the returned
    image's ``info["bmc_converted"]`` then says from what, so a user can be told); multi-page
    TIFFs and animated GIFs are refused, because which frame is "the cell" is the user's call.
    """
    if isinstance(data, Image.Image):
        img = data
    else:
        if isinstance(data, (str, Path)):
            path = Path(data)
            if not path.is_file():
                raise ImageError(f"{name}: file not found")
            size = path.stat().st_size
            raw: bytes | None = None
        else:
            raw, size = data, len(data)
        if size == 0:
            raise ImageError(f"{name}: the file is empty (0 bytes)")
        if size > MAX_FILE_BYTES:
            raise ImageError(f"{name}: the file is {size / 1e6:.1f} MB; the limit is {MAX_FILE_BYTES / 1e6:.0f} MB")
        try:
            img = Image.open(io.BytesIO(raw) if raw is not None else path)
        except Image.DecompressionBombError:
            raise ImageError(f"{name}: the image is too large to decode safely (limit {MAX_PIXELS // 1_000_000} Mpx)") from None
        except UnidentifiedImageError:
            raise ImageError(f"{name}: not an image file (or an image format that cannot be read)") from None
        except OSError as exc:
            raise ImageError(f"{name}: the image data is damaged or truncated ({exc})") from None
    w, h = img.size
    if w * h > MAX_PIXELS:
        raise ImageError(f"{name}: {w}×{h} px is too large (limit {MAX_PIXELS // 1_000_000} Mpx); crop single cells first")
    if min(w, h) < MIN_SIDE:
        raise ImageError(f"{name}: {w}×{h} px is too small to show a cell (minimum {MIN_SIDE} px per side)")
    frames = int(getattr(img, "n_frames", 1) or 1)
    if frames > 1:
        kind = {"TIFF": "a multi-page TIFF", "GIF": "an animated GIF", "PNG": "an animated PNG"}.get(img.format or "", "a multi-frame image")
        raise ImageError(f"{name}: {kind} with {frames} frames; bmc classifies one cell per image — "
                         "save the frame you mean as a single image")
    try:
        img.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageError(f"{name}: the image data is damaged or truncated ({exc})") from None
    return _to_rgb(img)


CONVERSIONS = {
    "I;16": "16-bit greyscale, scaled to 8 bits", "I;16B": "16-bit greyscale, scaled to 8 bits",
    "I;16L": "16-bit greyscale, scaled to 8 bits", "I": "32-bit greyscale, scaled to 8 bits",
    "CMYK": "CMYK (print colours)", "RGBA": "RGB with transparency, composited on white",
    "LA": "greyscale with transparency, composited on white", "P": "a palette (indexed-colour) image",
    "PA": "a palette image with transparency", "L": "greyscale (no stain colour: expect poor results)",
    "1": "black-and-white (no stain colour: expect poor results)", "YCbCr": "YCbCr", "LAB": "Lab", "HSV": "HSV",
}
"""What a non-RGB input was, in words, for the note shown beside its prediction."""


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB; transparency is composited onto white (slide background)."""
    mode = img.mode
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        import numpy as np

        arr = np.asarray(img, dtype=np.float64)
        peak = arr.max() or 1.0
        img = Image.fromarray((arr / peak * 255).clip(0, 255).astype("uint8"))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    rgb = img.convert("RGB")
    if mode != "RGB":
        rgb.info["bmc_converted"] = CONVERSIONS.get(mode, mode)
    return rgb


# --------------------------------------------------------------------------- local folders

def scan_folder(root: str | Path) -> tuple[list[tuple[str, str]], list[SkippedFile]]:
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
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    # Kaggle's archive wraps the class folders in one more folder; step into it.
    if len(class_dirs) == 1 and not _has_images(class_dirs[0], direct=True):
        return scan_folder(class_dirs[0])
    records: list[tuple[str, str]] = []
    skipped: list[SkippedFile] = []
    for class_dir in class_dirs:
        try:
            code = L.to_code(class_dir.name)
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
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=list(codes)), "source": datasets.Value("string")}
    )


def from_records(records: Sequence[tuple[str, str]], codes: Sequence[str] | None = None) -> datasets.Dataset:
    """A ``datasets.Dataset`` over image paths (decoded lazily), labels as a ``ClassLabel``."""
    codes = list(codes) if codes is not None else L.sort_codes({c for _, c in records})
    index = {c: i for i, c in enumerate(codes)}
    unknown = sorted({c for _, c in records} - set(index))
    if unknown:
        raise ValueError(f"labels {unknown} are not among the model's classes {codes}")
    return datasets.Dataset.from_dict(
        {"image": [p for p, _ in records], "label": [index[c] for _, c in records], "source": [p for p, _ in records]},
        features=_features(codes),
    )


def load_folder(root: str | Path, codes: Sequence[str] | None = None) -> CellData:
    """Load a local folder (imagefolder or Kaggle layout), skipping broken files."""
    records, skipped = scan_folder(root)
    records, bad = check_files(records)
    if not records:
        raise ValueError(f"no readable images found under {root}")
    return CellData(from_records(records, codes), skipped + bad)


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
        origin = "parquet"
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
            codes_per_row.append(L.to_code(value))
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
    codes = L.sort_codes(set(keep_codes))
    index = {c: i for i, c in enumerate(codes)}
    ds = datasets.Dataset.from_dict(
        {"image": keep_images, "label": [index[c] for c in keep_codes], "source": sources}, features=_features(codes)
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


# --------------------------------------------------------------------------- splitting

_NUMBER = re.compile(r"(\d+)(?!.*\d)")


def image_number(source: str) -> int | None:
    """The running number in a file name such as ``BLA_00042.jpg`` (the last digit group)."""
    match = _NUMBER.search(Path(source).stem)
    return int(match.group(1)) if match else None


def assign_splits(
    sources: Sequence[str],
    label_ids: Sequence[int],
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    mode: str = "block",
    block_size: int = 50,
    seed: int = 42,
) -> list[str]:
    """Deterministic, stratified split: one of ``train``/``validation``/``test`` per item.

    ``mode="random"`` shuffles each class's items; ``mode="block"`` first groups each class's
    images into blocks of ``block_size`` consecutive image numbers (``BLA_00001``–``BLA_00050``…),
    which in the Matek data come from the same slide, and assigns whole blocks, so that near
    duplicates never straddle train and test. The result depends only on the inputs and ``seed``.
    """
    if mode not in ("block", "random"):
        raise ValueError(f"split mode must be 'block' or 'random', not {mode!r}")
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ValueError("validation and test fractions must be in [0, 1) and sum to less than 1")
    rng = random.Random(seed)
    by_class: dict[int, list[int]] = defaultdict(list)
    for i, label in enumerate(label_ids):
        by_class[label].append(i)
    result = ["train"] * len(sources)
    for label in sorted(by_class):
        items = sorted(by_class[label], key=lambda i: (image_number(sources[i]) or 0, sources[i]))
        if mode == "block":
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


def write_manifest(path: str | Path, sources: Iterable[str], codes: Iterable[str], splits: Iterable[str]) -> None:
    """Save which file went to which split, so a split can be audited and reproduced."""
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["source", "label", "split"])
        writer.writerows(zip(sources, codes, splits))


def read_manifest(path: str | Path) -> list[dict[str, str]]:
    """Rows of a manifest written by :func:`write_manifest`."""
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def write_skipped(path: str | Path, skipped: Sequence[SkippedFile]) -> None:
    """List skipped files and reasons next to the model, for the user to fix or remove."""
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["source", "reason"])
        writer.writerows((s.source, s.reason) for s in skipped)


# --------------------------------------------------------------------------- external validation

#: PBC (Acevedo et al.) file-name prefixes and the Matek code of the same cell type (None: no
#: marrow class, e.g. platelets).
PBC_PREFIX_TO_CODE: dict[str, str | None] = {
    "EO": "EOS", "LY": "LYT", "MO": "MON", "SNE": "NGS", "BNE": "NGB", "PMY": "PMO",
    "MY": "MYB", "MMY": "MMZ", "BA": "BAS", "ERB": "EBO", "PLATELET": None,
}


def load_pbc_external(root: str | Path, codes: Sequence[str]) -> tuple[datasets.Dataset, dict[str, int]]:
    """The PBC peripheral-blood images whose cell type is one of ``codes``.

    The class comes from the file-name prefix (``SNE_…`` segmented, ``BNE_…`` band neutrophil),
    not the folder, because PBC folders lump finer types together. Returns the dataset and, per
    Matek code or ``unmapped``, how many images were left out because the model lacks that class.
    """
    records, skipped = scan_folder(root)
    keep, excluded = [], defaultdict(int)
    for path, _ in records:
        prefix = Path(path).stem.split("_")[0].upper()
        code = PBC_PREFIX_TO_CODE.get(prefix)
        if code in codes:
            keep.append((path, code))
        else:
            excluded[code or "unmapped"] += 1
    keep, bad = check_files(keep)
    excluded["unreadable"] += len(bad) + len(skipped)
    return from_records(keep, codes), dict(excluded)
