"""``bmc locate``: fields in, every found cell cropped, classified and written out with its box.

Kept apart from :mod:`bmc.locate.finder` (pure image processing, no model) so that the guard the app runs on
every upload does not import the classifier's stack.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from PIL import Image

from bmc.images import SkippedFile
from bmc.locate.finder import Box, crop, draw, find_cells
from bmc.locate.screening import FOUND_CELL, ScreenedOut, picture_verdict, screen
from bmc.serve.predictor import Predictor


def field_cell_name(field: str, number: int, box: Box) -> str:
    """How a cell found in a field is named in a count: the field, its number on the overlay and its box."""
    return f"{field}#{number} [{box.x0},{box.y0},{box.x1},{box.y1}]"


def parse_field_cell_name(name: str) -> tuple[str, int, Box] | None:
    """The field, number and box of a cell named by :func:`field_cell_name` (None for any other name)."""
    field, sep, rest = name.rpartition("#")
    number, _, box = rest.partition(" [")
    try:
        x0, y0, x1, y1 = (int(v) for v in box.rstrip("]").split(","))
        return (field, int(number), Box(x0, y0, x1, y1, 0)) if sep else None
    except ValueError:
        return None


def cell_at(names: Iterable[str], field: str, x: float, y: float) -> str | None:
    """The cell of ``field`` whose box holds the point (x, y) in the field's pixels (the smallest if boxes overlap)."""
    hits = []
    for name in names:
        parsed = parse_field_cell_name(name)
        if parsed and parsed[0] == field and parsed[2].x0 <= x <= parsed[2].x1 and parsed[2].y0 <= y <= parsed[2].y1:
            hits.append((parsed[2].side, name))
    return min(hits)[1] if hits else None


def iter_field_cells(
    items: Iterable[tuple[str, Image.Image] | SkippedFile], fields: dict[str, Image.Image] | None = None
) -> Iterator[tuple[str, Image.Image] | SkippedFile]:
    """Each field of ``items`` as the crops of the cells found in it (named by :func:`field_cell_name`), for a
    count of whole fields; a field with no cell becomes a skipped item saying so. ``fields`` collects each field's
    picture, for :func:`field_overlays` once its cells are classified."""
    for item in items:
        if isinstance(item, SkippedFile):
            yield item
            continue
        name, image = item
        verdict = picture_verdict(image, single=False)
        if not verdict.ok:
            yield ScreenedOut(name, verdict.not_counted, verdict)
            continue
        field = find_cells(image)
        if fields is not None:
            fields[name] = image
        if not field.boxes:
            yield SkippedFile(name, "no cell found in this field" + (f" ({field.note})" if field.note else ""))
        for number, box in enumerate(field.boxes, start=1):
            yield field_cell_name(name, number, box), found_crop(image, box)


def found_crop(image: Image.Image, box: Box) -> Image.Image:
    """The crop of a cell the locator found (:func:`bmc.locate.finder.crop`), marked as such for the screening
    (:data:`bmc.locate.screening.FOUND_CELL`, with the share of the field its nucleus covers): a found cell is a cell."""
    out = crop(image, box)
    out.info[FOUND_CELL] = box.nucleus_area / (image.width * image.height)
    return out


def field_overlays(fields: Mapping[str, Image.Image], labels: Mapping[str, str]) -> dict[str, Image.Image]:
    """Each field with its cells' boxes numbered as in the count and coloured by class; ``labels`` maps a cell's
    name (:func:`field_cell_name`) to its class code."""
    found: dict[str, list[tuple[int, Box, str]]] = {name: [] for name in fields}
    for cell, code in labels.items():
        parsed = parse_field_cell_name(cell)
        if parsed and parsed[0] in found:
            found[parsed[0]].append((parsed[1], parsed[2], code))
    out = {}
    for name, image in fields.items():
        cells = sorted(found[name], key=lambda c: c[0])
        out[name] = draw(image, [box for _, box, _ in cells], [code for *_, code in cells] or None)
    return out


CSV_COLUMNS = ["image", "x0", "y0", "x1", "y1", "label", "confidence", "flagged", "cell", "crop"]


def locate_fields(predictor: Predictor, items: Iterable[tuple[str, Image.Image] | SkippedFile], out_dir: Path) -> list[str]:
    """Find, crop and classify the cells of each field; write ``cells.csv`` (pixels of the original image),
    ``crops/`` and ``overlays/`` into ``out_dir``; return one line per field (and per skipped file)."""
    out_dir = Path(out_dir)
    (out_dir / "crops").mkdir(parents=True, exist_ok=True)
    (out_dir / "overlays").mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    n_cells = 0
    with open(out_dir / "cells.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(CSV_COLUMNS)
        for item in items:
            if isinstance(item, SkippedFile):
                lines.append(f"skipped {item.source}: {item.reason}")
                continue
            name, image = item
            verdict = picture_verdict(image, single=False)
            if not verdict.ok:
                lines.append(f"{name}: {verdict.not_counted}")
                continue
            field = find_cells(image)
            stem = Path(name).stem.replace("/", "_")
            crops = [found_crop(image, b) for b in field.boxes]
            preds = [s.prediction for s in screen(predictor, crops) if s.prediction is not None]
            for i, (box, c, p) in enumerate(zip(field.boxes, crops, preds), start=1):
                path = out_dir / "crops" / f"{stem}_{i}.jpg"
                c.save(path, quality=92)
                writer.writerow(
                    [
                        name,
                        box.x0,
                        box.y0,
                        box.x1,
                        box.y1,
                        p.top_code,
                        f"{p.confidence:.4f}",
                        "yes" if p.flagged else "no",
                        i,
                        str(path.relative_to(out_dir)),
                    ]
                )
            draw(image, field.boxes, [p.top_code for p in preds]).save(out_dir / "overlays" / f"{stem}.jpg", quality=90)
            n_cells += len(field.boxes)
            found = f"{len(field.boxes)} cell(s)" if field.boxes else "no cell found"
            lines.append(f"{name}: {found}" + (f" ({field.note})" if field.note else ""))
    lines.append(f"{n_cells} cells found; cells.csv, crops/ and overlays/ in {out_dir}")
    return lines
