"""Differential counts: many single-cell predictions → the count a haematologist reads, reviewed.

Conventions (ICSH 2015 marrow differential; CLSI H20-A2 for the intervals):

* rows in haematologists' order, in the groups of :data:`bmc.labels.COUNT_GROUPS` (blasts;
  granulocytic series from promyelocytes to segmented neutrophils; eosinophils and basophils;
  monocytes; lymphocytes and plasma cells; erythroid precursors; other);
* percentages are of **nucleated cells**: artefacts, "not identifiable" and smudge cells are
  counted and shown but left out of the denominator;
* every percentage carries a 95 % confidence interval by the exact binomial (Clopper–Pearson)
  method, which is what the Rümke tables of CLSI H20 tabulate (from ``scipy.stats``);
* headline figures: cells counted, blast %, and the M:E ratio (granulocytic series with
  eosinophils and basophils, to erythroid precursors) when the model knows erythroid classes;
* a count below :data:`MIN_CELLS_WARNING` cells gets a warning (ICSH asks for 500 in marrow).

A count is *reviewed* by confirming or relabelling cells (``corrections``: image name → code);
every figure is then computed from the reviewed labels, and the CSV keeps both labels per image.
Each review also teaches the count (:mod:`bmc.adaptation`): where the model is out of its depth, a
head learnt from the reviewed cells re-labels the unreviewed ones. Every cell says where its label
comes from (:data:`bmc.adaptation.SOURCES`: model, learnt from this review, reviewed).
"""

from __future__ import annotations

import base64
import csv
import html
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.stats import binomtest
from tqdm.auto import tqdm

from bmc import __version__
from bmc.adaptation import SOURCE_LEARNT, SOURCE_MODEL, SOURCE_REVIEWED, SOURCES, relabel
from bmc.images import SkippedFile
from bmc.inference import Prediction, Predictor
from bmc.labels import (
    COUNT_GROUPS,
    ERYTHROID_FOR_ME,
    MYELOID_FOR_ME,
    NOT_COUNTED,
    code_of,
    count_group,
    display_name,
    full_name,
    sort_codes,
)

DISCLAIMER = (
    "Research use only. Not a medical device and not for diagnosis: every count must be reviewed by a "
    "qualified haematologist. The model knows only the classes listed; other cell types receive one of "
    "these labels, and cells flagged 'uncertain' need manual review."
)
MIN_CELLS_WARNING = 200
"""Below this many nucleated cells a count is too small to read (ICSH recommends 500 for marrow)."""
ICSH_MARROW_CELLS = 500
THUMBNAIL_PX = 112
"""Side of the stored cell thumbnails (review gallery, HTML report): enough to see the cell, a few kB each."""
REVIEW_PX = 512
"""Longest side a cell is kept at for the review screen: single-cell crops (250-400 px) keep their full resolution."""


@dataclass
class Cell:
    """One counted image: its name, the model's prediction, a small JPEG thumbnail and the image at
    review size (or None)."""

    name: str
    prediction: Prediction
    thumbnail: bytes | None = None
    image: bytes | None = None


@dataclass
class CountRow:
    """One class of the count (from the reviewed labels)."""

    code: str
    name: str
    group: str
    count: int
    counted: bool
    """False for the classes left out of the denominator (artefact, not identifiable, smudge cell)."""
    percent: float | None
    ci: tuple[float, float] | None
    flagged: int
    sources: dict[str, int] = field(default_factory=dict)
    """How many of the row's cells have their label from each of :data:`bmc.adaptation.SOURCES`."""


