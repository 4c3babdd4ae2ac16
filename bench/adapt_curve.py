"""Learning curve of ``bmc adapt`` on a lab the model never saw (BCCD): k labelled cells per class, the rest to measure.

    python bench/adapt_curve.py --out docs/review/adapt-bccd.json            # 5, 10, 20 cells per class, 5 draws each

For each k and draw (seeds 0-4) it takes k cells per BCCD class (all of a class with fewer: BCCD has 3
basophils), adapts the bundled model as ``bmc adapt`` does, with the same replay of its training images,
and measures accuracy on BCCD's *other* cells (a neutrophil called band or segmented counts as right, as
in ``bmc evaluate``) and macro-F1 on the Matek test split before and after (what it forgot). BCCD is a
test set: it is split here for this lab-adaptation experiment only, never to train the bundled model or
choose its recipe.

``--method blocks`` (what ``bmc adapt`` does for DINOv2 models): the last blocks are fine-tuned
(:func:`bmc.lab.tuning.tune`, the fit ``bmc adapt`` makes on all the lab's cells; its k-fold figures for
the card are left out here, as they cost two more fits per draw) on the tokens entering them, cached per
set in ``--features``. ``--method head``: the head-only refit (:func:`bmc.lab.adapt.adapt_head`, k-fold
included) on cached embeddings. ``--time-cli DIR`` also times the whole ``bmc adapt`` command on the
first k cells (largest k) of each class folder, linked into DIR.

``--from-review P`` measures ``bmc adapt`` on a reviewed count instead (``--method blocks``): each draw halves the
lab (seed 100 + draw); the first half is a count on which a reviewer checks P % of the cells, least sure first,
the learning review refitting after every review as in the app (:func:`bench.review.simulate_adaptive`'s rule);
the model is adapted on the reviewed cells alone and on them plus the cells whose labels the review learnt
(``bmc adapt --learnt``, each at :data:`bmc.count.learning.LEARNT_WEIGHT` or ``--learnt-weight``), and both are measured on the other half.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.review import cached_forward, load_set, review_order  # noqa: E402
from bmc.calibration import softmax  # noqa: E402
from bmc.count.learning import LEARNT_WEIGHT, SOURCE_LEARNT, SOURCE_REVIEWED, relabel  # noqa: E402
from bmc.lab.cells import REPLAY_PER_CLASS, replay_records  # noqa: E402
from bmc.lab.fitting import HEAD_LAB_WEIGHT, PULL, adapt_head  # noqa: E402
from bmc.lab.tuning import RECIPE, TuningConfig, as_given, block_inputs, first_tuned, lab_inputs, tune  # noqa: E402
from bmc.metrics import classification_metrics  # noqa: E402
from bmc.train.evaluation import counts_right  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
PER_CLASS = (5, 10, 20)
DRAWS = 5


def first_cells(lab: Path, per_class: int, folder: Path) -> Path:
    """The first ``per_class`` images of each class folder of ``lab``, linked into ``folder``/cells."""
    for class_dir in sorted(p for p in lab.iterdir() if p.is_dir()):
        (folder / "cells" / class_dir.name).mkdir(parents=True)
        for image in sorted(class_dir.iterdir())[:per_class]:
            (folder / "cells" / class_dir.name / image.name).symlink_to(image.resolve())
    return folder / "cells"


def class_folders(folder: Path, images: list, codes: list[str]) -> Path:
    """``images`` written as PNG (their decoded pixels) into class folders named by ``codes`` under ``folder``."""
    for i, (image, code) in enumerate(zip(images, codes)):
        (folder / code).mkdir(parents=True, exist_ok=True)
        image.save(folder / code / f"cell{i:04d}.png")
    return folder


def time_cli(model: str, cells: list[str], folder: Path) -> float:
    """Seconds of the whole ``bmc adapt MODEL CELLS... --out folder/model`` command."""
    import subprocess

    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "bmc", "adapt", model, *cells, "--out", str(folder / "model")], check=True)
    return time.perf_counter() - t0


def reviewed_count(
    logits: np.ndarray, embeddings: np.ndarray, truth: np.ndarray, predictor: Any, n_reviews: int
) -> tuple[np.ndarray, list[str]]:
    """A count's labels and their sources after a simulated learning review of ``n_reviews`` cells: the least sure
    cell under the current labels first, the true class given, a refit after every review (as the app does)."""
    reviewed: dict[int, int] = {}
    while True:
        state = relabel(logits, embeddings, reviewed, predictor.temperature, predictor.threshold, predictor.validation_flagged)
        if len(reviewed) >= min(n_reviews, len(truth)):
            return state.labels, state.source
        nxt = review_order(state.confidence, reviewed)[0]
        reviewed[nxt] = int(truth[nxt])


def draws(lab_codes: np.ndarray, per_class: list[int], n_draws: int, folds: int) -> list[tuple[int | str, int, np.ndarray]]:
    """The labelled cells of each adaptation: ``(k, seed, indices)`` for k cells per class and draws 0..n-1, or with
    ``folds`` the training part of each stratified fold (k "all", seed = fold), so every cell is measured once."""
    if folds:
        from sklearn.model_selection import StratifiedKFold

        split = StratifiedKFold(folds, shuffle=True, random_state=0).split(lab_codes, lab_codes)
        return [("all", fold, train) for fold, (train, _) in enumerate(split)]
    out: list[tuple[int | str, int, np.ndarray]] = []
    for k in per_class:
        for seed in range(n_draws):
            rng = np.random.default_rng(seed)
            out.append((k, seed, np.concatenate([rng.permutation(np.nonzero(lab_codes == c)[0])[:k] for c in sorted(set(lab_codes))])))
    return out


def build_parser() -> argparse.ArgumentParser:
    from bmc.constants import DEFAULT_MODEL

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--lab", type=Path, default=SHARED / "external-wbc" / "bccd")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--method", choices=["blocks", "head"], default="blocks", help="tune the last blocks (bmc adapt's way) or the head only"
    )
    parser.add_argument(
        "--split",
        choices=["test", "validation"],
        default="test",
        help="the base model's split that measures forgetting (validation: to choose the method's settings)",
    )
    parser.add_argument("--per-class", type=int, nargs="+", default=list(PER_CLASS), help="labelled cells per class")
    parser.add_argument("--draws", type=int, default=DRAWS, help="draws (seeds 0..N-1) per number of cells")
    parser.add_argument(
        "--folds",
        type=int,
        default=0,
        help="instead of k cells per class: stratified N-fold over all the lab's cells (each fold adapted on the others), "
        "what the method reaches with every label the lab has",
    )
    parser.add_argument("--pull", type=float, default=PULL, help="--method head: L2 pull towards the original head")
    parser.add_argument("--lab-weight", type=float, default=HEAD_LAB_WEIGHT, help="--method head: weight of a lab cell")
    parser.add_argument(
        "--replay-per-class", type=int, default=REPLAY_PER_CLASS, help="base training images per class replayed (bmc adapt's option)"
    )
    parser.add_argument("--features", type=Path, default=ROOT / ".cache" / "adapt", help="folder of cached passes")
    parser.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="NAME=VALUE",
        help="--method blocks: a setting of bmc.lab.tuning.TuningConfig for this run (e.g. distill_weight=10 epochs=3)",
    )
    parser.add_argument(
        "--from-review",
        type=float,
        default=None,
        metavar="P",
        help="adapt on a reviewed count instead: half the lab reviewed P %% (see above), reviewed cells alone vs with the learnt ones",
    )
    parser.add_argument(
        "--learnt-weight", type=float, default=LEARNT_WEIGHT, help="--from-review: weight of a learnt cell against a reviewed one"
    )
    parser.add_argument("--time-cli", type=Path, default=None, metavar="DIR", help="also time the whole bmc adapt command")
    return parser


def tuning_config(items: list[str]) -> tuple[TuningConfig, dict[str, Any]]:
    """``--set NAME=VALUE`` items as a :class:`TuningConfig` (names of its fields, any case) and the settings given."""
    fields = {f.name: f for f in dataclasses.fields(TuningConfig)}
    settings: dict[str, Any] = {}
    for item in items:
        name, _, value = item.partition("=")
        if name.lower() not in fields:
            raise ValueError(f"--set {item}: TuningConfig has no setting {name} (one of {', '.join(fields)})")
        settings[name.lower()] = type(getattr(RECIPE, name.lower()))(value)
    return dataclasses.replace(RECIPE, **settings), settings


def set_passes(args: argparse.Namespace, predictor: Any, config: TuningConfig) -> tuple[dict[str, tuple], str, dict]:
    """The cached passes of the lab, the replay and the Matek split: (logits, features, truth, equivalents) per set,
    features being the tokens entering the tuned blocks (``--method blocks``) or the embeddings (``head``)."""
    codes = predictor.codes
    replay = replay_records(Path(args.model), codes, args.replay_per_class)
    replay_set = "replay" if args.replay_per_class == REPLAY_PER_CLASS else f"replay{args.replay_per_class}"  # its own cache
    loaders = {
        "lab": lambda: load_set(args.lab, codes, None, None),
        replay_set: lambda: ([Image.open(p).convert("RGB") for p, _ in replay], np.array([codes.index(c) for _, c in replay]), None),
        f"matek-{args.split}": lambda: load_set(Path(args.model) / "split_manifest.csv", codes, args.split, "bone-marrow-cells"),
    }

    def block_pass(images: list) -> tuple[np.ndarray, np.ndarray]:
        """The model's logits and the tokens entering its tuned blocks (float16), in place of the embeddings."""
        hidden, logits = block_inputs(predictor.model, predictor.processor, images, predictor.use_denoise, config=config)
        return logits, hidden.numpy()

    def lab_pass(images: list) -> tuple[np.ndarray, np.ndarray]:
        """The tokens of the lab's cells in ``config.lab_views`` orientations (no logits needed)."""
        views = lab_inputs(predictor.model, predictor.processor, images, predictor.use_denoise, config)
        return np.zeros((len(images), 0), np.float32), views.numpy()

    suffix = "" if args.method == "head" else f"-block{first_tuned(predictor.model, config)}"
    forward = None if args.method == "head" else block_pass
    passes = {
        name: cached_forward(predictor, args.features / f"{name}{suffix}.npz", load, forward)
        for name, load in loaders.items()
        if name != "lab" or args.method == "head" or config.lab_views == 1
    }
    if "lab" not in passes:  # the lab's cells in several orientations, cached apart
        passes["lab"] = cached_forward(predictor, args.features / f"lab{suffix}-views{config.lab_views}.npz", loaders["lab"], lab_pass)
    return passes, replay_set, loaders


