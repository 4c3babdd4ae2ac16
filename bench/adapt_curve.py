"""Learning curve of ``bmc adapt`` on a lab the model never saw (BCCD): k labelled cells per class, the rest to measure.

    python bench/adapt_curve.py --out docs/review/adapt-bccd.json            # 5, 10, 20 cells per class, 5 draws each

For each k and draw (seeds 0-4) it takes k cells per BCCD class (all of a class with fewer: BCCD has 3
basophils), adapts the bundled model's head exactly as ``bmc adapt`` does (:func:`bmc.lab_model.adapt_head`,
with the same replay of its training images), and measures accuracy on BCCD's *other* cells (a neutrophil
called band or segmented counts as right, as in ``bmc evaluate``) and macro-F1 on the Matek test split
before and after (what it forgot). BCCD is a test set: it is split here for this lab-adaptation
experiment only, never to train the bundled model or choose its recipe. The embeddings come from one
forward pass per image (cached with ``--features``), so the curve is the head's, as ``bmc adapt`` fits it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bmc.calibration import softmax  # noqa: E402
from bmc.lab_model import adapt_head, replay_records  # noqa: E402
from bmc.metrics import classification_metrics  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
PER_CLASS = (5, 10, 20)
DRAWS = 5


def embed(predictor, cells: Path | None, records: list[tuple[str, str]] | None, cache: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Logits, embeddings and codes of a labelled folder or of (path, code) records; cached per model version."""
    from PIL import Image

    from bmc.data import resolve_source
    from bmc.evaluation import load_labelled

    if cache.is_file():
        c = np.load(cache, allow_pickle=False)
        if str(c["version"]) == predictor.version:
            return c["logits"], c["embeddings"], [str(x) for x in c["codes"]]
    if cells is not None:
        ds, _excluded, _eq = load_labelled(cells, predictor.codes)
        images = [im.convert("RGB") for im in ds["image"]]
        codes = [predictor.codes[i] for i in ds["label"]]
    else:
        images = [Image.open(resolve_source(p)).convert("RGB") for p, _ in records]
        codes = [c for _, c in records]
    logits, emb = predictor.forward(images)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, logits=logits, embeddings=emb, codes=np.array(codes), version=predictor.version)
    return logits, emb, codes


def main(argv: list[str] | None = None) -> int:
    from bmc.constants import DEFAULT_MODEL
    from bmc.data import read_manifest
    from bmc.inference import Predictor

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--lab", type=Path, default=SHARED / "external-wbc" / "bccd")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--split",
        choices=["test", "validation"],
        default="test",
        help="the base model's split that measures forgetting (validation: to choose the method's settings)",
    )
    parser.add_argument("--features", type=Path, default=ROOT / ".cache" / "adapt", help="folder of cached embeddings")
    args = parser.parse_args(argv)

    predictor = Predictor(args.model, backend="torch")
    head = predictor.model.classifier
    weight, bias = head.weight.detach().numpy(), head.bias.detach().numpy()
    _, lab_x, lab_codes = embed(predictor, args.lab, None, args.features / "lab.npz")
    _, replay_x, replay_codes = embed(predictor, None, replay_records(Path(args.model), predictor.codes), args.features / "replay.npz")
    rows = [
        r
        for r in read_manifest(Path(args.model) / "split_manifest.csv")
        if r["split"] == args.split and r.get("domain") == "bone-marrow-cells"
    ]
    test_logits, test_x, test_codes = embed(
        predictor, None, [(r["source"], r["label"]) for r in rows], args.features / f"matek-{args.split}.npz"
    )
    test_y = np.array([predictor.codes.index(c) for c in test_codes])
    before = classification_metrics(softmax(test_logits), test_y, num_classes=len(predictor.codes))["macro_f1"]
    lab_codes_arr = np.array(lab_codes)
    results: dict = {
        "model": str(args.model),
        "lab": str(args.lab),
        "n_lab": len(lab_codes),
        "forgetting_split": args.split,
        "matek_macro_f1_before": before,
        "runs": [],
    }
    for k in PER_CLASS:
        for seed in range(DRAWS):
            rng = np.random.default_rng(seed)
            picked = np.concatenate([rng.permutation(np.nonzero(lab_codes_arr == c)[0])[:k] for c in sorted(set(lab_codes))])
            rest = np.setdiff1d(np.arange(len(lab_codes)), picked)
            t0 = time.perf_counter()
            result = adapt_head(predictor.codes, weight, bias, lab_x[picked], [lab_codes[i] for i in picked], replay_x, replay_codes)
            seconds = time.perf_counter() - t0
            predicted = np.array(result.codes)[(lab_x[rest] @ result.weight.T + result.bias).argmax(axis=1)]
            truth = lab_codes_arr[rest]
            right = (predicted == truth) | ((predicted == "NGB") & (truth == "NGS"))  # BCCD neutrophils are unsplit
            after = classification_metrics(softmax(test_x @ result.weight.T + result.bias), test_y, num_classes=len(result.codes))
            results["runs"].append(
                {
                    "per_class": k,
                    "seed": seed,
                    "n_labelled": len(picked),
                    "lab_other_accuracy": float(right.mean()),
                    "lab_out_of_fold_accuracy": result.lab_figures["accuracy"],
                    "matek_macro_f1_after": after["macro_f1"],
                    "fit_s": seconds,
                }
            )
            print(json.dumps(results["runs"][-1]), flush=True)
    summary = {}
    for k in PER_CLASS:
        runs = [r for r in results["runs"] if r["per_class"] == k]
        summary[str(k)] = {
            key: [float(np.mean([r[key] for r in runs])), float(np.std([r[key] for r in runs]))]
            for key in ("lab_other_accuracy", "lab_out_of_fold_accuracy", "matek_macro_f1_after", "fit_s")
        }
    results["summary"] = summary
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
