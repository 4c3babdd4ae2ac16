import cv2
import numpy as np
import pytest
from helpers import matek_images
from PIL import Image

from bmc.train.augmentation import TrainTransform
from bmc.transforms import build_image_processor, make_eval_transform, preprocess, processor_size


@pytest.fixture
def cells(shared_data):
    return [Image.open(p) for p in matek_images("BLA", 4)]


def test_eval_transform_is_exactly_the_image_processor(cells):
    processor = build_image_processor(112)
    ours = np.stack(make_eval_transform(processor)({"image": cells, "label": [0] * 4})["pixel_values"])
    theirs = processor(images=[c.convert("RGB") for c in cells], return_tensors="np")["pixel_values"]
    assert ours.shape == (4, 3, 112, 112)
    np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_train_transform_augments_but_keeps_shape_and_scale(cells):
    processor = build_image_processor(112)
    transform = TrainTransform(processor, seed=0)
    batch = {"image": cells, "label": [1] * 4, "source": [f"c{i}.jpg" for i in range(4)]}
    a = np.stack(transform(batch)["pixel_values"])
    again = np.stack(TrainTransform(processor, seed=0)(batch)["pixel_values"])
    np.testing.assert_array_equal(a, again)  # same seed, epoch and file: the same draw, in any process
    renamed = np.stack(transform({**batch, "source": [f"other{i}.jpg" for i in range(4)]})["pixel_values"])
    assert not np.allclose(a, renamed)  # each file has its own draw
    transform.epoch = 1
    assert not np.allclose(a, np.stack(transform(batch)["pixel_values"]))  # a new epoch draws anew
    assert a.shape == (4, 3, 112, 112) and a.dtype == np.float32
    clean = preprocess([c.convert("RGB") for c in cells], processor)
    # Same normalisation: per-channel means of augmented and clean batches stay close.
    assert np.abs(a.mean(axis=(0, 2, 3)) - clean.mean(axis=(0, 2, 3))).max() < 0.5


def test_denoise_option_changes_pixels_only_slightly(cells):
    processor = build_image_processor(56)
    plain = preprocess([cells[0].convert("RGB")], processor)
    smooth = preprocess([cells[0].convert("RGB")], processor, use_denoise=True)
    assert 0 < np.abs(plain - smooth).mean() < 0.2


def test_processor_size_reads_both_spellings():
    from transformers.models.bit import BitImageProcessorPil

    assert processor_size(build_image_processor(98)) == 98
    assert processor_size(BitImageProcessorPil(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224})) == 224


def _step_names(robust):
    """The albumentations steps the train-time augmentation holds with these robustness changes."""
    from bmc.train.augmentation import train_augmentation

    return {type(t).__name__ for t in train_augmentation(56, 0, robust).transforms}


def test_each_robustness_augmentation_can_be_left_out():
    from bmc.constants import ROBUSTNESS_AUGMENTATIONS

    full = _step_names(ROBUSTNESS_AUGMENTATIONS)
    assert {"HEStain", "HueSaturationValue", "OneOf"} <= full
    assert not {"HEStain", "HueSaturationValue"} & _step_names(("zoom_out", "blur"))
    assert "OneOf" not in _step_names(("zoom_out", "stain"))
    # With "zoom_out", some cells are shrunk onto background: the dark "cell" covers less of the frame.
    processor = build_image_processor(56)
    rgb = np.full((40, 40, 3), 200, np.uint8)
    rgb[8:32, 8:32] = 60
    batch = {"image": [Image.fromarray(rgb)] * 32, "label": [0] * 32, "source": [f"f{i}" for i in range(32)]}

    def dark_fraction(robust):
        pixels = np.stack(TrainTransform(processor, seed=0, robust=robust)(batch)["pixel_values"])
        return (pixels.mean(axis=1) < 0).mean(axis=(1, 2))  # per image: share of pixels darker than the mean grey

    with_zoom, without = dark_fraction(("zoom_out",)), dark_fraction(())
    assert without.min() > 0.3  # crops only zoom in: the cell never covers less than its original 36 %
    assert (with_zoom < 0.3).sum() >= 4 and with_zoom.mean() < without.mean()


