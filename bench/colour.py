"""Zero-shot accuracy per laboratory, before any review, for models and input colour views (issue 33).

    python bench/colour.py --models models/bmc-dinov2s-matek-pbc13 runs/experiment-pbc13-colour/export \\
        --out docs/colour/zero-shot.json

For each model and each *view* of the input it measures, on sets of four laboratories:

* ``matek-test``: the model's own Matek test split (its split manifest), macro-F1 and accuracy;
* ``pbc-external``: PBC's external test set (CellaVision, Barcelona), accuracy;
* ``bccd``: BCCD's white-cell crops (a low-end camera, another stain), accuracy;
* ``zheng2018-ds2``: Zheng et al. 2018's 60 white cells (another CellaVision lab), accuracy.

A neutrophil of a set that does not split band from segmented counts as right either way (as ``bmc evaluate``).
Views: ``plain`` (the image as given to bmc's predictor, which applies the model folder's own colour
canonicalisation when it has one, ``--colour_standardise``), ``reinhard`` (each image's CIE-Lab mean and spread
mapped onto the model's marrow training images' average, :func:`bmc.transforms.lab_standardise`, at test time
only), ``background`` (each image white-balanced so that its background, the lightest quarter of its pixels, has
the marrow training images' background colour: one shift for the whole image, whatever share of the frame the cell
fills) and ``raw-pipeline`` (a model with a stored colour reference run without it: what a plain ``pipeline()``
that is not given :class:`bmc.transforms.CanonicalColourProcessor` sees) and ``macenko`` (each image re-stained with the
marrow training images' two stain vectors, Macenko et al. 2009's stain-vector normalisation, before the model's own
canonicalisation). ``--sets validation`` adds the model's validation split of every training lab (``validation-matek``,
``validation-pbc``: one lab's): a test-time view is chosen there, as a training recipe is. With several views, each
set is also taken as one count and the view of highest mean calibrated confidence named (``surest_view``): the
count-level choice among views issue 33 lists, which needs no labels. Every figure has a 95 % bootstrap
interval (1,000 resamples of the set's images). These are reporting sets: the recipe is chosen on validation
(``bmc compare --validation``), never by this table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from bench.review import load_set  # noqa: E402
from bmc.calibration import softmax  # noqa: E402
from bmc.metrics import classification_metrics  # noqa: E402
from bmc.splits import read_resolved_manifest  # noqa: E402
from bmc.train.evaluation import counts_right  # noqa: E402
from bmc.transforms import (  # noqa: E402
    anchored_standardise,
    clear_colour_reference,
    colour_reference,
    lab_anchors,
    lab_standardise,
    lab_statistics,
)

SHARED = ROOT.parent / "shared" / "data"
SETS = {
    "pbc-external": SHARED / "pbc-external",
    "bccd": SHARED / "external-wbc" / "bccd",
    "zheng2018-ds2": SHARED / "external-wbc" / "zheng2018-ds2",
}
VALIDATION_LABS = {"validation": None, "validation-matek": "bone-marrow-cells", "validation-pbc": "pbc-train"}
"""``--sets`` of the model's validation split: every training lab's images, or one lab's (one count each)."""
VIEWS = ("plain", "reinhard", "background", "anchored", "raw-pipeline", "macenko")
BACKGROUND_PERCENTILE = 75
"""The ``background`` view reads the lightest quarter of an image's pixels (by Lab lightness) as its slide
background: plasma and glass, present in every crop however much of it the cell fills."""
REFERENCE_IMAGES = 300
"""Marrow training images whose average Lab statistics are the ``reinhard`` view's target."""


def marrow_training_images(model_dir: Path, n: int = REFERENCE_IMAGES, seed: int = 0) -> list[Image.Image]:
    """``n`` of the model's marrow *training* images (its split manifest), drawn with ``seed``."""
    rows = [r for r in read_resolved_manifest(model_dir / "split_manifest.csv") if r["split"] == "train"]
    marrow = [r for r in rows if r.get("domain") == rows[0].get("domain")]
    picked = np.random.default_rng(seed).choice(len(marrow), min(n, len(marrow)), replace=False)
    return [Image.open(marrow[i]["source"]).convert("RGB") for i in picked]


