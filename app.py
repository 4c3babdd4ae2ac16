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
import zipfile
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from bmc.constants import DISCLAIMER, SESSION_TTL_S
from bmc.count.differential import CountReport, predict_stream, report_for
from bmc.count.learning import LEARNT_WEIGHT, SOURCE_LEARNT
from bmc.count.report import TABLE_HEADERS, table, write_all
from bmc.images import IMAGE_SUFFIXES, ImageError, open_image
from bmc.labels import CELL_CLASSES, display_name, sort_codes
from bmc.locate.fields import cell_at, field_overlays, iter_field_cells
from bmc.locate.screening import SEVERAL, screen
from bmc.model_folder import single_source_classes, unseen_marrow_score
from bmc.serve.explain import Explainer, default_method, get_method, overlay
from bmc.serve.faithfulness import curve_image
from bmc.serve.flags import add_model_arguments, predictor_from_args
from bmc.serve.predictor import Predictor
from bmc.serve.uploads import ARCHIVE_SUFFIXES, UploadError, iter_images

ROOT = Path(__file__).resolve().parent
EXAMPLES_DIR = ROOT / "examples"  # shipped, cited in examples/README.md: a Space has no ../shared
HEAVY_CONCURRENCY = 1  # attribution and counting: many forward/backward passes, one at a time on a 2-core machine
CLASSIFY_CONCURRENCY = 2
QUEUE_SIZE = 64  # beyond this many waiting requests, new ones are told the server is busy
TABLE_MAX_HEIGHT = 900  # px: every row of a 21-class count and its total row without scrolling inside the table
REVIEW_IMAGE_HEIGHT = 420  # px: a 250-400 px cell shown at its own resolution
MAX_GALLERY = 120  # the head of the review queue shown as thumbnails; every cell can still be opened by name
REVIEW_NOTE = (
    "Review decisions live only in this browser session's memory: nothing about them is kept on the server "
    "after you close the page. Download the CSV and report to keep them."
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
        name, threshold = display_name(pred.top_code), self.predictor.threshold
        if pred.flagged:
            verdict = (
                f"⚠️ **Uncertain — review manually.** Best guess {name} at {pred.confidence:.1%} calibrated confidence, "
                f"below the review threshold of {threshold:.1%}. The cell may be of a type this model was not "
                f"trained on ({len(CELL_CLASSES) - len(self.predictor.codes)} of the 21 Matek classes are unknown to it)."
            )
        else:
            verdict = (
                f"**{name}** at {pred.confidence:.1%} calibrated confidence (review threshold {threshold:.1%}). "
                "A suggestion for review, not a diagnosis."
            )
        if pred.top_code in self.secondary_only:
            verdict += (
                f"\n\nNote: this model learnt {name} only from images of "
                f"{', '.join(self.secondary_only[pred.top_code])} (peripheral blood), not marrow; on marrow cells of "
                "these classes it is unreliable (see the model card)."
            )
        if image.info.get("bmc_converted"):
            verdict += (
                f"\n\nNote: the upload was {image.info['bmc_converted']}; it was converted to 8-bit RGB, "
                "the kind of image the model was trained on."
            )
        return top, verdict

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
        pred = cell.prediction
        top3 = ", ".join(f"{display_name(c)} {s:.0%}" for c, s in pred.top_k(3))
        source = report.source(cell)
        status = {
            "reviewed": f"reviewed as **{display_name(report.label(cell))}**",
            "learnt": f"not reviewed; learnt from this review: **{display_name(report.label(cell))}** ({report.confidence(cell):.0%})",
            "model": "flagged, not reviewed yet" if pred.flagged else "not flagged, not reviewed",
        }[source]
        info = f"**{name}** — model: {top3}. {status[0].upper()}{status[1:]}."
        data = cell.image or cell.thumbnail
        image = Image.open(io.BytesIO(data)) if data else None
        return image, info, display_name(report.label(cell))

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
        lines = [
            f"**{report.n_counted} nucleated cells counted** ({report.n_images} images; {len(report.skipped)} files skipped). "
            f"**Blasts {report.blast_text}.** M:E ratio {report.me_ratio_text}.",
            f"{report.review_status}.",
            report.sources_text,
        ]
        lines += [f"⚠️ {w}" for w in report.warnings]
        if report.skipped:
            lines.append("Skipped: " + "; ".join(f"`{s.source}` ({s.reason})" for s in report.skipped[:20]))
        lines.append(f"_{REVIEW_NOTE}_")
        gallery: list[tuple[Image.Image, str]] = []
        for cell in filter(None, map(report.cell, gallery_names(report))):
            caption = f"{cell.name} — {display_name(report.label(cell))} {report.confidence(cell):.0%} ({report.source(cell)})"
            if cell.thumbnail:
                gallery.append((Image.open(io.BytesIO(cell.thumbnail)), caption))
        return table(report), "\n\n".join(lines), str(out["chart"]), gallery, [str(out["csv"]), str(out["html"])]

    def export_reviewed(self, report: CountReport | None) -> tuple[str, str]:
        """The reviewed cells as a zip of class folders, and the ``bmc adapt`` command that makes a model for
        this lab from them. Not run here: adapting embeds about a thousand images (the replay of the training
        images and the base test split), minutes of CPU that would hold up every other user of a shared
        server; on the lab's own machine it takes a few minutes and the lab keeps its cells."""
        if report is None or not report.corrections:
            raise user_error("No reviewed cells yet: review some cells of a count first (at least two classes).")
        folder = _request_dir()
        path = folder / "reviewed-cells.zip"
        learnt = [cell for cell in report.cells if report.source(cell) == SOURCE_LEARNT]
        with zipfile.ZipFile(path, "w") as zf:
            for name, code in report.corrections.items():
                cell = report.cell(name)
                data = cell.image or cell.thumbnail if cell else None
                if data:
                    zf.writestr(f"reviewed-cells/{code}/{Path(name).stem}.jpg", data)
            for cell in learnt:
                if data := cell.image or cell.thumbnail:
                    zf.writestr(f"learnt-cells/{report.label(cell)}/{Path(cell.name).stem}.jpg", data)
        held, also, weighed = f"**{report.n_reviewed} reviewed cells** in class folders", "", ""
        if learnt:
            held += f", and the **{len(learnt)} cells whose labels the review learnt** (`learnt-cells/`)"
            also = " --learnt learnt-cells/"
            weighed = (
                f"The learnt cells count {LEARNT_WEIGHT} of a reviewed cell each and are never used to measure the model; "
                "leave out `--learnt` to adapt on the reviewed cells only. "
            )
        note = (
            f"{held}. To make a model for your lab from them, unzip and run\n\n"
            f"```\nbmc adapt {self.predictor.name} reviewed-cells/{also} --out models/my-lab\n```\n\n{weighed}"
            "It fine-tunes the model's last blocks on your cells while replaying its training images, so it keeps what "
            "it knew (about four minutes on 2 CPU cores); it is not run on this server because it would hold up everyone "
            "else's counts for that long. More reviewed cells per class give a better model."
        )
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


def example_images(folder: Path, known: list[str], secondary_only: dict[str, list[str]] | None = None) -> tuple[list[str], list[str], str]:
    """The example cells in ``folder`` (file names start with their Matek code and source): the types the model
    knows first, in haematologists' order, then the unfamiliar ones; a caption per example with its true class
    and where it comes from; and a label that says which are which."""
    files = sorted(p for p in folder.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    code = {p: p.name.split("_")[0].upper() for p in files}
    order = {c: i for i, c in enumerate(sort_codes(code.values()))}
    files.sort(key=lambda p: (code[p] not in known, order[code[p]], p.name))
    unknown = sorted({code[p] for p in files if code[p] not in known}, key=lambda c: order[c])
    captions = []
    for p in files:
        source = {"matek": "marrow", "pbc": "blood"}.get(p.name.split("_")[1].lower() if "_" in p.name else "", "")
        caption = f"true: {display_name(code[p])}" + (f", {source}" if source else "")
        if code[p] not in known:
            caption += " · a type this model never saw"
        elif code[p] in (secondary_only or {}):
            caption += " · learnt from blood only"
        captions.append(caption)
    label = "Example cells with their true class (Matek marrow; BAS from peripheral blood)"
    if unknown:
        label += f"; the last {sum(code[p] in unknown for p in files)} are types this model never saw ({', '.join(unknown)})"
    return [str(p) for p in files], captions, label


def _marrow_score(model: str, codes: dict[str, list[str]]) -> str:
    """ ", naming N of M marrow images of them right (model card)" when the card measured it."""
    score = unseen_marrow_score(model, list(codes))
    return f": of {score[1]} marrow images of them the model card checks, it names {score[0]} right" if score else ""


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
    return UploadedImage(type="filepath", image_mode=None, sources=["upload", "webcam", "clipboard"], label=label)


def build_app(predictor: Predictor, examples_dir: Path = EXAMPLES_DIR) -> gr.Blocks:
    """The interface: three tabs wired to a :class:`CellApp`'s handlers, each with a named API endpoint."""
    h = CellApp(predictor)
    examples, captions, examples_label = (
        example_images(examples_dir, predictor.codes, h.secondary_only) if examples_dir.is_dir() else ([], [], "")
    )
    model_name = Path(predictor.name).name if Path(predictor.name).is_dir() else predictor.name
    with gr.Blocks(title="bmc — bone marrow cell classifier", delete_cache=(SESSION_TTL_S, SESSION_TTL_S)) as demo:
        gr.Markdown(
            f"# Bone marrow cell classifier\n**Research tool — not for diagnosis.** {DISCLAIMER}\n\n"
            f"Model `{model_name}` ({predictor.version}, {predictor.backend_description}); classes: "
            + ", ".join(display_name(c) for c in sort_codes(predictor.codes))
            + "."
            + (
                "\n\n**Learnt from peripheral-blood images only:** "
                + ", ".join(display_name(c) for c in sort_codes(h.secondary_only))
                + ". "
                "On marrow cells of these types the model is unreliable"
                + _marrow_score(predictor.name, h.secondary_only)
                + "; treat such labels with extra care."
                if h.secondary_only
                else ""
            )
        )
        with gr.Tab("One cell"):
            with gr.Row():
                with gr.Column():
                    image = cell_image_input("Single-cell image")
                    k = gr.Slider(1, len(predictor.codes), value=min(3, len(predictor.codes)), step=1, label="classes shown (top-k)")
                    go = gr.Button("Classify", variant="primary")
                with gr.Column():
                    label = gr.Label(label="Calibrated confidence")
                    verdict = gr.Markdown()
            if examples:
                gr.Examples(
                    examples=[[e] for e in examples], inputs=[image], label=examples_label, examples_per_page=20, example_labels=captions
                )
            go.click(h.classify, [image, k], [label, verdict], api_name="classify", concurrency_limit=CLASSIFY_CONCURRENCY)
        with gr.Tab("Why (attribution)"):
            with gr.Row():
                with gr.Column():
                    x_image = cell_image_input("Single-cell image")
                    method = gr.Radio(list(h.explainer.methods()), value=default_method(h.explainer), label="method")
                    target = gr.Dropdown(["predicted class", *h.names], value="predicted class", label="explain which class")
                    opacity = gr.Slider(0, 1, value=0.5, step=0.05, label="map opacity")
                    nt = gr.Checkbox(False, label="smooth Integrated Gradients with NoiseTunnel (4× slower)")
                    x_go = gr.Button("Explain", variant="primary")
                with gr.Column():
                    x_out = gr.Image(type="pil", label="attribution overlay", format="png")
                    x_note = gr.Markdown()
                    x_curve = gr.Image(type="pil", label="deletion curve: P(class) as the map's top patches are removed", height=220)
            if examples:
                gr.Examples(
                    examples=[[e] for e in examples], inputs=[x_image], label=examples_label, examples_per_page=20, example_labels=captions
                )
            x_go.click(
                h.explain,
                [x_image, method, target, opacity, nt],
                [x_out, x_note, x_curve],
                api_name="explain",
                concurrency_limit=HEAVY_CONCURRENCY,
            )
        with gr.Tab("Differential count"):
            report = gr.State(None, time_to_live=SESSION_TTL_S)  # this session's count and review; dropped with the session
            files = gr.File(
                file_count="multiple",
                file_types=["image", ".tif", ".tiff", ".bmp", *ARCHIVE_SUFFIXES],
                label="Many single-cell images or microscope fields, or a zip / tar archive of them",
            )
            with gr.Row():
                c_go = gr.Button("Count (single-cell images)", variant="primary")
                f_go = gr.Button("Count whole microscope fields (find the cells first)")
            with gr.Row():
                f_overlays = gr.Gallery(label="fields: the cells found, numbered as in the count (click one)", columns=3, height=260)
                f_field = gr.Image(type="pil", label="field: click a box to review that cell", interactive=False, height=260)
            f_state = gr.State(None, time_to_live=SESSION_TTL_S)  # this session's field overlays
            f_name = gr.State(None, time_to_live=SESSION_TTL_S)
            c_summary = gr.Markdown()
            c_table = gr.Dataframe(
                headers=TABLE_HEADERS,
                label="Differential count (percent of nucleated cells, 95 % CI)",
                interactive=False,
                max_height=TABLE_MAX_HEIGHT,
            )
            with gr.Row():
                c_chart = gr.Image(type="filepath", label="% of nucleated cells per class, by where the labels come from")
                c_flagged = gr.Gallery(
                    label="review queue, least sure first (label, confidence, where it comes from): click one", columns=6, height=300
                )
            gr.Markdown(
                "### Review a cell\nOpen a cell from the queue (or any cell by name), then confirm its label or choose "
                "another and save. Each saved review re-labels the cells nobody reviewed where the model is out of "
                "its depth (labels marked *learnt*), and the queue moves to the least sure cell. " + REVIEW_NOTE
            )
            with gr.Row():
                with gr.Column():
                    r_cell = gr.Dropdown(
                        choices=[], label="cell (review queue: least sure first)", filterable=True, allow_custom_value=True
                    )  # bmc names an unknown cell itself
                    r_label = gr.Dropdown(choices=list(h.names), label="label")
                    r_save = gr.Button("Save review (confirm or relabel)", variant="primary")
                    r_undo = gr.Button("Undo the last review", size="sm")
                with gr.Column():
                    r_image = gr.Image(type="pil", label="cell (full resolution)", height=REVIEW_IMAGE_HEIGHT)
                    r_info = gr.Markdown()
            c_files = gr.File(label="downloads: per-image CSV (model and reviewed labels) and HTML report", file_count="multiple")
            with gr.Row():
                a_go = gr.Button("Download the reviewed cells for a model of your lab (bmc adapt)")
                a_file = gr.File(label="reviewed and learnt cells (zip of class folders)")
            a_note = gr.Markdown()
            rendered = [c_table, c_summary, c_chart, c_flagged, c_files]
            c_go.click(h.count, [files], [*rendered, r_cell, report], api_name="count", concurrency_limit=HEAVY_CONCURRENCY)
            f_go.click(
                h.count_fields,
                [files],
                [*rendered, r_cell, report, f_overlays, f_state],
                api_name="count_fields",
                concurrency_limit=HEAVY_CONCURRENCY,
            )
            f_overlays.select(h.show_field, [f_state], [f_field, f_name], api_visibility="private")
            f_field.select(h.pick_box, [f_name, report], [r_cell], api_visibility="private")
            a_go.click(h.export_reviewed, [report], [a_file, a_note], api_name="export_reviewed")
            c_flagged.select(h.pick_from_gallery, [report], [r_cell], api_visibility="private")
            r_cell.change(h.open_cell, [r_cell, report], [r_image, r_info, r_label], api_name="open_cell")
            r_save.click(h.review, [r_cell, r_label, report], [*rendered, r_cell, report], api_name="review").then(
                h.open_cell, [r_cell, report], [r_image, r_info, r_label], api_visibility="private"
            )
            r_undo.click(h.undo, [report], [*rendered, r_cell, report], api_name="undo_review").then(
                h.open_cell, [r_cell, report], [r_image, r_info, r_label], api_visibility="private"
            )
    demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=CLASSIFY_CONCURRENCY)
    return demo


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
        demo.launch(server_name=args.host, server_port=args.port, show_error=False, allowed_paths=[str(examples_dir)])
    except OSError as exc:  # e.g. the port is taken: one line and how to choose another, not Gradio's traceback
        print(
            f"error: cannot serve on {args.host}:{args.port} ({str(exc).splitlines()[0]}); choose another port with "
            "--port N or GRADIO_SERVER_PORT=N (make demo PORT=N)",
            file=sys.stderr,
        )
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
