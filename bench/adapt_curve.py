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
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.review import cached_forward, load_set  # noqa: E402
from bmc.calibration import softmax  # noqa: E402
from bmc.evaluation import counts_right  # noqa: E402
from bmc.lab_model import LAB_WEIGHT, PULL, adapt_head, replay_records  # noqa: E402
from bmc.metrics import classification_metrics  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
PER_CLASS = (5, 10, 20)
DRAWS = 5


def main(argv: list[str] | None = None) -> int:
    from bmc.constants import DEFAULT_MODEL
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
    parser.add_argument("--per-class", type=int, nargs="+", default=list(PER_CLASS), help="labelled cells per class")
    parser.add_argument("--draws", type=int, default=DRAWS, help="draws (seeds 0..N-1) per number of cells")
    parser.add_argument("--pull", type=float, default=PULL, help="L2 pull towards the original head (bmc.lab_model.PULL)")
    parser.add_argument("--lab-weight", type=float, default=LAB_WEIGHT, help="weight of a lab cell against a replayed image")
    parser.add_argument("--features", type=Path, default=ROOT / ".cache" / "adapt", help="folder of cached embeddings")
    args = parser.parse_args(argv)

    predictor = Predictor(args.model, backend="torch")
    head = predictor.model.classifier
    weight, bias = head.weight.detach().numpy(), head.bias.detach().numpy()
    codes = predictor.codes
    _, lab_x, lab_y, lab_eq = cached_forward(predictor, args.features / "lab.npz", lambda: load_set(args.lab, codes, None, None))
    lab_codes = [codes[i] for i in lab_y]
    replay = replay_records(Path(args.model), codes)
    _, replay_x, replay_y, _ = cached_forward(
        predictor,
        args.features / "replay.npz",
        lambda: ([Image.open(p).convert("RGB") for p, _ in replay], np.array([codes.index(c) for _, c in replay]), None),
    )
    replay_codes = [codes[i] for i in replay_y]
    manifest = Path(args.model) / "split_manifest.csv"
    test_logits, test_x, test_y, _ = cached_forward(
        predictor, args.features / f"matek-{args.split}.npz", lambda: load_set(manifest, codes, args.split, "bone-marrow-cells")
    )
    before = classification_metrics(softmax(test_logits), test_y, num_classes=len(predictor.codes))["macro_f1"]
    lab_codes_arr = np.array(lab_codes)
    results: dict = {
        "model": str(args.model),
        "lab": str(args.lab),
        "n_lab": len(lab_codes),
        "forgetting_split": args.split,
        "pull": args.pull,
        "lab_weight": args.lab_weight,
        "matek_macro_f1_before": before,
        "runs": [],
    }
    for k in args.per_class:
        for seed in range(args.draws):
            rng = np.random.default_rng(seed)
            picked = np.concatenate([rng.permutation(np.nonzero(lab_codes_arr == c)[0])[:k] for c in sorted(set(lab_codes))])
            rest = np.setdiff1d(np.arange(len(lab_codes)), picked)
            t0 = time.perf_counter()
            result = adapt_head(
                codes,
                weight,
                bias,
                lab_x[picked],
                [lab_codes[i] for i in picked],
                replay_x,
                replay_codes,
                pull=args.pull,
                lab_weight=args.lab_weight,
            )
            seconds = time.perf_counter() - t0
            predicted = np.array(result.codes)[(lab_x[rest] @ result.weight.T + result.bias).argmax(axis=1)]
            truth = lab_codes_arr[rest]
            right = counts_right(predicted, truth, lab_eq)  # BCCD's neutrophils are unsplit: a band call counts
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
    for k in args.per_class:
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
