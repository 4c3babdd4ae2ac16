"""The screening of every image before it is classified (:mod:`bmc.locate.screening`), measured (docs/performance.md).

    python bench/screening.py --out bench/screening.json
    python bench/screening.py --tuning 1000     # the training/validation figures the constants were chosen from

Single cells must pass: of each source, the share screened out (goal <= 1 %), on sets the rule was not tuned on
(the model's test split, ``pbc-external``, BCCD crops, ``zheng2018-ds2`` images), each as given and shrunk to
120 px (another lab's small crops). Everything else must not: how many of each kind are caught, and as what —
2x2 sheets of test cells, ``zheng2018-ds2``'s segmentation masks, blanks, and generated pictures that are not
microscope images (noise, flat colours, a "circuit board" of lines and rectangles, text, a photograph).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
BCCD = SHARED / "external-wbc" / "bccd"
ZHENG = SHARED / "external-wbc" / "zheng2018-ds2"
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
SMALL_SIDE = 120
"""Side the single cells are also shrunk to: another lab's crops of this size were refused before (issue 31)."""


def blanks(rng: np.random.Generator, n: int) -> Iterator[Image.Image]:
    """Empty pictures: a slide's or paper's flat colour, with or without a little sensor noise."""
    colours = [(255, 255, 255), (240, 240, 240), (128, 128, 128), (0, 0, 0), (232, 221, 226), (200, 190, 230), (245, 235, 220)]
    for i in range(n):
        base = np.array(colours[i % len(colours)], float)
        noise = rng.normal(0, 4 if i % 2 else 0, (300, 300, 3))
        yield Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def flat_colours(rng: np.random.Generator, n: int) -> Iterator[Image.Image]:
    """A single saturated colour (blue and violet ones too: the stain's hue, nothing else)."""
    for _ in range(n):
        yield Image.new("RGB", (300, 300), tuple(int(v) for v in rng.integers(0, 256, 3)))


def noise(rng: np.random.Generator, n: int) -> Iterator[Image.Image]:
    """Random pixels: uniform, or Gaussian around a random colour, at a random blur."""
    for i in range(n):
        if i % 2:
            rgb = rng.integers(0, 256, (300, 300, 3)).astype(np.float32)
        else:
            rgb = (rng.integers(0, 256, 3) + rng.normal(0, 40, (300, 300, 3))).astype(np.float32)
        rgb = cv2.GaussianBlur(rgb, (0, 0), float(rng.choice([0.5, 2.0, 6.0])))
        yield Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


def circuit_boards(rng: np.random.Generator, n: int) -> Iterator[Image.Image]:
    """A synthetic circuit board: a green, blue or black board with copper tracks, pads and chips."""
    boards = [(20, 110, 40), (25, 60, 140), (20, 20, 25), (40, 90, 60)]
    for i in range(n):
        canvas = np.zeros((360, 480, 3), np.uint8)
        canvas[:] = boards[i % len(boards)]
        for _ in range(40):  # tracks
            p = tuple(int(v) for v in rng.integers(0, 480, 2))
            q = (p[0] + int(rng.integers(-200, 200)), p[1]) if rng.random() < 0.5 else (p[0], p[1] + int(rng.integers(-200, 200)))
            cv2.line(canvas, p, q, (200, 150, 60), int(rng.integers(2, 6)))
        for _ in range(8):  # chips and pads
            x, y = int(rng.integers(0, 420)), int(rng.integers(0, 300))
            colour = (30, 30, 30) if rng.random() < 0.6 else (210, 210, 210)
            cv2.rectangle(canvas, (x, y), (x + int(rng.integers(20, 90)), y + int(rng.integers(15, 60))), colour, -1)
        for _ in range(30):
            cv2.circle(canvas, tuple(int(v) for v in rng.integers(0, 480, 2)), int(rng.integers(3, 8)), (220, 190, 90), -1)
        yield Image.fromarray(cv2.GaussianBlur(canvas, (0, 0), 1.0))


