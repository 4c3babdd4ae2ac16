"""A differential count on paper: the table the app shows, the CSV (one row per image, both labels, where the label
comes from), the bar chart and the printable HTML report; and reading a review CSV back.

The count itself — rows, intervals, headline, review and learning — is :mod:`bmc.count.differential`.
"""

from __future__ import annotations

import base64
import csv
import html
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bmc import __version__
from bmc.constants import DISCLAIMER
from bmc.count.differential import CountReport, CountRow
from bmc.count.learning import SOURCE_LEARNT, SOURCE_MODEL, SOURCE_REVIEWED, SOURCES
from bmc.labels import (
    NOT_COUNTED,
    code_of,
    display_name,
    full_name,
    me_convention,
    not_counted_text,
)

TABLE_HEADERS = ["group", "cell type", "count", "% of nucleated cells", "95 % CI", "flagged", "labels: model · learnt · reviewed"]


def _sources(counts: dict[str, int]) -> str:
    return " · ".join(str(counts.get(s, 0)) for s in SOURCES)


def _pct(row: CountRow) -> str:
    return "—" if row.percent is None else f"{row.percent:.1f}"


def _ci(row: CountRow) -> str:
    return "not counted" if not row.counted else "—" if row.ci is None else f"{row.ci[0]:.1f}–{row.ci[1]:.1f}"


def table_note(report: CountReport) -> str:
    """The conventions under the table, in words: the denominator, the intervals and which cells go on each side
    of the M:E ratio (conventions differ between labs, so it says which one this count follows)."""
    return (
        f"Percentages are of nucleated cells: {not_counted_text(report.codes)} are listed but left out of the "
        "denominator. 95 % intervals are exact binomial (Clopper–Pearson), as in the Rümke tables of CLSI H20. "
        + me_convention(report.codes)
    )


def table(report: CountReport) -> list[list[object]]:
    """Rows for a UI table (see :data:`TABLE_HEADERS`), ending with the total row; a group is named on its first
    row only, as on a printed differential."""
    groups = [r.group for r in report.rows]
    rows: list[list[object]] = [
        [r.group if i == 0 or groups[i - 1] != r.group else "", display_name(r.code), r.count, _pct(r), _ci(r), r.flagged]
        + [_sources(r.sources)]
        for i, r in enumerate(report.rows)
    ]
    rows.append(
        [
            "total",
            f"{report.n_counted} nucleated + {report.n_images - report.n_counted} not counted",
            report.n_images,
            "100.0" if report.n_counted else "—",
            "",
            report.n_flagged,
            _sources(report.source_counts),
        ]
    )
    return rows


SEEN_COLUMNS = ("reviewed", "seen", "confirmed")
"""A review file's optional column marking the rows of cells the reviewer saw (opened and confirmed or relabelled)."""
YES = frozenset({"yes", "y", "true", "1", "x", "seen", "confirmed", "reviewed"})
EVERY_CELL_SEEN = "every cell seen"
"""Said in a comment line (``# ...``) at the top of a review file: its rows are every cell the reviewer saw."""


@dataclass
class ReviewFile:
    """A review file read against a count: labels by image name, the names of the cells seen, and notes."""

    labels: dict[str, str]
    seen: frozenset[str]
    notes: list[str]