def proportion_ci(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact binomial (Clopper–Pearson) interval of k/n in percent, as the Rümke/CLSI H20 tables give."""
    ci = binomtest(k, n).proportion_ci(confidence_level=level, method="exact")
    return 100.0 * ci.low, 100.0 * ci.high


@dataclass
class CountReport:
    """A differential count: the cells, the model's labels and the reviewer's corrections."""

    model_name: str
    model_version: str
    threshold: float
    codes: list[str]
    cells: list[Cell]
    skipped: list[SkippedFile] = field(default_factory=list)
    corrections: dict[str, str] = field(default_factory=dict)
    created: str = field(default_factory=lambda: datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"))
    temperature: float = 1.0
    validation_flagged: float | None = None
    """The model's calibration and the share of its validation images it flags (the learning review's baseline)."""
    learn: bool = True
    """Whether reviews re-label the unreviewed cells (:mod:`bmc.adaptation`); off, the model's labels stand."""
    learnt: dict[str, tuple[str, float]] = field(default_factory=dict)
    """Unreviewed cells re-labelled by this review: name → (code, the head's probability of it)."""
    learning_note: str = "no cell reviewed yet: the model's labels stand"

    @cached_property
    def _by_name(self) -> dict[str, Cell]:
        return {c.name: c for c in self.cells}

    def cell(self, name: str) -> Cell | None:
        """The counted image of that name (names are unique within a count); a dict lookup, as the review
        queue and the gallery look up every cell of a count on each render."""
        return self._by_name.get(name)

    def label(self, cell: Cell) -> str:
        """A cell's label now: the reviewer's, else the one learnt from this review, else the model's."""
        if cell.name in self.corrections:
            return self.corrections[cell.name]
        return self.learnt[cell.name][0] if cell.name in self.learnt else cell.prediction.top_code

    def source(self, cell: Cell) -> str:
        """Where a cell's label comes from: one of :data:`bmc.adaptation.SOURCES`."""
        if cell.name in self.corrections:
            return SOURCE_REVIEWED
        return SOURCE_LEARNT if cell.name in self.learnt else SOURCE_MODEL

    def confidence(self, cell: Cell) -> float:
        """How sure the current label is (1 for a reviewed cell): the review queue's order."""
        if cell.name in self.corrections:
            return 1.0
        return self.learnt[cell.name][1] if cell.name in self.learnt else cell.prediction.confidence

    def review_queue(self) -> list[str]:
        """Unreviewed cells, least confident under the current labels first, then the reviewed ones."""
        open_ = sorted((c for c in self.cells if c.name not in self.corrections), key=self.confidence)
        return [c.name for c in open_] + [c.name for c in self.cells if c.name in self.corrections]

    def reviewed(self, corrections: dict[str, str]) -> CountReport:
        """The same count with more review decisions (image name → code; the model's code confirms),
        and the unreviewed cells re-labelled by what the reviewed ones teach (:meth:`relearn`)."""
        unknown = sorted(set(corrections.values()) - set(self.codes))
        if unknown:
            raise ValueError(
                f"labels {unknown} are not classes of this model ({', '.join(self.codes)}); a class the model "
                "lacks can be added with bmc adapt"
            )
        missing = sorted(n for n in corrections if n not in self._by_name)
        if missing and len(missing) == len(corrections):
            raise ValueError(
                f"none of the {len(corrections)} reviewed image(s) is in this count (e.g. {missing[0]}): the review is for another count"
            )
        if missing:
            raise ValueError(f"{len(missing)} reviewed image(s) are not in this count, e.g. {missing[0]}")
        return replace(self, corrections={**self.corrections, **corrections}).relearn()

    def relearn(self) -> CountReport:
        """Refit the learning review on the reviewed cells and re-label the others (model labels if off,
        or if the cells carry no logits and embeddings, e.g. a count read back from a CSV)."""
        usable = self.learn and all(c.prediction.logits is not None and c.prediction.embedding is not None for c in self.cells)
        if not usable:
            note = "learning is off: the model's labels stand" if not self.learn else self.learning_note
            return replace(self, learnt={}, learning_note=note)
        model_codes = list(self.cells[0].prediction.probs)  # the model's own class order (logits' columns)
        index = {c.name: i for i, c in enumerate(self.cells)}
        logits = [c.prediction.logits for c in self.cells if c.prediction.logits is not None]
        embeddings = [c.prediction.embedding for c in self.cells if c.prediction.embedding is not None]
        state = relabel(
            np.stack(logits),
            np.stack(embeddings),
            {index[n]: model_codes.index(code) for n, code in self.corrections.items()},
            self.temperature,
            self.threshold,
            self.validation_flagged,
        )
        learnt = {
            c.name: (model_codes[state.labels[i]], float(state.confidence[i]))
            for i, c in enumerate(self.cells)
            if state.source[i] == SOURCE_LEARNT
        }
        return replace(self, learnt=learnt, learning_note=state.reason)

    @property
    def n_images(self) -> int:
        return len(self.cells)

    @property
    def n_counted(self) -> int:
        """The denominator: nucleated, assessable cells."""
        return sum(self.label(c) not in NOT_COUNTED for c in self.cells)

    @property
    def n_flagged(self) -> int:
        return sum(c.prediction.flagged for c in self.cells)

    @property
    def n_reviewed(self) -> int:
        return len(self.corrections)

    @property
    def n_changed(self) -> int:
        return sum(1 for c in self.cells if c.name in self.corrections and self.corrections[c.name] != c.prediction.top_code)

    @property
    def n_learnt_changed(self) -> int:
        """Unreviewed cells whose learnt label differs from the model's."""
        return sum(1 for c in self.cells if c.name in self.learnt and self.learnt[c.name][0] != c.prediction.top_code)

    @property
    def source_counts(self) -> dict[str, int]:
        """How many cells have their label from each source."""
        out = dict.fromkeys(SOURCES, 0)
        for c in self.cells:
            out[self.source(c)] += 1
        return out

    @property
    def n_flagged_open(self) -> int:
        """Flagged cells nobody has reviewed yet."""
        return sum(c.prediction.flagged and c.name not in self.corrections for c in self.cells)

    @property
    def rows(self) -> list[CountRow]:
        """One row per class the model knows, in count order, zeros included."""
        n = self.n_counted
        order = [code for _, group in COUNT_GROUPS for code in group if code in self.codes]
        order += [c for c in self.codes if c not in order]  # custom labels
        out = []
        for code in order:
            mine = [c for c in self.cells if self.label(c) == code]
            counted = code not in NOT_COUNTED
            out.append(
                CountRow(
                    code=code,
                    name=full_name(code),
                    group=count_group(code),
                    count=len(mine),
                    counted=counted,
                    percent=100.0 * len(mine) / n if counted and n else None,
                    ci=proportion_ci(len(mine), n) if counted and n else None,
                    flagged=sum(c.prediction.flagged for c in mine),
                    sources={s: sum(self.source(c) == s for c in mine) for s in SOURCES},
                )
            )
        return out

    def _count(self, codes: Iterable[str]) -> int:
        wanted = set(codes)
        return sum(self.label(c) in wanted for c in self.cells)

    @property
    def blast_percent(self) -> tuple[float, tuple[float, float]] | None:
        """Blast % of nucleated cells with its 95 % interval (None without blasts class or cells)."""
        if "BLA" not in self.codes or not self.n_counted:
            return None
        k = self._count(["BLA"])
        return 100.0 * k / self.n_counted, proportion_ci(k, self.n_counted)

    @property
    def me_ratio(self) -> float | None:
        """Myeloid (granulocytic series, eosinophils, basophils) : erythroid precursors."""
        if not set(self.codes) & ERYTHROID_FOR_ME:
            return None
        erythroid = self._count(ERYTHROID_FOR_ME)
        return self._count(MYELOID_FOR_ME) / erythroid if erythroid else None

    @property
    def me_ratio_text(self) -> str:
        if not set(self.codes) & ERYTHROID_FOR_ME:
            return "not available: this model knows no erythroid class"
        if self.me_ratio is None:
            return "not available: no erythroid precursors in this count"
        return f"{self.me_ratio:.2f} : 1"

    @property
    def blast_text(self) -> str:
        if self.blast_percent is None:
            return "not available" + (": this model knows no blast class" if "BLA" not in self.codes else ": no nucleated cells")
        pct, (lo, hi) = self.blast_percent
        return f"{pct:.1f} % (95 % CI {lo:.1f}–{hi:.1f})"

    @property
    def warnings(self) -> list[str]:
        out = []
        if self.n_counted < MIN_CELLS_WARNING:
            out.append(
                f"Only {self.n_counted} nucleated cells were counted: below {MIN_CELLS_WARNING}, the percentages are too "
                f"uncertain to read (see the intervals); ICSH recommends at least {ICSH_MARROW_CELLS} for a marrow differential."
            )
        if self.n_flagged_open:
            out.append(f"{self.n_flagged_open} flagged cells have not been reviewed: the count is not final.")
        return out

    def headline(self) -> str:
        """The figures a reader looks at first, in one line of text."""
        return (
            f"{self.n_counted} nucleated cells counted ({self.n_images - self.n_counted} not counted: artefacts, "
            f"not identifiable, smudge cells); blasts {self.blast_text}; M:E ratio {self.me_ratio_text}; "
            f"{self.review_status}. {self.sources_text}"
        )

    @property
    def review_status(self) -> str:
        """Flagged, reviewed and relabelled cells: the one wording of the headline, the app and the HTML report."""
        return (
            f"{self.n_flagged} flagged for review (calibrated confidence below {self.threshold:.2f}), "
            f"{self.n_reviewed} reviewed, {self.n_changed} relabelled"
        )

    @property
    def sources_text(self) -> str:
        """Where the labels come from, and what the learning review decided, in one sentence."""
        n = self.source_counts
        return (
            f"Labels: {n[SOURCE_MODEL]} from the model, {n[SOURCE_LEARNT]} learnt from this review "
            f"({self.n_learnt_changed} of them changed), {n[SOURCE_REVIEWED]} reviewed; {self.learning_note}."
        )