def test_zoom_in_magnifies_the_centred_cell_and_keeps_it_whole():
    from bmc.train.augmentation import zoom_in

    rgb = np.full((100, 100, 3), 200, np.uint8)
    rgb[35:65, 35:65] = 60  # a 30-px "cell" at the centre
    sides, cells = [], []
    for seed in range(40):
        out = zoom_in(rgb, np.random.default_rng(seed), p=1.0)
        assert out.shape[0] == out.shape[1] >= 72
        sides.append(out.shape[0])
        cells.append((out[..., 0] < 100).sum())
    assert min(sides) < 80 and max(sides) > 95  # spans the range, not one fixed crop
    assert all(c == 900 for c in cells)  # centred: the cell is never cut
    assert zoom_in(rgb, np.random.default_rng(0), p=0.0) is rgb
    # With "zoom_in", the cell covers more of the frame in some training images, and never less.
    processor = build_image_processor(56)
    batch = {"image": [Image.fromarray(rgb)] * 32, "label": [0] * 32, "source": [f"f{i}" for i in range(32)]}

    def dark_fraction(robust):
        pixels = np.stack(TrainTransform(processor, seed=0, robust=robust)(batch)["pixel_values"])
        return (pixels.mean(axis=1) < 0).mean(axis=(1, 2))

    assert dark_fraction(("zoom_in",)).mean() > dark_fraction(()).mean() + 0.01


def test_camera_augmentation_is_off_by_default_and_blurs_when_named():
    from bmc.constants import ROBUSTNESS_AUGMENTATIONS

    assert not {"ImageCompression", "GaussNoise"} & _step_names(ROBUSTNESS_AUGMENTATIONS)
    assert {"ImageCompression", "GaussNoise"} <= _step_names((*ROBUSTNESS_AUGMENTATIONS, "camera"))
    # A sharp checkerboard loses detail under the camera look: less pixel-to-pixel contrast on average.
    processor = build_image_processor(56)
    board = (np.indices((56, 56)).sum(axis=0) % 2 * 255).astype(np.uint8)
    batch = {"image": [Image.fromarray(np.stack([board] * 3, axis=-1))] * 32, "label": [0] * 32, "source": [f"f{i}" for i in range(32)]}

    def edge_energy(robust):
        pixels = np.stack(TrainTransform(processor, seed=0, robust=robust)(batch)["pixel_values"])
        return np.abs(np.diff(pixels, axis=-1)).mean()

    assert edge_energy(("camera",)) < 0.8 * edge_energy(())


def test_grey_takes_the_colour_out_of_about_a_fifth_of_the_images():
    from bmc.train.augmentation import GREY_P, train_augmentation

    rgb = np.random.default_rng(0).integers(0, 255, (60, 60, 3), dtype=np.uint8)

    def grey_share(robust: tuple[str, ...]) -> float:
        augment = train_augmentation(56, seed=0, robust=robust)
        outs = []
        for seed in range(200):
            augment.set_random_seed(seed)
            out = augment(image=rgb)["image"]
            outs.append(out.shape == (56, 56, 3) and np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2]))
        return float(np.mean(outs))

    assert grey_share(("stain", "grey")) == pytest.approx(GREY_P, abs=0.08)
    assert grey_share(("stain",)) == 0


def test_augment_argument_takes_names_or_none_and_refuses_others():
    from bmc.train.arguments import ModelArguments

    assert ModelArguments(model_name_or_path="facebook/dinov2-small").augment == ["zoom_out", "stain", "blur"]
    assert ModelArguments(model_name_or_path="facebook/dinov2-small", augment=["stain,blur"]).augment == ["stain", "blur"]
    assert ModelArguments(model_name_or_path="facebook/dinov2-small", augment=["none"]).augment == []
    known = "zoom_out, stain, blur, camera, colour, colour_mild, colour_half, zoom_in, grey"
    with pytest.raises(ValueError, match=f"--augment zoom: unknown; choose from {known} or 'none'"):
        ModelArguments(model_name_or_path="facebook/dinov2-small", augment=["zoom", "stain"])


