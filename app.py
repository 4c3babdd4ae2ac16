#!/usr/bin/env python
"""Gradio app: classify one cell (top-k, calibrated), explain it (Captum maps), count and review many cells.

    python app.py                       # bundled default model, http://127.0.0.1:7860
    python app.py --model DIR_OR_HUB_ID --port 7861
    BMC_MODEL=... GRADIO_SERVER_NAME=0.0.0.0 python app.py     # e.g. in a Hugging Face Space

The handlers come first (a class, so they can be called without a server), then ``build_app``
wires them into ``gr.Blocks``; prediction, explanation and reporting live in ``bmc``. Every
handler turns bad input into a ``gr.Error`` naming the problem, so the UI never shows a stack
trace and the server keeps serving.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import shutil
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from bmc.constants import SESSION_TTL_S
from bmc.count.differential import CountReport, predict_stream, report_for
from bmc.count.export import adapt_note, write_reviewed_zip
from bmc.count.report import TABLE_HEADERS, table, table_note, write_all
from bmc.count.summary import cell_line, queue_caption, summary_markdown, zoomed_html
from bmc.images import ImageError, open_image
from bmc.labels import display_name
from bmc.locate.fields import cell_at, field_overlays, iter_field_cells
from bmc.locate.screening import SEVERAL, screen
from bmc.model_folder import single_source_classes
from bmc.serve.about import HEADER, about_model
from bmc.serve.examples import Example, example_cells
from bmc.serve.explain import Explainer, default_method, get_method, overlay
from bmc.serve.faithfulness import curve_image
from bmc.serve.flags import add_model_arguments, predictor_from_args
from bmc.serve.predictor import Predictor
from bmc.serve.uploads import ARCHIVE_SUFFIXES, UploadError, iter_images
from bmc.serve.verdict import one_cell_verdict

ROOT = Path(__file__).resolve().parent
EXAMPLES_DIR = ROOT / "examples"  # shipped, cited in examples/README.md: a Space has no ../shared
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
        return (*self.render(report), gr.update(choices=queue, value=following), report)

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


class UploadedImage(gr.Image):
    """An image input whose handler receives the uploaded file's path untouched.

    ``gr.Image`` decodes uploads with PIL before the handler runs, so a corrupt or non-image file
    fails inside Gradio with a generic error. bmc checks and decodes the file itself
    (``bmc.images.open_image``) and names the exact problem. To the browser and the API schema it is
    a plain ``gr.Image`` (same front-end block, same payload)."""

    def get_block_name(self) -> str:
        return "image"

    def preprocess(self, payload: Any) -> str | None:  # type: ignore[override]
        return getattr(payload, "path", None) if payload is not None else None


def cell_image_input(label: str) -> gr.Image:
    """The single-cell upload (file, webcam or clipboard), handed to the handler as a path."""
    return UploadedImage(type="filepath", image_mode=None, sources=["upload", "webcam", "clipboard"], label=label, height=280)


CSS = """.bmc-zoom {overflow: auto; max-height: 560px; border: 1px solid #ddd} .bmc-zoom img {max-width: none; display: block}
#bmc-table .body-cell, #bmc-table .body-cell .cell-wrap, #bmc-table .virtual-row {padding-top: 1px !important;
padding-bottom: 1px !important; min-height: 0 !important} #bmc-table .header-row {display: none}
#bmc-table th .header {word-break: keep-all !important; overflow-wrap: normal !important} #bmc-note {font-size: 0.9em}"""
"""The app's few style rules (passed to ``launch``): the count's table as dense as a printed one, with whole words in
its header; the zoomed cell scrolls inside its box at any magnification."""
EXAMPLES, FIELDS = "bmc-examples", "bmc-fields"  # the example galleries' class, the field overlays' id (tests find them)
SCROLL_TO = "() => document.getElementById('{}')?.scrollIntoView({{block: 'start'}})"
"""A browser-side step that brings a part of the page into view (the results after a count, the opened cell)."""


def zoomed(name: str | None, zoom: str, report: CountReport | None) -> str:
    """The cell under review as HTML, magnified ``zoom`` ("2×") by the browser, in a box that scrolls."""
    cell = report.cell(name) if report is not None and name else None
    data = (cell.image or cell.thumbnail) if cell else None
    return zoomed_html(data, float(zoom.rstrip("×")), cell.name) if cell and data else ""


def uploads_line(files: list[str] | None) -> gr.Accordion:
    """The upload list folded to one line once it has been read, naming the first few files."""
    names = [Path(f).name for f in files or []]
    shown = ", ".join(names[:3]) + (f", … ({len(names) - 3} more)" if len(names) > 3 else "")
    return gr.Accordion(label=f"Uploaded: {len(names)} files ({shown}); open to change them", open=False)