def thumbnail(image: Image.Image, size: int = THUMBNAIL_PX) -> bytes:
    """A small JPEG of a cell for review galleries and the HTML report."""
    small = image.copy()
    small.thumbnail((size, size))
    buf = io.BytesIO()
    small.convert("RGB").save(buf, "JPEG", quality=85)
    return buf.getvalue()


def build_report(
    cells: Sequence[Cell],
    codes: Sequence[str],
    model_name: str,
    model_version: str,
    threshold: float,
    skipped: Sequence[SkippedFile] = (),
    temperature: float = 1.0,
    validation_flagged: float | None = None,
    learn: bool = True,
) -> CountReport:
    """A count over the model's classes (in haematologists' order); nothing reviewed yet."""
    return CountReport(
        model_name,
        model_version,
        threshold,
        sort_codes(codes),
        list(cells),
        list(skipped),
        temperature=temperature,
        validation_flagged=validation_flagged,
        learn=learn,
    )


def report_for(predictor: Predictor, cells: Sequence[Cell], skipped: Sequence[SkippedFile] = (), learn: bool = True) -> CountReport:
    """:func:`build_report` with a predictor's model name, version and calibration."""
    return build_report(
        cells,
        predictor.codes,
        predictor.name,
        predictor.version,
        predictor.threshold,
        skipped,
        predictor.temperature,
        predictor.validation_flagged,
        learn,
    )


