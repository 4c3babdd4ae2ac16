from collections import Counter
from pathlib import Path

import datasets
import pytest
from helpers import MATEK, PBC, PBC_TRAIN, image_bytes, matek_images

from bmc.data import load_cells, load_folder, load_pbc_external, load_sources, scan_folder
from bmc.images import MAX_FILE_BYTES
from bmc.model_folder import read_manifest
from bmc.splits import assign_splits, image_number, write_manifest, write_skipped


def test_kaggle_layout_labels_come_from_the_top_folder(shared_data):
    records, skipped = scan_folder(MATEK)  # root holds abbreviations.csv and one wrapper folder
    counts = Counter(code for _, code in records)
    # the counts of ../shared/data/README.md (grown on 2026-11-28 from 3,900 to 5,548 images)
    assert counts == {"ART": 450, "BLA": 750, "EOS": 750, "LYT": 750, "MON": 750, "NGS": 750, "NIF": 750, "PMO": 598}
    assert all(Path(p).parent.name == "0001-1000" for p, _ in records)  # the range folder is not the label
    assert skipped == []


def _write(path: Path, payload: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload)
    return path


@pytest.fixture
def messy_folder(tmp_path: Path) -> Path:
    """A Kaggle-style folder with good images and every kind of broken file."""
    root = tmp_path / "cells"
    for code in ("BLA", "NGS"):
        for i in range(1, 4):
            _write(root / code / "0001-1000" / f"{code}_{i:05d}.jpg", image_bytes("JPEG"))
    _write(root / "BLA" / "0001-1000" / "BLA_00010.jpg", b"")  # zero bytes
    _write(root / "BLA" / "0001-1000" / "BLA_00011.jpg", b"this is a text file, not a jpeg")
    _write(root / "NGS" / "0001-1000" / "NGS_00012.jpg", image_bytes("JPEG", (128, 128))[:300])  # truncated
    _write(root / "NGS" / "0001-1000" / "NGS_00013.jpg", b"\0" * (MAX_FILE_BYTES + 1))  # oversize
    _write(root / "NGS" / "notes.txt", b"slide notes")
    _write(root / "README.csv", b"ignored: not inside a class folder")
    return root


def test_broken_files_are_skipped_with_reasons_not_fatal(messy_folder):
    cells = load_folder(messy_folder)
    assert len(cells.dataset) == 6
    assert cells.codes == ["BLA", "NGS"]
    reasons = {Path(s.source).name: s.reason for s in cells.skipped}
    assert set(reasons) == {"BLA_00010.jpg", "BLA_00011.jpg", "NGS_00012.jpg", "NGS_00013.jpg", "notes.txt"}
    assert "empty" in reasons["BLA_00010.jpg"]
    assert "not an image" in reasons["BLA_00011.jpg"]
    assert "truncated" in reasons["NGS_00012.jpg"] or "damaged" in reasons["NGS_00012.jpg"]
    assert "limit is 10 MB" in reasons["NGS_00013.jpg"]
    assert "not an image file type" in reasons["notes.txt"]
    write_skipped(messy_folder.parent / "skipped.csv", cells.skipped)
    assert len((messy_folder.parent / "skipped.csv").read_text().splitlines()) == 6


def test_plain_imagefolder_with_full_names(tmp_path):
    for name in ("Lymphocyte", "monocyte"):
        for i in range(2):
            _write(tmp_path / name / f"img{i}.png", image_bytes("PNG"))
    cells = load_cells(str(tmp_path))
    assert cells.codes == ["LYT", "MON"]
    assert isinstance(cells.dataset.features["image"], datasets.Image)
    assert cells.dataset[0]["image"].size == (64, 64)


