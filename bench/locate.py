"""The cell locator and the single-cell guard, measured (docs/performance.md).

    python bench/locate.py --out bench/locate.json

1. Locator on BCCD's trainval fields (``../shared/data/external-wbc/bccd-fields``): white-cell recall and
   precision at IoU >= 0.5 against the VOC boxes, overall and by number of white cells per field.
2. End to end: each found cell that matches a labelled white cell is cropped (:func:`bmc.locate.finder.crop`) and
   classified by the model; the share of all white cells found *and* rightly classified (the crop labels
   of ``external-wbc/bccd``: ``BloodImage_00000_1.jpg`` is field 00000's first WBC box).
3. Guard: the share of real single-cell images of each source that :func:`bmc.locate.finder.several_cells` would
   refuse (it must stay <= 1 %), and the share of generated tiles of 2-9 Matek cells it catches.
4. The model's own check (:mod:`bmc.serve.guard`, when ``bmc guard`` fitted one) after the stain guard, as the
   app runs them: single cells it never trained on (its test split, ``pbc-external``, BCCD crops) refused, and
   sheets of 2-9 of its test images caught.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import xml.etree.ElementTree as ET  # nosec B405 - the shipped BCCD annotations, not user input
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bmc.locate.finder import Box, crop, find_cells, no_cell, several_cells  # noqa: E402
from bmc.train.guard import sheet  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
FIELDS = SHARED / "external-wbc" / "bccd-fields"
CROPS = SHARED / "external-wbc" / "bccd"


def wbc_boxes(field_id: str) -> list[tuple[int, int, int, int]]:
    """The WBC boxes of a BCCD field, in file order."""
    tree = ET.parse(FIELDS / "Annotations" / f"{field_id}.xml")  # nosec B314 - shipped data set file
    out = []
    for obj in tree.findall("object"):
        if obj.findtext("name") == "WBC":
            bb = obj.find("bndbox")
            out.append(tuple(int(float(bb.findtext(k))) for k in ("xmin", "ymin", "xmax", "ymax")))
    return out


def iou(a: tuple, b: Box) -> float:
    ix = max(0, min(a[2], b.x1) - max(a[0], b.x0))
    iy = max(0, min(a[3], b.y1) - max(a[1], b.y0))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b.x1 - b.x0) * (b.y1 - b.y0) - inter
    return inter / union if union else 0.0


def match(truth: list[tuple], found: list[Box]) -> dict[int, int]:
    """Greedy one-to-one matching of true boxes to found ones at IoU >= 0.5 (true index -> found index)."""
    pairs = sorted(((iou(t, f), i, j) for i, t in enumerate(truth) for j, f in enumerate(found)), reverse=True)
    out: dict[int, int] = {}
    for score, i, j in pairs:
        if score >= 0.5 and i not in out and j not in out.values():
            out[i] = j
    return out


def crop_labels() -> dict[tuple[str, int], str]:
    """(field id, WBC number from 1) -> code, from the labelled crops' folder and file names."""
    from bmc.labels import wbc_code

    out = {}
    for path in CROPS.rglob("*.jpg"):
        stem, _, k = path.stem.rpartition("_")
        out[(stem, int(k))] = wbc_code(path.parent.name)
    return out


def bench_locator(predictor) -> dict:
    from bmc.labels import NOT_COUNTED
    from bmc.locate.screening import found_cell_prediction
    from bmc.train.evaluation import UNSPLIT_NEUTROPHIL, counts_right

    ids = (FIELDS / "trainval.txt").read_text().split()
    labels = crop_labels()
    tp = fp = fn = 0
    by_count: dict[str, list[int]] = {}
    right = right_after = labelled = 0
    uncounted = {k: {"boxes": 0, "before": 0, "after": 0} for k in ("white cells found", "false boxes")}
    for field_id in ids:
        image = Image.open(FIELDS / "JPEGImages" / f"{field_id}.jpg").convert("RGB")
        truth, found = wbc_boxes(field_id), find_cells(image).boxes
        m = match(truth, found)
        tp, fp, fn = tp + len(m), fp + len(found) - len(m), fn + len(truth) - len(m)
        stat = by_count.setdefault(str(len(truth)), [0, 0, 0, 0])  # fields, true cells, found right, found in all
        stat[0] += 1
        stat[1] += len(truth)
        stat[2] += len(m)
        stat[3] += len(found)
        keys = [(field_id, i + 1) for i in range(len(truth))]
        labelled += sum(k in labels for k in keys)
        if predictor is not None and found:
            preds = predictor.predict([crop(image, box) for box in found])  # the model's own labels: "before"
            shares = [box.nucleus_area / (image.width * image.height) for box in found]
            after = [found_cell_prediction(predictor, p, share) for p, share in zip(preds, shares)]  # as bmc locate gives them
            for j, (before, now) in enumerate(zip(preds, after)):
                tally = uncounted["white cells found" if j in m.values() else "false boxes"]
                tally["boxes"] += 1
                tally["before"] += before.top_code in NOT_COUNTED
                tally["after"] += now.top_code in NOT_COUNTED
            for i, j in m.items():
                want = labels.get(keys[i])
                right += want is not None and bool(counts_right([preds[j].top_code], [want], UNSPLIT_NEUTROPHIL)[0])
                right_after += want is not None and bool(counts_right([after[j].top_code], [want], UNSPLIT_NEUTROPHIL)[0])
    out = {
        "fields": len(ids),
        "white_cells": tp + fn,
        "recall": tp / (tp + fn),
        "precision": tp / max(1, tp + fp),
        "true_positives": tp,
        "false_positives": fp,
        "missed": fn,
        "by_cells_per_field": {
            k: {"fields": v[0], "white_cells": v[1], "recall": v[2] / v[1] if v[1] else None, "precision": v[2] / v[3] if v[3] else None}
            for k, v in sorted(by_count.items())
        },
        "field_size": "640x480 (all trainval fields)",
    }
    if predictor is not None:
        out["end_to_end"] = {
            "labelled_white_cells": labelled,
            "found_and_right": right,
            "share": right / labelled if labelled else None,
            "found_and_right_as_found_cells": right_after,
            "share_as_found_cells": right_after / labelled if labelled else None,
        }
        out["called_artefact_or_not_identifiable"] = uncounted  # before: the model's label; after: a found cell is a cell
    return out


