"""Differential counts: many single-cell predictions → a per-class table, figures and a report.

The table is grouped by lineage in haematologists' order (``bmc.labels``); cells whose calibrated
confidence is below the model's review threshold are counted under their top class *and* listed
as flagged, so the reviewer sees exactly which cells to check. The myeloid:erythroid (M:E) ratio
is given only when the model knows both granulocytic and erythroid classes and some erythroid
cells were found. Every report names the model, its version and the research-use disclaimer.
"""

from __future__ import annotations

import base64
import csv
import html
import io
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Sequence

from bmc import __version__
from bmc import labels as L
from PIL import Image

from bmc.data import SkippedFile
from bmc.inference import Prediction, Predictor

DISCLAIMER = (
    "Research use only. Not a medical device and not for diagnosis: every count must be reviewed by a "
    "qualified haematologist. The model knows only the classes listed; other cell types receive one of "
    "these labels, and cells flagged 'uncertain' need manual review."
)


@dataclass
class CountRow:
    code: str
    name: str
    lineage: str
    count: int
    percent: float
    mean_confidence: float | None
    flagged: int


@dataclass
class CountReport:
    """Everything a differential-count report shows."""

    model_name: str
    model_version: str
    threshold: float
    rows: list[CountRow]
    images: list[tuple[str, Prediction]]
    skipped: list[SkippedFile] = field(default_factory=list)
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))

    @property
    def n_cells(self) -> int:
        return len(self.images)

    @property
    def n_flagged(self) -> int:
        return sum(p.flagged for _, p in self.images)

    @property
    def me_ratio(self) -> float | None:
        """Granulocytic (incl. blasts) : erythroid cells, when the model knows both lineages."""
        by = {lin: sum(r.count for r in self.rows if r.lineage == lin) for lin in ("granulocytic", "erythroid")}
        knows_erythroid = any(r.lineage == "erythroid" for r in self.rows)
        if not knows_erythroid or by["erythroid"] == 0:
            return None
        return by["granulocytic"] / by["erythroid"]

    @property
    def me_ratio_text(self) -> str:
        return f"{self.me_ratio:.2f} : 1" if self.me_ratio is not None else "not available (no erythroid classes or cells)"


def build_report(images: Sequence[tuple[str, Prediction]], codes: Sequence[str], model_name: str, model_version: str,
                 threshold: float, skipped: Sequence[SkippedFile] = ()) -> CountReport:
    """Per-class counts in canonical order (all the model's classes, zeros included)."""
    total = len(images)
    rows = []
    for code in L.sort_codes(codes):
        preds = [p for _, p in images if p.top_code == code]
        rows.append(CountRow(
            code=code, name=L.full_name(code), lineage=L.lineage(code), count=len(preds),
            percent=100.0 * len(preds) / total if total else 0.0,
            mean_confidence=sum(p.confidence for p in preds) / len(preds) if preds else None,
            flagged=sum(p.flagged for p in preds),
        ))
    rows.sort(key=lambda r: (L.LINEAGES.index(r.lineage), L.sort_codes(codes).index(r.code)))
    return CountReport(model_name, model_version, threshold, rows, list(images), list(skipped))


def predict_stream(predictor: Predictor, items: Iterable[tuple[str, Image.Image] | SkippedFile], batch_size: int = 32,
                   progress: bool = False) -> tuple[list[tuple[str, Prediction]], list[SkippedFile]]:
    """Predict decoded items (see ``bmc.uploads.iter_images``) batch by batch, keeping the skipped ones."""
    from tqdm.auto import tqdm

    done: list[tuple[str, Prediction]] = []
    skipped: list[SkippedFile] = []
    names: list[str] = []
    images: list[Image.Image] = []

    def flush() -> None:
        if images:
            done.extend(zip(names, predictor.predict(images, batch_size)))
            names.clear()
            images.clear()

    for item in tqdm(items, desc="cells", unit="img", disable=not progress):
        if isinstance(item, SkippedFile):
            skipped.append(item)
            continue
        names.append(item[0])
        images.append(item[1])
        if len(images) >= batch_size:
            flush()
    flush()
    return done, skipped


