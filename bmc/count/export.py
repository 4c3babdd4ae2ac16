"""A reviewed count's cells for ``bmc adapt``: a zip of class folders, and the command that makes a lab's model from it.

The reviewed cells go to ``reviewed-cells/<CODE>/``; the cells whose labels the learning review changed or kept
(:mod:`bmc.count.learning`) go to ``learnt-cells/<CODE>/``, which ``bmc adapt --learnt`` weighs less and never
measures on. The app offers the zip; the adapting runs on the lab's own machine (minutes of CPU a shared server
cannot spare).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from bmc.count.differential import CountReport
from bmc.count.learning import LEARNT_WEIGHT, SOURCE_LEARNT


def write_reviewed_zip(report: CountReport, path: Path) -> int:
    """Write the reviewed and learnt cells (at review size, else their thumbnails) into ``path``; return how many
    learnt cells it holds."""
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
    return len(learnt)


def adapt_note(report: CountReport, model: str, n_learnt: int) -> str:
    """What the zip holds and the ``bmc adapt`` command that makes a model for the lab from it (Markdown)."""
    held, also, weighed = f"**{report.n_reviewed} reviewed cells** in class folders", "", ""
    if n_learnt:
        held += f", and the **{n_learnt} cells whose labels the review learnt** (`learnt-cells/`)"
        also = " --learnt learnt-cells/"
        weighed = (
            f"The learnt cells count {LEARNT_WEIGHT} of a reviewed cell each and are never used to measure the model; "
            "leave out `--learnt` to adapt on the reviewed cells only. "
        )
    return (
        f"{held}. To make a model for your lab from them, unzip and run\n\n"
        f"```\nbmc adapt {model} reviewed-cells/{also} --out models/my-lab\n```\n\n{weighed}"
        "It fine-tunes the model's last blocks on your cells while replaying its training images, so it keeps what "
        "it knew (about four minutes on 2 CPU cores); it is not run on this server because it would hold up everyone "
        "else's counts for that long. More reviewed cells per class give a better model."
    )
