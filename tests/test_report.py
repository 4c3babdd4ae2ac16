"""Differential-count conventions against hand-worked examples, the review round trip, the report files."""

import csv
import html
import re

import pytest

from bmc.calibration import proportion_ci
from bmc.constants import DISCLAIMER
from bmc.count.differential import Cell, build_report, thumbnail
from bmc.count.report import ReviewFile, read_corrections, table, write_all
from bmc.serve.predictor import Prediction

CODES = ["BLA", "PMO", "NGS", "EOS", "EBO", "LYT", "NIF", "ART"]


def _pred(code, conf=0.9, flagged=False):
    others = [c for c in CODES if c != code]
    probs = {code: conf, **{c: (1 - conf) / len(others) for c in others}}
    return Prediction(probs=probs, top_code=code, confidence=conf, flagged=flagged)


def _cells(counts: dict[str, int], flagged: set[str] = frozenset()) -> list[Cell]:
    cells = []
    for code, n in counts.items():
        for i in range(n):
            name = f"{code}_{i}.jpg"
            cells.append(Cell(name, _pred(code, 0.5 if name in flagged else 0.9, name in flagged)))
    return cells


def test_percentages_are_of_nucleated_cells_only():
    # 104 images: 14 blasts, 68 other nucleated cells, 12 artefacts, 10 not identifiable -> blasts 14/82 = 17.1 %, not 13.5 %
    report = build_report(_cells({"BLA": 14, "NGS": 40, "LYT": 28, "ART": 12, "NIF": 10}), CODES, "m", "v", 0.8)
    assert report.n_images == 104 and report.n_counted == 82
    rows = {r.code: r for r in report.rows}
    assert rows["BLA"].percent == pytest.approx(100 * 14 / 82)
    assert rows["ART"].count == 12 and rows["ART"].percent is None and not rows["ART"].counted
    assert report.blast_text.startswith("17.1 %")
    assert sum(r.percent for r in report.rows if r.percent is not None) == pytest.approx(100.0)


def test_rows_follow_the_icsh_groups_and_end_with_a_total():
    report = build_report(_cells({"LYT": 1, "BLA": 1, "EBO": 1}), CODES, "m", "v", 0.8)
    assert [r.code for r in report.rows] == ["BLA", "PMO", "NGS", "EOS", "LYT", "EBO", "NIF", "ART"]
    assert [r.group for r in report.rows][:3] == ["blasts and other immature cells", "granulocytic series", "granulocytic series"]
    total = table(report)[-1]
    assert total[0] == "total" and total[2] == 3 and total[3] == "100.0"


@pytest.mark.parametrize(
    "k, n, low, high",
    [
        # CLSI H20-A2 / Rümke table, 95 % limits for an observed 10 % (and 0 %) at 100, 200, 500 and 1000 cells counted
        (10, 100, 5, 18),
        (20, 200, 6, 15),
        (50, 500, 8, 13),
        (100, 1000, 8, 12),
        (0, 100, 0, 4),
    ],
)
def test_confidence_limits_match_the_ruemke_table(k, n, low, high):
    lo, hi = proportion_ci(k, n)
    assert (round(lo), round(hi)) == (low, high)


def test_a_small_count_is_wide_and_warned_about():
    report = build_report(_cells({"BLA": 13, "NGS": 87}), CODES, "m", "v", 0.8)
    pct, (lo, hi) = report.blast_percent
    assert pct == 13.0 and round(lo) == 7 and round(hi) == 21  # "13 % of 100 is compatible with roughly 7-21 %"
    assert any("below 200" in w and "500" in w for w in report.warnings)
    assert not build_report(_cells({"NGS": 250}), CODES, "m", "v", 0.8).warnings


def test_me_ratio_counts_granulocytic_series_with_eosinophils_against_erythroid_precursors():
    # M = 5 PMO + 30 NGS + 10 EOS = 45 (blasts on neither side); E = 15 EBO
    report = build_report(_cells({"BLA": 20, "PMO": 5, "NGS": 30, "EOS": 10, "EBO": 15, "LYT": 10}), CODES, "m", "v", 0.8)
    assert report.me_ratio == pytest.approx(3.0) and report.me_ratio_text == "3.00 : 1"
    no_ery = build_report(_cells({"NGS": 3}), ["BLA", "NGS"], "m", "v", 0.8)
    assert no_ery.me_ratio is None and no_ery.me_ratio_text == "not available: this model knows no erythroid class"
    none_found = build_report(_cells({"NGS": 3}), CODES, "m", "v", 0.8)
    assert none_found.me_ratio_text == "not available: no erythroid precursors in this count"


def test_review_relabels_and_confirms_and_every_figure_follows():
    report = build_report(_cells({"BLA": 2, "NGS": 2, "EBO": 1}, flagged={"BLA_0.jpg", "NGS_0.jpg"}), CODES, "m", "v", 0.8)
    assert report.blast_percent[0] == 40.0 and report.n_flagged_open == 2
    reviewed = report.reviewed({"BLA_0.jpg": "PMO", "NGS_0.jpg": "NGS"})
    assert reviewed.blast_percent[0] == 20.0 and reviewed.me_ratio == pytest.approx(3.0)  # PMO + 2 NGS : 1 EBO
    assert (reviewed.n_reviewed, reviewed.n_changed, reviewed.n_flagged_open) == (2, 1, 0)
    assert report.n_reviewed == 0  # the unreviewed count is unchanged
    with pytest.raises(ValueError, match="not classes of this model"):
        report.reviewed({"BLA_0.jpg": "HAC"})
    with pytest.raises(ValueError, match=r"none of the 1 reviewed image\(s\) is in this count .*none was applied: nope.jpg"):
        report.reviewed({"nope.jpg": "BLA"})
    with pytest.raises(ValueError, match="2 of the 3 reviewed images are not in this count, none applied: nope.jpg, nix.jpg"):
        report.reviewed({"nope.jpg": "BLA", "BLA_1.jpg": "BLA", "nix.jpg": "LYT"})


