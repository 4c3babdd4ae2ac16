"""Flip test-time augmentation, measured on a model's validation split (issue 19: adopt only if it pays its cost).

    python bench/tta.py --model models/bmc-dinov2s-matek-pbc13 --out docs/comparison/tta.json

Each validation image is classified as it is and mirrored (left-right, and top-bottom: a cell has no up or
down), the logits averaged; macro-F1 with and without, the paired bootstrap interval of the difference
(:func:`bmc.metrics.paired_macro_f1_difference`) and the extra time per image. Validation only: a test set is
for reporting, not for choosing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from PIL import ImageOps

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bmc.calibration import softmax  # noqa: E402
from bmc.metrics import classification_metrics, paired_macro_f1_difference  # noqa: E402
from bmc.model import class_codes, load_classifier  # noqa: E402
from bmc.serve.predictor import predict_logits  # noqa: E402
from bmc.splits import read_resolved_manifest  # noqa: E402
from bmc.train.evaluation import dataset_from_manifest  # noqa: E402


def model_and_manifest(doc: str | None, argv: list[str] | None) -> tuple[argparse.Namespace, Any, Any, list[str], list[dict]]:
    """``--model`` and ``--out`` of a validation bench (this one, ``bench/recrop.py``): the parsed arguments, the
    model, its processor, its classes and its split manifest's rows."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "bmc-dinov2s-matek-pbc13")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    model, processor = load_classifier(str(args.model))
    return args, model, processor, class_codes(model), read_resolved_manifest(args.model / "split_manifest.csv")


def main(argv: list[str] | None = None) -> int:
    args, model, processor, codes, rows = model_and_manifest(__doc__, argv)
    val = dataset_from_manifest([r for r in rows if r["split"] == "validation"], codes)
    images = [im.convert("RGB") for im in val["image"]]
    labels = val["label"]
    t0 = time.perf_counter()
    plain = predict_logits(model, processor, images)
    t_plain = time.perf_counter() - t0
    t0 = time.perf_counter()
    views = [plain]
    for flip in (ImageOps.mirror, ImageOps.flip):
        views.append(predict_logits(model, processor, [flip(im) for im in images]))
    t_tta = time.perf_counter() - t0 + t_plain
    tta = sum(views) / len(views)
    pred_a, pred_b = plain.argmax(1), tta.argmax(1)
    diff, lo, hi = paired_macro_f1_difference(labels, pred_a, pred_b, len(codes))
    result = {
        "model": str(args.model),
        "validation_images": len(labels),
        "macro_f1_plain": classification_metrics(softmax(plain), labels, len(codes))["macro_f1"],
        "macro_f1_flip_tta": classification_metrics(softmax(tta), labels, len(codes))["macro_f1"],
        "difference_95ci": [diff, lo, hi],
        "seconds_per_image_plain": t_plain / len(labels),
        "seconds_per_image_tta": t_tta / len(labels),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
