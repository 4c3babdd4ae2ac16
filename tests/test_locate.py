"""The cell locator and the single-cell guard: generated fields, bad pictures, and real BCCD fields."""

import numpy as np
import pytest
from helpers import matek_images
from PIL import Image

from bmc.locate.finder import MAX_SIDE, crop, find_cells, several_cells


def _field(centres, size=(640, 480), radius=40):
    """A pink field with violet nuclei (Romanowsky-like colours) at ``centres``."""
    import cv2

    canvas = np.full((size[1], size[0], 3), (230, 190, 200), np.uint8)
    for x, y in centres:
        cv2.circle(canvas, (x, y), radius + 25, (215, 175, 215), -1)  # cytoplasm
        cv2.circle(canvas, (x, y), radius, (110, 80, 200), -1)  # nucleus: blue well above red
    return Image.fromarray(canvas)


def test_each_cell_of_a_field_is_found_and_boxed_whole():
    field = find_cells(_field([(150, 150), (450, 300)]))
    assert len(field.boxes) == 2 and not field.note
    first = min(field.boxes, key=lambda b: b.x0)
    assert first.x0 < 150 - 40 < 150 + 40 < first.x1  # the box holds more than the nucleus


def test_lobes_of_one_nucleus_give_one_box_but_two_cells_side_by_side_stay_two():
    import cv2

    canvas = np.full((480, 640, 3), (230, 190, 200), np.uint8)
    cv2.circle(canvas, (200, 240), 95, (215, 175, 215), -1)  # one cell's cytoplasm
    for x in (170, 230):  # two tall lobes 20 px apart: the dilation leaves them two blobs
        cv2.ellipse(canvas, (x, 240), (20, 45), 0, 0, 360, (110, 80, 200), -1)
    assert len(find_cells(Image.fromarray(canvas)).boxes) == 1
    assert len(find_cells(_field([(200, 240), (300, 240)])).boxes) == 2  # two whole cells touching


@pytest.mark.parametrize(
    "picture, n",
    [
        (Image.new("RGB", (640, 480), (240, 240, 240)), 0),  # blank
        (Image.new("RGB", (640, 480), (220, 120, 130)), 0),  # only red cells' colour
        (Image.new("L", (640, 480), 128), 0),  # greyscale: no colour to go by
    ],
)
def test_pictures_without_a_nucleus_give_an_empty_answer(picture, n):
    assert len(find_cells(picture).boxes) == n


def test_a_huge_field_is_searched_downscaled_and_says_so():
    big = _field([(2000, 1500)], size=(8000, 6000), radius=300)
    field = find_cells(big)
    assert "searched at" in field.note and str(MAX_SIDE) in field.note
    assert len(field.boxes) == 1 and field.boxes[0].x0 < 2000 < field.boxes[0].x1  # boxes in the original's pixels


def test_two_hundred_overlapping_cells_do_not_crash():
    rng = np.random.default_rng(0)
    field = find_cells(_field([tuple(rng.integers(0, 640, 2)) for _ in range(200)], radius=15))
    assert isinstance(field.boxes, list)


def test_a_crop_centres_the_cell_at_the_training_framing():
    image = _field([(100, 100)])
    box = find_cells(image).boxes[0]
    c = crop(image, box)
    assert c.size[0] == c.size[1] and abs(c.size[0] - box.side / 0.8) <= 2
    corner = crop(image, type(box)(0, 0, 60, 60, 100))  # a cell at the edge is padded, not shifted
    assert corner.size == (75, 75)


def test_the_guard_counts_separate_whole_cells_only():
    assert several_cells(_field([(160, 240), (480, 240)])) == 2
    assert several_cells(_field([(320, 240)])) == 1
    assert several_cells(_field([(320, 240), (630, 240)])) == 1  # a neighbour cut by the edge is not a cell


def test_real_bccd_fields_are_found(shared_data):
    from bench.locate import FIELDS, match, wbc_boxes

    ids = (FIELDS / "trainval.txt").read_text().split()[:30]
    found = total = 0
    for field_id in ids:
        truth = wbc_boxes(field_id)
        found += len(match(truth, find_cells(Image.open(FIELDS / "JPEGImages" / f"{field_id}.jpg")).boxes))
        total += len(truth)
    assert found / total >= 0.9


