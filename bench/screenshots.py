"""Screenshots of every screen of the app at 1,280 × 800, taken in headless Chromium on real cells.

    .venv/bin/python bench/screenshots.py               # writes docs/app-*.png
    .venv/bin/python bench/screenshots.py --out /tmp/shots

The app is started as a user starts it (``app.py`` on a free loopback port, :mod:`bench.appserver`); Playwright
drives Debian's ``/usr/bin/chromium`` (nothing is downloaded). The inputs are real images from ``../shared/data``:
60 Matek marrow cells for the count, an unseen-type marrow cell for a flagged answer, three BCCD blood fields for
the field overlay. The steps are functions that ``tests/test_app.py`` reuses, so the pictures in docs/ show what the
browser test checks.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script (the docstring's command), as bench's other scripts do
SHARED = ROOT.parent / "shared" / "data"
MATEK = SHARED / "bone-marrow-cells" / "bone_marrow_cell_dataset"
VIEWPORT: Any = {"width": 1280, "height": 800}
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
COUNT_MIX = {"BLA": 8, "PMO": 8, "NGS": 8, "EOS": 8, "LYT": 8, "MON": 8, "NIF": 6, "ART": 6}
"""The 60-cell count: the first images of the eight Matek classes of ../shared/data."""
FIELDS = ["BloodImage_00000.jpg", "BloodImage_00001.jpg", "BloodImage_00002.jpg"]
"""Three BCCD blood fields (external-wbc/bccd-fields/JPEGImages)."""
SLOW_MS = 180_000
COUNT_MS = 600_000  # a 60-cell count on 2 shared CPU cores, screening included
DONE = """([id, before]) => { const e = document.querySelector(id);
    const t = e.querySelector('[data-testid=markdown]').innerText, idle = e.querySelector('[data-testid=status-tracker]');
    return t !== before && t.includes('calibrated confidence') && idle.classList.contains('hide'); }"""
"""Browser-side test that a Markdown output (``id``) holds a new verdict and its request has finished."""


def count_cells() -> list[Path]:
    """The 60 Matek cells of the count screen."""
    return [p for code, n in COUNT_MIX.items() for p in sorted((MATEK / code).rglob("*.jpg"))[:n]]


def field_images() -> list[Path]:
    return [SHARED / "external-wbc" / "bccd-fields" / "JPEGImages" / name for name in FIELDS]


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@contextmanager
def browser_page(url: str) -> Iterator[Any]:
    """A fresh 1,280 × 800 page of the app in headless Chromium."""
    from playwright.sync_api import sync_playwright

    path = chromium()
    if not path:
        raise RuntimeError("chromium not installed: install Debian's chromium (apt-get install chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.goto(url)
            page.get_by_role("tab", name="One cell").wait_for(timeout=60_000)
            yield page
        finally:
            browser.close()


def in_view(locator: Any) -> bool:
    """Whether an element lies wholly inside the viewport as the page is scrolled now."""
    box = locator.bounding_box()
    return (
        bool(box)
        and box["x"] >= 0
        and box["y"] >= 0
        and box["x"] + box["width"] <= VIEWPORT["width"] + 1
        and (box["y"] + box["height"] <= VIEWPORT["height"] + 1)
    )


def _verdict_after(page: Any, action: Any) -> str:
    """Run ``action`` (a click that classifies) and return the *One cell* verdict once a new one has arrived."""
    verdict = page.locator("#bmc-verdict [data-testid=markdown]")
    before = verdict.inner_text()
    action()
    page.wait_for_function(DONE, arg=["#bmc-verdict", before], timeout=60_000)
    return verdict.inner_text()


def classify(page: Any, path: Path | str) -> str:
    """Upload one cell on *One cell*, classify it, and return the verdict's text."""
    page.get_by_role("tab", name="One cell").click()
    page.locator("input[type=file]").first.set_input_files(str(path))
    return _verdict_after(page, page.get_by_role("button", name="Classify").click)


def click_example(page: Any, index: int = 0) -> tuple[str, str]:
    """Click an example thumbnail on *One cell*; return its caption and the verdict that follows."""
    page.get_by_role("tab", name="One cell").click()
    thumb = page.locator(".bmc-examples .thumbnail-item").nth(index)
    return thumb.inner_text(), _verdict_after(page, thumb.click)


def explain(page: Any, path: Path | str) -> None:
    """*Why*: upload a cell, explain it with Grad-CAM, wait for the map and its how-to-read note."""
    page.get_by_role("tab", name="Why (attribution)").click()
    page.locator("input[type=file]").nth(1).set_input_files(str(path))
    page.get_by_role("button", name="Explain").click()
    page.wait_for_function(DONE, arg=["#bmc-why-note", ""], timeout=SLOW_MS)