def build_app(predictor: Predictor, examples_dir: Path = EXAMPLES_DIR) -> gr.Blocks:
    """The interface: a header, three tabs wired to a :class:`CellApp`'s handlers, each with a named API endpoint."""
    h = CellApp(predictor)
    examples, examples_label = example_cells(examples_dir, predictor.codes, h.secondary_only) if examples_dir.is_dir() else ([], "")
    with gr.Blocks(title="bmc — bone marrow cell classifier", delete_cache=(SESSION_TTL_S, SESSION_TTL_S)) as demo:
        gr.Markdown(HEADER)
        with gr.Accordion("About this model", open=False):
            gr.Markdown(about_model(predictor.name, predictor.version, predictor.backend_description, predictor.codes, h.secondary_only))
        with gr.Tab("One cell"):
            _one_cell_tab(h, examples, examples_label)
        with gr.Tab("Why (attribution)"):
            _why_tab(h, examples, examples_label)
        with gr.Tab("Differential count"):
            _count_tab(h)
    demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=CLASSIFY_CONCURRENCY)
    return demo


def _examples_gallery(examples: list[Example], label: str, target: gr.Image) -> Any:
    """Thumbnails of the example cells with their true class; a click puts that cell into ``target`` (the caller
    chains what it runs next)."""
    if not examples:
        return None
    gallery = gr.Gallery(
        [(str(e.path), e.caption) for e in examples], label=label, columns=10, height="auto", allow_preview=False, elem_classes=EXAMPLES
    )

    def pick(evt: gr.SelectData) -> str | None:
        return str(examples[evt.index].path) if isinstance(evt.index, int) and 0 <= evt.index < len(examples) else None

    return gallery.select(pick, None, [target], api_visibility="private")


def _one_cell_tab(h: CellApp, examples: list[Example], examples_label: str) -> None:
    """One cell: the verdict (confident or review manually, with the calibrated %) above the top-k bars."""
    with gr.Row():
        with gr.Column():
            image = cell_image_input("Single-cell image")
            k = gr.Slider(1, len(h.predictor.codes), value=min(3, len(h.predictor.codes)), step=1, label="classes shown (top-k)")
            go = gr.Button("Classify", variant="primary")
        with gr.Column():
            verdict = gr.Markdown(elem_id="bmc-verdict")
            label = gr.Label(label="calibrated confidence, top classes", show_heading=False, elem_id="bmc-label")
    go.click(h.classify, [image, k], [label, verdict], api_name="classify", concurrency_limit=CLASSIFY_CONCURRENCY)
    picked = _examples_gallery(examples, examples_label, image)
    if picked is not None:
        picked.then(h.classify, [image, k], [label, verdict], api_visibility="private", concurrency_limit=CLASSIFY_CONCURRENCY)


def _why_tab(h: CellApp, examples: list[Example], examples_label: str) -> None:
    """Why: the prediction, confidence and flag repeated above the attribution map, with how to read it and its evidence."""
    with gr.Row():
        with gr.Column():
            image = cell_image_input("Single-cell image")
            method = gr.Radio(list(h.explainer.methods()), value=default_method(h.explainer), label="method")
            target = gr.Dropdown(["predicted class", *h.names], value="predicted class", label="explain which class")
            opacity = gr.Slider(0, 1, value=0.5, step=0.05, label="map opacity")
            nt = gr.Checkbox(False, label="smooth Integrated Gradients with NoiseTunnel (4× slower)")
            go = gr.Button("Explain", variant="primary")
        with gr.Column():
            note = gr.Markdown(elem_id="bmc-why-note")
            out = gr.Image(type="pil", label="attribution overlay", format="png")
            curve = gr.Image(type="pil", label="deletion curve: P(class) as the map's top patches are removed", height=220)
    inputs = [image, method, target, opacity, nt]
    go.click(h.explain, inputs, [out, note, curve], api_name="explain", concurrency_limit=HEAVY_CONCURRENCY)
    picked = _examples_gallery(examples, examples_label, image)
    if picked is not None:
        picked.then(h.explain, inputs, [out, note, curve], api_visibility="private", concurrency_limit=HEAVY_CONCURRENCY)