def text(rng: np.random.Generator, n: int) -> Iterator[Image.Image]:
    """Lines of text: dark on light, or coloured on a coloured page (a screenshot, a scanned form)."""
    words = "bone marrow differential count report patient sample smear stain blast neutrophil".split()
    for i in range(n):
        page = (255, 255, 255) if i % 2 == 0 else tuple(int(v) for v in rng.integers(150, 256, 3))
        ink = (0, 0, 0) if i % 2 == 0 else tuple(int(v) for v in rng.integers(0, 120, 3))
        canvas = np.zeros((300, 400, 3), np.uint8)
        canvas[:] = page
        for row in range(8):
            line = " ".join(rng.choice(words, 3))
            cv2.putText(canvas, line, (10, 30 + 35 * row), cv2.FONT_HERSHEY_SIMPLEX, 0.7, ink, 2)
        yield Image.fromarray(canvas)


def photographs() -> Iterator[Image.Image]:
    """The one photograph shipped with the environment (matplotlib's sample portrait), whole and in quarters."""
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    if not path.is_file():
        return
    photo = Image.open(path).convert("RGB")
    yield photo
    w, h = photo.size
    for x, y in ((0, 0), (w // 2, 0), (0, h // 2), (w // 2, h // 2)):
        yield photo.crop((x, y, x + w // 2, y + h // 2))


GENERATED: dict[str, Callable[[np.random.Generator, int], Iterator[Image.Image]]] = {
    "blank": blanks,
    "flat colour": flat_colours,
    "noise": noise,
    "circuit board": circuit_boards,
    "text": text,
}


def photographed(images: Iterator[Image.Image], rng: np.random.Generator) -> Iterator[Image.Image]:
    """The same pictures as a camera would give them: sensor noise and JPEG, so no longer flat."""
    for im in images:
        rgb = np.asarray(im, np.float32) + rng.normal(0, 3, (im.size[1], im.size[0], 3))
        buf = io.BytesIO()
        Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=85)
        yield Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def single_cells(predictor, small_per_source: int, rng: np.random.Generator) -> dict[str, list[Image.Image]]:
    """The single-cell sets the rule was not tuned on, as given, and a sample of each shrunk to :data:`SMALL_SIDE`."""
    from bmc.data import scan_pbc
    from bmc.images import open_image
    from bmc.splits import read_resolved_manifest

    test = [r["source"] for r in read_resolved_manifest(Path(predictor.name) / "split_manifest.csv") if r["split"] == "test"]
    paths = {
        "model's test split (Matek + pbc-train)": test,
        "pbc-external": [p for p, _ in scan_pbc(SHARED / "pbc-external")[0]],
        "BCCD crops": sorted(str(p) for p in BCCD.rglob("*.jpg")),
        "zheng2018-ds2 images": sorted(str(p) for p in (ZHENG / "images").glob("*.webp")),
    }
    out = {}
    for name, files in paths.items():
        out[name] = [open_image(p) for p in files]
        pick = rng.choice(len(files), min(small_per_source, len(files)), replace=False)
        out[f"{name}, shrunk to {SMALL_SIDE} px"] = [out[name][i].resize((SMALL_SIDE, SMALL_SIDE), Image.Resampling.LANCZOS) for i in pick]
    return out


def not_single_cells(predictor, n: int, rng: np.random.Generator) -> dict[str, list[Image.Image]]:
    """Pictures that must not be classified: sheets, masks, blanks and the generated non-micrographs."""
    from bmc.images import open_image
    from bmc.splits import read_resolved_manifest
    from bmc.train.guard import TILE_SIDES, sheet

    test = [r["source"] for r in read_resolved_manifest(Path(predictor.name) / "split_manifest.csv") if r["split"] == "test"]
    out = {"2x2 sheets of test cells": [sheet(test, 4, int(rng.choice(TILE_SIDES)), rng) for _ in range(n)]}
    out["zheng2018-ds2 masks (PNG)"] = [open_image(p) for p in sorted((ZHENG / "masks").glob("*.png"))]
    for name, make in GENERATED.items():
        out[name] = list(make(rng, n))
        out[f"{name}, photographed (noise, JPEG)"] = list(photographed(make(rng, n), rng))
    out["photograph (portrait, whole and quarters)"] = list(photographs())
    return out


def tally(predictor, images: list[Image.Image]) -> dict:
    """How many pictures pass, and how many are screened out as each verdict."""
    from bmc.locate.screening import VERDICTS, screen

    verdicts = [s.verdict.kind for s in screen(predictor, images)]
    out: dict[str, float | None] = {"pictures": len(images), **{kind: verdicts.count(kind) for kind in VERDICTS}}
    out["share_screened_out"] = 1 - out["ok"] / len(images) if images else None
    return out


def tuning_figures(predictor, per_split: int, rng: np.random.Generator) -> dict:
    """What the constants of :mod:`bmc.locate.screening` were chosen from: on the model's training and validation
    images (as given and shrunk to :data:`SMALL_SIDE`), the most flat share and noise grain, the least grey spread,
    violet stain share, dark-region thickness and redness of the darkest pixels any of them has."""
    import cv2 as _cv2

    from bmc.images import open_image
    from bmc.locate import finder
    from bmc.locate.screening import _dark_redness, _dark_thickness, _flat_share
    from bmc.splits import read_resolved_manifest

    rows = read_resolved_manifest(Path(predictor.name) / "split_manifest.csv")
    paths = [r["source"] for r in rows if r["split"] in ("train", "validation")]
    names = ("flat share", "grey spread", "noise grain", "violet stain share", "dark thickness", "dark redness")
    figures: dict[str, list[float]] = {name: [] for name in names}
    for i in rng.choice(len(paths), min(per_split, len(paths)), replace=False):
        image = open_image(paths[i])
        for im in (image, image.resize((SMALL_SIDE, SMALL_SIDE), Image.Resampling.LANCZOS)):
            rgb = finder.at_work_size(im)
            grey = rgb.astype(np.float32).mean(axis=2)
            figures["flat share"].append(_flat_share(rgb))
            figures["grey spread"].append(float(grey.std()))
            figures["noise grain"].append(float(np.abs(grey - _cv2.GaussianBlur(grey, (0, 0), 1.0)).mean()))
            figures["violet stain share"].append(finder.violet_share(rgb))
            figures["dark thickness"].append(_dark_thickness(grey))
            figures["dark redness"].append(_dark_redness(rgb))
    return {"images": len(figures["flat share"]) // 2, **{k: {"min": min(v), "max": max(v)} for k, v in figures.items()}}


def main(argv: list[str] | None = None) -> int:
    from bmc.constants import DEFAULT_MODEL
    from bmc.serve.predictor import Predictor

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "screening.json")
    parser.add_argument("--small", type=int, default=300, help="single cells per source shrunk to 120 px")
    parser.add_argument("--generated", type=int, default=20, help="pictures of each generated kind")
    parser.add_argument("--tuning", type=int, default=0, help="only the figures the constants were chosen from (N train/validation images)")
    args = parser.parse_args(argv)
    predictor = Predictor(args.model)
    rng = np.random.default_rng(0)
    if args.tuning:
        print(json.dumps(tuning_figures(predictor, args.tuning, rng), indent=1))
        return 0
    result: dict = {"model": str(args.model), "learnt_check": predictor.guard is not None, "single_cells": {}, "not_single_cells": {}}
    for name, images in single_cells(predictor, args.small, rng).items():
        result["single_cells"][name] = tally(predictor, images)
        print(name, result["single_cells"][name], flush=True)
    for name, images in not_single_cells(predictor, args.generated, rng).items():
        result["not_single_cells"][name] = tally(predictor, images)
        print(name, result["not_single_cells"][name], flush=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
