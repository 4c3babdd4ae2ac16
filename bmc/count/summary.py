"""A count in words and pictures for the app's screen: the summary above the table, the review queue's captions,
one cell's line in the review, and the cell magnified.

The figures come from :class:`bmc.count.differential.CountReport`; this module only words them, so the app, the
CLI and the HTML report cannot disagree on a number.
"""

from __future__ import annotations

import base64
import html
import io

from PIL import Image

from bmc.count.differential import Cell, CountReport
from bmc.labels import display_name

MAX_SKIPPED_SHOWN = 20


def summary_markdown(report: CountReport) -> str:
    """The headline figures on one line, then the review status, where the labels come from and the warnings."""
    lines = [
        f"**{report.n_counted} nucleated cells counted** ({report.n_images} images; {len(report.skipped)} files skipped). "
        f"**Blasts {report.blast_text}.** M:E ratio {report.me_ratio_text}.",
        " ".join([f"{report.review_status}. {report.sources_text}", *(f"⚠️ {w}" for w in report.warnings)]),
    ]
    if report.skipped:
        lines.append("Skipped: " + "; ".join(f"`{s.source}` ({s.reason})" for s in report.skipped[:MAX_SKIPPED_SHOWN]))
    return "\n\n".join(lines)


def queue_caption(report: CountReport, cell: Cell) -> str:
    """A review-queue thumbnail's caption: name, current label, how sure, where the label comes from."""
    return f"{cell.name} — {display_name(report.label(cell))} {report.confidence(cell):.0%} ({report.source(cell)})"


def cell_line(report: CountReport, cell: Cell) -> str:
    """One cell under review: its name, the model's top-3 and where its current label comes from (Markdown)."""
    pred = cell.prediction
    top3 = ", ".join(f"{display_name(c)} {s:.0%}" for c, s in pred.top_k(3))
    status = {
        "reviewed": f"reviewed as **{display_name(report.label(cell))}**",
        "learnt": f"not reviewed; learnt from this review: **{display_name(report.label(cell))}** ({report.confidence(cell):.0%})",
        "model": "flagged, not reviewed yet" if pred.flagged else "not flagged, not reviewed",
    }[report.source(cell)]
    return f"**{cell.name}** — model: {top3}. {status[0].upper()}{status[1:]}."


def zoomed_html(data: bytes, factor: float, alt: str = "") -> str:
    """A JPEG/PNG shown ``factor`` times its size by the browser, in a box that scrolls (class ``bmc-zoom``)."""
    width, height = Image.open(io.BytesIO(data)).size
    src = "data:image/jpeg;base64," + base64.b64encode(data).decode()
    return (
        f'<div class="bmc-zoom"><img alt="{html.escape(alt)}" src="{src}" '
        f'width="{width * factor:.0f}" height="{height * factor:.0f}"></div>'
    )