def _count_tab(h: CellApp) -> None:
    """Differential count: uploads (folded once read), then the results first — summary, table, review queue and
    chart — the field overlays when fields were counted, then the review of one cell."""
    report = gr.State(None, time_to_live=SESSION_TTL_S)  # this session's count and review; dropped with the session
    with gr.Accordion("Upload", open=True) as fold:
        kinds = ["image", ".tif", ".tiff", ".bmp", *ARCHIVE_SUFFIXES]
        what = "Single-cell images or microscope fields, or a zip / tar of them"
        files = gr.File(file_count="multiple", file_types=kinds, label=what, height=150)
    with gr.Row():
        c_go = gr.Button("Count (single-cell images)", variant="primary")
        f_go = gr.Button("Count whole microscope fields (find the cells first)")
    with gr.Column(elem_id="bmc-results"):
        c_summary = gr.Markdown()
        c_table = gr.Dataframe(
            headers=TABLE_HEADERS, show_label=False, interactive=False, max_height=TABLE_MAX_HEIGHT, wrap=True, elem_id="bmc-table"
        )
        c_note = gr.Markdown(elem_id="bmc-note")
        with gr.Row():
            c_flagged = gr.Gallery(label="review queue, least sure first: click a cell to review it", columns=5, height=330)
            c_chart = gr.Image(type="filepath", label="% of nucleated cells, by where the labels come from", height=330)
    with gr.Row(visible=False) as f_row:
        f_overlays = gr.Gallery(label="fields: the cells found, numbered as in the count: click one", columns=3, height=300, elem_id=FIELDS)
        f_field = gr.Image(type="pil", label="field: click a box to review that cell", interactive=False, height=300, elem_id="bmc-field")
    f_state, f_name = gr.State(None, time_to_live=SESSION_TTL_S), gr.State(None, time_to_live=SESSION_TTL_S)  # the field overlays
    r_cell, rendered = _review_panel(h, report, [c_table, c_summary, c_chart, c_flagged])
    for button, handler, extra, fields in ((c_go, h.count, [], False), (f_go, h.count_fields, [f_overlays, f_state], True)):
        outputs = [*rendered, r_cell, report, *extra]
        button.click(handler, [files], outputs, api_name=handler.__name__, concurrency_limit=HEAVY_CONCURRENCY).success(
            partial(_after_count, fields), [files, report], [fold, c_note, f_row], api_visibility="private"
        ).then(None, js=SCROLL_TO.format("bmc-results"))
    f_overlays.select(h.show_field, [f_state], [f_field, f_name], api_visibility="private")
    f_field.select(h.pick_box, [f_name, report], [r_cell], api_visibility="private").then(None, js=SCROLL_TO.format("bmc-review"))
    c_flagged.select(h.pick_from_gallery, [report], [r_cell], api_visibility="private").then(None, js=SCROLL_TO.format("bmc-review"))


def _after_count(fields: bool, files: list[str] | None, report: CountReport | None) -> tuple[gr.Accordion, str, gr.Row]:
    """Once a count is in: the uploads folded to one line, the table's note, the field overlays shown only for fields."""
    return uploads_line(files), table_note(report) if report is not None else "", gr.Row(visible=fields)


def _review_panel(h: CellApp, report: gr.State, above: list[gr.components.Component]) -> tuple[gr.Dropdown, list[Any]]:
    """The review of one cell — name, the model's top-3, label, save and undo beside the cell magnified 1×–4× — and
    the downloads; returns the cell chooser and every output a (re)count or review renders (``above`` first)."""
    with gr.Column(elem_id="bmc-review"):
        gr.Markdown(REVIEW_HELP)
        with gr.Row():
            with gr.Column(scale=2):
                r_cell = gr.Dropdown(choices=[], label="cell (review queue: least sure first)", filterable=True, allow_custom_value=True)
                r_info = gr.Markdown()
                r_label = gr.Dropdown(choices=list(h.names), label="label")
                r_save = gr.Button("Save review (confirm or relabel)", variant="primary")
            with gr.Column(scale=3):
                r_zoom = gr.Radio(["1×", "2×", "3×", "4×"], value="2×", label="magnification", container=False)
                r_view = gr.HTML()
                r_image = gr.Image(type="pil", visible=False)  # the /open_cell API's picture; the page shows r_view
    with gr.Row():
        c_files = gr.File(label="downloads: per-image CSV (model and reviewed labels) and HTML report", file_count="multiple")
        with gr.Column():
            a_go = gr.Button("Download the reviewed cells for a model of your lab (bmc adapt)")
            a_file = gr.File(label="reviewed and learnt cells (zip of class folders)")
    a_note = gr.Markdown()
    rendered = [*above, c_files]
    a_go.click(h.export_reviewed, [report], [a_file, a_note], api_name="export_reviewed")
    shown: dict[str, Any] = dict(fn=zoomed, inputs=[r_cell, r_zoom, report], outputs=[r_view], api_visibility="private")
    r_cell.change(h.open_cell, [r_cell, report], [r_image, r_info, r_label], api_name="open_cell").then(**shown)
    r_zoom.change(**shown)
    for button, handler, name in ((r_save, h.review, "review"),):
        inputs = [r_cell, r_label, report] if name == "review" else [report]
        button.click(handler, inputs, [*rendered, r_cell, report], api_name=name).then(
            h.open_cell, [r_cell, report], [r_image, r_info, r_label], api_visibility="private"
        ).then(**shown)
    return r_cell, rendered


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    examples_dir = Path(os.environ.get("BMC_EXAMPLES") or EXAMPLES_DIR)
    demo = build_app(predictor_from_args(args), examples_dir)
    try:
        demo.launch(server_name=args.host, server_port=args.port, show_error=False, allowed_paths=[str(examples_dir)], css=CSS)
    except OSError as exc:  # e.g. the port is taken: one line and how to choose another, not Gradio's traceback
        print(
            f"error: cannot serve on {args.host}:{args.port} ({str(exc).splitlines()[0]}); choose another port with "
            "--port N or GRADIO_SERVER_PORT=N (make demo PORT=N)",
            file=sys.stderr,
        )
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