def from_review_runs(args: argparse.Namespace, predictor: Any, sets: dict, loaders: dict, config: TuningConfig, results: dict) -> None:
    """``--from-review``: per draw, half the lab reviewed P % by the learning review, the model adapted on the reviewed
    cells alone and with the learnt ones, both measured on the other half (and the Matek split)."""
    codes = predictor.codes
    lab_x, lab_y, lab_eq, lab_codes = sets["lab"]
    replay_x, replay_logits, test_x, test_y = sets["replay"]
    count_logits, count_emb, _, _ = cached_forward(predictor, args.features / "lab-embeddings.npz", loaders["lab"])
    results.update(from_review=args.from_review, learnt_weight=args.learnt_weight)
    timed = None
    for seed in range(args.draws):
        order = np.random.default_rng(100 + seed).permutation(len(lab_codes))
        count, other = np.sort(order[: len(order) // 2]), np.sort(order[len(order) // 2 :])
        n_reviews = int(round(args.from_review * len(count) / 100))
        labels, source = reviewed_count(count_logits[count], count_emb[count], lab_y[count], predictor, n_reviews)
        is_reviewed = np.array([s == SOURCE_REVIEWED for s in source])
        is_learnt = np.array([s == SOURCE_LEARNT for s in source])
        if timed is None:  # the first draw's count times the command
            timed = (count, labels, is_reviewed, is_learnt)
        drawn: dict[str, Any] = {"seed": seed, "count": len(count), "reviewed": int(is_reviewed.sum()), "learnt": int(is_learnt.sum())}
        drawn["count_accuracy"] = float(counts_right(np.array(codes)[labels], lab_codes[count], lab_eq).mean())
        for name, use in (("reviewed_only", is_reviewed), ("with_learnt", is_reviewed | is_learnt)):
            weights = np.where(is_reviewed[use], 1.0, args.learnt_weight)
            tail = tune(predictor.model, len(codes), lab_x[count[use]], labels[use], replay_x, replay_logits, seed, weights, config)
            called = np.array(codes)[tail.logits(as_given(lab_x[other])).argmax(axis=1)]
            after = classification_metrics(softmax(tail.logits(test_x)), test_y, num_classes=len(codes))
            drawn[name] = {
                "lab_other_accuracy": float(counts_right(called, lab_codes[other], lab_eq).mean()),
                "matek_macro_f1_after": after["macro_f1"],
            }
        results["runs"].append(drawn)
        print(json.dumps(drawn), flush=True)
    if args.time_cli and timed:
        count, labels, is_reviewed, is_learnt = timed
        images, names = loaders["lab"]()[0], np.array(codes)[labels]
        shutil.rmtree(args.time_cli, ignore_errors=True)
        folders = [
            class_folders(args.time_cli / sub, [images[i] for i in count[mask]], list(names[mask]))
            for sub, mask in (("reviewed-cells", is_reviewed), ("learnt-cells", is_learnt))
        ]
        seconds = time_cli(args.model, [str(folders[0]), "--learnt", str(folders[1])], args.time_cli)
        results["bmc_adapt_s"] = {"reviewed": int(is_reviewed.sum()), "learnt": int(is_learnt.sum()), "seconds": seconds}
        print(f"bmc adapt --learnt, whole command, first draw's count: {seconds:.0f} s", flush=True)
    results["summary"] = {
        name: {
            key: [float(np.mean([r[name][key] for r in results["runs"]])), float(np.std([r[name][key] for r in results["runs"]]))]
            for key in ("lab_other_accuracy", "matek_macro_f1_after")
        }
        for name in ("reviewed_only", "with_learnt")
    }


def draw_runs(args: argparse.Namespace, predictor: Any, sets: dict, config: TuningConfig, results: dict) -> None:
    """k labelled cells per class (or folds), adapted and measured on the lab's other cells and the Matek split."""
    codes = predictor.codes
    lab_x, lab_y, lab_eq, lab_codes = sets["lab"]
    replay_x, replay_logits, test_x, test_y = sets["replay"]
    replay_y = sets["replay_y"]
    for k, seed, picked in draws(lab_codes, args.per_class, args.draws, args.folds):
        rest = np.setdiff1d(np.arange(len(lab_codes)), picked)
        t0 = time.perf_counter()
        run: dict[str, Any] = {"per_class": k, "seed": seed, "n_labelled": len(picked)}
        if args.method == "head":
            head = predictor.model.classifier
            w, b = head.weight.detach().numpy(), head.bias.detach().numpy()
            result = adapt_head(
                codes,
                w,
                b,
                lab_x[picked],
                list(lab_codes[picked]),
                replay_x,
                [codes[i] for i in replay_y],
                pull=args.pull,
                lab_weight=args.lab_weight,
            )
            lab_logits = lab_x[rest] @ result.weight.T + result.bias
            after_logits = test_x @ result.weight.T + result.bias
            run["lab_out_of_fold_accuracy"] = result.lab_figures["accuracy"]
        else:
            tail = tune(predictor.model, len(codes), lab_x[picked], lab_y[picked], replay_x, replay_logits, seed, config=config)
            lab_logits, after_logits = tail.logits(as_given(lab_x[rest])), tail.logits(test_x)
        run["fit_s"] = time.perf_counter() - t0
        called = np.array(codes)[lab_logits.argmax(axis=1)]
        right = counts_right(called, lab_codes[rest], lab_eq)  # a band call counts for BCCD
        run["lab_other_accuracy"] = float(right.mean())
        mistakes = Counter(f"{t} as {c}" for t, c, ok in zip(lab_codes[rest], called, right) if not ok)
        run["lab_other_mistakes"] = dict(mistakes.most_common(5))  # which way the errors lean (true class as called)
        run["matek_macro_f1_after"] = classification_metrics(softmax(after_logits), test_y, num_classes=len(codes))["macro_f1"]
        results["runs"].append(run)
        print(json.dumps(run), flush=True)
    if args.time_cli:
        k = max(args.per_class)
        shutil.rmtree(args.time_cli, ignore_errors=True)
        cells = first_cells(args.lab, k, args.time_cli)
        results["bmc_adapt_s"] = {"per_class": k, "seconds": time_cli(args.model, [str(cells)], args.time_cli)}
        print(f"bmc adapt, whole command, {k} cells per class: {results['bmc_adapt_s']['seconds']:.0f} s", flush=True)
    summary = {}
    keys = ("lab_other_accuracy", "lab_out_of_fold_accuracy", "matek_macro_f1_after", "fit_s")
    for k in dict.fromkeys(r["per_class"] for r in results["runs"]):  # in the order run
        runs = [r for r in results["runs"] if r["per_class"] == k]
        summary[str(k)] = {
            key: [float(np.mean([r[key] for r in runs])), float(np.std([r[key] for r in runs]))] for key in keys if key in runs[0]
        }
    results["summary"] = summary


def main(argv: list[str] | None = None) -> int:
    from bmc.serve.predictor import Predictor

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config, settings = tuning_config(args.set)
    except ValueError as exc:
        parser.error(str(exc))
    if args.from_review is not None and args.method != "blocks":
        parser.error("--from-review measures bmc adapt's fine-tuning: --method blocks")
    predictor = Predictor(args.model, backend="torch")
    codes = predictor.codes
    passes, replay_set, loaders = set_passes(args, predictor, config)
    _, lab_x, lab_y, lab_eq = passes["lab"]
    replay_logits, replay_x, replay_y, _ = passes[replay_set]
    test_logits, test_x, test_y, _ = passes[f"matek-{args.split}"]
    if args.method == "blocks":
        lab_x, replay_x, test_x = (torch.from_numpy(x) for x in (lab_x, replay_x, test_x))
    lab_codes = np.array([codes[i] for i in lab_y])
    sets = {"lab": (lab_x, lab_y, lab_eq, lab_codes), "replay": (replay_x, replay_logits, test_x, test_y), "replay_y": replay_y}
    results: dict = {
        "model": str(args.model),
        "lab": str(args.lab),
        "method": args.method,
        "n_lab": len(lab_codes),
        "forgetting_split": args.split,
        "matek_macro_f1_before": classification_metrics(softmax(test_logits), test_y, num_classes=len(codes))["macro_f1"],
        "settings": settings,
        "replay_per_class": args.replay_per_class,
        "runs": [],
    }
    if args.method == "head":
        results.update(pull=args.pull, lab_weight=args.lab_weight)
    if args.from_review is not None:
        from_review_runs(args, predictor, sets, loaders, config, results)
    else:
        draw_runs(args, predictor, sets, config, results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results["summary"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
