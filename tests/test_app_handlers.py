"""The app's handlers called directly, without a server (the same objects build_app wires into Blocks)."""

from pathlib import Path

import pytest
from corpus import _img
from helpers import image_bytes


@pytest.fixture(scope="module")
def handlers(tiny_model_dir):
    from app import CellApp
    from bmc.serve.predictor import Predictor

    return CellApp(Predictor(str(tiny_model_dir), "torch"))


@pytest.fixture
def cells(tmp_path):
    paths = []
    for i in range(4):
        path = tmp_path / f"cell{i}.png"
        _img(size=(60 + i, 60)).save(path)  # drawn stained cells: random pixels would be screened out as noise
        paths.append(str(path))
    return paths


def test_classify_names_a_missing_or_broken_image(handlers, tmp_path):
    import gradio as gr

    with pytest.raises(gr.Error, match="No image"):
        handlers.classify(None, 3)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(gr.Error, match="bad.jpg: not an image file"):
        handlers.classify(str(bad), 3)


def test_count_then_review_without_a_server(handlers, cells):
    table, summary, chart, gallery, files, choices, report = handlers.count(cells)
    assert report.n_images == 4 and table[-1][2] == 4
    name = report.cells[0].name
    other = next(c for c in report.codes if c != report.cells[0].prediction.top_code)
    from bmc.labels import display_name

    *rendered, reviewed = handlers.review(name, display_name(other), report)
    assert reviewed.n_changed == 1 and reviewed.label(reviewed.cells[0]) == other
    assert "1 reviewed, 1 relabelled" in rendered[1]
    image, info, label = handlers.open_cell(name, reviewed)
    assert image.size == (60, 60) and f"Reviewed as **{display_name(other)}**" in info and label == display_name(other)


def test_reviewed_cells_download_for_bmc_adapt(handlers, cells):
    import zipfile

    import gradio as gr

    *_, report = handlers.count(cells)
    with pytest.raises(gr.Error, match="No reviewed cells"):
        handlers.export_reviewed(report)
    *_, reviewed = handlers.review(report.cells[0].name, handlers.names and next(iter(handlers.names)), report)
    path, note = handlers.export_reviewed(reviewed)
    code = reviewed.corrections[report.cells[0].name]
    assert zipfile.ZipFile(path).namelist() == [f"reviewed-cells/{code}/cell0.jpg"]
    assert "bmc adapt" in note and "reviewed-cells/" in note and "--learnt" not in note

    import dataclasses

    other = report.cells[1]
    learnt = dataclasses.replace(reviewed, learnt={other.name: ("LYT", 0.9)})  # as if the review's head had re-labelled it
    path, note = handlers.export_reviewed(learnt)
    assert zipfile.ZipFile(path).namelist() == [f"reviewed-cells/{code}/cell0.jpg", f"learnt-cells/LYT/{Path(other.name).stem}.jpg"]
    assert "reviewed-cells/ --learnt learnt-cells/" in note and "never used to measure" in note


def test_fields_are_counted_cell_by_cell_with_numbered_overlays(handlers, tmp_path):
    import cv2
    import numpy as np
    from PIL import Image

    canvas = np.full((480, 640, 3), (230, 190, 200), np.uint8)
    for x, y in ((150, 150), (450, 300)):
        cv2.circle(canvas, (x, y), 65, (215, 175, 215), -1)
        cv2.circle(canvas, (x, y), 40, (110, 80, 200), -1)
    noise = np.random.default_rng(0).normal(0, 3, canvas.shape)  # a camera's grain: a flat drawing is not a micrograph
    canvas = np.clip(cv2.GaussianBlur(canvas, (5, 5), 0) + noise, 0, 255).astype(np.uint8)
    field = tmp_path / "field.png"
    Image.fromarray(canvas).save(field)
    blank = tmp_path / "blank.png"
    Image.new("RGB", (640, 480), (240, 240, 240)).save(blank)
    *rendered, queue, report, gallery, overlays = handlers.count_fields([str(field), str(blank)])
    assert report.n_images == 2 and all(c.name.startswith("field.png#") for c in report.cells)
    # the blank field is screened out before any search (bmc.locate.screening) and listed as not counted, with why
    assert len(gallery) == 1 and "`blank.png` (not counted: not a microscope image" in rendered[1]
    # click the first field in the gallery, then a box on it: that cell opens for review
    from types import SimpleNamespace

    image, name = handlers.show_field(overlays, SimpleNamespace(index=0))
    assert name == "field.png" and image.size == (640, 480)
    from bmc.locate.finder import class_colour

    first = min(report.cells, key=lambda c: c.name)  # field.png#1: its box's top edge is drawn in its class's colour
    x0, y0 = (int(v) for v in first.name.split("[")[1].split(",")[:2])
    assert tuple(np.asarray(image)[y0, x0 + 10]) == class_colour(report.label(first))
    clicked = handlers.pick_box(name, report, SimpleNamespace(index=[450, 300]))
    assert clicked is not None and clicked.startswith("field.png#") and report.cell(clicked) is not None
    assert handlers.pick_box(name, report, SimpleNamespace(index=[5, 470])) is None  # off every box


