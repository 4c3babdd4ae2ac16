"""The app's screens: ``gr.Blocks`` wiring the handlers of :class:`bmc.ui.handlers.CellApp` into tabs, with named
API endpoints (``/classify``, ``/explain``, ``/count``, ``/count_fields``, ``/review``, ``/undo_review``, ...).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import gradio as gr

from bmc.constants import SESSION_TTL_S
from bmc.count.differential import CountReport
from bmc.count.report import TABLE_HEADERS, table_note
from bmc.count.summary import zoomed_html
from bmc.serve.about import HEADER, about_model
from bmc.serve.examples import Example, example_cells
from bmc.serve.explain import default_method
from bmc.serve.predictor import Predictor
from bmc.serve.uploads import ARCHIVE_SUFFIXES
from bmc.ui.handlers import CLASSIFY_CONCURRENCY, EXAMPLES_DIR, HEAVY_CONCURRENCY, QUEUE_SIZE, REVIEW_HELP, TABLE_MAX_HEIGHT, CellApp


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
                r_undo = gr.Button("Undo the last review", size="sm")
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
    for button, handler, name in ((r_save, h.review, "review"), (r_undo, h.undo, "undo_review")):
        inputs = [r_cell, r_label, report] if name == "review" else [report]
        button.click(handler, inputs, [*rendered, r_cell, report], api_name=name).then(
            h.open_cell, [r_cell, report], [r_image, r_info, r_label], api_visibility="private"
        ).then(**shown)
    return r_cell, rendered
