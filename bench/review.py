"""Simulated review of a labelled set: how right is the whole count after a reviewer goes through N % of its cells?

    python bench/review.py --model models/bmc-dinov2s-matek-pbc13 --cells ../shared/data/external-wbc/bccd --out bccd.json
    python bench/review.py --cells models/bmc-dinov2s-matek-pbc13/split_manifest.csv --split test \\
        --domain bone-marrow-cells --out matek-test.json                  # a split of the model's own manifest
    python bench/review.py --cells … --reviewer corrections-only --features cache.npz --out F.json   # another reviewer
    python bench/review.py --plot docs/review/curves.png docs/review/*.json   # the curves of several runs in one figure
    python bench/review.py --table docs/review/reviewers/*.json               # their figures as a markdown table
    python bench/review.py --cells … --out F.json --wrong-at 20 --gallery wrong.png   # and the cells still wrong at 20 %
    python bench/review.py --cells … --half first --keep-sure 0.8 --out F.json   # a setting tried on one half of a set

The reviewer (``--reviewer``) always gives the true class of a cell it decides on:

* ``queue`` (default): the least sure cell under the count's current labels first, every cell it opens
  confirmed or relabelled (what the app's review queue asks for);
* ``corrections-only``: goes through the least sure cells in the same order but writes down only the cells whose
  label is wrong, and skips the right ones (a corrections CSV: its rows carry no ``reviewed`` marker, so the
  count holds them as corrections, not as cells seen; ``--corrections-as-seen`` measures the other choice);
* ``random``: opens the cells in a random order (``--seed``), confirming or relabelling each;
* ``by-class``: one predicted class at a time (the model's largest class first), least sure first within it.

``--step`` cells are gone through between two refits. Two curves, both counting reviewed cells as right:

* ``static``: plain review, the model's labels stand for every cell nobody reviewed;
* ``adaptive``: after every ``--step`` cells the learning review (:func:`bmc.count.learning.relabel`)
  re-labels the unreviewed cells (the queue reviewers then take the least sure cell under the new labels).

Writes ``{"n", "reviewer", "static": {"0": acc, "5": …, "30": …}, "adaptive": {…}, "reviews_to_95": {…}}`` plus
the set, model and timing; the levels are the share of the set the reviewer has gone through, and
``reviews_to_95`` the cells gone through until 95 % of the count is right (the learning review's is null when that
is not reached by the last level: it is simulated only that far). ``--cells`` is a
labelled folder (class folders named by Matek code or name, or by white-cell name in any case, singular or plural,
or shortened as LISC's ``neut``; or the PBC layout) or a ``split_manifest.csv`` with ``--split``. For sets whose
neutrophils are not split (BCCD), a band call counts as right for a neutrophil, as in ``bmc evaluate``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from bench.review_figures import gallery, plot, table  # noqa: E402
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


REVIEWERS = ("queue", "corrections-only", "random", "by-class")
"""The simulated reviewers (module docstring)."""


def review_order(confidence: np.ndarray, reviewed: Collection[int]) -> list[int]:
    """The cells a reviewer has not checked yet, least sure (under the count's current labels) first."""
    return [int(i) for i in np.argsort(confidence, kind="stable") if int(i) not in reviewed]


@dataclass
class Reviewer:
    """Who a simulated reviewer opens next and what it writes down (the kinds of :data:`REVIEWERS`)."""

    kind: str
    model_probs: np.ndarray
    seed: int = 0
    corrections_as_seen: bool = False
    """corrections-only: hand its corrections to the count as cells seen (an app that cannot tell a skip)."""

    @functools.cached_property
    def fixed_order(self) -> np.ndarray | None:
        """The order of the reviewers that do not follow the queue (random, by-class); None for the others."""
        if self.kind == "random":
            return np.random.default_rng(self.seed).permutation(len(self.model_probs))
        if self.kind == "by-class":
            said = self.model_probs.argmax(axis=1)
            rank = np.argsort(np.argsort(-np.bincount(said, minlength=self.model_probs.shape[1]), kind="stable"), kind="stable")
            return np.lexsort((self.model_probs.max(axis=1), rank[said]))
        return None

    def order(self, confidence: np.ndarray, visited: Collection[int]) -> list[int]:
        """The cells not gone through yet, in the order this reviewer takes them (``confidence``: current labels')."""
        if self.fixed_order is None:
            return review_order(confidence, visited)
        return [int(i) for i in self.fixed_order if int(i) not in visited]

    @property
    def writes_confirmations(self) -> bool:
        return self.kind != "corrections-only"

    @property
    def seen_evidence(self) -> bool:
        """Whether what it writes down is evidence the count may learn from (cells seen, not only corrected)."""
        return self.writes_confirmations or self.corrections_as_seen


def simulate_static(probs: np.ndarray, truth: np.ndarray, ok: np.ndarray, order: np.ndarray | None = None) -> tuple[dict[str, float], int]:
    """Plain review in ``order`` (default least confident first): accuracy at each level and cells gone through
    until ``TARGET``. Any reviewer leaves the cells it went through right (a right one confirmed or skipped)."""
    n = len(truth)
    order = np.argsort(probs.max(axis=1), kind="stable") if order is None else order
    wrong_left = (~ok[order])[::-1].cumsum()[::-1]  # wrong cells among those from position i on
    acc_after = np.append(1.0 - wrong_left / n, 1.0)  # accuracy after going through i cells, i = 0..n
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
    reviewer: Reviewer | None = None,
) -> tuple[dict[str, float], int | None, list[float], list[dict[str, Any]]]:
    """Learning review: refit after every ``step`` cells gone through (and at each reported level); returns the
    curve, the cells gone through until ``TARGET`` (None if not by the last level; counted cell by cell, as a review
    between two refits makes its own cell right), the refit times in seconds and the cells still wrong when ``wrong_at`` (a
    reported level, e.g. "20") per cent of the set is gone through: index, true class, label and its confidence."""
    n = len(truth)
    reviewer = reviewer or Reviewer("queue", softmax(logits, predictor.temperature))
    targets = sorted(set(at_levels(n).values()))
    reviewed: dict[int, int] = {}
    visited: set[int] = set()
    curve: dict[int, float] = {}
    to_95, times, wrong = None, [], []
    while True:
        t0 = time.perf_counter()
        seen = None if reviewer.seen_evidence else ()
        state = relabel(logits, embeddings, reviewed, predictor.temperature, predictor.threshold, predictor.validation_flagged, seen=seen)
        times.append(time.perf_counter() - t0)
        ok = right(state.labels, truth, codes, equivalents)
        curve[len(visited)] = float(ok.mean())
        if wrong_at is not None and len(visited) == at_levels(n)[wrong_at]:
            wrong = [
                {"index": int(i), "truth": codes[truth[i]], "label": codes[state.labels[i]], "confidence": float(state.confidence[i])}
                for i in np.nonzero(~ok)[0]
            ]
        if len(visited) >= targets[-1]:  # the last level: past it a refit per step costs minutes on a large set
            break
        nxt = min([t for t in targets if t > len(visited)] + [len(visited) + step])
        for i in reviewer.order(state.confidence, visited)[: nxt - len(visited)]:
            if to_95 is None and ok.mean() >= TARGET:
                to_95 = len(visited)
            visited.add(i)
            if reviewer.writes_confirmations or not ok[i]:
                reviewed[i] = int(truth[i])
            ok[i] = True
        if to_95 is None and ok.mean() >= TARGET:
            to_95 = len(visited)
    return {level: curve[k] for level, k in at_levels(n).items()}, to_95, times, wrong


