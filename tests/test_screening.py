"""The screening of every picture (bmc.locate.screening): one rule for One cell, bmc count and bmc locate."""

import csv
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from corpus import _img
from helpers import BCCD, BUNDLED, PBC, SHARED, matek_images
from PIL import Image

from bench.screening import circuit_boards, noise, text
from bmc.locate.screening import FOUND_CELL, NO_CELL, NOT_MICROSCOPE, OK, SEVERAL, found_cell_prediction, picture_verdict
from bmc.serve.predictor import Prediction, Predictor


def _cells(n: int, size: int = 300) -> Image.Image:
    """``n`` drawn stained cells side by side (a violet nucleus in pink cytoplasm on a pale background, with noise)."""
    rng = np.random.default_rng(0)
    h, w = size, size * max(n, 1)
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.array([235, 205, 215], float) + rng.normal(0, 6, (h, w, 3))
    for i in range(n):
        rgb[(xx - size // 2 - size * i) ** 2 + (yy - size // 2) ** 2 < (size // 5) ** 2] = [110, 60, 170]
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


def test_one_drawn_cell_passes_and_two_are_several():
    assert picture_verdict(_cells(1)).kind == OK
    assert picture_verdict(_img(size=(120, 120))).kind == OK  # small and grainy, still a cell
    two = picture_verdict(_cells(2))
    assert two.kind == SEVERAL and two.cells == 2 and "2 separate nuclei" in two.reason
    assert two.not_counted.startswith("not counted: several cells (") and "2 cells in this picture" in two.headline


@pytest.mark.parametrize(
    "picture, kind",
    [
        (Image.new("RGB", (300, 300), (255, 255, 255)), NOT_MICROSCOPE),  # an empty file: flat
        (Image.fromarray(np.clip(np.random.default_rng(0).normal(235, 2, (300, 300, 3)), 0, 255).astype(np.uint8)), NO_CELL),
        (Image.fromarray(np.repeat(np.repeat(np.array([[0, 128], [255, 0]], np.uint8), 150, 0), 150, 1)), NOT_MICROSCOPE),  # a mask
        (Image.new("RGB", (300, 300), (120, 60, 200)), NOT_MICROSCOPE),  # one violet colour: flat, however violet
    ],
)
def test_blanks_masks_and_flat_colours_are_screened_out(picture, kind):
    verdict = picture_verdict(picture)
    assert verdict.kind == kind and verdict.reason and "No cell found" in verdict.headline


def test_generated_pictures_that_are_no_micrographs_are_screened_out():
    rng = np.random.default_rng(5)
    for picture in [*circuit_boards(rng, 4), *text(rng, 2)]:
        assert picture_verdict(picture).kind in (NOT_MICROSCOPE, NO_CELL)
    grainy = next(noise(rng, 2))  # Gaussian pixels around a random colour
    assert picture_verdict(Image.fromarray(rng.integers(0, 256, (300, 300, 3), dtype=np.uint8))).kind == NOT_MICROSCOPE
    assert picture_verdict(grainy).kind != OK or np.asarray(grainy).std() < 20
    smooth = cv2.GaussianBlur(rng.integers(0, 256, (300, 300, 3)).astype(np.float32), (0, 0), 6.0)
    assert picture_verdict(Image.fromarray(smooth.astype(np.uint8))).kind == NO_CELL  # grey, a trace of violet (0.5 %)
    navy = np.clip(np.array([30, 60, 150]) + np.random.default_rng(0).normal(0, 8, (300, 300, 3)), 0, 255).astype(np.uint8)
    assert picture_verdict(Image.fromarray(navy)).kind == NO_CELL  # blue, but not the violet of a stained nucleus


def test_a_picture_whose_darkest_parts_have_no_red_is_no_smear():
    """Stained chromatin is the darkest thing in a smear and it is violet; a photograph's darkest parts (hair, a navy
    uniform) are black or navy. A violet cell beside a black region is refused, the cell alone is not, and so are
    the crops of matplotlib's sample portrait that passed every other check."""
    from bench.screening import photographs

    cell = np.asarray(_cells(1), np.float32).copy()
    cell[:, :60] = np.random.default_rng(3).normal(25, 4, (300, 60, 3))  # a dark, colourless band (hair, a shadow)
    verdict = picture_verdict(Image.fromarray(np.clip(cell, 0, 255).astype(np.uint8)))
    assert verdict.kind == NOT_MICROSCOPE and "not stained violet" in verdict.reason
    assert picture_verdict(_cells(1)).kind == OK
    portrait = list(photographs())
    assert len(portrait) == 5 and all(picture_verdict(p).kind != OK for p in portrait)


def test_photographed_text_is_screened_out_whatever_its_ink():
    """Sensor noise and JPEG make text no longer flat, and violet ink or black-on-white (no colour to check) passed
    the stain checks: the thin-lines check catches it, while a drawn cell and a grey one pass."""
    from bench.screening import photographed

    pages = list(photographed(text(np.random.default_rng(1), 20), np.random.default_rng(2)))
    verdicts = [picture_verdict(p) for p in pages]
    assert all(v.kind in (NOT_MICROSCOPE, NO_CELL) for v in verdicts)
    assert sum("thin lines" in v.reason for v in verdicts) >= 10
    assert picture_verdict(_cells(1)).kind == OK and picture_verdict(_img("L").convert("RGB")).kind == OK


def test_a_greyscale_cell_is_classified_but_a_field_is_not_counted_as_several():
    assert picture_verdict(_img("L").convert("RGB")).kind == OK  # no colour to check: classified, with a note
    assert picture_verdict(_cells(3), single=False).kind == OK  # a field holds several cells by nature


def _stub(codes: list[str]) -> SimpleNamespace:
    stub = SimpleNamespace(codes=codes, threshold=0.5)
    stub.predictions = lambda *a: Predictor.predictions(stub, *a)  # type: ignore[arg-type]
    return stub


def test_a_found_cell_gets_its_best_nucleated_class_flagged():
    stub = _stub(["ART", "LYT", "NGS", "NIF"])
    art = Prediction({"ART": 0.7, "LYT": 0.1, "NGS": 0.15, "NIF": 0.05}, "ART", 0.7, False)
    out = found_cell_prediction(stub, art, 0.05)  # type: ignore[arg-type]
    assert out.top_code == "NGS" and out.flagged and abs(sum(out.probs.values()) - 1) < 1e-9 and out.probs["ART"] == 0
    lyt = Prediction({"ART": 0.1, "LYT": 0.8, "NGS": 0.05, "NIF": 0.05}, "LYT", 0.8, False)
    assert found_cell_prediction(stub, lyt, 0.05) is lyt  # a nucleated label stands
    assert found_cell_prediction(stub, art, 0.015) is art  # a blob near the locator's floor may be debris: the model's label stands


def test_a_count_lists_screened_out_pictures_as_not_counted(tiny_model_dir, tmp_path):
    from bmc.count.differential import predict_stream, report_for
    from bmc.count.report import write_all
    from bmc.locate.screening import ScreenedOut

    predictor = Predictor(str(tiny_model_dir), "torch")
    found = _cells(2)
    found.info[FOUND_CELL] = 0.05  # a crop of a cell the locator found is not screened again
    items = [("one.png", _cells(1)), ("two.png", _cells(2)), ("blank.png", Image.new("RGB", (200, 200), "white")), ("f#1", found)]
    done, skipped = predict_stream(predictor, iter(items))
    assert [c.name for c in done] == ["one.png", "f#1"]
    assert [(s.source, s.verdict.kind) for s in skipped if isinstance(s, ScreenedOut)] == [
        ("two.png", SEVERAL),
        ("blank.png", NOT_MICROSCOPE),
    ]
    rows = {r["file"]: r for r in csv.DictReader(open(write_all(report_for(predictor, done, skipped), tmp_path)["csv"]))}
    assert rows["two.png"]["skipped_reason"].startswith("not counted: several cells") and rows["two.png"]["counted"] == "no"
    assert rows["two.png"]["model_label"] == "" and "not counted: not a microscope image" in rows["blank.png"]["skipped_reason"]


def _sheet(paths, path):
    """Four real cells tiled 2x2 in one picture."""
    sheet = Image.new("RGB", (250, 250))
    for i, p in enumerate(paths):
        sheet.paste(Image.open(p).convert("RGB").resize((125, 125)), (125 * (i % 2), 125 * (i // 2)))
    sheet.save(path)


@pytest.mark.slow  # the bundled model, one in-process count
def test_bmc_count_counts_the_single_cells_only(tmp_path, shared_data):
    from bmc.cli.main import main

    folder = tmp_path / "upload"
    folder.mkdir()
    singles = [*matek_images("BLA", 2), *matek_images("NGS", 2), *sorted(PBC.rglob("*.jpg"))[:2], *sorted(BCCD.rglob("*.jpg"))[:2]]
    singles += sorted((SHARED / "external-wbc" / "zheng2018-ds2" / "images").glob("*.webp"))[:2]
    for i, p in enumerate(singles):
        Image.open(p).convert("RGB").save(folder / f"cell{i}.png")
    _sheet([matek_images(c, 1)[0] for c in ("BLA", "EOS", "LYT", "NGS")], folder / "sheet.png")
    for p in sorted((SHARED / "external-wbc" / "zheng2018-ds2" / "masks").glob("*.png"))[:3]:
        (folder / f"mask_{p.name}").write_bytes(p.read_bytes())
    Image.new("RGB", (300, 300), (255, 255, 255)).save(folder / "blank.png")
    out = tmp_path / "out"
    assert main(["count", str(folder), "--model", str(BUNDLED), "--out", str(out)]) == 0
    rows = {r["file"]: r for r in csv.DictReader(open(out / "predictions.csv"))}
    counted = sorted(n for n, r in rows.items() if r["model_label"])
    assert counted == sorted(f"cell{i}.png" for i in range(len(singles)))
    refused = {n: r["skipped_reason"] for n, r in rows.items() if not r["model_label"]}
    assert set(refused) == {"sheet.png", "blank.png", "mask_001.png", "mask_002.png", "mask_003.png"}
    assert refused["sheet.png"].startswith("not counted: several cells")
    assert all(refused[n].startswith("not counted: not a microscope image") for n in refused if n.startswith("mask_"))
    assert "not counted" in (out / "report.html").read_text()


@pytest.mark.integration
def test_small_crops_of_a_pale_lab_are_still_cells(shared_data):
    """zheng2018-ds2's 046 (a monocyte whose nucleus is barely bluer than red) shrunk to 120 px: the no-cell check's
    blur scales with the picture, so it is not taken for no cell (it was, with a 640-px field's blur)."""
    cell = Image.open(SHARED / "external-wbc" / "zheng2018-ds2" / "images" / "046.webp").convert("RGB")
    for side in (300, 160, 120):
        assert picture_verdict(cell.resize((side, side), Image.Resampling.LANCZOS)).kind == OK, side