def test_colour_augmentation_moves_the_lab_statistics_and_keeps_the_shapes():
    import cv2

    from bmc.train.augmentation import LAB_TARGET_MEAN, lab_restyle

    rng = np.random.default_rng(0)
    rgb = np.zeros((40, 40, 3), np.uint8)
    rgb[:] = (230, 200, 210)
    cv2.circle(rgb, (20, 20), 10, (90, 40, 140), -1)
    moved = [lab_restyle(rgb, np.random.default_rng(s), p=1.0) for s in range(8)]
    means = np.array([cv2.cvtColor(m, cv2.COLOR_RGB2LAB).reshape(-1, 3).mean(0) for m in moved])
    assert means[:, 0].std() > 5  # the lab's brightness and colours change from draw to draw ...
    for m, lab_mean in zip(moved, means):
        assert LAB_TARGET_MEAN[0][0] - 3 <= lab_mean[0] <= LAB_TARGET_MEAN[0][1] + 3
        lum = cv2.cvtColor(m, cv2.COLOR_RGB2GRAY).astype(float)
        assert lum[20, 20] < lum[2, 2]  # ... the dark cell on a pale background stays one
    assert lab_restyle(rgb, rng, p=0.0) is rgb


def _tinted_cell(tint: tuple[int, int, int]) -> np.ndarray:
    """A dark round cell on a pale background, the whole picture shifted by ``tint`` (another lab's stain)."""
    rgb = np.zeros((64, 64, 3), np.int16)
    rgb[:] = (225, 205, 215)
    cv2.circle(rgb, (32, 32), 14, (95, 45, 140), -1)
    return np.clip(rgb + np.asarray(tint, np.int16), 0, 255).astype(np.uint8)


def test_colour_reference_is_stored_with_the_processor_and_makes_two_stains_alike(tmp_path):
    from transformers import AutoImageProcessor

    from bmc.transforms import CanonicalColourProcessor, colour_reference, set_colour_reference

    processor = build_image_processor(56)
    a, b = Image.fromarray(_tinted_cell((0, 0, 0))), Image.fromarray(_tinted_cell((-40, 10, 30)))
    plain_gap = np.abs(preprocess([a], processor) - preprocess([b], processor)).mean()
    assert colour_reference(processor) is None
    set_colour_reference(processor, np.array([150.0, 150.0, 100.0]), np.array([50.0, 17.0, 21.0]))
    processor.save_pretrained(tmp_path)
    loaded = AutoImageProcessor.from_pretrained(tmp_path)  # what bmc's predictor and a plain pipeline() load
    np.testing.assert_allclose(colour_reference(loaded)[0], [150.0, 150.0, 100.0])
    canonical_gap = np.abs(preprocess([a], loaded) - preprocess([b], loaded)).mean()
    assert canonical_gap < plain_gap / 4  # the lab's tint is taken out, the cell kept
    for_pipeline = CanonicalColourProcessor.from_pretrained(tmp_path)
    np.testing.assert_allclose(for_pipeline(images=[b], return_tensors="np")["pixel_values"], preprocess([b], loaded), atol=1e-6)


def test_train_transform_applies_the_colour_reference_before_augmenting():
    from bmc.transforms import set_colour_reference

    processor = build_image_processor(56)
    batch = {"image": [Image.fromarray(_tinted_cell(t)) for t in [(0, 0, 0), (-40, 10, 30)]], "label": [0, 0], "source": ["x.png"] * 2}
    plain = np.stack(TrainTransform(processor, seed=0, robust=())(batch)["pixel_values"])
    set_colour_reference(processor, np.array([150.0, 150.0, 100.0]), np.array([50.0, 17.0, 21.0]))
    canonical = np.stack(TrainTransform(processor, seed=0, robust=())(batch)["pixel_values"])
    assert np.abs(canonical[0] - canonical[1]).mean() < np.abs(plain[0] - plain[1]).mean() / 4