def table(report: CountReport) -> list[list[object]]:
    """Rows for a UI table: lineage, cell type, count, %, mean confidence, flagged."""
    return [[r.lineage, L.display_name(r.code), r.count, round(r.percent, 1),
             None if r.mean_confidence is None else round(r.mean_confidence, 3), r.flagged] for r in report.rows]


TABLE_HEADERS = ["lineage", "cell type", "count", "%", "mean confidence", "flagged"]


def write_csv(report: CountReport, path: Path) -> Path:
    """Per-image predictions (and skipped files) as CSV."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "predicted_code", "predicted_name", "confidence", "flagged_for_review", "top3", "skipped_reason"])
        for name, p in report.images:
            top3 = "; ".join(f"{c} {s:.3f}" for c, s in p.top_k(3))
            w.writerow([name, p.top_code, L.full_name(p.top_code), f"{p.confidence:.4f}", "yes" if p.flagged else "no", top3, ""])
        for s in report.skipped:
            w.writerow([s.source, "", "", "", "", "", s.reason])
    return path


def bar_chart(report: CountReport, path: Path | None = None) -> bytes:
    """Horizontal bar chart of counts per class (PNG bytes; also written to ``path`` if given)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(reversed(report.rows))
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.2))
    colours = plt.get_cmap("tab10")
    ax.barh([L.display_name(r.code) for r in rows], [r.count for r in rows],
            color=[colours(L.LINEAGES.index(r.lineage) % 10) for r in rows])
    ax.barh([L.display_name(r.code) for r in rows], [r.flagged for r in rows], color="none", edgecolor="black", hatch="//",
            label="flagged for review")
    ax.set_xlabel("cells")
    ax.set_title(f"Differential count ({report.n_cells} cells)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    if path:
        Path(path).write_bytes(buf.getvalue())
    return buf.getvalue()


def write_html(report: CountReport, path: Path, chart_png: bytes | None = None) -> Path:
    """A self-contained HTML report (chart embedded) that states model, version and disclaimer."""
    esc = html.escape
    chart_png = chart_png or bar_chart(report)
    rows = "".join(
        f"<tr><td>{esc(r.lineage)}</td><td>{esc(L.display_name(r.code))}</td><td>{r.count}</td><td>{r.percent:.1f}</td>"
        f"<td>{'' if r.mean_confidence is None else f'{r.mean_confidence:.3f}'}</td><td>{r.flagged}</td></tr>"
        for r in report.rows)
    flagged = "".join(f"<li>{esc(n)}: {esc(L.display_name(p.top_code))} ({p.confidence:.2f})</li>"
                      for n, p in report.images if p.flagged) or "<li>none</li>"
    skipped = "".join(f"<li>{esc(s.source)}: {esc(s.reason)}</li>" for s in report.skipped) or "<li>none</li>"
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>bmc differential count</title>
<style>body{{font-family:sans-serif;max-width:900px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #999;padding:4px 8px}}.warn{{background:#fff3cd;padding:1em;border:1px solid #e0c36c}}</style></head><body>
<h1>Differential count (research use only)</h1>
<p class="warn"><strong>{esc(DISCLAIMER)}</strong></p>
<p>Model: <code>{esc(report.model_name)}</code>, version <code>{esc(report.model_version)}</code>; bmc {__version__};
created {esc(report.created)}.<br>Cells counted: {report.n_cells}; flagged for review (calibrated confidence below
{report.threshold:.2f}): {report.n_flagged}; files skipped: {len(report.skipped)}.<br>Myeloid : erythroid ratio: {esc(report.me_ratio_text)}</p>
<table><tr><th>lineage</th><th>cell type</th><th>count</th><th>%</th><th>mean confidence</th><th>flagged</th></tr>{rows}</table>
<p><img alt="counts per class" src="data:image/png;base64,{base64.b64encode(chart_png).decode()}"></p>
<h2>Flagged for review</h2><ul>{flagged}</ul><h2>Skipped files</h2><ul>{skipped}</ul></body></html>"""
    Path(path).write_text(page, encoding="utf-8")
    return Path(path)


def write_all(report: CountReport, out_dir: Path) -> dict[str, Path]:
    """CSV, chart PNG and HTML report into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    png = bar_chart(report, out_dir / "counts.png")
    return {
        "csv": write_csv(report, out_dir / "predictions.csv"),
        "chart": out_dir / "counts.png",
        "html": write_html(report, out_dir / "report.html", png),
    }

