"""Two models per laboratory, combined without labels (issue 33): which of them a count should use.

    python bench/colour_choice.py runs/experiment-pbc13-colour-finish/export \\
        runs/experiment-pbc13-lab-standardise-finish/export --cache runs/colour-logits --out docs/colour/choice.json

Each model's logits on the four labs' sets of ``bench/colour.py`` (cached in ``--cache``), then accuracy per set
(Matek test also macro-F1) for: each model alone (``A``, ``B``), their averaged probabilities (``average``), the
surer of the two per image (``surest-image``) and, per set taken as one count, the model whose mean top
probability over the count is higher (``surest-count``: a choice a count can make before anyone reviews, from
the images alone). The sets are reporting sets; a rule judged here is still to be judged on labs not in ``../shared``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from bench.colour import SETS  # noqa: E402
from bench.review import load_set  # noqa: E402
from bmc.calibration import softmax  # noqa: E402
from bmc.metrics import classification_metrics  # noqa: E402
from bmc.train.evaluation import counts_right  # noqa: E402

SET_NAMES = ("matek-test", *SETS)


def model_name(model: Path) -> str:
    return model.parent.name if model.name == "export" else model.name


def set_probs(model: Path, cache: Path) -> dict[str, dict]:
    """Per set: calibrated probabilities, true class indices, class codes and equivalents (cached as .npz)."""
    out: dict[str, dict] = {}
    predictor = None
    for name in SET_NAMES:
        path = cache / f"{model_name(model)}--{name}.npz"
        if not path.is_file():
            from bmc.serve.predictor import Predictor

            predictor = predictor or Predictor(str(model), backend="torch")
            where = (model / "split_manifest.csv", "test", "bone-marrow-cells") if name == "matek-test" else (SETS[name], None, None)
            images, truth, eq = load_set(where[0], predictor.codes, where[1], where[2])
            cache.mkdir(parents=True, exist_ok=True)
            np.savez(
                path,
                logits=predictor.logits(images),
                truth=truth,
                codes=np.array(predictor.codes),
                T=predictor.temperature,
                eq=json.dumps(eq or {}),
            )
        data = np.load(path)
        out[name] = {
            "probs": softmax(data["logits"], float(data["T"])),
            "truth": data["truth"],
            "codes": [str(c) for c in data["codes"]],
            "eq": json.loads(str(data["eq"])) or None,
        }
    return out


def combined(pa: np.ndarray, pb: np.ndarray) -> dict[str, np.ndarray]:
    """The ways of combining two models' probabilities of one count."""
    return {
        "A": pa,
        "B": pb,
        "average": (pa + pb) / 2,
        "surest-image": np.where((pa.max(1) >= pb.max(1))[:, None], pa, pb),
        "surest-count": pa if pa.max(1).mean() >= pb.max(1).mean() else pb,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs=2, type=Path, help="model folders A and B (same classes, same split manifest)")
    parser.add_argument("--cache", type=Path, default=Path("runs/colour-logits"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    a, b = (set_probs(m, args.cache) for m in args.models)
    results: dict = {"A": str(args.models[0]), "B": str(args.models[1]), "sets": {}}
    for name in SET_NAMES:
        if a[name]["codes"] != b[name]["codes"] or not np.array_equal(a[name]["truth"], b[name]["truth"]):
            parser.error(f"{name}: the two models do not see the same images with the same classes")
        codes, truth = np.array(a[name]["codes"]), a[name]["truth"]
        row = {}
        for way, probs in combined(a[name]["probs"], b[name]["probs"]).items():
            right = counts_right(codes[probs.argmax(1)], codes[truth], a[name]["eq"])
            row[way] = {
                "accuracy": float(right.mean()),
                "macro_f1": float(classification_metrics(probs, truth, num_classes=len(codes))["macro_f1"]),
            }
        results["sets"][name] = {"n": int(len(truth)), **row}
        print(name, " | ".join(f"{w} {r['accuracy']:.1%}" for w, r in row.items()), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
