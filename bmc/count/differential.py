"""Differential counts: many single-cell predictions → the count a haematologist reads, reviewed.

Conventions (ICSH 2015 marrow differential; CLSI H20-A2 for the intervals): rows in haematologists' order, in
the groups of :data:`bmc.labels.COUNT_GROUPS`; percentages of **nucleated cells** (the classes of
:data:`bmc.labels.NOT_COUNTED` are shown but left out of the denominator), each with an exact binomial
(Clopper–Pearson) 95 % interval, as the Rümke tables of CLSI H20 tabulate; headline figures: cells counted,
blast %, and the M:E ratio when the model knows erythroid classes; a count below :data:`MIN_CELLS_WARNING`
cells gets a warning (ICSH asks for 500 in marrow).

A count is *reviewed* by confirming or relabelling cells (``corrections``: image name → code); every figure
is then computed from the reviewed labels. Each review also teaches the count (:mod:`bmc.count.learning`): where
the model is out of its depth, a correction learnt from the cells the reviewer *saw* re-labels the unreviewed
ones, and every cell says where its label comes from (:data:`bmc.count.learning.SOURCES`). A correction alone (a
corrections-only file) is not a cell seen, and a cell the app opened but the reviewer left without a decision
pauses learning: either would make the model look worse than it is. The last review can be undone. On paper:
:mod:`bmc.count.report`.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence, Sized
from dataclasses import dataclass, field
from datetime import UTC, datetime

from PIL import Image
from tqdm.auto import tqdm

from bmc.calibration import proportion_ci
from bmc.count.learning import SOURCES
from bmc.count.reviewing import Reviewing
from bmc.images import SkippedFile
from bmc.labels import (
    COUNT_GROUPS,
    ERYTHROID_FOR_ME,
    MYELOID_FOR_ME,
    NOT_COUNTED,
    count_group,
    full_name,
    not_counted_text,
    sort_codes,
)
from bmc.locate.screening import ScreenedOut, screen
from bmc.serve.predictor import Prediction, Predictor

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
    """False for the classes left out of the denominator (:data:`bmc.labels.NOT_COUNTED`)."""
    percent: float | None
    ci: tuple[float, float] | None
    flagged: int
    sources: dict[str, int] = field(default_factory=dict)
    """How many of the row's cells have their label from each of :data:`bmc.count.learning.SOURCES`."""


@dataclass
class CountReport(Reviewing):
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
    """Whether reviews re-label the unreviewed cells (:mod:`bmc.count.learning`); off, the model's labels stand."""
    learnt: dict[str, tuple[str, float]] = field(default_factory=dict)
    """Unreviewed cells re-labelled by this review: name → (code, the head's probability of it)."""
    learning_note: str = "no cell reviewed yet: the model's labels stand"
    corrected_only: frozenset[str] = frozenset()
    """Reviewed cells that are corrections only (a file's rows without a seen marker): their labels stand, but
    they teach nothing, as nothing is known of the cells the reviewer passed over (:mod:`bmc.count.learning`)."""
    offered: str | None = None
    """The cell the app opened for review next (the head of the queue)."""
    passed_over: frozenset[str] = frozenset()
    """Cells the app opened that the reviewer left without a decision: while any is open, learning pauses."""
    previous: CountReport | None = field(default=None, repr=False)
    """The count before the last review (one level: :meth:`undo`)."""

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
                    group=count_group(code, self.codes),
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
            f"{self.n_counted} nucleated cells counted ({self.n_images - self.n_counted} not counted: "
            f"{not_counted_text(self.codes)}); blasts {self.blast_text}; M:E ratio {self.me_ratio_text}; "
            f"{self.review_status}. {self.sources_text}"
        )

    @property
    def review_status(self) -> str:
        """Flagged, reviewed and relabelled cells: the one wording of the headline, the app and the HTML report."""
        return (
            f"{self.n_flagged} flagged for review (calibrated confidence below {self.threshold:.2f}), "
            f"{self.n_reviewed} reviewed, {self.n_changed} relabelled"
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
    """Predict decoded items (see ``bmc.serve.uploads.iter_images``) batch by batch, keeping the skipped ones.

    ``thumbnails``: keep a small JPEG of ``"flagged"`` cells (the HTML report shows them), of
    ``"all"`` cells with the image at review size too (the app lets a reviewer open any cell), or
    ``"none"``; each image is decoded once. The progress bar moves when a batch has been through the model (the
    work that takes the time), so its rate is cells classified per second, decoding included."""
    done: list[Cell] = []
    skipped: list[SkippedFile] = []
    batch: list[tuple[str, Image.Image]] = []
    seen: dict[str, int] = {}

    def flush() -> None:
        if batch:
            for (name, image), screened in zip(batch, screen(predictor, [im for _, im in batch], batch_size)):
                pred = screened.prediction
                if pred is None or not screened.verdict.ok:  # several cells, no cell: listed, never a class
                    skipped.append(ScreenedOut(name, screened.verdict.not_counted, screened.verdict))
                    continue
                keep = thumbnails == "all" or (thumbnails == "flagged" and pred.flagged)
                full = thumbnail(image, REVIEW_PX) if thumbnails == "all" else None
                done.append(Cell(name, pred, thumbnail(image) if keep else None, full))
            bar.update(len(batch))
            batch.clear()

    bar = tqdm(total=len(items) if isinstance(items, Sized) else None, desc="cells classified", unit="cell", disable=not progress)
    for item in items:
        if isinstance(item, SkippedFile):
            skipped.append(item)
            if bar.total:  # a skipped file is no cell to classify
                bar.total -= 1
            continue
        name, image = item
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:  # two uploads called cell.jpg: each needs its own name to be reviewed
            name = f"{name} ({seen[name]})"
        batch.append((name, image))
        if len(batch) >= batch_size:
            flush()
    flush()
    bar.close()
    return done, skipped
