"""Simulated review of a labelled set: how right is the whole count after a reviewer checks N % of its cells?

    python bench/review.py --model models/bmc-dinov2s-matek-pbc13 --cells ../shared/data/external-wbc/bccd --out bccd.json
    python bench/review.py --cells models/bmc-dinov2s-matek-pbc13/split_manifest.csv --split test \\
        --domain bone-marrow-cells --out matek-test.json                  # a split of the model's own manifest
    python bench/review.py --plot docs/review/curves.png docs/review/*.json   # the curves of several runs in one figure
    python bench/review.py --cells … --out F.json --wrong-at 20 --gallery wrong.png   # and the cells still wrong at 20 %

The reviewer checks the least confident cell first and always gives the true class; ``--step`` cells are
reviewed between two refits. Two curves, both counting reviewed cells as right:

* ``static``: plain review, the model's labels stand for every cell nobody checked;
* ``adaptive``: after every ``--step`` reviews the learning review (:func:`bmc.count.learning.relabel`)
  re-labels the unreviewed cells and the queue is re-ordered by the new labels' confidence.

Writes ``{"n", "static": {"0": acc, "5": …, "30": …}, "adaptive": {…}, "reviews_to_95": {…}}`` plus the
set, model and timing. ``--cells`` is a labelled folder (class folders named by Matek code or name, or by
white-cell name in any case, singular or plural, or shortened as LISC's ``neut``; or the PBC layout) or a
``split_manifest.csv`` with ``--split``. For sets whose neutrophils are not split (BCCD), a band call counts as
right for a neutrophil, as in ``bmc evaluate``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from bmc.calibration import softmax  # noqa: E402
from bmc.count.learning import relabel  # noqa: E402

LEVELS = (0, 5, 10, 15, 20, 30)
"""Percentages of the set reviewed at which the count's accuracy is reported."""
TARGET = 0.95


def load_set(cells: Path, codes: list[str], split: str | None, domain: str | None) -> tuple[list, np.ndarray, dict[str, str] | None]:
    """Images, true class indices and class equivalents of a labelled folder or of a manifest split."""
    from bmc.splits import read_resolved_manifest
    from bmc.train.evaluation import dataset_from_manifest, load_labelled

    if cells.suffix == ".csv":
        if not split:
            raise SystemExit("--cells is a manifest: give --split (train, validation or test)")
        rows = [
            r
            for r in read_resolved_manifest(cells)
            if r["split"] == split and (not domain or r.get("domain") == domain) and r["label"] in codes
        ]
        ds, equivalents = dataset_from_manifest(rows, codes), None
    else:
        ds, excluded, equivalents = load_labelled(cells, codes)
        if excluded:  # classes the model lacks, unreadable files: said once, not silently dropped
            print(f"{cells}: left out {', '.join(f'{k} {v}' for k, v in excluded.items())} (a class the model lacks, or unreadable)")
    if not len(ds):
        raise SystemExit(f"{cells}: no labelled image of a class this model knows")
    images = [im.convert("RGB") for im in ds["image"]]
    return images, np.asarray(ds["label"]), equivalents


def right(labels: np.ndarray, truth: np.ndarray, codes: list[str], equivalents: dict[str, str] | None) -> np.ndarray:
    """Per cell, whether class index ``labels`` is right (:func:`bmc.train.evaluation.counts_right` on the codes)."""
    from bmc.train.evaluation import counts_right

    names = np.asarray(codes)
    return counts_right(names[labels], names[truth], equivalents)