def _framed_cell(side: int, radius: int, tint: tuple[int, int, int], contrast: float = 1.0) -> np.ndarray:
    """A violet nucleus in pink cytoplasm on a pale slide, the cell filling more or less of a ``side``-px frame."""
    rgb = np.full((side, side, 3), (235, 215, 220), np.float32)
    cv2.circle(rgb, (side // 2, side // 2), radius, (190, 140, 170), -1)
    cv2.circle(rgb, (side // 2, side // 2), radius // 2, (90, 40, 130), -1)
    rgb = 235 - (235 - rgb) * contrast  # a paler or stronger stain
    return np.clip(rgb + np.asarray(tint, np.float32), 0, 255).astype(np.uint8)


def test_anchored_canonicalisation_does_not_depend_on_framing_and_reinhard_does():
    from bmc.transforms import anchored_standardise, lab_anchors, lab_standardise, lab_statistics

    tight = _framed_cell(64, 30, (0, 0, 0))  # a marrow crop: the cell fills the frame
    wide = _framed_cell(120, 30, (-10, 5, 20), contrast=0.6)  # another lab's crop: paler, bluer, mostly slide
    dark, bright = lab_anchors(tight)
    mean, std = lab_statistics(tight)

    def nucleus(rgb: np.ndarray) -> np.ndarray:
        return rgb[rgb.shape[0] // 2, rgb.shape[1] // 2].astype(float)

    anchored_gap = np.abs(nucleus(anchored_standardise(wide, dark, bright)) - nucleus(tight)).max()
    reinhard_gap = np.abs(nucleus(lab_standardise(wide, mean, std)) - nucleus(tight)).max()
    assert anchored_gap < 12 < reinhard_gap  # the same nucleus colour whatever share of the frame the cell fills
    grain = np.random.default_rng(0).integers(-2, 3, (32, 32, 3))
    blank = (200 + grain).astype(np.uint8)  # no anchors to go by: a small spread must not be stretched into a pattern
    assert anchored_standardise(blank, dark, bright).astype(float).std(axis=(0, 1)).max() < 3 * blank.std(axis=(0, 1)).max()


def test_colour_canonicalisations_are_stored_by_name(tmp_path):
    from transformers import AutoImageProcessor

    from bmc.transforms import colour_method, colour_reference, set_colour_reference

    processor = build_image_processor(56)
    set_colour_reference(processor, np.array([42.0, 171.0, 72.0]), np.array([212.0, 131.0, 121.0]), method="anchored")
    processor.save_pretrained(tmp_path)
    loaded = AutoImageProcessor.from_pretrained(tmp_path)
    assert colour_method(loaded) == "anchored"
    np.testing.assert_allclose(colour_reference(loaded)[1], [212.0, 131.0, 121.0])
    cell = Image.fromarray(_framed_cell(64, 20, (0, 0, 0), contrast=0.6))
    assert np.abs(preprocess([cell], loaded) - preprocess([cell], processor)).max() < 1e-6
    assert np.abs(preprocess([cell], loaded) - preprocess([cell], build_image_processor(56))).mean() > 0.05


def test_the_colour_view_is_the_same_crop_in_another_labs_colours(cells):
    processor = build_image_processor(112)
    batch = {"image": cells, "label": [1] * 4, "source": [f"c{i}.jpg" for i in range(4)]}
    plain = np.stack(TrainTransform(processor, seed=0)(batch)["pixel_values"])
    out = TrainTransform(processor, seed=0, colour_view=True)(batch)
    main, view = np.stack(out["pixel_values"]), np.stack(out["pixel_values_view"])
    np.testing.assert_array_equal(main, plain)  # the image itself is drawn exactly as without the view
    assert view.shape == main.shape and not np.allclose(view, main)
    for m, v in zip(main, view):  # the same geometry: where one is dark the other is dark
        assert np.corrcoef(m.mean(0).ravel(), v.mean(0).ravel())[0, 1] > 0.8
    assert "pixel_values_view" not in TrainTransform(processor, seed=0)(batch)


def test_the_colour_consistency_loss_is_zero_only_when_the_views_agree():
    import torch

    from bmc.train.trainer import collate, colour_consistency_loss

    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    assert colour_consistency_loss(logits, logits).item() == pytest.approx(0.0, abs=1e-6)
    assert colour_consistency_loss(logits, logits.flip(1)).item() > 0.1
    view = logits.clone().requires_grad_(True)
    colour_consistency_loss(logits.requires_grad_(True), view).backward()
    assert logits.grad is None  # the image's own prediction is the fixed target; only the view learns
    examples = [{"pixel_values": np.zeros((3, 4, 4)), "pixel_values_view": np.ones((3, 4, 4)), "labels": 0}] * 2
    assert collate(examples)["pixel_values_view"].shape == (2, 3, 4, 4)
