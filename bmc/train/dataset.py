"""The data of a training run: load the sources, split them (block or random, with the fallbacks said),
refuse a split that leaks a base or teacher model's held-out images, and the split manifest rows.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from bmc import data
from bmc.images import SkippedFile
from bmc.model_folder import read_manifest
from bmc.splits import assign_splits, image_number, split_cells
from bmc.train.arguments import DataArguments

log = logging.getLogger(__name__)


def prepare_data(args: DataArguments, seed: int) -> tuple[Any, list[SkippedFile], list[dict]]:
    """Load, check and split the data; return the DatasetDict, skipped files and manifest rows.

    ``seed`` only subsamples (``--max_*_samples``); the split itself follows ``args.split_seed``."""
    cells = data.load_sources(
        [args.dataset_name] if args.dataset_name else list(args.train_dir or []),
        args.image_column_name,
        args.label_column_name,
        args.dataset_revision,
    )
    ds, skipped = cells.dataset, list(cells.skipped)
    codes = cells.codes
    if len(codes) < 2:
        where = args.dataset_name or ", ".join(args.train_dir or [])
        raise ValueError(
            f"{where} holds only one class ({', '.join(codes)}): a classifier needs at least two. Put each class's "
            "images in a folder of its own (BLA/, NGS/, …) under the data folder."
        )
    sources, label_ids, domains = ds["source"], ds["label"], ds["domain"]
    val_fraction = 0.0 if args.validation_dir else args.train_val_split
    if args.split_mode == "block" and not any(image_number(s) is not None for s in sources):
        log.warning("no image numbers in the file names: falling back to a random split")
        args.split_mode = "random"
    labels = [codes[i] for i in label_ids]
    splits = assign_splits(
        sources,
        labels,
        val_fraction,
        args.test_split,
        args.split_mode,
        args.split_block_size,
        args.split_seed,
        domains,
        cells.id_only_domains,
    )
    wanted = {"validation"} if val_fraction > 0 else set()
    if args.split_mode == "block" and not wanted <= set(splits):
        # a small data set has too few blocks of consecutive images per class to hold any out
        log.warning(
            "block split: too few blocks of %d consecutive images per class to hold out a validation split; "
            "splitting at random instead (--split_mode random says so up front, a smaller --split_block_size keeps blocks)",
            args.split_block_size,
        )
        args.split_mode = "random"
        splits = assign_splits(
            sources,
            labels,
            val_fraction,
            args.test_split,
            "random",
            args.split_block_size,
            args.split_seed,
            domains,
            cells.id_only_domains,
        )
    dsd = split_cells(ds, splits)
    if args.validation_dir:
        val = data.load_folder(args.validation_dir, codes=codes)
        skipped += val.skipped
        dsd["validation"] = val.dataset
        sources, label_ids, domains = (
            list(sources) + val.dataset["source"],
            list(label_ids) + val.dataset["label"],
            list(domains) + val.dataset["domain"],
        )
        splits = splits + ["validation"] * len(val.dataset)
    if "validation" not in dsd:
        raise ValueError("no validation images: give --validation_dir or a --train_val_split above 0")
    if args.max_train_samples:
        dsd["train"] = dsd["train"].shuffle(seed=seed).select(range(min(args.max_train_samples, len(dsd["train"]))))
    if args.max_eval_samples:
        for name in ("validation", "test"):
            if name in dsd:
                dsd[name] = dsd[name].shuffle(seed=seed).select(range(min(args.max_eval_samples, len(dsd[name]))))
    manifest = [{"source": s, "label": codes[i], "split": sp, "domain": d} for s, i, sp, d in zip(sources, label_ids, splits, domains)]
    return dsd, skipped, manifest


def check_no_held_out_leak(base: str, manifest: list[dict]) -> None:
    """Refuse a split that mixes what the base model trained on with what it held out.

    Continuing a bmc model (a higher-resolution stage, more epochs) with another split leaks both
    ways: the base's validation/test images become training images, and images the base already
    learned land in the new validation/test splits. Either makes every reported figure optimistic
    without any visible sign. The base folder's ``split_manifest.csv`` says which images it trained
    on. Images are matched by class and file name, not by path: the data folder may have moved, or
    the run may start from another directory.
    """
    path = Path(base) / "split_manifest.csv"
    if not path.is_file():
        return

    def key(row: dict) -> tuple[str, str]:
        return row["label"], Path(row["source"]).name

    base_trained = {key(row): row["split"] == "train" for row in read_manifest(path)}
    into_train = [m["source"] for m in manifest if m["split"] == "train" and base_trained.get(key(m)) is False]
    into_eval = [m["source"] for m in manifest if m["split"] != "train" and base_trained.get(key(m)) is True]
    problems = (
        [f"{len(into_train)} training images (e.g. {into_train[0]}) were validation/test images of the base model"] if into_train else []
    )
    if into_eval:
        problems.append(f"{len(into_eval)} validation/test images (e.g. {into_eval[0]}) were training images of the base model")
    if problems:
        raise ValueError(
            "; ".join(problems) + f" {base}: the figures would be inflated. Use the split it was trained with (same "
            "--split_mode, --split_block_size, --train_val_split, --test_split, --split_seed; see its split_manifest.csv)."
        )


def distill_mask(teacher_dir: str, sources: list[str], codes: list[str]) -> list[bool]:
    """For each training image (``sources`` with class ``codes``), whether the teacher model trained on it (class
    and file name in its ``split_manifest.csv``): distillation copies the teacher where it learnt, not where it
    would guess (on another laboratory's images, or classes it lacks)."""
    path = Path(teacher_dir) / "split_manifest.csv"
    if not path.is_file():
        raise ValueError(f"--distill_from {teacher_dir}: no split_manifest.csv, so which images it trained on is unknown")
    taught = {(row["label"], Path(row["source"]).name) for row in read_manifest(path) if row["split"] == "train"}
    return [(code, Path(source).name) in taught for source, code in zip(sources, codes)]
