#!/usr/bin/env python
"""Gradio app: classify one cell (top-k, calibrated), explain it (Captum maps), count many cells.

    python app.py                       # bundled default model, http://127.0.0.1:7860
    python app.py --model DIR_OR_HUB_ID --port 7861
    BMC_MODEL=... GRADIO_SERVER_NAME=0.0.0.0 python app.py     # e.g. in a Hugging Face Space

Only the interface is built here; prediction, explanation and reporting live in ``bmc``.
Every handler turns bad input into a ``gr.Error`` naming the problem, so the UI never shows a
stack trace and the server keeps serving.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import gradio as gr
from PIL import Image

from bmc import labels as L
from bmc.backends import BACKENDS
from bmc.data import ImageError, open_image
from bmc.explain import Explainer, overlay
from bmc.inference import Predictor
from bmc.report import DISCLAIMER, TABLE_HEADERS, build_report, predict_stream, table, write_all
from bmc.uploads import UploadError, iter_images

ROOT = Path(__file__).resolve().parent
DEFAULT_MODEL = ROOT / "models" / "bmc-dinov2s-matek8"
DEFAULT_EXAMPLES = [ROOT.parent / "shared" / "data" / "bone-marrow-cells", ROOT.parent / "shared" / "data" / "unseen-classes"]
EXPLAIN_CONCURRENCY = 1   # attribution is several forward/backward passes: one at a time on a 2-core machine
CLASSIFY_CONCURRENCY = 2
QUEUE_SIZE = 64           # beyond this many waiting requests, new ones are told the server is busy
log = logging.getLogger("bmc.app")


def cell_image_input(label: str) -> gr.Image:
    """An image input whose handler receives the uploaded file untouched.

    ``gr.Image`` decodes uploads with PIL before the handler runs, so a corrupt or non-image file
    fails inside Gradio with a generic error. bmc checks and decodes the file itself
    (``bmc.data.open_image``) and names the exact problem. The override is per instance so the
    component stays a plain ``gr.Image`` for the browser and the API schema.
    """
    component = gr.Image(type="filepath", image_mode=None, sources=["upload", "webcam", "clipboard"], label=label)
    component.preprocess = lambda payload: getattr(payload, "path", None) if payload is not None else None
    return component


def example_images(sources: list[Path], per_class: int = 1) -> list[str]:
    """A few example cells: the first image of each class folder (never files shipped in the repo)."""
    found: list[str] = []
    for src in sources:
        if not src.is_dir():
            continue
        class_dirs = [d for d in sorted(src.rglob("*")) if d.is_dir() and d.parent.name in ("bone_marrow_cell_dataset",)]
        if class_dirs:
            for d in class_dirs:
                found += [str(p) for p in sorted(d.rglob("*.jpg"))[:per_class]]
        else:
            found += [str(p) for p in sorted(src.glob("*.jpg"))]
    return found


def build_app(predictor: Predictor, examples: list[str]) -> gr.Blocks:
    explainer = Explainer(predictor.model, predictor.processor, predictor.use_denoise)
    names = {L.display_name(c): c for c in predictor.codes}
    threshold = predictor.threshold

    def load(path: str | None) -> Image.Image:
        if not path:
            raise gr.Error("No image: upload a single-cell image (JPEG, PNG, TIFF or BMP) or take one with the camera.")
        try:
            return open_image(path, name=Path(path).name)
        except ImageError as exc:
            raise gr.Error(str(exc)) from None

    def classify(path: str | None, k: float) -> tuple[dict[str, float], str]:
        image = load(path)
        pred = predictor.predict([image])[0]
        top = {L.display_name(c): p for c, p in pred.top_k(int(k))}
        name = L.display_name(pred.top_code)
        if pred.flagged:
            verdict = (f"⚠️ **Uncertain — review manually.** Best guess {name} at {pred.confidence:.1%} calibrated confidence, "
                       f"below the review threshold of {threshold:.1%}. The cell may be of a type this model was not "
                       f"trained on ({len(L.CELL_CLASSES) - len(predictor.codes)} of the 21 Matek classes are unknown to it).")
        else:
            verdict = (f"**{name}** at {pred.confidence:.1%} calibrated confidence (review threshold {threshold:.1%}). "
                       "A suggestion for review, not a diagnosis.")
        if image.info.get("bmc_converted"):
            verdict += (f"\n\nNote: the upload was {image.info['bmc_converted']}; it was converted to 8-bit RGB, "
                        "the kind of image the model was trained on.")
        return top, verdict

    def explain(path: str | None, method: str, target_name: str, opacity: float, noise_tunnel: bool,
                progress: gr.Progress = gr.Progress()) -> tuple[Image.Image, str]:
        image = load(path)
        if method not in explainer.methods():
            raise gr.Error(f"{method} is not available for this model; choose one of {', '.join(explainer.methods())}.")
        progress(0.1, desc=f"{method}…")
        target = None if target_name in (None, "", "predicted class") else predictor.codes.index(names[target_name])
        options = {"noise_tunnel": noise_tunnel} if method == "Integrated Gradients" else {}
        attribution = explainer.explain(image, method, target, **options)
        progress(0.9, desc="overlay")
        shown = L.display_name(predictor.codes[attribution.target])
        note = f"**{method}** for **{shown}**. {attribution.how_to_read}"
        if method == "Attention rollout":
            note = f"**{method}** (class-independent). {attribution.how_to_read}"
        return overlay(image, attribution.heatmap, opacity), note

    def count(files: list[str] | None, progress: gr.Progress = gr.Progress(track_tqdm=True)):
        if not files:
            raise gr.Error("No files: upload single-cell images or a zip archive of them.")
        try:
            done, skipped = predict_stream(predictor, iter_images(files), progress=True)
        except UploadError as exc:
            raise gr.Error(str(exc)) from None
        if not done:
            reasons = "; ".join(f"{s.source}: {s.reason}" for s in skipped[:5])
            raise gr.Error(f"None of the files is a readable cell image ({reasons}).")
        report = build_report(done, predictor.codes, predictor.name, predictor.version, threshold, skipped)
        out = write_all(report, _request_dir())
        summary = (f"**{report.n_cells} cells**, {report.n_flagged} flagged for review, {len(skipped)} files skipped. "
                   f"Myeloid : erythroid ratio {report.me_ratio_text}.")
        if skipped:
            summary += "\n\nSkipped: " + "; ".join(f"`{s.source}` ({s.reason})" for s in skipped[:20])
        flagged = _flagged_gallery(files, report)
        return table(report), summary, str(out["chart"]), flagged, [str(out["csv"]), str(out["html"])]

    with gr.Blocks(title="bmc — bone marrow cell classifier", delete_cache=(3600, 3600)) as demo:
        gr.Markdown(
            f"# Bone marrow cell classifier\n**Research tool — not for diagnosis.** {DISCLAIMER}\n\n"
            f"Model `{Path(predictor.name).name if Path(predictor.name).is_dir() else predictor.name}` ({predictor.version}, "
            f"{predictor.backend_description}); classes: "
            + ", ".join(L.display_name(c) for c in predictor.codes) + "."
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
                gr.Examples(examples=[[e] for e in examples], inputs=[image], label="Example cells (Matek; the last six are classes this model never saw)")
            go.click(classify, [image, k], [label, verdict], api_name="classify", concurrency_limit=CLASSIFY_CONCURRENCY)
        with gr.Tab("Why (attribution)"):
            with gr.Row():
                with gr.Column():
                    x_image = cell_image_input("Single-cell image")
                    method = gr.Radio(list(explainer.methods()), value="Grad-CAM", label="method")
                    target = gr.Dropdown(["predicted class", *names], value="predicted class", label="explain which class")
                    opacity = gr.Slider(0, 1, value=0.5, step=0.05, label="map opacity")
                    nt = gr.Checkbox(False, label="smooth Integrated Gradients with NoiseTunnel (4× slower)")
                    x_go = gr.Button("Explain", variant="primary")
                with gr.Column():
                    x_out = gr.Image(type="pil", label="attribution overlay", format="png")
                    x_note = gr.Markdown()
            if examples:
                gr.Examples(examples=[[e] for e in examples], inputs=[x_image])
            x_go.click(explain, [x_image, method, target, opacity, nt], [x_out, x_note], api_name="explain",
                       concurrency_limit=EXPLAIN_CONCURRENCY)
        with gr.Tab("Differential count"):
            files = gr.File(file_count="multiple", file_types=["image", ".zip", ".tif", ".tiff", ".bmp"],
                            label="Many single-cell images, or a zip of them")
            c_go = gr.Button("Count", variant="primary")
            c_summary = gr.Markdown()
            c_table = gr.Dataframe(headers=TABLE_HEADERS, label="Counts by lineage (haematologists' order)", interactive=False)
            with gr.Row():
                c_chart = gr.Image(type="filepath", label="counts per class")
                c_flagged = gr.Gallery(label="flagged for review", columns=6, height=300)
            c_files = gr.File(label="downloads: per-image CSV and HTML report", file_count="multiple")
            c_go.click(count, [files], [c_table, c_summary, c_chart, c_flagged, c_files], api_name="count",
                       concurrency_limit=EXPLAIN_CONCURRENCY)
    demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=CLASSIFY_CONCURRENCY)
    return demo


_WORK = tempfile.TemporaryDirectory(prefix="bmc-app-")  # removed when the server exits
REQUEST_DIR_TTL_S = 3600


def _request_dir() -> Path:
    """A fresh folder for one request's report files; folders older than an hour are removed
    (Gradio has copied the files into its own cache, which ``delete_cache`` empties, by then)."""
    root = Path(_WORK.name)
    now = time.time()
    for old in root.iterdir():
        if now - old.stat().st_mtime > REQUEST_DIR_TTL_S:
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(dir=root))


MAX_GALLERY = 60


def _flagged_gallery(files: list[str], report) -> list[tuple[Image.Image, str]]:
    """Thumbnails of the flagged cells (loose files and zip entries alike), at most ``MAX_GALLERY``."""
    flagged = {name: pred for name, pred in report.images if pred.flagged}
    gallery = []
    for item in iter_images(files):
        if isinstance(item, tuple) and item[0] in flagged and len(gallery) < MAX_GALLERY:
            name, image = item
            pred = flagged[name]
            image.thumbnail((160, 160))
            gallery.append((image, f"{name} — {L.display_name(pred.top_code)} {pred.confidence:.0%}"))
    return gallery


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=os.environ.get("BMC_MODEL", str(DEFAULT_MODEL)), help="model folder or Hub id")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--backend", choices=BACKENDS, default=os.environ.get("BMC_BACKEND", "auto"),
                        help="auto: ONNX Runtime float32 (same predictions, faster on CPU), else PyTorch")
    parser.add_argument("--revision", default=None, help="branch, tag or commit of a Hub model id (pin a commit)")
    parser.add_argument("--allow-pickle-weights", action="store_true",
                        help="also load a model that has only pytorch_model.bin (torch's weights-only unpickler); off by default")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    examples_env = os.environ.get("BMC_EXAMPLES")
    examples = example_images([Path(examples_env)] if examples_env else DEFAULT_EXAMPLES)
    demo = build_app(Predictor(args.model, args.backend, args.allow_pickle_weights, args.revision), examples)
    demo.launch(server_name=args.host, server_port=args.port, show_error=False,
                allowed_paths=[str(Path(e).parent) for e in examples])


if __name__ == "__main__":
    main()