def bench_guard(per_source: int = 200, tiles: int = 40, seed: int = 0) -> dict:
    from bmc.data import scan_folder, scan_pbc

    rng = np.random.default_rng(seed)
    sources = {
        "matek": [p for p, _ in scan_folder(SHARED / "bone-marrow-cells")[0]],
        "pbc-external": [p for p, _ in scan_pbc(SHARED / "pbc-external")[0]],
        "pbc-train": [p for p, _ in scan_pbc(SHARED / "pbc-train")[0]],
        "bccd-crops": [str(p) for p in CROPS.rglob("*.jpg")],
    }
    out: dict = {}
    for name, paths in sources.items():
        pick = [paths[i] for i in rng.choice(len(paths), min(per_source, len(paths)), replace=False)]
        several = [p for p in pick if several_cells(Image.open(p)) >= 2]
        empty = [p for p in pick if no_cell(Image.open(p))]
        refused = sorted(set(several) | set(empty))
        out[name] = {
            "images": len(pick),
            "refused": len(refused),
            "share_refused": len(refused) / len(pick),
            "refused_as_several": len(several),
            "refused_as_no_cell": len(empty),
            "examples": [Path(p).name for p in refused[:5]],
        }
    caught = sum(several_cells(sheet(sources["matek"], 2 + t % 8, 125, rng)) >= 2 for t in range(tiles))  # 2..9 cells
    out["tiles_2_to_9_cells"] = {"tiles": tiles, "caught": caught, "share_caught": caught / tiles}
    return out


def bench_learnt_guard(predictor, per_source: int = 200, sheets: int = 100, seed: int = 0) -> dict:
    """The model's own check (:mod:`bmc.serve.guard`) with the stain guard before it, as the app runs them, on
    single cells the model never trained on (its test split, two other labs) and on sheets of its test images."""
    from bmc.data import scan_pbc
    from bmc.splits import read_resolved_manifest
    from bmc.train.guard import tiles

    rng = np.random.default_rng(seed)
    test = [r["source"] for r in read_resolved_manifest(Path(predictor.name) / "split_manifest.csv") if r["split"] == "test"]
    sources = {
        "model's test split (Matek + PBC)": test,
        "pbc-external": [p for p, _ in scan_pbc(SHARED / "pbc-external")[0]],
        "bccd-crops": [str(p) for p in CROPS.rglob("*.jpg")],
    }

    def refused(images: list) -> tuple[np.ndarray, np.ndarray]:
        stain = np.array([several_cells(im) >= 2 or no_cell(im) for im in images])
        return stain, stain | predictor.guard.refuses(predictor.forward(images)[1])

    out: dict = {}
    for name, paths in sources.items():
        pick = [paths[i] for i in rng.choice(len(paths), min(per_source, len(paths)), replace=False)]
        stain, both = refused([Image.open(p).convert("RGB") for p in pick])
        out[name] = {"images": len(pick), "refused_by_stain_guard": int(stain.sum()), "refused_by_either": int(both.sum())}
        out[name]["share_refused"] = out[name]["refused_by_either"] / len(pick)
    stain, both = refused(tiles(test, sheets, rng))
    out["sheets_of_2_to_9_test_cells"] = {
        "sheets": sheets,
        "caught_by_stain_guard": int(stain.sum()),
        "caught_by_either": int(both.sum()),
        "share_caught": float(both.mean()),
    }
    return out


def main(argv: list[str] | None = None) -> int:
    from bmc.constants import DEFAULT_MODEL
    from bmc.serve.predictor import Predictor

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "locate.json")
    parser.add_argument("--no-classify", action="store_true", help="locator and guard only")
    parser.add_argument("--guard-only", action="store_true", help="the single-cell guards only (the locator figures in --out are kept)")
    parser.add_argument("--fields-only", action="store_true", help="the locator and its end-to-end figures only (the guards' are kept)")
    args = parser.parse_args(argv)
    predictor = None if args.no_classify or args.guard_only else Predictor(args.model)
    kept = json.loads(args.out.read_text()) if args.out.is_file() else {}
    if args.fields_only:
        args.out.write_text(json.dumps({**kept, "locator": bench_locator(predictor), "model": str(args.model)}, indent=2) + "\n")
        print(args.out.read_text())
        return 0
    if args.guard_only:  # the locator's figures already written stay as they are
        result = {**kept, "guard": bench_guard()}
    else:
        result = {"locator": bench_locator(predictor), "guard": bench_guard(), "model": None if args.no_classify else str(args.model)}
    if predictor is not None and predictor.guard is not None:
        result["learnt_guard"] = bench_learnt_guard(predictor)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