def predict_stream(
    predictor: Predictor,
    items: Iterable[tuple[str, Image.Image] | SkippedFile],
    batch_size: int = 32,
    progress: bool = False,
    thumbnails: str = "flagged",
) -> tuple[list[Cell], list[SkippedFile]]:
    """Predict decoded items (see ``bmc.uploads.iter_images``) batch by batch, keeping the skipped ones.

    ``thumbnails``: keep a small JPEG of ``"flagged"`` cells (the HTML report shows them), of
    ``"all"`` cells with the image at review size too (the app lets a reviewer open any cell), or
    ``"none"``; each image is decoded once."""
    done: list[Cell] = []
    skipped: list[SkippedFile] = []
    batch: list[tuple[str, Image.Image]] = []
    seen: dict[str, int] = {}

    def flush() -> None:
        if batch:
            for (name, image), pred in zip(batch, predictor.predict([im for _, im in batch], batch_size)):
                keep = thumbnails == "all" or (thumbnails == "flagged" and pred.flagged)
                full = thumbnail(image, REVIEW_PX) if thumbnails == "all" else None
                done.append(Cell(name, pred, thumbnail(image) if keep else None, full))
            batch.clear()

    for item in tqdm(items, desc="cells", unit="img", disable=not progress):
        if isinstance(item, SkippedFile):
            skipped.append(item)
            continue
        name, image = item
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:  # two uploads called cell.jpg: each needs its own name to be reviewed
            name = f"{name} ({seen[name]})"
        batch.append((name, image))
        if len(batch) >= batch_size:
            flush()
    flush()
    return done, skipped


TABLE_HEADERS = ["group", "cell type", "count", "% of nucleated cells", "95 % CI", "flagged", "labels: model · learnt · reviewed"]


def _sources(counts: dict[str, int]) -> str:
    return " · ".join(str(counts.get(s, 0)) for s in SOURCES)


