import csv
import html

from bmc.inference import Prediction
from bmc.report import DISCLAIMER, build_report, table, write_all


def _pred(code, conf, flagged=False, others=("BLA", "EBO", "LYT")):
    probs = {c: (1 - conf) / (len(others) - 1) if c != code else conf for c in others}
    return Prediction(probs=probs, top_code=code, confidence=conf, flagged=flagged)


def test_counts_grouped_by_lineage_with_me_ratio_and_flags(tmp_path):
    images = [("a.jpg", _pred("BLA", 0.9)), ("b.jpg", _pred("BLA", 0.7)), ("c.jpg", _pred("EBO", 0.95)),
              ("d.jpg", _pred("LYT", 0.4, flagged=True))]
    report = build_report(images, ["LYT", "EBO", "BLA"], "tiny", "sha256:abc", 0.5)
    assert [r.code for r in report.rows] == ["BLA", "EBO", "LYT"]  # granulocytic, erythroid, lymphoid
    bla = report.rows[0]
    assert (bla.count, bla.percent, round(bla.mean_confidence, 3), bla.flagged) == (2, 50.0, 0.8, 0)
    assert report.rows[2].flagged == 1
    assert report.me_ratio == 2.0
    assert table(report)[0] == ["granulocytic", "Blast (BLA)", 2, 50.0, 0.8, 0]
    paths = write_all(report, tmp_path)
    rows = list(csv.DictReader(open(paths["csv"])))
    assert [r["predicted_code"] for r in rows] == ["BLA", "BLA", "EBO", "LYT"]
    assert rows[3]["flagged_for_review"] == "yes"
    page = paths["html"].read_text()
    assert html.escape(DISCLAIMER) in page and "sha256:abc" in page and "2.00 : 1" in page
    assert paths["chart"].read_bytes()[:4] == b"\x89PNG"


def test_no_me_ratio_without_erythroid_classes():
    report = build_report([("a", _pred("BLA", 0.9, others=("BLA", "LYT")))], ["BLA", "LYT"], "m", "v", 0.5)
    assert report.me_ratio is None