def test_review_file_accepts_codes_and_names_and_says_which_cells_were_seen(tmp_path):
    report = build_report(_cells({"BLA": 3}), CODES, "m", "v", 0.8)
    good = tmp_path / "good.csv"  # corrections only: no seen marker
    good.write_text("image,label\nBLA_0.jpg,Promyelocyte\nBLA_1.jpg,bla\n")
    assert read_corrections(good, report) == ReviewFile({"BLA_0.jpg": "PMO", "BLA_1.jpg": "BLA"}, frozenset(), [])
    marked = tmp_path / "marked.csv"
    marked.write_text("image,label,Reviewed\nBLA_0.jpg,PMO,no\nBLA_1.jpg,BLA,yes\nBLA_2.jpg,LYT,\n")
    assert read_corrections(marked, report).seen == {"BLA_1.jpg"}
    every = tmp_path / "every.csv"
    every.write_text("# every cell seen\nimage,label\nBLA_0.jpg,PMO\nBLA_1.jpg,BLA\n")
    assert read_corrections(every, report).seen == {"BLA_0.jpg", "BLA_1.jpg"}
    seen = report.reviewed(*_applied(read_corrections(marked, report)))
    assert seen.corrected_only == {"BLA_0.jpg", "BLA_2.jpg"} and "2 reviewed cell(s) are corrections only" in seen.sources_text


def _applied(review):
    return review.labels, review.seen


def test_a_bad_review_file_is_one_line_and_nothing_is_applied(tmp_path):
    report = build_report(_cells({"BLA": 2}), CODES, "m", "v", 0.8)
    shown = tmp_path / "shown.csv"  # the app's display names, and one cell reviewed twice: the last line stands, said
    shown.write_text("image,label\nBLA_0.jpg,Myelocyte (MYB)\nBLA_0.jpg,Eosinophil (EOS)\n")
    report_myb = build_report(_cells({"BLA": 2}), [*CODES, "MYB"], "m", "v", 0.8)
    review = read_corrections(shown, report_myb)
    assert review.labels == {"BLA_0.jpg": "EOS"} and len(review.notes) == 1
    assert "line 3: BLA_0.jpg was reviewed before (line 2, as MYB); the last line (EOS) stands" in review.notes[0]
    cases = {
        "image,label\nBLA_0.jpg,BLA\nBLA_1.jpg,Hairy cell\n": r"line 3 'Hairy cell': not a class of this model \(BLA, PMO, .*ART\)",
        "image,label\nBLA_0.jpg,BLA\nnope.jpg,BLA\nnix.jpg,LYT\n": "2 of the 3 reviewed images are not in this count.*: nope.jpg, nix.jpg",
        "": "empty, no review in it",
        "image,label\n": "empty, no review in it",
        "file,code\nBLA_0.jpg,BLA\n": "needs the columns 'image' and 'label'",
    }
    for text, message in cases.items():
        bad = tmp_path / "bad.csv"
        bad.write_text(text)
        with pytest.raises(ValueError, match=message) as raised:
            read_corrections(bad, report)
        assert "\n" not in str(raised.value) and str(raised.value).startswith(str(bad))


def test_report_files_keep_both_labels_and_are_self_contained(tmp_path):
    from PIL import Image

    cells = _cells({"BLA": 3, "EBO": 1, "ART": 1}, flagged={"BLA_0.jpg"})
    cells[0].thumbnail = thumbnail(Image.new("RGB", (250, 250), (200, 100, 200)))
    report = build_report(cells, CODES, "tiny", "sha256:abc", 0.5).reviewed({"BLA_0.jpg": "LYT"})
    paths = write_all(report, tmp_path)
    rows = {r["file"]: r for r in csv.DictReader(open(paths["csv"]))}
    assert rows["BLA_0.jpg"]["model_label"] == "BLA" and rows["BLA_0.jpg"]["reviewed_label"] == "LYT"
    assert rows["BLA_1.jpg"]["reviewed"] == "no" and rows["BLA_1.jpg"]["reviewed_label"] == "BLA"
    assert rows["ART_0.jpg"]["counted"] == "no"
    page = paths["html"].read_text()
    assert html.escape(DISCLAIMER) in page and "sha256:abc" in page and "0.00 : 1" in page  # blasts are not M
    assert not re.search(r'src="(?!data:)', page)  # every image embedded: one file to keep or mail
    assert "data:image/jpeg;base64," in page and "reviewed: LYT" in page
    assert "@media print" in page
    assert page.index("<table>") < page.index('class="chart"') < page.index("Flagged and reviewed cells")
    assert paths["chart"].read_bytes()[:4] == b"\x89PNG"


def test_cells_with_the_same_file_name_stay_apart(tiny_model_dir):
    from corpus import _img

    from bmc.count.differential import predict_stream
    from bmc.serve.predictor import Predictor

    items = [("cell.jpg", _img(size=(64, 64))), ("cell.jpg", _img(size=(72, 64)))]  # drawn cells: a flat colour is screened out
    done, _ = predict_stream(Predictor(str(tiny_model_dir), "torch"), iter(items))
    assert [c.name for c in done] == ["cell.jpg", "cell.jpg (2)"]