def read_corrections(path: str | Path, report: CountReport) -> ReviewFile:
    """A review file: a CSV with columns ``image`` and ``label`` (a code, a full name or the app's display name such
    as "Myelocyte (MYB)"). A row is a cell *seen* when its ``reviewed`` (or ``seen``, ``confirmed``) column says yes,
    or when a comment line at the top says ``# every cell seen``; the other rows are corrections only, which stand
    but teach the learning review nothing (:mod:`bmc.count.learning`). Raises ValueError, in one line and before
    anything is applied, for an empty file, a label the model lacks (its classes listed) or names not in the
    count (listed); an image reviewed twice is a note: the last line stands."""
    lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
    top = 0
    while top < len(lines) and lines[top].lstrip().startswith("#"):
        top += 1
    every_seen = any(EVERY_CELL_SEEN in line.lower() for line in lines[:top])
    reader = csv.DictReader(lines[top:])
    columns = {(f or "").strip().lower(): f for f in reader.fieldnames or []}
    if not columns:
        raise ValueError(f"{path}: empty, no review in it (a CSV with columns image and label): nothing applied")
    if not {"image", "label"} <= set(columns):
        raise ValueError(f"{path}: a review file needs the columns 'image' and 'label' (found {', '.join(reader.fieldnames or [])})")
    marker = next((columns[c] for c in SEEN_COLUMNS if c in columns), None)
    labels: dict[str, str] = {}
    seen: set[str] = set()
    first: dict[str, int] = {}
    notes, bad = [], []
    for line, row in enumerate(reader, start=top + 2):
        name, label = (row[columns["image"]] or "").strip(), (row[columns["label"]] or "").strip()
        if not name and not label:
            continue
        code = code_of(label, report.codes)
        if not name or code not in report.codes:
            bad.append(f"line {line} {label!r}" if name else f"line {line} (no image name)")
            continue
        if name in labels:
            before = f"line {first[name]}, as {labels[name]}"
            notes.append(f"{path}, line {line}: {name} was reviewed before ({before}); the last line ({code}) stands")
        labels[name], first[name] = code, line
        seen.discard(name)
        if every_seen or (marker and (row[marker] or "").strip().lower() in YES):
            seen.add(name)
    if bad:
        raise ValueError(f"{path}: {', '.join(bad[:10])}: not a class of this model ({', '.join(report.codes)}); nothing applied")
    if not labels:
        raise ValueError(f"{path}: empty, no review in it (a header and no rows): nothing applied")
    try:
        report.check_review(labels)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    return ReviewFile(labels, frozenset(seen), notes)