def cached_forward(
    predictor: Any,
    cache: Path | None,
    load: Callable[[], tuple[list, np.ndarray, dict[str, str] | None]],
    forward: Callable[[list], tuple[np.ndarray, np.ndarray]] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, str] | None]:
    """Logits, embeddings, true class indices and class equivalents of a set: from ``cache`` (.npz) when it holds
    this model version's pass, else one forward pass over ``load()``'s images, written to ``cache``. ``forward``
    (default ``predictor.forward``) may return other features in place of the embeddings (bench/adapt_curve.py)."""
    cached = np.load(cache, allow_pickle=False) if cache and cache.is_file() else None
    fields = {"logits", "embeddings", "truth", "equivalents", "version"}
    if cached is not None and fields <= set(cached.files) and str(cached["version"]) == predictor.version:
        return cached["logits"], cached["embeddings"], cached["truth"], json.loads(str(cached["equivalents"])) or None
    images, truth, equivalents = load()
    logits, embeddings = (forward or predictor.forward)(images)
    if cache:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(
            cache, logits=logits, embeddings=embeddings, truth=truth, equivalents=json.dumps(equivalents or {}), version=predictor.version
        )
    return logits, embeddings, truth, equivalents


def at_levels(n: int) -> dict[str, int]:
    """How many reviewed cells each reported percentage is."""
    return {str(p): int(round(p * n / 100)) for p in LEVELS}


def review_order(confidence: np.ndarray, reviewed: dict[int, int]) -> list[int]:
    """The cells a reviewer has not checked yet, least sure (under the count's current labels) first."""
    return [int(i) for i in np.argsort(confidence, kind="stable") if int(i) not in reviewed]


def simulate_static(probs: np.ndarray, truth: np.ndarray, ok: np.ndarray) -> tuple[dict[str, float], int]:
    """Plain review, least confident first: accuracy at each level and reviews until ``TARGET``."""
    n = len(truth)
    order = np.argsort(probs.max(axis=1), kind="stable")
    wrong_left = (~ok[order])[::-1].cumsum()[::-1]  # wrong cells among those from position i on
    acc_after = np.append(1.0 - wrong_left / n, 1.0)  # accuracy after reviewing i cells, i = 0..n
    curve = {level: float(acc_after[k]) for level, k in at_levels(n).items()}
    return curve, int(np.nonzero(acc_after >= TARGET)[0][0])


def simulate_adaptive(
    logits: np.ndarray,
    embeddings: np.ndarray,
    truth: np.ndarray,
    predictor: Any,
    codes: list[str],
    equivalents: dict[str, str] | None,
    step: int,
    wrong_at: str | None = None,
) -> tuple[dict[str, float], int | None, list[float], list[dict[str, Any]]]:
    """Learning review: refit after every ``step`` reviews (and at each reported level); returns the curve,
    the reviews until ``TARGET`` (None if never; counted review by review, as a review between two refits
    makes its own cell right), the refit times in seconds and the cells still wrong when ``wrong_at`` (a
    reported level, e.g. "20") per cent of the set is reviewed: index, true class, label and its confidence."""
    n = len(truth)
    targets = sorted(set(at_levels(n).values()))
    reviewed: dict[int, int] = {}
    curve: dict[int, float] = {}
    to_95, times, wrong = None, [], []
    while True:
        t0 = time.perf_counter()
        state = relabel(logits, embeddings, reviewed, predictor.temperature, predictor.threshold, predictor.validation_flagged)
        times.append(time.perf_counter() - t0)
        ok = right(state.labels, truth, codes, equivalents)
        curve[len(reviewed)] = float(ok.mean())
        if wrong_at is not None and len(reviewed) == at_levels(n)[wrong_at]:
            wrong = [
                {"index": int(i), "truth": codes[truth[i]], "label": codes[state.labels[i]], "confidence": float(state.confidence[i])}
                for i in np.nonzero(~ok)[0]
            ]
        if len(reviewed) >= n or (to_95 is not None and len(reviewed) >= targets[-1]):
            break
        nxt = min([t for t in targets if t > len(reviewed)] + [len(reviewed) + step])
        for i in review_order(state.confidence, reviewed)[: nxt - len(reviewed)]:
            if to_95 is None and ok.mean() >= TARGET:
                to_95 = len(reviewed)
            reviewed[i] = int(truth[i])
            ok[i] = True
        if to_95 is None and ok.mean() >= TARGET:
            to_95 = len(reviewed)
    return {level: curve[k] for level, k in at_levels(n).items()}, to_95, times, wrong