def test_parquet_source_with_string_labels_and_a_bad_row(tmp_path, shared_data):
    paths = matek_images("EOS", 3) + matek_images("MON", 3)
    rows = {
        "img": [{"bytes": p.read_bytes(), "path": None} for p in paths] + [{"bytes": b"junk", "path": None}],
        "cell": ["Eosinophil"] * 3 + ["MON"] * 3 + ["EOS"],
    }
    ds = datasets.Dataset.from_dict(rows, features=datasets.Features({"img": datasets.Image(), "cell": datasets.Value("string")}))
    ds.to_parquet(str(tmp_path / "train.parquet"))
    cells = load_cells(str(tmp_path / "train.parquet"), image_column="img", label_column="cell")
    assert cells.codes == ["EOS", "MON"]
    assert Counter(cells.dataset["label"]) == {0: 3, 1: 3}
    assert len(cells.skipped) == 1 and "not an image" in cells.skipped[0].reason


def test_missing_column_is_named(tmp_path):
    ds = datasets.Dataset.from_dict(
        {"image": [{"bytes": image_bytes(), "path": None}], "y": ["BLA"]},
        features=datasets.Features({"image": datasets.Image(), "y": datasets.Value("string")}),
    )
    ds.to_parquet(str(tmp_path / "x.parquet"))
    with pytest.raises(ValueError, match="column 'label' not in the dataset"):
        load_cells(str(tmp_path / "x.parquet"))


def _fake_sources(n_per_class: int = 500, classes=("A", "B", "C")):
    sources, labels = [], []
    for k, c in enumerate(classes):
        for i in range(1, n_per_class + 1):
            sources.append(f"/x/{c}/0001-1000/{c}_{i:05d}.jpg")
            labels.append(k)
    return sources, labels


def test_split_is_deterministic_and_stratified():
    sources, labels = _fake_sources()
    a = assign_splits(sources, labels, 0.15, 0.15, "random", seed=1)
    assert a == assign_splits(sources, labels, 0.15, 0.15, "random", seed=1)
    assert a != assign_splits(sources, labels, 0.15, 0.15, "random", seed=2)
    for k in range(3):
        per_class = Counter(s for s, label in zip(a, labels) if label == k)
        assert per_class == {"train": 350, "validation": 75, "test": 75}


