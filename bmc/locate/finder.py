"""Finding white (nucleated) cells in a microscope field, cropping each at the training framing, and the
single-cell guard of the app.

Romanowsky-type stains colour nuclei blue-violet and red cells pink, so *blue minus red* separates
nuclei from everything else in a blood or marrow field. The locator smooths that map, keeps what is
clearly blue (:data:`BLUE_MINUS_RED`), joins the lobes of one nucleus by a dilation, drops blobs smaller
than a white cell's nucleus (platelets, stain debris: :data:`MIN_AREA_FRACTION` of the field) or small and
faintly stained (platelet clumps: :data:`FAINT_AREA_FRACTION`, :data:`FAINT_STAIN`) and boxes
each blob as a square :data:`GROW` times its side, which covers the cytoplasm (BCCD's boxes are of the
whole cell). A second search at a lower stain level adds large, palely stained nuclei where nothing was found
(:data:`PALE_BLUE_MINUS_RED`). Lobes of one nucleus that the dilation leaves apart (a bilobed eosinophil, a segmented neutrophil)
give boxes that overlap heavily; they are merged into one (:data:`MERGE_OVERLAP`, :data:`MERGE_MAX_GROWTH`).
Measured on BCCD's 292 trainval fields by ``bench/locate.py`` (docs/performance.md).
Two cell-sized nuclei that only the dilation joined get a box each (:data:`SPLIT_AREA_FRACTION`); nuclei that
touch are one blob and come back as one box (a distance-transform watershed split lost more cells than it found).

The same stain guards *One cell*: a picture with several well separated nuclei of cell size is not one
cell (:func:`several_cells`), and a colour picture with hardly any nuclear stain holds no cell (:func:`no_cell`).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

BLUE_MINUS_RED = 35.0
"""Blue minus red (0-255 scale, after smoothing) above which a pixel is nuclear stain."""
SMOOTH_SIGMA = 3.0
DILATE_PX = 15
"""Dilation (at a 640-px field) that joins the lobes of one nucleus."""
MIN_AREA_FRACTION = 0.01
"""Smallest nucleus blob kept, as a share of the field (at BCCD's magnification a platelet is well below it)."""
FAINT_AREA_FRACTION, FAINT_STAIN = 0.035, 50.0
"""A blob below this share of the field whose stained pixels average less than this blue minus red is a platelet
clump or stain debris, not a white cell's nucleus (on BCCD's trainval fields: 8 of 26 false boxes gone, no cell lost)."""
PALE_BLUE_MINUS_RED, PALE_AREA_FRACTION = 25.0, 0.03
"""A second search at this lower stain level keeps a blob of at least this share of the field where nothing was found:
a large, palely stained nucleus (on BCCD's trainval fields: one more white cell found, no false box; any level from
20 to 30 and share from 0.02 to 0.03 gave the same)."""
GROW = 1.2
"""Side of a cell's box relative to its nucleus blob's longer side."""
SPLIT_AREA_FRACTION = 0.02
"""Two nuclei of at least this share of the field each, which only the dilation joined and which are not lobes of
one cell (:func:`_merge_lobes` leaves them apart), are two touching cells: each gets its own box (on BCCD's
trainval fields: one more cell found, in field 00313, and no box lost; at half this share nuclei fragments split
off and 2 cells were lost)."""
MERGE_OVERLAP = 0.3
"""Two boxes sharing more than this share of the smaller one are lobes of one cell (on BCCD's trainval fields: 2
missed cells found and 10 false boxes gone; at 0.1 touching cells merge and recall falls)."""
MERGE_MAX_GROWTH = 1.6
"""... unless their union's side exceeds this many times the larger box's side (two whole cells side by side)."""
CROP_FILL = 0.8
"""Share of a crop's side the cell fills, as in the training images (Matek's cells fill most of a 250-px crop)."""
MAX_SIDE = 2048
"""Longer side a field is searched at; a larger one (a 40-megapixel photo) is downscaled first, and said."""
WORK_SIDE = 640
"""The side the morphology constants refer to (BCCD's fields)."""
NO_CELL_BLUE_MINUS_RED = 15.0
"""For the no-cell check: a lower stain level than the locator's, so that the pale nuclei of some blood smears count."""
NO_CELL_STAIN_SHARE = 0.005
"""A colour picture with less of its area stained violet than this holds no nucleated cell (a blank, a field of red cells
only, a photo that is not a smear). On 800 real single-cell crops of four labs the least stained had 1.8 %
(bench/locate.py); of 1,000 training and validation images, as given and shrunk to 120 px, 1.4 %
(``bench/screening.py --tuning 1000``, docs/performance.md)."""
NO_CELL_SMOOTH_SIDE = 300
"""Below this side the no-cell check blurs less, in proportion: 1 % of a single-cell picture's side, so a 120-px crop
is not blurred 2.5 times more, relative to its cell, than a 300-px one (a pale 120-px monocyte of
``zheng2018-ds2`` was taken for no cell; on the training and validation images shrunk to 120 px nothing changes)."""
GREY_TOLERANCE = 2.0
"""Mean channel difference below which a picture counts as greyscale: it has no stain colour to check."""
GUARD_MIN_AREA_FRACTION = 0.02
"""For the single-cell guard: a second nucleus must be at least this share of the picture to count."""
GUARD_RELATIVE_AREA = 0.25
"""... and at least this share of the largest blob (a fragment beside the cell of a crop is smaller)."""
GUARD_MIN_DISTANCE = 0.45
"""... and its centre this share of the picture's side away from every other."""
GUARD_CUT_DISTANCE = 0.35
"""... and this share away from any cell-sized blob cut by the picture's edge (it may be a lobe of that cell: in
Matek's NGS_00009 a neighbour's free lobe counted as a second cell)."""


@dataclass(frozen=True)
class Box:
    """One found cell, in pixels of the original image."""

    x0: int
    y0: int
    x1: int
    y1: int
    nucleus_area: int

    @property
    def side(self) -> int:
        return max(self.x1 - self.x0, self.y1 - self.y0)


@dataclass
class Field:
    """The cells found in one picture, and a note when the picture was downscaled to search it."""

    boxes: list[Box]
    note: str = ""


def _stain_map(rgb: np.ndarray) -> np.ndarray:
    """Blue minus red, smoothed: nuclear stain is high on it (computed once per picture; each search thresholds it)."""
    f = rgb.astype(np.float32)
    return cv2.GaussianBlur(f[:, :, 2] - f[:, :, 0], (0, 0), SMOOTH_SIGMA)


def _nuclei_by_picture(rgb: np.ndarray, blue: np.ndarray) -> np.ndarray:
    """A nuclear mask with thresholds of this picture's own (Otsu on the stain map ``blue`` and on darkness), above
    the locator's fixed level: in a marrow picture the slide background and the cytoplasm are themselves bluish
    (Matek's background: blue minus red about 65), so a fixed level takes them in, but the nuclei are still the
    bluest *and* darkest part of the picture. Used by the single-cell guard (docs/performance.md)."""
    level, _ = cv2.threshold(np.clip(blue, 0, 255).astype(np.uint8), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    grey = cv2.GaussianBlur(rgb.astype(np.float32).mean(axis=2), (0, 0), SMOOTH_SIGMA)
    dark, _ = cv2.threshold(grey.astype(np.uint8), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return (blue > BLUE_MINUS_RED) & (blue > level) & (grey < dark)


def _blobs(blue: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Connected nuclear-stain blobs of the stained pixels ``mask`` of a stain map ``blue``: the mask is opened (specks
    gone) and dilated so that the lobes of one nucleus become one blob. Returns stats rows x, y, w, h, area;
    centroids; the mean stain strength, blue minus red, of each blob's stained pixels; the blob label image (0: none,
    blob i + 1) and the opened nuclei mask it was joined from."""
    stain = mask.astype(np.uint8)
    opened = cv2.morphologyEx(stain, cv2.MORPH_OPEN, np.ones((5, 5), np.uint8))
    k = max(3, int(round(DILATE_PX * max(blue.shape[:2]) / WORK_SIDE)) | 1)
    joined = cv2.dilate(opened, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    n, labels, stats, centroids = cv2.connectedComponentsWithStats(joined)
    stained = stain.astype(bool)
    sums = np.bincount(labels[stained], weights=blue[stained], minlength=n)
    counts = np.bincount(labels[stained], minlength=n)
    strength = np.divide(sums, counts, out=np.zeros(n), where=counts > 0)
    return stats[1:], centroids[1:], strength[1:], labels, opened


def find_cells(image: Image.Image) -> Field:
    """Boxes of the white / nucleated cells in a field (any size; greyscale has no colour to go by)."""
    rgb = np.asarray(image.convert("RGB"))
    h, w = rgb.shape[:2]
    scale, note = 1.0, ""
    if max(h, w) > MAX_SIDE:
        scale = MAX_SIDE / max(h, w)
        rgb = cv2.resize(rgb, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
        note = f"the {w}×{h} picture was searched at {rgb.shape[1]}×{rgb.shape[0]} (longest side {MAX_SIDE} px)"
    sh, sw = rgb.shape[:2]
    blue = _stain_map(rgb)
    found = _squares(blue, BLUE_MINUS_RED)
    found += [  # a large, palely stained nucleus that the stain level missed
        p for p in _squares(blue, PALE_BLUE_MINUS_RED) if p[4] >= PALE_AREA_FRACTION * sh * sw and not any(_overlap(p, f) for f in found)
    ]
    boxes = []
    for x0, y0, x1, y1, area in found:
        x0, y0, x1, y1 = max(0.0, x0), max(0.0, y0), min(float(sw), x1), min(float(sh), y1)
        boxes.append(Box(int(x0 / scale), int(y0 / scale), int(round(x1 / scale)), int(round(y1 / scale)), int(area / scale**2)))
    return Field(boxes, note)


Square = tuple[float, float, float, float, int]
"""x0, y0, x1, y1 of a cell's box (not yet clipped to the picture) and its nuclear area, in searched pixels."""


def _square(x: float, y: float, w: float, h: float, area: int) -> Square:
    """A blob's box grown to a square :data:`GROW` times its longer side, on the blob's centre."""
    cx, cy, side = x + w / 2, y + h / 2, max(w, h) * GROW
    return (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2, int(area))


def _squares(blue: np.ndarray, level: float) -> list[Square]:
    """The cells' boxes found where the stain map ``blue`` is above ``level``: nucleus blobs above the area floor and
    not faint debris, each
    grown to a square (:func:`_square`); a blob that the dilation made of several cell-sized nuclei
    (:data:`SPLIT_AREA_FRACTION`) which are not lobes of one cell gives a box per nucleus; lobes of one cell
    merged (:func:`_merge_lobes`)."""
    sh, sw = blue.shape[:2]
    squares: list[Square] = []
    stats, _centroids, strength, labels, opened = _blobs(blue, blue > level)
    _, parts, part_stats, _ = cv2.connectedComponentsWithStats(opened)
    for i, ((x, y, bw, bh, area), stained) in enumerate(zip(stats, strength), start=1):
        if area < MIN_AREA_FRACTION * sh * sw or (area < FAINT_AREA_FRACTION * sh * sw and stained < FAINT_STAIN):
            continue
        inside = [j for j in np.unique(parts[labels == i]) if j and part_stats[j][4] >= SPLIT_AREA_FRACTION * sh * sw]
        nuclei = _merge_lobes([_square(*part_stats[j]) for j in inside]) if len(inside) >= 2 else []
        squares += nuclei if len(nuclei) >= 2 else [_square(x, y, bw, bh, area)]
    return _merge_lobes(squares)


def _intersection(a: Square, b: Square) -> float:
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


def _overlap(a: Square, b: Square) -> bool:
    return _intersection(a, b) > 0


def _lobe_pair(boxes: list[Square]) -> tuple[int, int, Square] | None:
    """The first pair ``i < j`` of boxes that are lobes of one cell (the rule of :func:`_merge_lobes`) and their
    union; None when no pair is."""
    for i, a in enumerate(boxes):
        for j in range(i + 1, len(boxes)):
            b = boxes[j]
            smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
            union = (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]), a[4] + b[4])
            larger_side = max(a[2] - a[0], b[2] - b[0])
            if (
                _intersection(a, b) > MERGE_OVERLAP * smaller
                and max(union[2] - union[0], union[3] - union[1]) <= MERGE_MAX_GROWTH * larger_side
            ):
                return i, j, union
    return None


def _merge_lobes(boxes: list[Square]) -> list[Square]:
    """Boxes of the lobes of one nucleus merged into the box of their cell (union; nuclear areas added): a pair
    merges while it shares more than :data:`MERGE_OVERLAP` of the smaller box and their union is no wider than
    :data:`MERGE_MAX_GROWTH` times the larger box (so two whole cells side by side stay two)."""
    out = list(boxes)
    while (pair := _lobe_pair(out)) is not None:
        i, j, union = pair
        out[i] = union
        del out[j]
    return out


def crop(image: Image.Image, box: Box) -> Image.Image:
    """A square crop centred on the cell, the cell filling :data:`CROP_FILL` of it (the training framing);
    outside the picture is padded with the picture's median colour (its background)."""
    rgb = np.asarray(image.convert("RGB"))
    side = max(8, int(round(box.side / CROP_FILL)))
    cx, cy = (box.x0 + box.x1) // 2, (box.y0 + box.y1) // 2
    background = [int(v) for v in np.median(rgb.reshape(-1, 3), axis=0)]
    half = side // 2
    padded = cv2.copyMakeBorder(rgb, half, half, half, half, cv2.BORDER_CONSTANT, value=background)
    x0, y0 = cx - half + half, cy - half + half
    return Image.fromarray(padded[y0 : y0 + side, x0 : x0 + side])


def at_work_size(image: Image.Image) -> np.ndarray:
    """The picture as RGB, downscaled to :data:`WORK_SIDE` when larger: the guards' constants refer to that size."""
    rgb = np.asarray(image.convert("RGB"))
    h, w = rgb.shape[:2]
    if max(h, w) > WORK_SIDE:
        s = WORK_SIDE / max(h, w)
        rgb = cv2.resize(rgb, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    return rgb


def is_greyscale(image: Image.Image) -> bool:
    """Whether a picture has no colour to go by (its channels differ by less than :data:`GREY_TOLERANCE` on average)."""
    return is_grey_rgb(at_work_size(image))


def is_grey_rgb(rgb: np.ndarray) -> bool:
    """:func:`is_greyscale` of a picture already at work size (:func:`at_work_size`), so that it is not resized again."""
    f = rgb.astype(np.float32)
    return float(np.abs(f[:, :, 0] - f[:, :, 2]).mean() + np.abs(f[:, :, 1] - f[:, :, 2]).mean()) < GREY_TOLERANCE


def no_cell(image: Image.Image) -> bool:
    """Whether a colour picture holds no nucleated cell at all: less than :data:`NO_CELL_STAIN_SHARE` of it shows
    violet nuclear stain (blue minus red above :data:`NO_CELL_BLUE_MINUS_RED`, and red above green: a Romanowsky
    nucleus is violet, never the cyan or navy of a circuit board or a uniform). A greyscale picture cannot be
    checked (False): it is classified, with a note that it was converted."""
    rgb = at_work_size(image)
    return not is_grey_rgb(rgb) and violet_share(rgb) < NO_CELL_STAIN_SHARE


def picture_sigma(picture: np.ndarray) -> float:
    """The single-picture checks' blur: :data:`SMOOTH_SIGMA`, shrunk in proportion below :data:`NO_CELL_SMOOTH_SIDE`."""
    return SMOOTH_SIGMA * min(1.0, max(picture.shape[:2]) / NO_CELL_SMOOTH_SIDE)


def violet_share(rgb: np.ndarray) -> float:
    """Share of a picture (RGB at work size) stained violet: blue minus red above :data:`NO_CELL_BLUE_MINUS_RED` and
    red above green, after a blur of :data:`SMOOTH_SIGMA` that shrinks in proportion below :data:`NO_CELL_SMOOTH_SIDE`."""
    f = rgb.astype(np.float32)
    sigma = picture_sigma(f)
    red, green, stain = (cv2.GaussianBlur(c, (0, 0), sigma) for c in (f[:, :, 0], f[:, :, 1], f[:, :, 2] - f[:, :, 0]))
    return float(((stain > NO_CELL_BLUE_MINUS_RED) & (red > green)).mean())


def several_cells(image: Image.Image) -> int:
    """How many separate cell-sized nuclei a picture holds, counted for the single-cell guard on the picture's
    own nuclear mask (:func:`_nuclei_by_picture`): only blobs of at least :data:`GUARD_MIN_AREA_FRACTION` of the
    picture whose centres lie :data:`GUARD_MIN_DISTANCE` of its side apart count, none touching the picture's edge
    and none within :data:`GUARD_CUT_DISTANCE` of a blob that does, so a lobed nucleus, a neighbour cut by the edge
    of a single-cell crop, or a lobe of that neighbour does not."""
    rgb = at_work_size(image)
    h, w = rgb.shape[:2]
    blue = _stain_map(rgb)
    stats, centroids, _strength, _labels, _opened = _blobs(blue, _nuclei_by_picture(rgb, blue))
    largest = max((int(st[4]) for st in stats), default=0)
    whole: list[tuple[float, float]] = []
    cut: list[tuple[float, float]] = []
    for st, c in zip(stats, centroids):
        if st[4] < max(GUARD_MIN_AREA_FRACTION * h * w, GUARD_RELATIVE_AREA * largest):
            continue  # not cell-sized: a fragment
        inside = st[0] > 1 and st[1] > 1 and st[0] + st[2] < w - 1 and st[1] + st[3] < h - 1
        (whole if inside else cut).append(tuple(c))
    side = max(h, w)
    kept: list[tuple[float, float]] = []
    for c in sorted(whole, key=lambda c: (c[1], c[0])):
        if all(np.hypot(c[0] - k[0], c[1] - k[1]) >= GUARD_CUT_DISTANCE * side for k in cut) and all(
            np.hypot(c[0] - k[0], c[1] - k[1]) >= GUARD_MIN_DISTANCE * side for k in kept
        ):
            kept.append(c)
    return len(kept)


CLASS_COLOURS = {
    "BLA": "BE0032", "PMO": "F38400", "MYB": "F6A600", "MMZ": "DCD300", "NGB": "C2B280", "NGS": "0067A5", "EOS": "008856",
    "ABE": "8DB600", "BAS": "604E97", "PEB": "882D17", "EBO": "E68FAC", "LYI": "A1CAF1", "LYT": "875692", "HAC": "654522",
    "MON": "00CED1", "PLM": "B3446C", "FGC": "E25822", "KSC": "2B3D26", "OTH": "F99379", "NIF": "F3C300", "ART": "848482",
}  # fmt: skip
"""One colour per class on the field overlays: Kelly's colours of maximum contrast (and a cyan), the most
distinct ones given to the classes of a marrow count."""


def class_colour(code: str) -> tuple[int, int, int]:
    """The class's overlay colour as RGB (the same in every field); a code the 21 classes lack is grey."""
    value = CLASS_COLOURS.get(code, "808080")
    return (int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16))


def draw(image: Image.Image, boxes: list[Box], labels: list[str] | None = None) -> Image.Image:
    """The field with numbered boxes, for the overlay a reviewer clicks through; with ``labels`` (class codes)
    each box is coloured by its class (:func:`class_colour`) and captioned with it."""
    canvas = np.asarray(image.convert("RGB")).copy()
    thick = max(2, max(canvas.shape[:2]) // 320)
    for i, b in enumerate(boxes, start=1):
        if labels:
            colour = class_colour(labels[i - 1])
        else:
            blue, green, red = (int(c) for c in cv2.applyColorMap(np.array([[37 * i % 255]], dtype=np.uint8), cv2.COLORMAP_TURBO)[0, 0])
            colour = (red, green, blue)
        cv2.rectangle(canvas, (b.x0, b.y0), (b.x1, b.y1), colour, thick)
        text = f"{i}" + (f" {labels[i - 1]}" if labels else "")
        cv2.putText(canvas, text, (b.x0 + 3, max(12, b.y0 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thick, colour, thick)
    return Image.fromarray(canvas)