def test_real_single_cells_are_not_refused(shared_data):
    from helpers import BCCD, PBC, matek_images

    cells = [p for code in ("BLA", "NGS", "MON", "EOS") for p in matek_images(code, 10)]
    cells += sorted(PBC.rglob("*.jpg"))[:20] + sorted(BCCD.rglob("*.jpg"))[:20]
    assert sum(several_cells(Image.open(p)) >= 2 for p in cells) == 0


def test_no_cell_in_a_blank_or_red_cell_only_picture_but_a_cell_in_a_stained_one():
    from corpus import _img

    from bmc.locate.finder import no_cell

    assert no_cell(Image.new("RGB", (300, 300), (232, 221, 226)))  # blank slide
    rng = np.random.default_rng(0)
    pink = np.clip(np.array([220, 150, 160]) + rng.normal(0, 10, (200, 200, 3)), 0, 255).astype(np.uint8)
    assert no_cell(Image.fromarray(pink))  # red cells only: red above blue everywhere
    assert not no_cell(_img(size=(120, 120)))  # a violet nucleus
    assert not no_cell(Image.new("L", (100, 100), 128))  # greyscale: nothing to go by, so classified (with a note)
    navy = np.clip(np.array([30, 60, 150]) + rng.normal(0, 8, (200, 200, 3)), 0, 255).astype(np.uint8)
    assert no_cell(Image.fromarray(navy))  # blue well above red, but not violet: a uniform, a circuit board


@pytest.mark.integration
def test_no_real_single_cell_is_called_no_cell(shared_data):
    from bmc.locate.finder import no_cell

    for code in ("BLA", "LYT", "NGS", "ART"):
        for path in matek_images(code, 20):
            assert not no_cell(Image.open(path)), path


def test_a_small_faint_blob_is_debris_but_a_strong_nucleus_of_the_same_size_is_a_cell():
    from bmc.locate.finder import FAINT_AREA_FRACTION

    rng = np.random.default_rng(0)
    h, w = 480, 640
    yy, xx = np.mgrid[0:h, 0:w]
    field = np.array([225, 190, 200], float) + rng.normal(0, 5, (h, w, 3))
    radius = int(np.sqrt(0.6 * FAINT_AREA_FRACTION * h * w / np.pi))  # well below the faint-blob area, above the floor
    field[(xx - 160) ** 2 + (yy - 240) ** 2 < radius**2] = [150, 120, 195]  # faint: blue minus red 45 (a platelet clump)
    field[(xx - 480) ** 2 + (yy - 240) ** 2 < radius**2] = [95, 50, 170]  # strong: blue minus red 75 (a nucleus)
    boxes = find_cells(Image.fromarray(np.clip(field, 0, 255).astype(np.uint8))).boxes
    assert len(boxes) == 1 and boxes[0].x0 > 320, boxes


def test_a_large_pale_nucleus_is_found_but_not_a_small_pale_blob():
    import cv2

    canvas = np.full((480, 640, 3), (230, 190, 200), np.uint8)
    cv2.circle(canvas, (180, 240), 60, (170, 140, 198), -1)  # blue minus red 28: below the stain level, cell-sized
    cv2.circle(canvas, (480, 240), 20, (170, 140, 198), -1)  # as pale, platelet-sized
    boxes = find_cells(Image.fromarray(canvas)).boxes
    assert len(boxes) == 1 and boxes[0].x0 < 180 < boxes[0].x1, boxes


def test_every_class_has_its_own_overlay_colour():
    from bmc.labels import CELL_CLASSES
    from bmc.locate.finder import class_colour

    colours = [class_colour(c.code) for c in CELL_CLASSES]
    assert len(set(colours)) == len(CELL_CLASSES) == 21
    assert class_colour("XYZ") == (128, 128, 128)


def test_two_touching_cells_whose_nuclei_the_dilation_joins_get_a_box_each():
    import cv2

    from bmc.locate import finder as locate

    canvas = np.full((480, 640, 3), (230, 190, 200), np.uint8)
    for x in (200, 310):
        cv2.circle(canvas, (x, 240), 75, (215, 175, 215), -1)  # cytoplasm
    for x in (200, 310):
        cv2.circle(canvas, (x, 240), 50, (110, 80, 200), -1)  # nuclei 10 px apart: one blob after the dilation
    field = Image.fromarray(canvas)
    assert len(find_cells(field).boxes) == 2
    blue = locate._stain_map(np.asarray(field))
    stats = locate._blobs(blue, blue > locate.BLUE_MINUS_RED)[0]
    assert (stats[:, 4] >= 0.01 * 640 * 480).sum() == 1  # it is the split, not the mask, that makes two