def test_block_split_keeps_neighbouring_numbers_together():
    sources, labels = _fake_sources()
    splits = assign_splits(sources, labels, 0.15, 0.15, "block", block_size=50, seed=0)
    block_splits = {}
    for src, split in zip(sources, splits):
        key = (Path(src).parent.parent.name, (image_number(src) - 1) // 50)
        block_splits.setdefault(key, set()).add(split)
    assert all(len(s) == 1 for s in block_splits.values())
    assert Counter(splits) == {"train": 1050, "validation": 150, "test": 300}  # 10 blocks/class: 7/1/2


def test_manifest_round_trip(tmp_path):
    rows = [
        {"source": "a.jpg", "label": "BLA", "split": "train", "domain": "matek"},
        {"source": "b.jpg", "label": "NGS", "split": "test", "domain": "pbc"},
    ]
    write_manifest(tmp_path / "m.csv", rows)
    assert read_manifest(tmp_path / "m.csv") == rows


def test_a_stratum_keeps_its_split_when_other_sources_or_classes_join():
    # The Matek-only and the Matek + PBC models must be compared on the same Matek test images.
    sources, labels = _fake_sources(classes=("BLA", "NGS"))
    alone = assign_splits(sources, [("BLA", "NGS")[k] for k in labels], mode="block", seed=42, domains=["m"] * len(sources))
    more_sources = [f"/p/{c}/{c}_{i}.jpg" for c in ("EBO", "NGS") for i in range(100)]
    pooled = assign_splits(
        sources + more_sources,
        [("BLA", "NGS")[k] for k in labels] + ["EBO"] * 100 + ["NGS"] * 100,
        mode="block",
        seed=42,
        domains=["m"] * len(sources) + ["p"] * 200,
        id_only_domains={"p"},
    )
    assert pooled[: len(sources)] == alone
    extra = pooled[len(sources) :]
    assert Counter(extra[:100]) == {"train": 70, "validation": 15, "test": 15}  # id-only domain: random, not blocks


def test_pbc_layout_takes_the_class_from_the_file_prefix(shared_data):
    cells = load_folder(PBC_TRAIN)
    codes = cells.codes
    counts = Counter(codes[i] for i in cells.dataset["label"])
    assert counts == {c: 100 for c in ("EOS", "LYT", "MON", "NGS", "NGB", "PMO", "MYB", "MMZ", "BAS", "EBO")}
    assert set(cells.dataset["domain"]) == {"pbc-train"} and cells.id_only_domains == {"pbc-train"}


def test_pbc_platelets_and_unspecified_prefixes_are_skipped_with_a_count(tmp_path):
    for name in ("ig/PMY_1.jpg", "ig/IG_2.jpg", "neutrophil/NEUTROPHIL_3.jpg", "platelet/PLATELET_4.jpg", "neutrophil/BNE_5.jpg"):
        _write(tmp_path / "pbc" / name, image_bytes("JPEG"))
    cells = load_folder(tmp_path / "pbc")
    assert sorted(cells.codes) == ["NGB", "PMO"] and len(cells.dataset) == 2
    reasons = sorted(s.reason for s in cells.skipped)
    assert reasons == [
        "PBC platelet: not a marrow cell class",
        "PBC prefix 'IG' names no single cell type",
        "PBC prefix 'NEUTROPHIL' names no single cell type",
    ]


def test_several_sources_pool_into_one_class_list_with_domains(tmp_path):
    for i in range(2):
        _write(tmp_path / "marrow" / "BLA" / f"BLA_{i}.jpg", image_bytes("JPEG"))
        _write(tmp_path / "marrow" / "NGS" / f"NGS_{i}.jpg", image_bytes("JPEG"))
        _write(tmp_path / "blood" / "erythroblast" / f"ERB_{i}.jpg", image_bytes("JPEG"))
        _write(tmp_path / "blood" / "neutrophil" / f"SNE_{i}.jpg", image_bytes("JPEG"))
    cells = load_sources([str(tmp_path / "marrow"), str(tmp_path / "blood")])
    ds = cells.dataset
    rows = sorted(zip(ds["domain"], (cells.codes[i] for i in ds["label"])))
    assert cells.codes == ["BLA", "NGS", "EBO"]  # haematologists' order over the union
    assert rows == sorted([("marrow", "BLA")] * 2 + [("marrow", "NGS")] * 2 + [("blood", "EBO")] * 2 + [("blood", "NGS")] * 2)
    assert cells.id_only_domains == {"blood"}


def test_pbc_external_maps_prefixes_not_folders(shared_data):
    ds, excluded = load_pbc_external(PBC, ["NGS", "EOS", "PMO"])
    codes = ds.features["label"].names
    counts = Counter(codes[i] for i in ds["label"])
    assert counts == {"NGS": 100, "EOS": 100, "PMO": 100}  # band neutrophils (BNE) are not NGS
    assert excluded["NGB"] == 30 and excluded["unmapped"] == 30  # platelets


def test_an_images_folder_with_a_labels_csv_is_read_by_image_id(tmp_path):
    from PIL import Image

    from bmc.data import scan_folder

    (tmp_path / "images").mkdir()
    for stem in ("001", "002", "003"):
        Image.new("RGB", (8, 8)).save(tmp_path / "images" / f"{stem}.webp")
    (tmp_path / "labels.csv").write_text("image ID,class\n1,2\n2,1\n3,Monocyte\n9,4\n")
    records, skipped = scan_folder(tmp_path)
    assert [(p.split("/")[-1], c) for p, c in records] == [("001.webp", "LYT"), ("002.webp", "neutrophil"), ("003.webp", "MON")]
    assert len(skipped) == 1 and "no such image" in skipped[0].reason
