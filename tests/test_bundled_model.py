"""The bundled default model: its card must tell the truth, and its explanations must make sense."""

import json
import re

import numpy as np
import pytest
import torch
from helpers import BUNDLED, UNSEEN, matek_images
from PIL import Image

from bmc.calibration import softmax
from bmc.data import from_records
from bmc.metrics import classification_metrics
from bmc.model_folder import MODEL_FOLDER_FILES, read_manifest
from bmc.serve.explain import Explainer
from bmc.serve.faithfulness import centre_vs_border
from bmc.serve.predictor import Predictor, dataset_logits
from bmc.splits import image_number


@pytest.fixture(scope="module")
def predictor(shared_data):
    return Predictor(str(BUNDLED))


@pytest.fixture(scope="module")
def metrics():
    return json.loads((BUNDLED / "metrics.json").read_text())


def test_bundled_folder_is_small_safe_and_complete():
    files = {p.name for p in BUNDLED.iterdir()}
    assert set(MODEL_FOLDER_FILES) <= files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl"))]
    assert sum(p.stat().st_size for p in BUNDLED.iterdir()) < 50 * 1024 * 1024


def test_card_figures_match_a_fresh_evaluation_of_the_test_split(predictor, metrics):
    rows = [r for r in read_manifest(BUNDLED / "split_manifest.csv") if r["split"] == "test"]
    assert len(rows) == metrics["test"]["n_images"]
    ds = from_records([(r["source"], r["label"]) for r in rows], metrics["classes"])
    logits, labels = dataset_logits(predictor.model, predictor.processor, ds, batch_size=64)
    fresh = classification_metrics(softmax(logits, predictor.temperature), labels, len(metrics["classes"]))
    for key in ("accuracy", "macro_f1", "balanced_accuracy", "top2_accuracy", "ece"):
        assert fresh[key] == pytest.approx(metrics["test"][key], abs=1e-4), key
    assert fresh["confusion_matrix"] == metrics["test"]["confusion_matrix"]
    card = (BUNDLED / "README.md").read_text()
    assert f"| {100 * fresh['accuracy']:.1f} % | {fresh['macro_f1']:.3f} |" in card
    assert re.search(rf"value: {round(fresh['macro_f1'], 4)}\b", card)


def test_test_split_is_disjoint_from_training_and_blockwise(metrics):
    rows = read_manifest(BUNDLED / "split_manifest.csv")
    by_split = {s: {r["source"] for r in rows if r["split"] == s} for s in ("train", "validation", "test")}
    assert not (by_split["train"] & by_split["test"]) and not (by_split["validation"] & by_split["test"])
    blocks = {}
    for r in rows:  # Matek numbers run per slide: whole blocks per split (PBC numbers are ids, split at random)
        if r.get("domain", "bone-marrow-cells") == "bone-marrow-cells":
            key = (r["label"], (image_number(r["source"]) - 1) // metrics["data"]["split_block_size"])
            blocks.setdefault(key, set()).add(r["split"])
    assert blocks and all(len(s) == 1 for s in blocks.values())


def test_per_source_figures_in_the_card_match_a_fresh_evaluation(predictor, metrics):
    by_domain = metrics["test"].get("by_domain")
    if not by_domain:
        pytest.skip("the bundled model was trained on one source")
    rows = [r for r in read_manifest(BUNDLED / "split_manifest.csv") if r["split"] == "test"]
    card = (BUNDLED / "README.md").read_text()
    for domain, expected in by_domain.items():
        mine = [r for r in rows if r["domain"] == domain]
        ds = from_records([(r["source"], r["label"]) for r in mine], metrics["classes"])
        logits, labels = dataset_logits(predictor.model, predictor.processor, ds, batch_size=64)
        fresh = classification_metrics(softmax(logits, predictor.temperature), labels, len(metrics["classes"]))
        assert fresh["macro_f1"] == pytest.approx(expected["macro_f1"], abs=1e-4), domain
        assert f"test split, `{domain}` images only | {len(mine)} | {100 * fresh['accuracy']:.1f} % | {fresh['macro_f1']:.3f} |" in card


def test_card_warns_about_classes_learnt_from_one_source_and_shows_the_external_confusion(metrics):
    card = (BUNDLED / "README.md").read_text()
    rows = read_manifest(BUNDLED / "split_manifest.csv")
    marrow = {r["label"] for r in rows if r["split"] == "train" and r.get("domain", "bone-marrow-cells") == "bone-marrow-cells"}
    elsewhere = [c for c in metrics["classes"] if c not in marrow]
    if elsewhere:
        assert f"**{', '.join(elsewhere)} were learnt from pbc-train images only**" in card
    for name in metrics.get("external", {}):
        if "accuracy" not in metrics["external"]:  # one entry per external set
            assert (BUNDLED / f"confusion_matrix_{name}.png").is_file() and f"confusion_matrix_{name}.png" in card


def test_pipeline_loads_offline_in_float32_and_agrees_with_bmc(predictor):
    from transformers import pipeline

    from bmc.transforms import CanonicalColourProcessor, colour_reference

    processor = CanonicalColourProcessor.from_pretrained(str(BUNDLED))  # as the card says: the stored colour canonicalisation
    assert colour_reference(processor) is not None
    classify = pipeline("image-classification", model=str(BUNDLED), image_processor=processor)
    assert classify.model.dtype == torch.float32
    rows = [r for r in read_manifest(BUNDLED / "split_manifest.csv") if r["split"] == "test" and r["label"] in ("EOS", "NGS", "LYT")]
    rows = rows[:: max(1, len(rows) // 9)][:9]
    top = [classify(r["source"])[0]["label"] for r in rows]
    ours = [p.top_code for p in predictor.predict([Image.open(r["source"]).convert("RGB") for r in rows])]
    assert top == ours  # same preprocessing, and calibration keeps the ranking
    assert sum(t == r["label"] for t, r in zip(top, rows)) >= 6  # held-out cells of the three most reliable classes


@pytest.mark.parametrize("method", ["Grad-CAM", "Occlusion"])
def test_attribution_sits_on_the_cell_not_the_border(predictor, method):
    explainer = Explainer(predictor.model, predictor.processor)
    wins = 0
    cells = [p for code in ("EOS", "LYT", "NGS", "MON") for p in matek_images(code, 2)]
    for path in cells:
        heat = explainer.explain(Image.open(path).convert("RGB"), method).heatmap
        centre, border = centre_vs_border(heat)
        wins += centre > border
    assert wins >= 0.75 * len(cells), f"{method}: centre above border on only {wins}/{len(cells)} cells"


def test_unfamiliar_cell_types_get_lower_confidence(predictor):
    unknown = [p for p in sorted(UNSEEN.glob("*.jpg")) if p.name.split("_")[0] not in predictor.codes]
    assert unknown
    images = [Image.open(p).convert("RGB") for p in unknown]
    preds = predictor.predict(images)
    seen_conf = np.mean(
        [
            p.confidence
            for p in predictor.predict(
                [Image.open(p).convert("RGB") for code in ("EOS", "LYT", "NGS") for p in matek_images(code, 300)[-4:]]
            )
        ]
    )
    unseen_conf = np.mean([p.confidence for p in preds])
    # Honest, weak claim: unfamiliar types get lower confidence on average than familiar ones.
    assert unseen_conf < seen_conf
