"""Measuring saved weights: review flags, merged neutrophil classes, external sets in their own layouts."""

import json

import numpy as np
import pytest
from helpers import BCCD, image_bytes

from bmc.train.evaluation import (
    UNSPLIT_NEUTROPHIL,
    VALIDATION_PREDICTIONS,
    check_targets,
    external_results,
    load_wbc_external,
    metrics_from_logits,
    read_predictions,
    review_stats,
    training_sources,
)
from bmc.train.folder import evaluate_model_dir


def test_review_stats_count_flagged_cells_and_the_accuracy_of_the_rest():
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.55, 0.45]])
    labels = np.array([0, 1, 1, 0])
    stats = review_stats(probs, labels, threshold=0.7)  # cells 1 and 3 are below 0.7
    assert stats["flagged_share"] == 0.5 and stats["unflagged_accuracy"] == 1.0 and stats["n_unflagged"] == 2


def test_a_band_call_counts_as_right_for_a_set_that_does_not_split_neutrophils():
    codes = ["NGB", "NGS", "LYT"]
    logits = np.log(np.array([[0.7, 0.2, 0.1], [0.1, 0.2, 0.7]]))  # a neutrophil called "band", a lymphocyte
    labels = np.array([1, 2])
    assert metrics_from_logits(logits, labels, codes, 1.0)["accuracy"] == 0.5
    assert metrics_from_logits(logits, labels, codes, 1.0, UNSPLIT_NEUTROPHIL)["accuracy"] == 1.0


def test_white_cell_folders_map_to_matek_codes_and_unknown_ones_are_counted(tmp_path):
    for folder in ("Neutrophil", "Basophil", "Platelet"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "a_1.jpg").write_bytes(image_bytes())
    ds, excluded = load_wbc_external(tmp_path, ["NGS", "LYT"])
    assert [ds.features["label"].names[i] for i in ds["label"]] == ["NGS"]
    assert excluded == {"BAS": 1, "Platelet": 1}


def test_other_labs_white_cell_folder_names_are_understood():
    from bmc.labels import wbc_code

    # BCCD and Raabin-WBC (singular, any case), plurals, LISC's short names, and names that are not white-cell names.
    assert [wbc_code(n) for n in ("Neutrophil", "LYMPHOCYTES", " monocytes ", "eosi", "Baso", "neut")] == [
        "NGS",
        "LYT",
        "MON",
        "EOS",
        "BAS",
        "NGS",
    ]
    assert [wbc_code(n) for n in ("NGB", "Platelets", "Plasma cell")] == ["NGB", "Platelets", "Plasma cell"]


def test_the_bccd_set_is_read_as_class_folders_not_pbc(shared_data):
    from bmc.data import is_pbc_layout

    assert not is_pbc_layout(BCCD)
    ds, excluded = load_wbc_external(BCCD, ["NGS", "EOS", "LYT", "MON", "BAS"])
    names = ds.features["label"].names
    counts = {c: sum(names[i] == c for i in ds["label"]) for c in names}
    assert counts == {"NGS": 207, "EOS": 88, "LYT": 33, "MON": 20, "BAS": 3} and not excluded  # ../shared/data/README.md


def test_old_metrics_files_with_one_external_result_still_read():
    old = {"external": {"accuracy": 0.7, "source": "../shared/data/pbc-external"}}
    assert external_results(old) == {"pbc-external": old["external"]}
    new = {"external": {"bccd": {"accuracy": 0.6}}}
    assert external_results(new) == new["external"] and external_results({}) == {}


def test_evaluate_adds_an_external_set_to_a_model_folder_and_its_card(tiny_model_dir, tmp_path, shared_data):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    (model / "metrics.json").write_text(
        json.dumps(
            {
                "model_name": "tiny",
                "classes": ["BLA", "LYT", "NGS"],
                "base_model": "x",
                "base_model_source": "random",
                "hub_model_id": None,
                "data": {"train_dir": ["x/cells"], "split_mode": "random", "split_block_size": 50},
                "split_sizes": {},
                "skipped_files": 0,
                "model_args": {"image_size": 56, "denoise": False, "loss": "ce", "head_lr_multiplier": 1, "drop_path_rate": 0.1},
                "training": {
                    "learning_rate": 1e-4,
                    "num_train_epochs": 1,
                    "per_device_train_batch_size": 8,
                    "weight_decay": 0,
                    "warmup_steps": 0,
                    "lr_scheduler_type": "linear",
                    "label_smoothing_factor": 0,
                },
                "epochs_trained": 1,
                "n_parameters": 1,
                "calibration": {
                    "temperature": 1.0,
                    "review_threshold": 0.5,
                    "target_accuracy": 0.95,
                    "validation_coverage": 0.5,
                    "validation_accuracy_above_threshold": 0.96,
                },
            }
        )
    )
    # a model folder from before per-image validation predictions were kept: evaluate writes them from its manifest
    val = sorted((BCCD / "Lymphocyte").glob("*"))[:3] + sorted((BCCD / "Neutrophil").glob("*"))[:2]
    test = sorted((BCCD / "Lymphocyte").glob("*"))[3:5]  # no test figures yet (a soup's folder): measured and drawn
    from bmc.splits import write_manifest

    write_manifest(
        model / "split_manifest.csv",
        [{"source": str(f), "label": "LYT" if "Lymph" in str(f) else "NGS", "split": "validation", "domain": "bccd"} for f in val]
        + [{"source": str(f), "label": "LYT", "split": "test", "domain": "bccd"} for f in test],
    )
    assert not (model / "confusion_matrix.png").exists()
    metrics = evaluate_model_dir(model, [str(BCCD)], None)
    assert metrics["test"]["n_images"] == 2 and (model / "confusion_matrix.png").is_file()
    predictions = read_predictions(model / VALIDATION_PREDICTIONS)
    assert sorted(predictions) == sorted(map(str, val)) and predictions[str(val[0])][0] == "LYT"
    assert metrics["external"]["bccd"]["n_images"] == 240  # neutrophils and lymphocytes: the classes the tiny model knows
    assert metrics["external"]["bccd"]["excluded"] == {"EOS": 88, "MON": 20, "BAS": 3}
    assert "review" in metrics["external"]["bccd"]
    assert (model / "confusion_matrix_bccd.png").is_file() and "`bccd`" in (model / "README.md").read_text()


def test_a_folder_the_model_trained_on_is_refused_as_an_external_set(tmp_path):
    (tmp_path / "metrics.json").write_text(
        json.dumps(
            {
                "model_name": "mixed",
                "classes": ["BLA"],
                "data": {"train_dir": ["../shared/data/bone-marrow-cells", "../shared/data/pbc-train"]},
            }
        )
    )
    with pytest.raises(ValueError, match="mixed was trained on pbc-train"):
        evaluate_model_dir(tmp_path, ["/elsewhere/pbc-train"], None)
    assert training_sources({"data": {"train_dir": "a/cells"}}) == ["cells"]


def test_targets_are_checked_against_the_measured_figures():
    metrics = {"test": {"macro_f1": 0.8, "review": {"flagged_share": 0.4}}}
    checked = check_targets(
        metrics,
        [
            {"what": "a", "path": "test.macro_f1", "goal": ">= 0.86"},
            {"what": "b", "path": "test.review.flagged_share", "goal": "<= 0.45"},
            {"what": "c", "path": "external.bccd.accuracy", "goal": ">= 0.7"},
        ],
    )
    assert [(t["value"], t["met"]) for t in checked] == [(0.8, False), (0.4, True), (None, None)]