def gallery(out: Path, images: list, wrong: list[dict[str, Any]], columns: int = 10, side: int = 128) -> Path:
    """A contact sheet of the cells in ``wrong`` (from :func:`simulate_adaptive`), each captioned with its true
    class and the label the count gives it: what a reader needs to judge the errors that are left."""
    from PIL import Image, ImageDraw

    rows = max(1, -(-len(wrong) // columns))
    sheet = Image.new("RGB", (columns * side, rows * (side + 14)), "white")
    draw = ImageDraw.Draw(sheet)
    for k, cell in enumerate(wrong):
        x, y = (k % columns) * side, (k // columns) * (side + 14)
        sheet.paste(images[cell["index"]].convert("RGB").resize((side, side)), (x, y))
        draw.text((x + 2, y + side), f"{cell['truth']} -> {cell['label']} {cell['confidence']:.2f}", fill="black")
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out


def plot(out: Path, results: list[Path]) -> Path:
    """Static and adaptive curves of each result file, one panel per set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.6), squeeze=False)
    for ax, path in zip(axes[0], results):
        r = json.loads(path.read_text())
        for kind, style in (("static", "o--"), ("adaptive", "s-")):
            levels = sorted(r[kind], key=int)
            ax.plot(
                [int(k) for k in levels],
                [100 * r[kind][k] for k in levels],
                style,
                label={"static": "plain review", "adaptive": "learning review"}[kind],
            )
        ax.axhline(95, color="grey", lw=0.8, ls=":")
        ax.set_title(f"{path.stem} ({r['n']} cells)")
        ax.set_xlabel("% of cells reviewed (least sure first)")
        ax.set_ylabel("% of the count right")
        ax.set_ylim(30, 100)
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    from bmc.constants import DEFAULT_MODEL

    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "--plot":
        print(plot(Path(argv[1]), [Path(p) for p in argv[2:]]))
        return 0

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--cells", type=Path, required=True)
    parser.add_argument("--split", default=None, help="with a manifest: the split to review")
    parser.add_argument("--domain", default=None, help="with a manifest: only this source (e.g. bone-marrow-cells)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--step", type=int, default=10, help="cells reviewed between two refits")
    parser.add_argument(
        "--features",
        type=Path,
        default=None,
        help="cache of the set's logits and embeddings (.npz): read if it is of this model's weights, else written",
    )
    parser.add_argument(
        "--wrong-at", choices=[str(p) for p in LEVELS], default=None, help="also list the cells still wrong at this %% reviewed"
    )
    parser.add_argument("--gallery", type=Path, default=None, help="with --wrong-at: a contact sheet of those cells (.png)")
    args = parser.parse_args(argv)
    if args.gallery and not args.wrong_at:
        parser.error("--gallery needs --wrong-at")

    from bmc.serve.predictor import Predictor

    predictor = Predictor(str(args.model))
    codes = predictor.codes
    loaded = functools.cache(lambda: load_set(args.cells, codes, args.split, args.domain))  # read once, for the pass and the gallery
    logits, embeddings, truth, equivalents = cached_forward(predictor, args.features, loaded)
    probs = softmax(logits, predictor.temperature)
    ok = right(probs.argmax(axis=1), truth, codes, equivalents)
    static, static_95 = simulate_static(probs, truth, ok)
    adaptive, adaptive_95, times, wrong = simulate_adaptive(
        logits, embeddings, truth, predictor, codes, equivalents, args.step, args.wrong_at
    )
    result = {
        "n": int(len(truth)),
        "static": static,
        "adaptive": adaptive,
        "reviews_to_95": {"static": static_95, "adaptive": adaptive_95},
        "cells": str(args.cells),
        "split": args.split,
        "domain": args.domain,
        "model": str(args.model),
        "step": args.step,
        "refit_s_median": float(np.median(times)),
        "refits": len(times),
        "model_version": predictor.version,
    }
    if args.wrong_at:
        result["wrong_at"] = {"level": int(args.wrong_at), "cells": wrong}
    if args.gallery:
        print(gallery(args.gallery, loaded()[0], wrong))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("n", "static", "adaptive", "reviews_to_95")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
