"""The app's handlers: a class whose methods the screens call, usable without a server (tests call them directly).

Every handler turns bad input into a ``gr.Error`` naming the problem, so the UI never shows a stack trace and the
server keeps serving; prediction, explanation and reporting live in the rest of ``bmc``.
"""

from __future__ import annotations

import io
import logging
import shutil
import tempfile
import time
from pathlib import Path

import gradio as gr
from PIL import Image

from bmc.constants import REPO_ROOT, SESSION_TTL_S
from bmc.count.differential import CountReport, predict_stream, report_for
from bmc.count.export import adapt_note, write_reviewed_zip
from bmc.count.report import table, write_all
from bmc.count.summary import cell_line, queue_caption, summary_markdown
from bmc.images import ImageError, open_image
from bmc.labels import display_name
from bmc.locate.fields import cell_at, field_overlays, iter_field_cells
from bmc.locate.screening import SEVERAL, screen
from bmc.model_folder import single_source_classes
from bmc.serve.explain import Explainer, get_method, overlay
from bmc.serve.faithfulness import curve_image
from bmc.serve.predictor import Predictor
from bmc.serve.uploads import UploadError, iter_images
from bmc.serve.verdict import one_cell_verdict

EXAMPLES_DIR = REPO_ROOT / "examples"  # shipped, cited in examples/README.md: a Space has no ../shared
HEAVY_CONCURRENCY = 1  # attribution and counting: many forward/backward passes, one at a time on a 2-core machine
CLASSIFY_CONCURRENCY = 2
QUEUE_SIZE = 64  # beyond this many waiting requests, new ones are told the server is busy
TABLE_MAX_HEIGHT = 900  # px: every row of a 21-class count and its total row without scrolling inside the table
MAX_GALLERY = 120  # the head of the review queue shown as thumbnails; every cell can still be opened by name
REVIEW_NOTE = (
    "Review decisions live only in this browser session's memory: nothing about them is kept on the server "
    "after you close the page. Download the CSV and report to keep them."
)
REVIEW_HELP = (
    "### Review a cell\nConfirm its label or choose another and save; each saved review re-labels the cells nobody reviewed "
    f"where the model is out of its depth (*learnt*), and the queue moves to the least sure cell. {REVIEW_NOTE}"
)
log = logging.getLogger("bmc.app")


def user_error(message: str) -> gr.Error:
    """A problem with what the user gave, shown in the UI; the server logs one line for it, not a traceback
    (tracebacks are for bugs: any other exception still prints one)."""
    log.warning("user error: %s", message)
    return gr.Error(message, print_exception=False)


