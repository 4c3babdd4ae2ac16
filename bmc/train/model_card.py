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
from bmc.constants import ROBUSTNESS_AUGMENTATIONS
from bmc.data import domain_name
from bmc.model_folder import read_manifest
from bmc.train.evaluation import confusion_figure, external_results

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


ZERO_SHOT_FILE = "zero_shot_labs.json"
"""bench/colour.py's before/after zero-shot accuracy per laboratory (``--card-before``), if the folder has one."""


def _optional_table(model_dir: Path, name: str, key: str) -> dict[str, Any] | None:
    """A benchmark's JSON beside the model (``name``), when it holds a non-empty ``key`` table; else None."""
    path = model_dir / name
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return data if isinstance(data.get(key), dict) and data[key] else None


def colour_method_name(model_args: dict) -> str | None:
    """The run's ``--colour_standardise`` (old runs recorded ``true`` for Reinhard), or None for raw colours."""
    value = model_args.get("colour_standardise")
    if value is True:
        return "reinhard"
    return value if value and value != "none" else None


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
        "extra_steps": optional_training_steps(metrics["model_args"]),
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
        "attribution": _optional_table(model_dir, ATTRIBUTION_FILE, "methods"),
        "zero_shot": _optional_table(model_dir, ZERO_SHOT_FILE, "sets"),
        "colour": colour_method_name(metrics["model_args"]),
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


def recorded_augment(model_args: dict) -> list[str] | None:
    """The robustness augmentations a run used: ``--augment`` when recorded; all three for the runs of
    issue 11 made before the flag existed (recognised by ``balance``); ``None`` for older runs, which
    had none of them."""
    if "augment" in model_args:
        return list(model_args["augment"])
    return list(ROBUSTNESS_AUGMENTATIONS) if "balance" in model_args else None


def optional_training_steps(model_args: dict) -> list[str]:
    """The card's words for the training changes a run named beyond the default recipe (``--augment`` options off
    by default, the colour-consistency term, MixStyle), so that a card never hides how its model was trained."""
    from bmc.train.augmentation import GREY_P, RESTYLE_P, ZOOM_IN_P

    augment = model_args.get("augment") or []
    steps = [
        f"each image's CIE-Lab mean and spread moved onto a random laboratory's ({RESTYLE_P[name]:.0%} of the images, `{name}`)"
        for name in RESTYLE_P
        if name in augment
    ]
    if "grey" in augment:
        steps.append(f"{GREY_P:.0%} of the images in grey")
    if "zoom_in" in augment:
        steps.append(f"a centred zoom-in ({ZOOM_IN_P:.0%} of the images)")
    if "camera" in augment:
        steps.append("a low-end camera's look (strong blur or defocus, JPEG artefacts, sensor noise)")
    if model_args.get("colour_consistency"):
        steps.append(
            f"a colour-consistency term (weight {model_args['colour_consistency']}): each image also seen in a random "
            "laboratory's colours, its prediction pulled towards the image's own"
        )
    if model_args.get("mixstyle_blocks"):
        blocks = ", ".join(str(b) for b in model_args["mixstyle_blocks"])
        steps.append(
            f"MixStyle after blocks {blocks} (per-channel feature statistics mixed between the images of "
            f"{model_args.get('mixstyle_p', 0.5):.0%} of the batches)"
        )
    return steps
