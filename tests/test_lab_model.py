"""bmc adapt on a tiny model: a complete model folder that loads anywhere, a class added only with enough cells."""

import csv
import io
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from bmc.lab.adapt import MIN_NEW_CLASS, adapt_head


def _lab(tmp_path, counts):
    rng = np.random.default_rng(0)
    for i, (name, n) in enumerate(counts.items()):
        (tmp_path / name).mkdir(parents=True)
        for j in range(n):
            pixels = np.clip(rng.normal(60 + 60 * i, 20, (56, 56, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / name / f"{name}_{j}.png")
    return tmp_path


def test_adapt_writes_a_folder_that_pipeline_and_the_predictor_load(tmp_path, tiny_model_dir):
    from transformers import pipeline

    from bmc.serve.predictor import Predictor

    lab = _lab(tmp_path / "lab", {"BLA": 6, "Lymphocyte": 6, "NGS": 6, "Plasma cell": MIN_NEW_CLASS})
    out = tmp_path / "adapted"
    result = subprocess.run(
        [sys.executable, "-m", "bmc", "adapt", str(tiny_model_dir), str(lab), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert "adapted model:" in result.stdout
    summary = json.loads((out / "adaptation.json").read_text())
    assert summary["added_classes"] == ["PLM"] and summary["lab_counts"]["LYT"] == 6
    card = (out / "README.md").read_text()
    assert "Research tool, not a diagnosis" in card and "out of fold" in card
    predictor = Predictor(str(out), "torch")
    assert sorted(predictor.codes) == ["BLA", "LYT", "NGS", "PLM"] and predictor.codes[-1] == "PLM"  # added last
    assert 0 < predictor.threshold <= 1
    classify = pipeline("image-classification", model=str(out))
    assert {r["label"] for r in classify(str(lab / "NGS" / "NGS_0.png"), top_k=4)} == {"BLA", "LYT", "NGS", "PLM"}
    again = subprocess.run(
        [sys.executable, "-m", "bmc", "adapt", str(tiny_model_dir), str(lab), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 2 and "not empty" in again.stderr  # nothing is overwritten


def test_a_class_the_model_lacks_needs_enough_cells():
    w, b = np.zeros((2, 4)), np.zeros(2)
    x = np.random.default_rng(0).normal(size=(9, 4))
    with pytest.raises(ValueError, match="PLM: 3"):
        adapt_head(["BLA", "LYT"], w, b, x, ["BLA"] * 3 + ["LYT"] * 3 + ["PLM"] * 3, np.zeros((0, 4)), [])


def test_a_class_the_model_lacks_is_refused_before_any_pass(tmp_path, tiny_model_dir, monkeypatch):
    import bmc.lab.adapt as lab_model

    lab = _lab(tmp_path / "lab", {"BLA": 3, "NGS": 3, "Plasma cell": 1})

    def no_pass(*_args, **_kwargs):
        raise AssertionError("the cells went through the model before the refusal")

    for name in ("lab_inputs", "block_inputs"):
        monkeypatch.setattr(lab_model, name, no_pass)
    monkeypatch.setattr(lab_model.Predictor, "forward", no_pass)
    with pytest.raises(ValueError, match="PLM: 1"):
        lab_model.adapt_model(str(tiny_model_dir), lab, tmp_path / "out", progress=False)


def test_a_reviewed_count_is_read_with_the_images_it_was_made_of(tmp_path):
    from bmc.lab.adapt import read_lab_cells

    folder = tmp_path / "cells"
    folder.mkdir()
    for i in range(3):
        buf = io.BytesIO()
        Image.new("RGB", (40, 40), (10 * i, 0, 0)).save(buf, "PNG")
        (folder / f"c{i}.png").write_bytes(buf.getvalue())
    csv_path = tmp_path / "predictions.csv"
    with open(csv_path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "model_label", "reviewed", "reviewed_label"])
        w.writerows([["c0.png", "BLA", "yes", "LYT"], ["c1.png", "BLA", "no", "BLA"], ["gone.png", "BLA", "yes", "NGS"]])
    with pytest.raises(ValueError, match="give --images"):
        read_lab_cells(csv_path)
    lab = read_lab_cells(csv_path, [folder])
    assert lab.codes == ["LYT"] and lab.names == ["c0.png"] and "gone.png" in lab.skipped[0]


def test_a_model_without_tunable_blocks_gets_a_new_head(tmp_path, tiny_model_dir, monkeypatch):
    from bmc.lab import adapt as lab_model
    from bmc.serve.predictor import Predictor

    monkeypatch.setattr(lab_model, "supports", lambda model, config=None: False)  # as for a ConvNeXt
    lab = _lab(tmp_path / "lab", {"BLA": 6, "LYT": 6})
    out, summary = lab_model.adapt_model(str(tiny_model_dir), lab, tmp_path / "adapted", progress=False)
    assert summary["method"] == "the last layer (head) refitted" and summary["lab_out_of_fold"]["n"] == 12
    assert sorted(Predictor(str(out), "torch").codes) == ["BLA", "LYT", "NGS"]


def test_learnt_labels_of_a_count_are_read_only_when_asked(tmp_path):
    from bmc.lab.adapt import read_lab_cells

    folder = tmp_path / "cells"
    folder.mkdir()
    for i in range(4):
        Image.new("RGB", (40, 40), (10 * i, 0, 0)).save(folder / f"c{i}.png")
    csv_path = tmp_path / "predictions.csv"
    rows = [["c0.png", "yes", "LYT", "reviewed"], ["c1.png", "no", "NGS", "learnt"], ["c2.png", "no", "BLA", "model"]]
    with open(csv_path, "w", newline="") as fh:
        csv.writer(fh).writerows([["file", "reviewed", "reviewed_label", "label_source"], *rows])
    plain = read_lab_cells(csv_path, [folder])
    assert plain.codes == ["LYT"] and plain.checked().tolist() == [True]
    both = read_lab_cells(csv_path, [folder], learnt=True)
    assert sorted(zip(both.names, both.codes, both.checked().tolist())) == [("c0.png", "LYT", True), ("c1.png", "NGS", False)]
    with open(csv_path, "w", newline="") as fh:  # an older count: no label sources to go by
        csv.writer(fh).writerows([["file", "reviewed", "reviewed_label"], *(r[:3] for r in rows)])
    with pytest.raises(ValueError, match="no label_source column"):
        read_lab_cells(csv_path, [folder], learnt=True)


def test_learnt_cells_are_trained_on_but_never_measured_on(tmp_path, tiny_model_dir, monkeypatch):
    from bmc.lab import adapt as lab_model
    from bmc.lab import fitting

    reviewed = _lab(tmp_path / "reviewed", {"BLA": 6, "LYT": 6})
    learnt = _lab(tmp_path / "learnt", {"BLA": 5, "NGS": 4})
    seen = []
    tune = fitting.tune

    def spy(model, n_classes, lab_hidden, lab_y, *args, lab_weights=None, **kwargs):
        seen.append(sorted(np.round(lab_weights, 2).tolist()))
        return tune(model, n_classes, lab_hidden, lab_y, *args, lab_weights=lab_weights, **kwargs)

    monkeypatch.setattr(fitting, "tune", spy)
    _, summary = lab_model.adapt_model(
        str(tiny_model_dir), reviewed, tmp_path / "adapted", learnt=learnt, progress=False, measure_forgetting=False
    )
    assert summary["learnt_cells"] == 9 and summary["lab_out_of_fold"]["n"] == 12  # measured on the reviewed cells only
    assert seen[-1] == [fitting.LEARNT_WEIGHT] * 9 + [1.0] * 12  # the final fit: every cell, learnt ones lighter
    assert all(w.count(fitting.LEARNT_WEIGHT) == 9 for w in seen)  # every fold keeps all the learnt cells
    assert "9 of them were labelled by the learning review" in (tmp_path / "adapted" / "README.md").read_text()
    (tmp_path / "none").mkdir()
    with pytest.raises(ValueError, match="no reviewed cell"):  # learnt labels alone: nothing a person checked to measure on
        lab_model.read_lab_cells(tmp_path / "none", learnt=learnt)


def test_an_adapted_model_keeps_the_colour_canonicalisation_it_was_trained_with(tmp_path, tiny_model_dir):
    """The bundled model reads anchored colours; a lab's model made from it must read them the same way."""
    import shutil

    from bmc.cli.main import main
    from bmc.transforms import colour_reference

    base = tmp_path / "base"
    shutil.copytree(tiny_model_dir, base)
    config = json.loads((base / "preprocessor_config.json").read_text())
    config |= {"bmc_lab_dark": [40.0, 170.0, 70.0], "bmc_lab_bright": [210.0, 130.0, 120.0]}
    (base / "preprocessor_config.json").write_text(json.dumps(config))
    lab = _lab(tmp_path / "lab", {"BLA": 6, "LYT": 6, "NGS": 6})
    assert main(["adapt", str(base), str(lab), "--out", str(tmp_path / "adapted")]) == 0
    adapted = json.loads((tmp_path / "adapted" / "preprocessor_config.json").read_text())
    assert adapted["bmc_lab_dark"] == config["bmc_lab_dark"] and adapted["bmc_lab_bright"] == config["bmc_lab_bright"]
    from transformers import AutoImageProcessor

    assert colour_reference(AutoImageProcessor.from_pretrained(str(tmp_path / "adapted"))) is not None