class CellApp:
    """The app's handlers around one loaded model."""

    def __init__(self, predictor: Predictor):
        self.predictor = predictor
        self.secondary_only = single_source_classes(predictor.name) if Path(predictor.name).is_dir() else {}
        """Classes learnt only from a secondary source's images (for the bundled model: blood, not marrow)."""
        self.explainer = Explainer(predictor.model, predictor.processor, predictor.use_denoise)
        self.names = {display_name(c): c for c in predictor.codes}

    # ------------------------------------------------------------------ one cell
    @staticmethod
    def load(path: str | None) -> Image.Image:
        if not path:
            raise user_error("No image: upload a single-cell image (JPEG, PNG, TIFF or BMP) or take one with the camera.")
        try:
            return open_image(path, name=Path(path).name)
        except ImageError as exc:
            raise user_error(str(exc)) from None

    def classify(self, path: str | None, k: float) -> tuple[dict[str, float] | None, str]:
        """Top-k calibrated classes and a verdict that says when to review; a picture the screening refuses (several
        cells, no cell, not a microscope picture: :mod:`bmc.locate.screening`, as in a count) gets no class."""
        image = self.load(path)
        screened = screen(self.predictor, [image])[0]
        if screened.prediction is None or not screened.verdict.ok:
            v = screened.verdict
            todo = "Count them in *Differential count*, or crop one cell and upload it." if v.kind == SEVERAL else ""
            return None, f"⚠️ {v.headline}: {v.reason}. {todo or 'Upload a picture of one white or nucleated cell.'}"
        pred = screened.prediction
        top = {display_name(c): p for c, p in pred.top_k(int(k))}
        converted = image.info.get("bmc_converted")
        return top, one_cell_verdict(pred, self.predictor.threshold, len(self.predictor.codes), self.secondary_only, converted)

    def explain(
        self, path: str | None, method: str, target_name: str, opacity: float, noise_tunnel: bool, progress: gr.Progress = gr.Progress()
    ) -> tuple[Image.Image, str, Image.Image]:
        """An attribution overlay for the predicted (or a chosen) class, the prediction's calibrated confidence and
        flag, and the map's evidence: what removing the regions it marks does to the class probability
        (:func:`bmc.serve.faithfulness.evidence`, one extra batched pass), as a line and a deletion curve."""
        image = self.load(path)
        if method not in self.explainer.methods():
            raise user_error(f"{method} is not available for this model; choose one of {', '.join(self.explainer.methods())}.")
        progress(0.1, desc=f"{method}…")
        target = None if target_name in (None, "", "predicted class") else self.predictor.codes.index(self.names[target_name])
        attribution = self.explainer.explain(image, method, target, noise_tunnel=noise_tunnel)
        progress(0.7, desc="evidence")
        evidence, pred = self.explainer.evidence(image, attribution), self.predictor.predict([image])[0]
        name = display_name(self.predictor.codes[attribution.target])
        flag = "⚠️ flagged: review manually" if pred.flagged else "not flagged"
        note = (
            f"Prediction: **{display_name(pred.top_code)}**, {pred.confidence:.1%} calibrated confidence ({flag}; review "
            f"threshold {self.predictor.threshold:.1%}).\n\n"
            + (f"**{method}** (class-independent). " if get_method(method).class_independent else f"**{method}** for **{name}**. ")
            + f"{attribution.how_to_read}\n\n**Evidence:** {evidence.line(self.predictor.codes[attribution.target])}"
        )
        return overlay(image, attribution.heatmap, opacity), note, curve_image(evidence, self.predictor.codes[attribution.target])

    # ------------------------------------------------------------------ differential count and review
    def count(self, files: list[str] | None, progress: gr.Progress = gr.Progress(track_tqdm=True)):
        """Count the uploaded cells; the report (with thumbnails, for review) goes into the session state."""
        report = self._count(files, None)
        return (*self.render(report), gr.update(choices=report.review_queue(), value=None), report)

    def count_fields(self, files: list[str] | None, progress: gr.Progress = gr.Progress(track_tqdm=True)):
        """Count whole microscope fields: each cell is found (:mod:`bmc.locate.finder`), cropped and counted, named by
        its field, its number on the field's overlay and its box; the overlays come back as a gallery."""
        fields: dict[str, Image.Image] = {}
        report = self._count(files, fields)
        overlays = field_overlays(fields, {c.name: report.label(c) for c in report.cells})
        gallery = [
            (image, f"{name}: boxes numbered as the cells {name}#1, #2, … of the count, coloured by class")
            for name, image in overlays.items()
        ]
        return (*self.render(report), gr.update(choices=report.review_queue(), value=None), report, gallery, overlays)

    @staticmethod
    def show_field(overlays: dict[str, Image.Image] | None, evt: gr.SelectData) -> tuple[Image.Image | None, str | None]:
        """The field clicked in the overlay gallery, large, for clicking its boxes."""
        names = list(overlays or {})
        if not isinstance(evt.index, int) or not 0 <= evt.index < len(names):
            return None, None
        return overlays[names[evt.index]], names[evt.index]  # type: ignore[index]

    @staticmethod
    def pick_box(field: str | None, report: CountReport | None, evt: gr.SelectData) -> str | None:
        """The cell whose box was clicked on the field (its name opens it for review); None off every box."""
        if not field or report is None or not isinstance(evt.index, (list, tuple)):
            return None
        return cell_at((c.name for c in report.cells), field, float(evt.index[0]), float(evt.index[1]))

    def _count(self, files: list[str] | None, fields: dict[str, Image.Image] | None) -> CountReport:
        """The count of single cells (``fields`` None) or of the cells found in fields (their pictures collected)."""
        if not files:
            raise user_error("No files: upload cell images, microscope fields or a zip archive of them.")
        items = iter_images(files) if fields is None else iter_field_cells(iter_images(files), fields)
        try:
            done, skipped = predict_stream(self.predictor, items, progress=True, thumbnails="all")
        except UploadError as exc:
            raise user_error(str(exc)) from None
        if not done:
            reasons = "; ".join(f"{s.source}: {s.reason}" for s in skipped[:5])
            raise user_error(f"No cell to count ({reasons}).")
        return report_for(self.predictor, done, skipped)

    def open_cell(self, name: str | None, report: CountReport | None) -> tuple[Image.Image | None, str, str | None]:
        """One cell of the count at review size, with the model's top-3, where its current label comes from,
        and that label preset for review."""
        if not name or report is None:
            return None, "Choose a cell: click one in the review queue or pick a name.", None
        cell = report.cell(name)
        if cell is None:
            raise user_error(f"{name} is not in this count: count again, then choose a cell.")
        data = cell.image or cell.thumbnail
        image = Image.open(io.BytesIO(data)) if data else None
        return image, cell_line(report, cell), display_name(report.label(cell))

    def review(self, name: str | None, label_name: str | None, report: CountReport | None):
        """Confirm (the current label) or relabel one cell; the unreviewed cells are re-labelled by what the
        reviewed ones teach, every figure and download follows, and the queue moves to the least sure cell."""
        if report is None:
            raise user_error("Nothing to review yet: count some cells first.")
        if not name or report.cell(name) is None:
            raise user_error("Choose a cell of this count to review.")
        if label_name not in self.names:
            raise user_error(f"Choose a label from the list (one of this model's {len(self.names)} classes).")
        report = report.reviewed({name: self.names[label_name]})
        queue = report.review_queue()
        following = queue[0] if queue and queue[0] not in report.corrections else name
        report = report.offering(following)  # left without a decision for another cell, it pauses learning (bmc.count.reviewing)
        return (*self.render(report), gr.update(choices=queue, value=following), report)

    def undo(self, report: CountReport | None):
        """Undo the last saved review: the count, its learnt labels and the queue as they were, the cell reopened."""
        before = report.undo() if report is not None else None
        if report is None or before is None:
            raise user_error("Nothing to undo: no review has been saved since the count (one review can be undone).")
        undone = next((n for n, code in report.corrections.items() if before.corrections.get(n) != code), None)
        before = before.offering(undone)
        return (*self.render(before), gr.update(choices=before.review_queue(), value=undone), before)

    def render(self, report: CountReport) -> tuple[list[list[object]], str, str, list[tuple[Image.Image, str]], list[str]]:
        """Table, summary, chart, review-queue gallery and downloads of a (reviewed) count."""
        out = write_all(report, _request_dir())
        gallery: list[tuple[Image.Image, str]] = [
            (Image.open(io.BytesIO(cell.thumbnail)), queue_caption(report, cell))
            for cell in filter(None, map(report.cell, gallery_names(report)))
            if cell.thumbnail
        ]
        return table(report), summary_markdown(report), str(out["chart"]), gallery, [str(out["csv"]), str(out["html"])]

    def export_reviewed(self, report: CountReport | None) -> tuple[str, str]:
        """The reviewed cells as a zip of class folders, and the ``bmc adapt`` command that makes a model for
        this lab from them. Not run here: adapting embeds about a thousand images (the replay of the training
        images and the base test split), minutes of CPU that would hold up every other user of a shared
        server; on the lab's own machine it takes a few minutes and the lab keeps its cells."""
        if report is None or not report.corrections:
            raise user_error("No reviewed cells yet: review some cells of a count first (at least two classes).")
        path = _request_dir() / "reviewed-cells.zip"
        note = adapt_note(report, self.predictor.name, write_reviewed_zip(report, path))
        return str(path), note

    @staticmethod
    def pick_from_gallery(report: CountReport | None, evt: gr.SelectData) -> str | None:
        """The name of the cell clicked in the review-queue gallery."""
        if report is None:
            return None
        names = gallery_names(report)
        return names[evt.index] if 0 <= evt.index < len(names) else None


def gallery_names(report: CountReport) -> list[str]:
    """The cells the gallery shows: the unreviewed head of the review queue (least sure first) that have thumbnails."""
    cells = (report.cell(n) for n in report.review_queue() if n not in report.corrections)
    return [c.name for c in cells if c is not None and c.thumbnail][:MAX_GALLERY]


_WORK = tempfile.TemporaryDirectory(prefix="bmc-app-")  # removed when the server exits


def _request_dir() -> Path:
    """A fresh folder for one request's report files; folders older than an hour are removed
    (Gradio has copied the files into its own cache, which ``delete_cache`` empties, by then)."""
    root = Path(_WORK.name)
    now = time.time()
    for old in root.iterdir():
        if now - old.stat().st_mtime > SESSION_TTL_S:
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(dir=root))