def write_csv(report: CountReport, path: Path) -> Path:
    """Per-image model and reviewed labels (and skipped files) as CSV."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(
            [
                "file",
                "model_label",
                "model_label_name",
                "confidence",
                "flagged_for_review",
                "top3",
                "reviewed",
                "reviewed_label",
                "label_source",
                "counted",
                "skipped_reason",
            ]
        )
        for cell in report.cells:
            p = cell.prediction
            top3 = "; ".join(f"{c} {s:.3f}" for c, s in p.top_k(3))
            label = report.label(cell)
            w.writerow(
                [
                    cell.name,
                    p.top_code,
                    full_name(p.top_code),
                    f"{p.confidence:.4f}",
                    "yes" if p.flagged else "no",
                    top3,
                    "yes" if cell.name in report.corrections else "no",
                    label,
                    report.source(cell),
                    "no" if label in NOT_COUNTED else "yes",
                    "",
                ]
            )
        for s in report.skipped:
            w.writerow([s.source, "", "", "", "", "", "", "", "", "no", s.reason])  # screened out or unreadable: never a class
    return path


def bar_chart(report: CountReport, path: Path | None = None) -> bytes:
    """Horizontal bars of the counted classes in % of nucleated cells, each bar split by where its labels come from;
    the classes left out of the denominator (artefacts, cells not identifiable) are written apart under the axis in
    images, so one axis means one thing (PNG bytes; also written to ``path``)."""
    import matplotlib  # lazy: the chart is the one user of matplotlib in serving (0.4 s to import)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in reversed(report.rows) if r.counted]
    apart = [r for r in report.rows if not r.counted]
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(rows) + 2.2))
    left = np.zeros(len(rows))
    styles = {
        SOURCE_MODEL: ("#9ecae1", "the model"),
        SOURCE_LEARNT: ("#fdae6b", "learnt from this review"),
        SOURCE_REVIEWED: ("#31a354", "reviewed"),
    }
    names = [display_name(r.code) for r in rows]
    for source, (colour, label) in styles.items():
        share = np.array([100.0 * r.sources.get(source, 0) / (report.n_counted or 1) for r in rows])
        ax.barh(names, share, left=left, color=colour, label=label)
        left += share
    ax.set_xlim(0, max(10.0, float(left.max(initial=0)) * 1.1))
    ax.set_xlabel("% of nucleated cells")
    ax.set_title(f"Differential count: {report.n_counted} nucleated cells, {report.n_reviewed} reviewed", loc="left", fontsize=11)
    ax.legend(loc="upper left", bbox_to_anchor=(0, -0.5 / (0.4 * len(rows) + 1)), ncol=3, frameon=False, title="labels from")
    if apart:
        note = "Not counted (left out of the denominator): " + ", ".join(f"{display_name(r.code)} {r.count}" for r in apart)
        fig.text(0.01, 0.01, note + f" of {report.n_images} images", fontsize=9, color="#444")
    fig.tight_layout(rect=(0, 0.05 if apart else 0, 1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    if path:
        Path(path).write_bytes(buf.getvalue())
    return buf.getvalue()


_CSS = """body{font-family:sans-serif;max-width:900px;margin:2em auto;color:#111}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #999;padding:3px 8px;text-align:left}td.n{text-align:right}tr.total td{font-weight:bold;border-top:2px solid #333}
tr.group td{background:#eee;font-style:italic}.warn{background:#fff3cd;padding:.6em 1em;border:1px solid #e0c36c}
.head{font-size:1.1em}.cells{display:flex;flex-wrap:wrap;gap:8px}.cell{width:130px;font-size:.75em;border:1px solid #ccc;padding:4px}
.cell img{width:112px;height:112px;object-fit:contain;display:block}
@media print{body{margin:0;max-width:none;font-size:10pt}.page1{page-break-after:always}.chart{display:none}
.cells{page-break-before:always}}"""


def write_html(report: CountReport, path: Path, chart_png: bytes | None = None) -> Path:
    """One self-contained HTML file (images embedded): headline figures and the table first (the
    first printed page), then the chart, the flagged cells with their top-3 classes, skipped files."""
    esc = html.escape
    chart_png = chart_png or bar_chart(report)
    body, last_group = [], None
    for r in report.rows:
        if r.group != last_group:
            body.append(f'<tr class="group"><td colspan="6">{esc(r.group)}</td></tr>')
            last_group = r.group
        body.append(
            f"<tr><td>{esc(display_name(r.code))}</td><td class=n>{r.count}</td><td class=n>{_pct(r)}</td>"
            f"<td>{_ci(r)}</td><td class=n>{r.flagged}</td><td>{_sources(r.sources)}</td></tr>"
        )
    body.append(
        f'<tr class="total"><td>total ({report.n_counted} nucleated + {report.n_images - report.n_counted} not counted)</td>'
        f"<td class=n>{report.n_images}</td><td class=n>{'100.0' if report.n_counted else '—'}</td><td></td>"
        f"<td class=n>{report.n_flagged}</td><td>{_sources(report.source_counts)}</td></tr>"
    )
    warnings = "".join(f'<p class="warn">{esc(w)}</p>' for w in report.warnings)
    cells = []
    for cell in report.cells:
        if not (cell.prediction.flagged or cell.name in report.corrections):
            continue
        img = f'<img alt="" src="data:image/jpeg;base64,{base64.b64encode(cell.thumbnail).decode()}">' if cell.thumbnail else ""
        top3 = "<br>".join(f"{esc(c)} {s:.0%}" for c, s in cell.prediction.top_k(3))
        review = (
            f"<br><b>reviewed: {esc(report.label(cell))}</b>"
            if cell.name in report.corrections
            else f"<br><i>learnt: {esc(report.label(cell))}</i>"
            if cell.name in report.learnt
            else "<br><i>not reviewed</i>"
        )
        cells.append(f'<div class="cell">{img}{esc(cell.name)}<br>{top3}{review}</div>')
    skipped = "".join(f"<li>{esc(s.source)}: {esc(s.reason)}</li>" for s in report.skipped) or "<li>none</li>"
    blast = esc(report.blast_text)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>bmc differential count</title><style>{_CSS}</style></head><body>
<div class="page1"><h1>Differential count (research use only)</h1>
<p class="warn"><strong>{esc(DISCLAIMER)}</strong></p>
<p class="head">Nucleated cells counted: <b>{report.n_counted}</b> &nbsp; Blasts: <b>{blast}</b> &nbsp;
M:E ratio: <b>{esc(report.me_ratio_text)}</b></p>
<p>{esc(report.review_status)}; not counted or skipped: {len(report.skipped)}.</p><p>{esc(report.sources_text)}</p>{warnings}
<table><tr><th>cell type</th><th>count</th><th>% of nucleated cells</th><th>95 % CI (exact binomial)</th><th>flagged</th>
<th>labels: model · learnt · reviewed</th></tr>{"".join(body)}</table>
<p>{esc(table_note(report))}</p>
<p>Model: <code>{esc(report.model_name)}</code>, version <code>{esc(report.model_version)}</code>; review threshold
{report.threshold:.3f}; bmc {__version__}; created {esc(report.created)}.</p></div>
<p class="chart"><img alt="counts per class" src="data:image/png;base64,{base64.b64encode(chart_png).decode()}"></p>
<h2>Flagged and reviewed cells (top-3 classes of the model)</h2><div class="cells">{"".join(cells) or "none"}</div>
<h2>Not counted (several cells, no cell, not a micrograph) and skipped files</h2><ul>{skipped}</ul></body></html>"""
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