def reference_statistics(model_dir: Path, n: int = REFERENCE_IMAGES, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Average per-image Lab mean and spread of ``n`` of the model's marrow training images."""
    stats = [lab_statistics(np.asarray(im)) for im in marrow_training_images(model_dir, n, seed)]
    return np.mean([m for m, _ in stats], axis=0), np.mean([s for _, s in stats], axis=0)


def background_statistics(rgb: np.ndarray) -> np.ndarray:
    """Lab mean of the lightest pixels of an image (:data:`BACKGROUND_PERCENTILE`): the colour of its background."""
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB).reshape(-1, 3).astype(np.float32)
    return lab[lab[:, 0] >= np.percentile(lab[:, 0], BACKGROUND_PERCENTILE)].mean(axis=0)


def white_balance(rgb: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """The image with its background brought to ``reference`` (Lab): lightness scaled, a and b shifted, the same
    for every pixel, so a cell keeps its colours relative to its own slide whatever share of the frame it fills."""
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB).astype(np.float32)
    own = background_statistics(rgb)
    lab[..., 0] *= reference[0] / max(float(own[0]), 1.0)
    lab[..., 1:] += reference[1:] - own[1:]
    return cv2.cvtColor(np.clip(lab, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)


OD_BACKGROUND = 0.15
"""Macenko et al. 2009: pixels whose optical density is below this in any channel are background (glass, plasma)."""


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """Pixels × 3: −log of the light each channel lets through (Beer-Lambert), the space stains add up in."""
    return -np.log((rgb.reshape(-1, 3).astype(np.float64) + 1.0) / 255.0)


def stain_vectors(rgb: np.ndarray, alpha: float = 1.0, density: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """Macenko et al. 2009's two stain vectors of an image (optical density, 3×2: the nuclear azure/methylene-blue
    stain first, the one that absorbs red light most against green) and each stain's 99th-percentile amount; None
    when too few pixels are stained. For May-Grünwald-Giemsa the two are the blue-purple and the pink (eosin) dyes.
    ``density``: the image's :func:`optical_density`, when the caller has it already."""
    density = optical_density(rgb) if density is None else density
    stained = density[(density > OD_BACKGROUND).all(axis=1)]
    if len(stained) < 50:
        return None
    plane = np.linalg.eigh(np.cov(stained.T))[1][:, 1:3]
    angle = np.arctan2(*(stained @ plane).T[::-1])
    ends = [plane @ np.array([np.cos(a), np.sin(a)]) for a in np.percentile(angle, [alpha, 100 - alpha])]
    ends = [v * (np.sign(v.sum()) or 1.0) / np.linalg.norm(v) for v in ends]
    ends.sort(key=lambda v: -v[0] / max(v[1], 1e-6))
    vectors = np.stack(ends, axis=1)
    amounts = np.linalg.lstsq(vectors, stained.T, rcond=None)[0]
    return vectors, np.percentile(amounts, 99, axis=1)


def macenko(rgb: np.ndarray, reference: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """The image re-stained with ``reference``'s stain vectors and amounts (Macenko et al. 2009's normalisation);
    unchanged when its own stains cannot be estimated."""
    density = optical_density(rgb)
    own = stain_vectors(rgb, density=density)
    if own is None:
        return rgb
    amounts = np.linalg.lstsq(own[0], density.T, rcond=None)[0] * (reference[1] / np.maximum(own[1], 1e-6))[:, None]
    out = 255.0 * np.exp(-(reference[0] @ amounts)) - 1.0
    return np.clip(out.T.reshape(rgb.shape), 0, 255).astype(np.uint8)


def reference_stains(model_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The marrow training images' average stain vectors (normalised) and median stain amounts."""
    found = [v for v in (stain_vectors(np.asarray(im)) for im in marrow_training_images(model_dir)) if v is not None]
    vectors = np.mean([v for v, _ in found], axis=0)
    return vectors / np.linalg.norm(vectors, axis=0), np.median([a for _, a in found], axis=0)


def bootstrap(right: np.ndarray, n: int = 1000, seed: int = 0) -> list[float]:
    """95 % percentile interval of the mean of ``right`` over ``n`` resamples."""
    rng = np.random.default_rng(seed)
    means = [right[rng.integers(0, len(right), len(right))].mean() for _ in range(n)]
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def measure(predictor: object, images: list, truth: np.ndarray, equivalents: dict | None) -> dict:
    """Accuracy (with its interval) and macro-F1 of one set."""
    logits = predictor.logits(images)  # type: ignore[attr-defined]
    codes = predictor.codes  # type: ignore[attr-defined]
    called = np.array(codes)[logits.argmax(axis=1)]
    right = counts_right(called, np.array(codes)[truth], equivalents)
    macro_f1 = classification_metrics(softmax(logits), truth, num_classes=len(codes))["macro_f1"]
    confidence = softmax(logits, getattr(predictor, "temperature", 1.0)).max(axis=1)  # calibrated, as the app shows it
    return {
        "n": len(truth),
        "accuracy": float(right.mean()),
        "accuracy_ci": bootstrap(right),
        "macro_f1": float(macro_f1),
        "mean_confidence": float(confidence.mean()),
    }


def surest_views(sets: dict) -> dict:
    """Per set taken as one count, the view with the highest mean calibrated confidence (no labels needed: what a
    count-level choice among input views would pick, issue 33) and that view's accuracy."""
    out = {}
    for name, views in sets.items():
        if len(views) > 1:
            view = max(views, key=lambda v: views[v]["mean_confidence"])
            out[name] = {"view": view, "accuracy": views[view]["accuracy"], "mean_confidence": views[view]["mean_confidence"]}
    return out


def measure_model(model_dir: Path, sets: list[str], views: list[str]) -> dict:
    """Every set in every view for one model folder."""
    from bmc.serve.predictor import Predictor

    predictor = Predictor(str(model_dir), backend="torch")
    out: dict = {"sets": {}}
    if "reinhard" in views:
        reference = reference_statistics(model_dir)
        out.update(reference_lab_mean=reference[0].tolist(), reference_lab_std=reference[1].tolist())
    if "background" in views:
        backdrop = np.mean([background_statistics(np.asarray(im)) for im in marrow_training_images(model_dir)], axis=0)
        out.update(reference_background_lab=backdrop.tolist())
    if "macenko" in views:
        stains = reference_stains(model_dir)
        out.update(reference_stain_vectors=stains[0].tolist(), reference_stain_amounts=stains[1].tolist())
    if "anchored" in views:
        pairs = [lab_anchors(np.asarray(im)) for im in marrow_training_images(model_dir)]
        anchors = np.mean([d for d, _ in pairs], axis=0), np.mean([b for _, b in pairs], axis=0)
        out.update(reference_dark_lab=anchors[0].tolist(), reference_bright_lab=anchors[1].tolist())
    for name in sets:
        if name == "matek-test":
            images, truth, eq = load_set(model_dir / "split_manifest.csv", predictor.codes, "test", "bone-marrow-cells")
        elif name.startswith("validation"):  # the training labs' validation images: the split a view may be chosen by
            lab = VALIDATION_LABS[name]
            images, truth, eq = load_set(model_dir / "split_manifest.csv", predictor.codes, "validation", lab)
        else:
            images, truth, eq = load_set(SETS[name], predictor.codes, None, None)
        out["sets"][name] = {}
        for view in views:
            if view == "raw-pipeline" and colour_reference(predictor.processor) is None:
                continue  # the same as plain for a model that takes colours as given
            shown = images
            if view == "reinhard":
                shown = [Image.fromarray(lab_standardise(np.asarray(im), *reference)) for im in images]
            elif view == "anchored":
                shown = [Image.fromarray(anchored_standardise(np.asarray(im), *anchors)) for im in images]
            elif view == "macenko":
                shown = [Image.fromarray(macenko(np.asarray(im), stains)) for im in images]
            elif view == "background":
                shown = [Image.fromarray(white_balance(np.asarray(im), backdrop)) for im in images]
            stored = clear_colour_reference(predictor.processor) if view == "raw-pipeline" else {}
            try:
                out["sets"][name][view] = measure(predictor, shown, truth, eq)
            finally:
                for key, value in stored.items():
                    setattr(predictor.processor, key, value)
            print(f"{model_dir.name} {name} {view}: {out['sets'][name][view]}", flush=True)
    out["surest_view"] = surest_views(out["sets"])
    return out


def markdown(results: dict) -> str:
    """One row per model and view, one column per set (accuracy; Matek test also macro-F1)."""
    sets = list(next(iter(results.values()))["sets"])
    head = "| model | view | " + " | ".join(sets) + " |\n|---|---|" + "---|" * len(sets) + "\n"
    rows = []
    for model, res in results.items():
        for view in next(iter(res["sets"].values())):
            cells = []
            for set_name in sets:
                m = res["sets"][set_name].get(view)
                if m is None:
                    cells.append("—")
                    continue
                lo, hi = m["accuracy_ci"]
                extra = f", macro-F1 {m['macro_f1']:.3f}" if set_name in ("matek-test", *VALIDATION_LABS) else ""
                cells.append(f"{m['accuracy']:.1%} [{lo:.1%}, {hi:.1%}] ({m['n']}){extra}")
            name = Path(model).parent.name if Path(model).name == "export" else Path(model).name
            rows.append(f"| `{name}` | {view} | " + " | ".join(cells) + " |")
        if res.get("surest_view"):
            picks = [res["surest_view"].get(s) for s in sets]
            shown = [f"{p['view']}: {p['accuracy']:.1%}" if p else "—" for p in picks]
            rows.append(f"| `{name}` | surest view per count | " + " | ".join(shown) + " |")
    return head + "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", type=Path, required=True, help="model folders (with their split_manifest.csv)")
    parser.add_argument("--sets", nargs="+", default=["matek-test", *SETS], choices=[*VALIDATION_LABS, "matek-test", *SETS])
    parser.add_argument("--views", nargs="+", default=list(VIEWS), choices=VIEWS)
    parser.add_argument("--out", type=Path, required=True, help="JSON of every figure; the markdown table is printed")
    parser.add_argument(
        "--card-before",
        type=Path,
        default=None,
        help="an earlier --out JSON of the model this one replaces: also write the model folder's zero_shot_labs.json "
        "(plain view, before and after), which its card shows (one model only)",
    )
    args = parser.parse_args(argv)
    if args.card_before and (len(args.models) != 1 or not args.card_before.is_file()):
        parser.error("--card-before needs one model and an existing JSON written by this script")
    needs_manifest = bool({"matek-test", *VALIDATION_LABS} & set(args.sets) or {"reinhard", "macenko"} & set(args.views))
    missing = [str(m) for m in args.models if not (m / ("split_manifest.csv" if needs_manifest else "config.json")).is_file()]
    if missing:
        what = "with its split_manifest.csv (the validation and matek-test sets, reinhard and macenko need it)" if needs_manifest else ""
        parser.error(f"not a trained model folder {what}: {', '.join(missing)}")
    results = {str(m): measure_model(m, args.sets, args.views) for m in args.models}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))
    if args.card_before:
        write_card_file(args.models[0], results[str(args.models[0])], json.loads(args.card_before.read_text()), args.card_before)
    return 0


def write_card_file(model: Path, after: dict, earlier: dict, earlier_file: Path) -> None:
    """The model folder's ``zero_shot_labs.json``: per set, the plain view of the model it replaces and its own."""
    before_path, before = next(iter(earlier.items()))
    before_name = f"{Path(before_path).name} as measured in {earlier_file}"
    rows = {
        name: {"before": before["sets"].get(name, {}).get("plain"), "after": views["plain"]}
        for name, views in after["sets"].items()
        if "plain" in views
    }
    card = {"before_model": before_name, "sets": rows, "measured_by": "bench/colour.py (views: plain)"}
    (model / "zero_shot_labs.json").write_text(json.dumps(card, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