def _parser() -> argparse.ArgumentParser:
    from bmc.constants import DEFAULT_MODEL

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--cells", type=Path, required=True)
    parser.add_argument("--split", default=None, help="with a manifest: the split to review")
    parser.add_argument("--domain", default=None, help="with a manifest: only this source (e.g. bone-marrow-cells)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--step", type=int, default=10, help="cells gone through between two refits")
    parser.add_argument("--reviewer", choices=REVIEWERS, default="queue", help="who reviews (module docstring)")
    parser.add_argument("--seed", type=int, default=0, help="--reviewer random: the order's seed")
    parser.add_argument(
        "--corrections-as-seen",
        action="store_true",
        help="--reviewer corrections-only: hand the corrections to the count as cells seen (the choice not made; to measure it)",
    )
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
    parser.add_argument(
        "--half",
        choices=("first", "second"),
        default=None,
        help="review only one half of the set, drawn with --half-seed (to choose a setting on one half and judge it on the other)",
    )
    parser.add_argument("--half-seed", type=int, default=33)
    parser.add_argument(
        "--keep-sure", type=float, default=None, help="bmc.count.learning.KEEP_SURE for this run (to measure other settings)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "--plot":
        print(plot(Path(argv[1]), [Path(p) for p in argv[2:]]))
        return 0
    if argv and argv[0] == "--table":
        print(table([Path(p) for p in argv[1:]], LEVELS))
        return 0
    parser = _parser()
    args = parser.parse_args(argv)
    if args.gallery and not args.wrong_at:
        parser.error("--gallery needs --wrong-at")
    if args.gallery and args.half:
        parser.error("--gallery shows cells of the whole set: leave out --half")
    if args.keep_sure is not None:
        import bmc.count.learning

        bmc.count.learning.KEEP_SURE = args.keep_sure

    from bmc.serve.predictor import Predictor

    predictor = Predictor(str(args.model))
    codes = predictor.codes
    loaded = functools.cache(lambda: load_set(args.cells, codes, args.split, args.domain))  # read once, for the pass and the gallery
    logits, embeddings, truth, equivalents = cached_forward(predictor, args.features, loaded)
    if args.half:
        order = np.random.default_rng(args.half_seed).permutation(len(truth))
        keep = order[: len(order) // 2] if args.half == "first" else order[len(order) // 2 :]
        logits, embeddings, truth = logits[keep], embeddings[keep], truth[keep]
    probs = softmax(logits, predictor.temperature)
    ok = right(probs.argmax(axis=1), truth, codes, equivalents)
    reviewer = Reviewer(args.reviewer, probs, args.seed, args.corrections_as_seen)
    static, static_95 = simulate_static(probs, truth, ok, reviewer.fixed_order)
    adaptive, adaptive_95, times, wrong = simulate_adaptive(
        logits, embeddings, truth, predictor, codes, equivalents, args.step, args.wrong_at, reviewer
    )
    result = {
        "n": int(len(truth)),
        "reviewer": args.reviewer,
        "static": static,
        "adaptive": adaptive,
        "reviews_to_95": {"static": static_95, "adaptive": adaptive_95},
        "cells": str(args.cells),
        "split": args.split,
        "domain": args.domain,
        "model": str(args.model),
        "step": args.step,
        "seed": args.seed if args.reviewer == "random" else None,
        "corrections_as_seen": args.corrections_as_seen if args.reviewer == "corrections-only" else None,
        "refit_s_median": float(np.median(times)),
        "refits": len(times),
        "model_version": predictor.version,
        "half": None if args.half is None else {"half": args.half, "seed": args.half_seed},
        "keep_sure": args.keep_sure,
    }
    if args.wrong_at:
        result["wrong_at"] = {"level": int(args.wrong_at), "cells": wrong}
    if args.gallery:
        print(gallery(args.gallery, loaded()[0], wrong))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("n", "reviewer", "static", "adaptive", "reviews_to_95")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
