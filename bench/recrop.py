"""Would the field locator's cell-centred, scale-normalised crop help single-cell images too? (issue 21, item 2)

    python bench/recrop.py --out docs/comparison/recrop-bmc-dinov2s-matek-pbc13.json

Each single-cell image is classified as it is and as :func:`bmc.locate.finder.crop` frames it: the found cell nearest the
picture's centre, centred, filling :data:`bmc.locate.finder.CROP_FILL` of a square (a picture where no cell is found is
kept as it is). Accuracy and macro-F1 both ways, with the paired bootstrap interval of the macro-F1 difference.
The decision is taken on the validation split of the model's own manifest (Matek and PBC validation images);
the external sets (BCCD crops, ``pbc-external``) are reported, never used to choose.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.tta import model_and_manifest  # noqa: E402
from bmc.calibration import softmax  # noqa: E402
from bmc.locate.finder import crop, find_cells  # noqa: E402
from bmc.metrics import classification_metrics, paired_macro_f1_difference  # noqa: E402
from bmc.serve.predictor import predict_logits  # noqa: E402
from bmc.train.evaluation import counts_right, dataset_from_manifest, load_labelled  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"


def recrop(image: Image.Image) -> Image.Image:
    """The picture as the field locator would crop its most central cell (unchanged when no cell is found)."""
    boxes = find_cells(image).boxes
    if not boxes:
        return image
    cx, cy = image.width / 2, image.height / 2
    central = min(boxes, key=lambda b: np.hypot((b.x0 + b.x1) / 2 - cx, (b.y0 + b.y1) / 2 - cy))
    return crop(image, central)


def measure(model, processor, images: list, labels: list[int], codes: list[str], equivalents: dict | None) -> dict:
    plain = predict_logits(model, processor, images)
    framed = predict_logits(model, processor, [recrop(im) for im in images])
    names = np.asarray(codes)
    out = {"images": len(labels)}
    for name, logits in (("as_given", plain), ("recropped", framed)):
        right = counts_right(names[logits.argmax(1)], names[np.asarray(labels)], equivalents)
        out[name] = {
            "accuracy": float(right.mean()),
            "macro_f1": classification_metrics(softmax(logits), labels, len(codes))["macro_f1"],
        }
    diff, lo, hi = paired_macro_f1_difference(labels, plain.argmax(1), framed.argmax(1), len(codes))
    out["macro_f1_difference_95ci"] = [diff, lo, hi]
    return out


def main(argv: list[str] | None = None) -> int:
    args, model, processor, codes, rows = model_and_manifest(__doc__, argv)
    result: dict = {"model": str(args.model), "decide_on": "validation", "sets": {}}
    for domain in dict.fromkeys(r["domain"] for r in rows):
        val = dataset_from_manifest([r for r in rows if r["split"] == "validation" and r["domain"] == domain], codes)
        result["sets"][f"validation:{domain}"] = measure(
            model, processor, [im.convert("RGB") for im in val["image"]], val["label"], codes, None
        )
        print(domain, result["sets"][f"validation:{domain}"], flush=True)
    for name, folder in (("pbc-external", SHARED / "pbc-external"), ("bccd", SHARED / "external-wbc" / "bccd")):
        ds, _excluded, equivalents = load_labelled(folder, codes)
        result["sets"][name] = measure(model, processor, [im.convert("RGB") for im in ds["image"]], ds["label"], codes, equivalents)
        print(name, result["sets"][name], flush=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