def _pct(row: CountRow) -> str:
    return "—" if row.percent is None else f"{row.percent:.1f}"


def _ci(row: CountRow) -> str:
    return "not counted" if not row.counted else "—" if row.ci is None else f"{row.ci[0]:.1f}–{row.ci[1]:.1f}"


def table(report: CountReport) -> list[list[object]]:
    """Rows for a UI table (see :data:`TABLE_HEADERS`), ending with the total row."""
    rows: list[list[object]] = [
        [r.group, display_name(r.code), r.count, _pct(r), _ci(r), r.flagged, _sources(r.sources)] for r in report.rows
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


def read_corrections(path: str | Path, report: CountReport) -> tuple[dict[str, str], list[str]]:
    """A review file (CSV with columns ``image`` and ``label``; a label is a code, a full name or the app's
    display name such as "Myelocyte (MYB)"), and notes on what was odd but not wrong (an image reviewed
    twice: the last line stands)."""
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"image", "label"} <= set(reader.fieldnames):
            raise ValueError(f"{path}: a review file needs the columns 'image' and 'label' (found {reader.fieldnames})")
        out: dict[str, str] = {}
        notes: list[str] = []
        for line, row in enumerate(reader, start=2):
            code = code_of(row["label"] or "", report.codes)
            if code not in report.codes:
                raise ValueError(f"{path}, line {line}: {row['label']!r} is not a class of this model ({', '.join(report.codes)})")
            name = (row["image"] or "").strip()
            if name in out and out[name] != code:
                notes.append(f"{path}, line {line}: {name} was reviewed before as {out[name]}; the last review ({code}) stands")
            out[name] = code
    return out, notes


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
            w.writerow([s.source, "", "", "", "", "", "", "", "", "", s.reason])
    return path


def bar_chart(report: CountReport, path: Path | None = None) -> bytes:
    """Horizontal bars of the count per class in % of nucleated cells (classes left out of the denominator in
    % of all images, marked), each bar split by where its labels come from (PNG bytes; also written to ``path``)."""
    import matplotlib  # lazy: the chart is the one user of matplotlib in serving (0.4 s to import)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(reversed(report.rows))
    names = [display_name(r.code) + ("" if r.counted else " *") for r in rows]
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.6))
    left = np.zeros(len(rows))
    styles = {
        SOURCE_MODEL: ("#9ecae1", "model"),
        SOURCE_LEARNT: ("#fdae6b", "learnt from this review"),
        SOURCE_REVIEWED: ("#31a354", "reviewed"),
    }
    for source, (colour, label) in styles.items():
        share = np.array([100.0 * r.sources.get(source, 0) / ((report.n_counted if r.counted else report.n_images) or 1) for r in rows])
        ax.barh(names, share, left=left, color=colour, label=label)
        left += share
    ax.set_xlabel("% of nucleated cells (* % of all images: not counted)")
    ax.set_title(f"Differential count ({report.n_counted} nucleated cells, {report.n_reviewed} reviewed)")
    ax.legend(loc="lower right", title="label from")
    fig.tight_layout()
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
<p>{esc(report.review_status)}; files skipped: {len(report.skipped)}.</p><p>{esc(report.sources_text)}</p>{warnings}
<table><tr><th>cell type</th><th>count</th><th>% of nucleated cells</th><th>95 % CI (exact binomial)</th><th>flagged</th>
<th>labels: model · learnt · reviewed</th></tr>{"".join(body)}</table>
<p>Percentages are of nucleated cells: artefacts, not identifiable and smudge cells are counted but left out of the
denominator. Intervals are exact binomial (Clopper–Pearson), as in the Rümke tables of CLSI H20. The M:E ratio is the
granulocytic series with eosinophils and basophils to erythroid precursors; blasts are on neither side.</p>
<p>Model: <code>{esc(report.model_name)}</code>, version <code>{esc(report.model_version)}</code>; review threshold
{report.threshold:.3f}; bmc {__version__}; created {esc(report.created)}.</p></div>
<p class="chart"><img alt="counts per class" src="data:image/png;base64,{base64.b64encode(chart_png).decode()}"></p>
<h2>Flagged and reviewed cells (top-3 classes of the model)</h2><div class="cells">{"".join(cells) or "none"}</div>
<h2>Skipped files</h2><ul>{skipped}</ul></body></html>"""
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