def count(page: Any, paths: Sequence[Path], fields: bool = False) -> None:
    """*Differential count*: upload, count (cells or fields), and wait for the summary."""
    page.get_by_role("tab", name="Differential count").click()
    page.locator("input[type=file][multiple]").first.set_input_files([str(p) for p in paths])
    page.get_by_text(Path(paths[-1]).stem).first.wait_for(state="attached", timeout=60_000)  # every file is uploaded
    button = "Count whole microscope fields" if fields else "Count (single-cell images)"
    page.get_by_role("button", name=button).click()
    page.locator("#bmc-results").get_by_text("nucleated cells counted").first.wait_for(timeout=COUNT_MS)
    page.get_by_text(f"Uploaded: {len(paths)} files").wait_for(timeout=60_000)  # the upload list folded to one line
    page.wait_for_function("Math.abs(document.getElementById('bmc-results').getBoundingClientRect().top) < 20", timeout=30_000)
    page.wait_for_timeout(500)  # the results scrolled into view


def first_queue_cell(page: Any) -> Any:
    return page.locator("#bmc-results .thumbnail-item").first


def open_first_queue_cell(page: Any) -> None:
    first_queue_cell(page).click()
    page.locator("#bmc-review img").first.wait_for(timeout=60_000)
    page.wait_for_timeout(800)


def click_box(page: Any, field: str, box: tuple[int, int, int, int]) -> None:
    """Open the field's overlay from the gallery, then click the middle of ``box`` (field pixels) on it."""
    page.locator("#bmc-fields .thumbnail-item").nth(FIELDS.index(field) if field in FIELDS else 0).click()
    image = page.locator("#bmc-field img").first
    image.wait_for(timeout=30_000)
    page.wait_for_timeout(500)
    x, y = page.evaluate(
        """([img, cx, cy]) => { const r = img.getBoundingClientRect();
        const s = Math.min(r.width / img.naturalWidth, r.height / img.naturalHeight);
        const ox = (r.width - img.naturalWidth * s) / 2, oy = (r.height - img.naturalHeight * s) / 2;
        return [ox + cx * s, oy + cy * s]; }""",
        [image.element_handle(), (box[0] + box[2]) / 2, (box[1] + box[3]) / 2],
    )
    image.click(position={"x": x, "y": y})
    page.locator("#bmc-review img").first.wait_for(timeout=60_000)
    page.wait_for_timeout(800)


def flagged_cell() -> Path:
    """An unseen-type marrow cell the bundled model flags (the first of ../shared/data/unseen-classes)."""
    from PIL import Image

    from bmc.constants import BUNDLED_MODEL_NAME
    from bmc.serve.predictor import Predictor

    predictor = Predictor(str(ROOT / "models" / BUNDLED_MODEL_NAME))
    paths = sorted((SHARED / "unseen-classes").glob("*.jpg"))
    preds = predictor.predict([Image.open(p).convert("RGB") for p in paths])
    return next(p for p, pred in zip(paths, preds) if pred.flagged)


def first_box(field: Path) -> tuple[int, int, int, int]:
    from bmc.images import open_image
    from bmc.locate.finder import find_cells

    b = find_cells(open_image(field)).boxes[0]
    return b.x0, b.y0, b.x1, b.y1


def take_all(url: str, out: Path) -> list[Path]:
    """Every screen, as a user meets it, into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    shots = []

    def shot(page: Any, name: str, top: bool = False) -> None:
        if top:
            page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(out / name))
        shots.append(out / name)

    eos = sorted((MATEK / "EOS").rglob("*.jpg"))[0]
    with browser_page(url) as page:
        shot(page, "app-start.png")
        classify(page, eos)
        shot(page, "app-one-cell.png", top=True)
        classify(page, flagged_cell())
        shot(page, "app-one-cell-flagged.png", top=True)
        explain(page, eos)
        page.wait_for_timeout(4000)  # the outputs fade back in after the request ends (Gradio's transition)
        shot(page, "app-why.png", top=True)
        count(page, count_cells())
        shot(page, "app-count.png")
        open_first_queue_cell(page)
        page.get_by_text("3×", exact=True).click()
        page.wait_for_timeout(800)
        shot(page, "app-review.png")
    with browser_page(url) as page:
        fields = field_images()
        count(page, fields, fields=True)
        click_box(page, fields[0].name, first_box(fields[0]))
        shot(page, "app-fields.png")
    return shots


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    parser.add_argument("--url", default=None, help="an app already running (default: start app.py on a free port)")
    args = parser.parse_args(argv)
    if args.url:
        paths = take_all(args.url, args.out)
    else:
        from bench.appserver import running_app

        with running_app() as (url, _proc):
            paths = take_all(url, args.out)
    for p in paths:
        print(p)


if __name__ == "__main__":
    main()