def test_one_cell_defers_to_the_models_own_check_of_several_cells(handlers, tmp_path, monkeypatch):
    import numpy as np

    from bmc.serve.guard import LearntGuard

    path = tmp_path / "cell.png"
    _img(size=(64, 64)).save(path)
    from PIL import Image

    width = handlers.predictor.forward([Image.open(path).convert("RGB")])[1].shape[1]
    says_several = LearntGuard(np.zeros(width), np.ones(width), np.zeros(width), 5.0, handlers.predictor.version)  # p = 0.99
    monkeypatch.setattr(handlers.predictor, "guard", says_several)
    label, verdict = handlers.classify(str(path), 3)
    assert label is None and "Several cells in this picture" in verdict and "Differential count" in verdict
    monkeypatch.setattr(handlers.predictor, "guard", None)  # a model without the check classifies as before
    label, verdict = handlers.classify(str(path), 3)
    assert label and "calibrated confidence" in verdict


def test_examples_are_captioned_with_their_true_class_known_ones_first(tmp_path):
    from bmc.serve.examples import example_cells

    for name in ("PLM_matek_00009.jpg", "BAS_pbc_1.jpg", "BLA_matek_00001.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(image_bytes())
    examples, label = example_cells(tmp_path, ["BLA", "BAS"], {"BAS": ["pbc"]})
    assert [e.code for e in examples] == ["BLA", "BAS", "PLM"]
    assert [e.caption for e in examples] == [
        "true: Blast (BLA), marrow",
        "true: Basophil (BAS), blood · learnt from blood only",
        "true: Plasma cell (PLM), marrow · a type this model never saw",
    ]
    assert "click one to classify it" in label and "the last 1 are types this model never saw (PLM)" in label


def test_the_cell_under_review_is_shown_magnified(handlers, cells):
    from app import zoomed

    *_, report = handlers.count(cells)
    name = report.cells[0].name
    assert 'width="180" height="180"' in zoomed(name, "3×", report)  # a 60 px cell at 3x
    assert 'width="60"' in zoomed(name, "1×", report) and zoomed(None, "2×", report) == ""


@pytest.mark.parametrize("kind", ["blank", "circuit board", "text", "mask", "noise", "portrait"])
def test_one_cell_names_no_class_for_a_blank_or_a_picture_that_is_no_micrograph(handlers, tmp_path, kind):
    import numpy as np
    from PIL import Image

    from bench.screening import GENERATED

    if kind == "mask":  # a segmentation mask: nucleus 255, cytoplasm 128, background 0
        yy, xx = np.mgrid[0:200, 0:200]
        r = np.hypot(xx - 100, yy - 100)
        picture = Image.fromarray(np.where(r < 40, 255, np.where(r < 70, 128, 0)).astype(np.uint8))
    elif kind == "portrait":  # matplotlib's sample photograph, its top left quarter (only the darkest-parts check)
        from bench.screening import photographs

        picture = list(photographs())[1]
    else:
        picture = next(GENERATED[kind](np.random.default_rng(3), 1))
    path = tmp_path / f"{kind}.png"
    picture.save(path)
    label, verdict = handlers.classify(str(path), 3)
    assert label is None and "No cell found" in verdict, verdict
